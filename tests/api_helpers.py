"""Helpers shared by the API tests (test_reliability, test_security): test images and /analyze calls."""

import io
import json
from pathlib import Path

import httpx
import numpy as np
from gradio_client import Client, handle_file
from PIL import Image

QUESTION = "What is in the image?"
# Quick settings for cases where they don't matter: one method, 3 iterations, 2 new tokens.
QUICK = dict(keep_ratio=0.5, threshold=0.5, temperature=0.03, iterations=3, fastv_layer=1, methods=["gprune"],
             max_new_tokens=2, view="grid", system_prompt="template", measure_timings=False)


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise(width=64, height=48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def analyze(client: Client, image, question=QUESTION, **settings):
    upload = handle_file(str(image)) if image is not None else None
    return client.predict(upload, question, api_name="/analyze", **{**QUICK, **settings})


def raw_post(url: str, api_name: str, data: list, session_hash: str | None = None) -> httpx.Response:
    """POST `data` as written (NaN and Infinity allowed, which gradio_client refuses to send) to the raw API."""
    body = json.dumps({"data": data, **({"session_hash": session_hash} if session_hash else {})}, allow_nan=True)
    return httpx.post(f"{url.rstrip('/')}/gradio_api/call/{api_name}", content=body,
                      headers={"content-type": "application/json"}, timeout=30)


def raw_result(url: str, api_name: str, event_id: str) -> tuple[str, dict | list | None]:
    """The last SSE event (name, data) of a raw API call."""
    stream = httpx.get(f"{url.rstrip('/')}/gradio_api/call/{api_name}/{event_id}", timeout=120).text
    events = [line[len("event: "):] for line in stream.splitlines() if line.startswith("event: ")]
    payloads = [line[len("data: "):] for line in stream.splitlines() if line.startswith("data: ")]
    return events[-1], json.loads(payloads[-1])


def raw_call(url: str, api_name: str, data: list, session_hash: str | None = None) -> tuple[str, dict | list | None]:
    """`raw_post` then `raw_result`."""
    response = raw_post(url, api_name, data, session_hash)
    response.raise_for_status()
    return raw_result(url, api_name, response.json()["event_id"])


def raw_upload(url: str, path: Path) -> dict:
    with open(path, "rb") as file:
        response = httpx.post(url.rstrip("/") + "/gradio_api/upload", files={"files": (path.name, file, "image/png")})
    response.raise_for_status()
    return {"path": response.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": path.name}


def fn_index(url: str, name: str) -> int:
    """The fn_index of the app's function `name` (private ones included) from the app's /config."""
    dependencies = httpx.get(f"{url.rstrip('/')}/config", timeout=30).json()["dependencies"]
    return next(d["id"] for d in dependencies if d["api_name"] == name)


def queue_run(url: str, index: int, data: list, session_hash: str) -> dict:
    """What the browser does for an event: /queue/join, then the session's /queue/data stream until the event
    completes; returns its `process_completed` message."""
    base = url.rstrip("/")
    joined = httpx.post(f"{base}/gradio_api/queue/join", timeout=30, json={
        "data": data, "fn_index": index, "session_hash": session_hash, "event_data": None, "trigger_id": None})
    joined.raise_for_status()
    event_id = joined.json()["event_id"]
    with httpx.stream("GET", f"{base}/gradio_api/queue/data", params={"session_hash": session_hash},
                      timeout=300) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                message = json.loads(line[len("data: "):])
                if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                    return message
    raise AssertionError(f"event {event_id} never completed")
