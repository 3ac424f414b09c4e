"""Batched edits in the service: a worker runs compatible queued edits as one optimisation.

The edits are queued before the worker starts, so what it finds waiting is known. Each batched
edit must come out as the same edit run alone (tolerances of tests/models/test_engine.py).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from redis import Redis

from models.engine import EditEngine
from models.profiles import PROFILES
from tests.conftest import AUDIO, start_api, start_worker, stop, wait_for
from tests.models.test_engine import BATCH_PIXEL_TOL, BATCH_W_REL_TOL
from tests.worker.test_worker_e2e import png, poll, submit

pytestmark = pytest.mark.slow

MAX_BATCH = 4


@pytest.fixture(scope="module")
def batch_env(service_env: dict[str, str]) -> dict[str, str]:
    return {**service_env, "SOUNDEDIT_QUEUE_NAME": "batched", "SOUNDEDIT_MAX_BATCH": str(MAX_BATCH)}


@pytest.fixture(scope="module")
def batch_api(batch_env: dict[str, str], logs: Path) -> Iterator[str]:
    process, url = start_api(batch_env, logs)
    yield url
    stop(process)


@pytest.fixture()
def late_worker(batch_env: dict[str, str], logs: Path) -> Iterator[list[subprocess.Popen]]:
    """Started by the test once its edits are queued; stopped after it."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        stop(process)


def test_compatible_queued_edits_run_as_one_batch(
    batch_api: str, batch_env: dict[str, str], logs: Path, late_worker: list[subprocess.Popen]
) -> None:
    inputs = [("fire.wav", 1, None), ("raining.wav", 2, None), ("giggling.wav", 3, None)]
    batched = [submit(batch_api, clip, seed=str(seed), steps="8") for clip, seed, _ in inputs]
    other_steps = submit(batch_api, "fire.wav", seed="4", steps="6")
    with_text = submit(batch_api, "fire.wav", seed="5", steps="8", text="a burning house")
    worker = start_worker(batch_env, logs)
    late_worker.append(worker)
    redis = Redis.from_url(batch_env["SOUNDEDIT_REDIS_URL"], decode_responses=True)
    announced = [redis.hgetall(key) for key in redis.scan_iter("soundedit:worker:*")]
    (status,) = [s for s in announced if s.get("pid") == str(worker.pid)]
    assert status["max_batch"] == str(MAX_BATCH)

    states = {
        edit_id: poll(batch_api, edit_id)[0] for edit_id in [*batched, other_steps, with_text]
    }
    assert all(state["status"] == "succeeded" for state in states.values()), states
    assert [states[edit_id]["metrics"]["batch_size"] for edit_id in batched] == [3, 3, 3]
    assert states[other_steps]["metrics"]["batch_size"] == 1
    assert states[with_text]["metrics"]["batch_size"] == 1
    scrape = httpx.get(f"{batch_api}/metrics").text
    assert 'soundedit_batch_edits_bucket{le="4.0"}' in scrape

    engine = EditEngine.load(PROFILES["smoke"], cache_dir=Path("/nonexistent"), device="cpu")
    for edit_id, (clip, seed, _) in zip(batched, inputs, strict=True):
        params = states[edit_id]["parameters"]
        alone = engine.edit(
            (AUDIO / clip).read_bytes(), seed=seed, steps=8, lr=params["lr"],
            lambda_l2=params["lambda_l2"], lambda_id=params["lambda_id"],
            truncation=params["truncation"],
        )  # fmt: skip
        assert alone.report["batch_size"] == 1
        links = states[edit_id]["links"]
        latent = np.load(io.BytesIO(httpx.get(f"{batch_api}{links['latent']}").content))
        result = png(httpx.get(f"{batch_api}{links['result']}").content)
        start = engine.start_latent(seed, None, params["truncation"])[0].numpy()
        moved = float(np.linalg.norm(alone.latent - start))
        assert moved > 0
        assert np.linalg.norm(latent - alone.latent) <= BATCH_W_REL_TOL * moved
        assert np.abs(result.astype(int) - alone.result.astype(int)).max() <= BATCH_PIXEL_TOL


def test_canceling_one_edit_of_a_batch_leaves_the_others_running(
    batch_api: str, batch_env: dict[str, str], logs: Path, late_worker: list[subprocess.Popen]
) -> None:
    edits = [submit(batch_api, "wind.wav", seed=str(seed), steps="150") for seed in (6, 7, 8)]
    late_worker.append(start_worker(batch_env, logs))
    client = httpx.Client(base_url=batch_api, timeout=10)

    def all_editing() -> bool:
        states = [client.get(f"/edits/{edit_id}").json() for edit_id in edits]
        return all(s["progress"]["phase"] == "editing" for s in states)

    wait_for(all_editing, 120, "the batch to start editing")
    assert client.delete(f"/edits/{edits[1]}").status_code == 202
    canceled, _ = poll(batch_api, edits[1])
    assert canceled["status"] == "canceled"
    assert canceled["progress"]["step"] < 150
    others = (edits[0], edits[2])
    states = [client.get(f"/edits/{edit_id}").json() for edit_id in others]
    assert [state["status"] for state in states] == ["running", "running"], states
    for edit_id in others:
        finished, _ = poll(batch_api, edit_id)
        assert finished["status"] == "succeeded"
        assert finished["metrics"]["batch_size"] == 3
        assert finished["progress"]["step"] == 150


def test_a_batch_whose_worker_dies_is_run_again_by_another(
    batch_api: str, batch_env: dict[str, str], logs: Path, late_worker: list[subprocess.Popen]
) -> None:
    edits = [submit(batch_api, "drill.wav", seed=str(seed), steps="60") for seed in (9, 10)]
    victim = start_worker(batch_env, logs)
    late_worker.append(victim)
    client = httpx.Client(base_url=batch_api, timeout=10)

    def all_editing() -> bool:
        states = [client.get(f"/edits/{edit_id}").json() for edit_id in edits]
        return all(s["progress"]["phase"] == "editing" for s in states)

    wait_for(all_editing, 120, "the batch to start editing")
    os.kill(victim.pid, signal.SIGKILL)
    late_worker.append(start_worker(batch_env, logs))
    for edit_id in edits:
        state, _ = poll(batch_api, edit_id)
        assert state["status"] == "succeeded", state
        assert state["attempts"] == 2
        assert state["metrics"]["batch_size"] == 2
        assert state["progress"]["step"] == 60


def test_a_batch_past_its_time_limit_fails_whole_and_the_worker_goes_on(
    batch_env: dict[str, str], logs: Path, late_worker: list[subprocess.Popen]
) -> None:
    env = {**batch_env, "SOUNDEDIT_QUEUE_NAME": "batched-timeout", "SOUNDEDIT_JOB_TIMEOUT_S": "3"}
    api, api_url = start_api(env, logs)
    try:
        slow = [submit(api_url, "fire.wav", seed=str(seed), steps="1000") for seed in (11, 12)]
        quick = submit(api_url, "fire.wav", seed="13", steps="2")
        late_worker.append(start_worker(env, logs))
        for edit_id in slow:
            state, _ = poll(api_url, edit_id)
            assert state["status"] == "failed", state
            assert state["error"]["status"] == 504
            assert state["error"]["type"].endswith("/timeout")
            assert state["progress"]["step"] < 1000
        state, _ = poll(api_url, quick)
        assert state["status"] == "succeeded", state
    finally:
        stop(api)
