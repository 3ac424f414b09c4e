"""API keys, per-key limits, back-pressure and CORS, against a real API process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.test_edits_api import FIRE, assert_problem
from tests.conftest import start_api, stop

KEYS = ("key-one", "key-two")
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def keyed_api(service_env: dict[str, str], logs: Path) -> Iterator[str]:
    env = {
        **service_env,
        "SOUNDEDIT_QUEUE_NAME": "keyed",  # no worker serves it: edits stay queued
        "SOUNDEDIT_API_KEYS": ",".join(KEYS),
        "SOUNDEDIT_MAX_ACTIVE_PER_KEY": "2",
        "SOUNDEDIT_MAX_QUEUE_LENGTH": "4",
        "SOUNDEDIT_CORS_ORIGINS": ORIGIN,
    }
    env.pop("SOUNDEDIT_WEBHOOK_SECRET")
    process, url = start_api(env, logs)
    yield url
    stop(process)


def submit(url: str, key: str | None, **data: str) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    return httpx.post(
        f"{url}/edits",
        files={"audio": ("f.wav", FIRE)},
        data={"seed": "1", **data},
        headers=headers,
    )


def test_keys_limits_and_back_pressure(keyed_api: str) -> None:
    assert_problem(submit(keyed_api, None), 401)
    assert_problem(submit(keyed_api, "not-a-key"), 401)

    first = submit(keyed_api, KEYS[0])
    assert first.status_code == 202, first.text
    assert submit(keyed_api, KEYS[0]).status_code == 202
    limited = submit(keyed_api, KEYS[0])
    assert_problem(limited, 429)
    assert int(limited.headers["retry-after"]) > 0

    edit_id = first.json()["id"]
    assert (
        httpx.get(f"{keyed_api}/edits/{edit_id}", headers={"X-API-Key": KEYS[0]}).status_code == 200
    )
    assert_problem(httpx.get(f"{keyed_api}/edits/{edit_id}", headers={"X-API-Key": KEYS[1]}), 404)
    assert_problem(
        httpx.delete(f"{keyed_api}/edits/{edit_id}", headers={"X-API-Key": KEYS[1]}), 404
    )

    assert submit(keyed_api, KEYS[1]).status_code == 202
    assert submit(keyed_api, KEYS[1]).status_code == 202
    full = submit(keyed_api, KEYS[1])  # four edits wait: the queue's bound
    assert_problem(full, 503)
    assert int(full.headers["retry-after"]) > 0

    # A canceled edit frees its key's slot.
    canceled = httpx.delete(f"{keyed_api}/edits/{edit_id}", headers={"X-API-Key": KEYS[0]})
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert submit(keyed_api, KEYS[0]).status_code == 202


def test_probes_need_no_key(keyed_api: str) -> None:
    assert httpx.get(f"{keyed_api}/healthz").status_code == 200
    assert httpx.get(f"{keyed_api}/metrics").status_code == 200


def test_webhooks_need_a_server_secret(keyed_api: str) -> None:
    response = submit(keyed_api, KEYS[1], webhook_url="http://127.0.0.1:9/hook")
    assert_problem(response, 422, "webhook_url")


def test_cors_preflight_allows_the_configured_origin(keyed_api: str) -> None:
    response = httpx.options(
        f"{keyed_api}/edits",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "X-API-Key"},
    )  # fmt: skip
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(
        f"{keyed_api}/edits",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"
