import httpx
from tests.operator_support import submit
from tests.event_clients import read_sse
def test_debug(stack, api_server, log_dir):
    api = stack["api"]
    stack["sim"].behave("fast_chat_llm", latency_ms=300)
    job_id = submit(api, "business_plan")
    got = []
    try:
        with httpx.stream("GET", f"{api_server}/api/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}, timeout=5) as r:
            for f in read_sse(r.iter_lines()):
                got.append(f["id"])
    except Exception as e:
        print("EXC", repr(e))
    print("GOT", got)
    print("JOB", api.get(f"/api/v1/jobs/{job_id}").json()["status"], [e["seq"] for e in api.get(f"/api/v1/jobs/{job_id}/events").json()["events"]])
    for p in sorted(log_dir.glob("worker-*.log")): print(p.read_text()[-1500:])
    for p in sorted(log_dir.glob("api-*.log")):
        print(p.read_text()[-3000:])
