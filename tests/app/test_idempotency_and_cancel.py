"""Idempotent submission, canceling queued edits and their event stream (no worker needed)."""

from __future__ import annotations

import json

import httpx

from tests.app.test_edits_api import FIRE, assert_problem


def submit(url: str, key: str | None = None, **data: str) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return httpx.post(
        f"{url}/edits",
        files={"audio": ("f.wav", FIRE)},
        data={"seed": "1", **data},
        headers=headers,
    )


def test_idempotency_key_returns_the_same_edit(idle_api_url: str) -> None:
    first = submit(idle_api_url, "order-17", steps="5")
    again = submit(idle_api_url, "order-17", steps="5")
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == f"/edits/{first.json()['id']}"
    assert submit(idle_api_url, "order-18", steps="5").json()["id"] != first.json()["id"]


def test_idempotency_key_with_another_body_is_409(idle_api_url: str) -> None:
    assert submit(idle_api_url, "order-19", steps="5").status_code == 202
    assert_problem(submit(idle_api_url, "order-19", steps="6"), 409, "Idempotency-Key")


def test_cancel_a_queued_edit(idle_api_url: str) -> None:
    edit_id = submit(idle_api_url).json()["id"]
    canceled = httpx.delete(f"{idle_api_url}/edits/{edit_id}")
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"
    assert httpx.get(f"{idle_api_url}/edits/{edit_id}").json()["status"] == "canceled"
    assert_problem(httpx.delete(f"{idle_api_url}/edits/{edit_id}"), 409)
    assert_problem(httpx.delete(f"{idle_api_url}/edits/{'0' * 32}"), 404)


def read_events(url: str, timeout: float = 60) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    with httpx.stream("GET", url, timeout=timeout) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: ") and name:
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def test_event_stream_ends_when_the_edit_is_canceled(idle_api_url: str) -> None:
    edit_id = submit(idle_api_url).json()["id"]
    httpx.delete(f"{idle_api_url}/edits/{edit_id}")
    events = read_events(f"{idle_api_url}/edits/{edit_id}/events")
    assert events[0] == ("status", {"id": edit_id, "status": "canceled", "queue_position": None})
    assert events[-1][0] == "done" and events[-1][1]["status"] == "canceled"
