"""Nothing is lost: bursts of submissions, a worker killed mid-edit, SIGTERM, Redis restarts."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from redis import Redis

from tests.app.test_edits_api import FIRE
from tests.conftest import free_port, start_api, start_redis, start_worker, stop, wait_for
from tests.worker.test_worker_e2e import poll, submit

pytestmark = pytest.mark.slow

BURST = 200
QUEUE_BOUND = 24
CLIENT_THREADS = 16


@pytest.fixture(scope="module")
def pool_env(service_env: dict[str, str]) -> dict[str, str]:
    return {
        **service_env,
        "SOUNDEDIT_QUEUE_NAME": "pool",
        "SOUNDEDIT_MAX_QUEUE_LENGTH": str(QUEUE_BOUND),
    }


@pytest.fixture(scope="module")
def pool_api(pool_env: dict[str, str], logs: Path) -> Iterator[str]:
    process, url = start_api(pool_env, logs)
    yield url
    stop(process)


@pytest.fixture(scope="module")
def pool_workers(pool_env: dict[str, str], logs: Path) -> Iterator[list[subprocess.Popen]]:
    workers = [start_worker(pool_env, logs) for _ in range(2)]
    yield workers
    for worker in workers:
        stop(worker)


def worker_pid_of(redis_url: str, edit_id: str) -> int:
    """The process id of the worker running ``edit_id`` (RQ records the worker's name)."""
    redis = Redis.from_url(redis_url, decode_responses=True)
    name = redis.hget(f"rq:job:{edit_id}", "worker_name")
    return int(redis.hget(f"soundedit:worker:{name}", "pid") or 0)


def wait_running(api_url: str, edit_id: str) -> None:
    wait_for(
        lambda: httpx.get(f"{api_url}/edits/{edit_id}").json()["progress"]["step"] > 0,
        120,
        "the edit to run",
    )


def test_burst_of_submissions_is_all_accounted_for(
    pool_api: str, pool_workers: list[subprocess.Popen]
) -> None:
    def post(i: int) -> httpx.Response:
        files = {"audio": ("f.wav", FIRE)}
        return httpx.post(
            f"{pool_api}/edits", files=files, data={"seed": str(i), "steps": "1"}, timeout=60
        )

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        responses = list(pool.map(post, range(BURST)))
    accepted = [r.json()["id"] for r in responses if r.status_code == 202]
    rejected = [r for r in responses if r.status_code == 503]
    assert len(accepted) + len(rejected) == BURST, {r.status_code for r in responses}
    assert len(set(accepted)) == len(accepted)  # no duplicates
    assert accepted and all(r.headers["retry-after"] for r in rejected)
    states = [poll(pool_api, edit_id)[0]["status"] for edit_id in accepted]
    assert states == ["succeeded"] * len(accepted)


def test_edit_of_a_killed_worker_finishes_on_another(
    pool_api: str, pool_workers: list[subprocess.Popen], pool_env: dict[str, str]
) -> None:
    edit_id = submit(pool_api, seed="31", steps="80")
    wait_running(pool_api, edit_id)
    victim = worker_pid_of(pool_env["SOUNDEDIT_REDIS_URL"], edit_id)
    os.kill(victim, signal.SIGKILL)
    state, _ = poll(pool_api, edit_id)
    assert state["status"] == "succeeded", state
    assert state["attempts"] == 2
    assert state["progress"]["step"] == 80


def test_sigterm_finishes_the_current_edit_first(
    pool_api: str, pool_workers: list[subprocess.Popen], pool_env: dict[str, str]
) -> None:
    survivor = next(w for w in pool_workers if w.poll() is None)
    edit_id = submit(pool_api, seed="32", steps="60")
    wait_running(pool_api, edit_id)
    assert worker_pid_of(pool_env["SOUNDEDIT_REDIS_URL"], edit_id) == survivor.pid
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(timeout=180) == 0
    state = httpx.get(f"{pool_api}/edits/{edit_id}").json()
    assert state["status"] == "succeeded" and state["attempts"] == 1


def test_redis_restart_loses_no_queued_edit(
    service_env: dict[str, str], logs: Path, tmp_path: Path
) -> None:
    port = free_port()
    redis_process, redis_url = start_redis(tmp_path, port)
    env = {**service_env, "SOUNDEDIT_REDIS_URL": redis_url, "SOUNDEDIT_QUEUE_NAME": "restart"}
    api, url = start_api(env, logs)
    worker = None
    try:
        ids = [submit(url, seed=str(i), steps="2") for i in range(5)]
        redis_process.kill()  # no shutdown save: only the append-only file keeps the queue
        redis_process.wait()
        redis_process, _ = start_redis(tmp_path, port)
        assert [httpx.get(f"{url}/edits/{i}").json()["status"] for i in ids] == ["queued"] * 5
        worker = start_worker(env, logs)
        assert [poll(url, i)[0]["status"] for i in ids] == ["succeeded"] * 5
    finally:
        for process in (worker, api, redis_process):
            if process is not None:
                stop(process)
