"""Following, canceling and being notified of running edits, with the real worker."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.app.test_idempotency_and_cancel import read_events
from tests.conftest import WEBHOOK_SECRET, wait_for
from tests.worker.test_worker_e2e import poll, submit

pytestmark = pytest.mark.slow


def test_events_stream_progress_previews_and_the_end(
    api_url: str, worker_process: subprocess.Popen
) -> None:
    edit_id = submit(api_url, seed="21", steps="10")
    events = read_events(f"{api_url}/edits/{edit_id}/events", timeout=120)
    names = [name for name, _ in events]
    statuses = [data["status"] for name, data in events if name == "status"]
    assert statuses[-1] == "succeeded" and "running" in statuses
    steps = [data["step"] for name, data in events if name == "progress"]
    assert steps == sorted(steps) and steps[-1] == 10
    assert "preview" in names
    assert names[-1] == "done" and events[-1][1]["status"] == "succeeded"

    preview = httpx.get(f"{api_url}/edits/{edit_id}/preview.png")
    assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")


def test_cancel_a_running_edit(api_url: str, worker_process: subprocess.Popen) -> None:
    edit_id = submit(api_url, seed="22", steps="1000")
    wait_for(
        lambda: httpx.get(f"{api_url}/edits/{edit_id}").json()["progress"]["step"] > 0,
        120,
        "the edit to run",
    )
    response = httpx.delete(f"{api_url}/edits/{edit_id}")
    assert response.status_code == 202, response.text
    state, _ = poll(api_url, edit_id)
    assert state["status"] == "canceled"
    assert state["progress"]["step"] < 1000
    assert state["links"]["result"] is None
    assert httpx.get(f"{api_url}/edits/{edit_id}/result.png").status_code == 409
    # the worker goes on with the next edit
    assert poll(api_url, submit(api_url, seed="23", steps="2"))[0]["status"] == "succeeded"


class Receiver(ThreadingHTTPServer):
    """A webhook endpoint on 127.0.0.1 that fails its first delivery, to see the retry."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.received: list[dict[str, Any]] = []
        self.attempts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.attempts += 1
        if self.server.attempts == 1:
            self.send_response(503)
            self.end_headers()
            return
        timestamp = self.headers["X-Soundedit-Timestamp"]
        expected = (
            "sha256="
            + hmac.new(
                WEBHOOK_SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256
            ).hexdigest()
        )
        self.server.received.append(
            {"body": json.loads(body), "valid": hmac.compare_digest(expected, self.headers["X-Soundedit-Signature"]),
             "event": self.headers["X-Soundedit-Event"]}
        )  # fmt: skip
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_webhooks_are_signed_and_retried(
    api_url: str, worker_process: subprocess.Popen, receiver: Receiver
) -> None:
    edit_id = submit(
        api_url, seed="24", steps="3", webhook_url=receiver.url, webhook_events="running,succeeded"
    )
    assert poll(api_url, edit_id)[0]["status"] == "succeeded"
    wait_for(lambda: len(receiver.received) >= 2, 30, "two webhook deliveries")
    time.sleep(1)  # nothing more should come
    events = sorted(r["event"] for r in receiver.received)
    assert events == ["running", "succeeded"]  # each once, the first after a failed attempt
    assert receiver.attempts == 3
    assert all(r["valid"] for r in receiver.received)
    done = next(r["body"] for r in receiver.received if r["event"] == "succeeded")
    assert (
        done["id"] == edit_id
        and done["status"] == "succeeded"
        and "clip_audio_after" in done["metrics"]
    )


def test_metrics_count_what_happened(api_url: str, worker_process: subprocess.Popen) -> None:
    assert poll(api_url, submit(api_url, seed="25", steps="2"))[0]["status"] == "succeeded"
    text = httpx.get(f"{api_url}/metrics").text
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['soundedit_edits{queue="edits:smoke",status="succeeded"}'] >= 1
    assert samples["soundedit_workers"] >= 1
    assert samples["soundedit_edit_seconds_count"] >= 1
    assert samples["soundedit_step_seconds_count"] >= 2
    assert 'soundedit_queue_depth{queue="edits:smoke"}' in samples
