"""The baseline for the job-creation benchmark: a FastAPI app whose POST endpoint only
sends one Celery message (no validation of a feature, no database, no event), served
by uvicorn like the gateway's API."""

from __future__ import annotations

import os
import uuid
from typing import Any

from celery import Celery
from fastapi import FastAPI

from benchmarks.common import BASELINE_CELERY_CONF

enqueue_app = Celery("bench_enqueue", broker=os.environ["REDIS_URL"])
enqueue_app.conf.update(BASELINE_CELERY_CONF, task_default_queue="nobody")
app = FastAPI()


@app.post("/jobs", status_code=201)
def create(body: dict[str, Any]) -> dict[str, Any]:
    job_id = str(uuid.uuid4())
    enqueue_app.send_task("bench.step", args=[job_id, body], queue="nobody")
    return {"success": True, "job_id": job_id, "status": "PENDING"}
