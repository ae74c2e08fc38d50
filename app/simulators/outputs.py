"""The canned behaviours: what each default simulated service answers, as a pure
function of the call, so that the demo and the tests see the same output every time."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from app.simulators.schemas import ServiceCall


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _digest(*parts: Any, length: int = 16) -> str:
    return hashlib.sha256(_canonical(list(parts)).encode()).hexdigest()[:length]


def _prompt_of(call: ServiceCall) -> str:
    prompt = call.input_data.get("prompt")
    if isinstance(prompt, str) and prompt:
        return prompt
    return _canonical(call.input_data)


def _context_text(context: Mapping[str, Any], step: str, key: str) -> str | None:
    output = context.get(step)
    value = output.get(key) if isinstance(output, dict) else None
    return value if isinstance(value, str) and value else None


def _enhance_prompt(call: ServiceCall) -> dict[str, Any]:
    prompt = _prompt_of(call)
    return {"enhanced_prompt": f"{prompt} (state the goal, the audience and concrete steps)"}


def _chat(call: ServiceCall) -> dict[str, Any]:
    prompt = _context_text(call.context, "prompt_enhancer", "enhanced_prompt") or _prompt_of(call)
    return {"text": f"Answer [{_digest(prompt, length=8)}]: a structured response to: {prompt}"}


def _summarize(call: ServiceCall) -> dict[str, Any]:
    source = _context_text(call.context, "fast_chat_llm", "text")
    if source is None:
        source = _canonical(call.context) if call.context else _prompt_of(call)
    words = source.split()
    tail = " ..." if len(words) > 24 else ""
    return {"summary": "Summary: " + " ".join(words[:24]) + tail}


def _notify(call: ServiceCall) -> dict[str, Any]:
    return {
        "sent": True,
        "message_id": _digest(call.job_id, call.context),
        "to": call.input_data.get("email", "demo@example.com"),
    }


def _generate_video(call: ServiceCall) -> dict[str, Any]:
    video_id = _digest(call.input_data, call.context)
    return {"video_url": f"https://videos.example/{video_id}.mp4", "duration_s": 15}


_OUTPUTS: dict[str, Callable[[ServiceCall], dict[str, Any]]] = {
    "prompt_enhancer": _enhance_prompt,
    "fast_chat_llm": _chat,
    "summarizer_pro": _summarize,
    "email_notifier": _notify,
    "video_gen_v2": _generate_video,
}
# The services of the default catalog, each with an output of its own.
DEFAULT_SERVICES = tuple(_OUTPUTS)


def simulate_output(service: str, call: ServiceCall) -> dict[str, Any]:
    """The step output `service` answers for `call`: a pure function of its inputs."""
    build = _OUTPUTS.get(service)
    if build is not None:
        return build(call)
    return {"service": service, "echo": call.input_data, "seen_context": sorted(call.context)}
