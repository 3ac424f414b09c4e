"""The whole service path with real processes: HTTP API -> Redis -> edit worker -> storage."""

from __future__ import annotations

import io
import subprocess
import time
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from redis import Redis

from app.jobs import EditJob, EditParameters, SeedSource
from app.queue import connect, enqueue_edit
from app.settings import Settings
from app.storage import LocalStorage, edit_key
from tests.conftest import AUDIO

SMOKE_RESOLUTION = 64
SMOKE_N_LATENT = 10
POLL_TIMEOUT_S = 180.0
FINAL = {"succeeded", "failed", "canceled"}


def submit(api_url: str, clip: str = "fire.wav", **data: Any) -> str:
    files = {"audio": (clip, (AUDIO / clip).read_bytes(), "audio/wav")}
    response = httpx.post(f"{api_url}/edits", files=files, data=data, timeout=30)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def poll(api_url: str, edit_id: str) -> tuple[dict[str, Any], list[str]]:
    """Poll until the edit ends; returns its final state and every status seen on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + POLL_TIMEOUT_S
    client = httpx.Client(base_url=api_url, timeout=10)
    while time.monotonic() < deadline:
        state = client.get(f"/edits/{edit_id}").json()
        if not seen or seen[-1] != state["status"]:
            seen.append(state["status"])
        if state["status"] in FINAL:
            return state, seen
        time.sleep(0.05)
    raise TimeoutError(f"edit {edit_id} did not finish; saw {seen}")


def worker_status(redis_url: str) -> dict[str, str]:
    redis = Redis.from_url(redis_url, decode_responses=True)
    (key,) = redis.keys("soundedit:worker:*")
    return redis.hgetall(key)  # type: ignore[return-value]


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.slow
def test_edit_from_seed_end_to_end(
    api_url: str, worker_process: subprocess.Popen, redis_url: str
) -> None:
    edit_id = submit(api_url, seed="11", steps="12")
    state, seen = poll(api_url, edit_id)
    assert state["status"] == "succeeded", state
    assert seen[-1] == "succeeded" and set(seen) <= {"queued", "running", "succeeded"}
    progress = state["progress"]
    assert (progress["phase"], progress["step"], progress["steps"]) == ("done", 12, 12)
    assert progress["elapsed_s"] > 0 and progress["eta_s"] is None
    assert state["created_at"] and state["started_at"] and state["finished_at"]

    result = png(httpx.get(f"{api_url}{state['links']['result']}").content)
    source = png(httpx.get(f"{api_url}{state['links']['source']}").content)
    assert result.shape == source.shape == (SMOKE_RESOLUTION, SMOKE_RESOLUTION, 3)
    assert np.abs(result.astype(int) - source.astype(int)).max() > 0
    latent = np.load(io.BytesIO(httpx.get(f"{api_url}{state['links']['latent']}").content))
    assert latent.shape == (SMOKE_N_LATENT, 512) and latent.dtype == np.float32

    metrics = state["metrics"]
    assert metrics["profile"] == "smoke" and metrics["steps"] == 12
    assert metrics["latent_l2"] > 0
    assert {"clip_audio_before", "clip_audio_after"} <= set(metrics)


@pytest.mark.slow
def test_models_load_once_across_jobs(
    api_url: str, worker_process: subprocess.Popen, redis_url: str
) -> None:
    done_before = int(worker_status(redis_url)["jobs_done"])
    ids = [submit(api_url, clip, seed="5", steps="3") for clip in ("raining.wav", "wind.wav")]
    for edit_id in ids:
        assert poll(api_url, edit_id)[0]["status"] == "succeeded"
    time.sleep(6)  # one heartbeat, so the counters are current
    status = worker_status(redis_url)
    assert int(status["jobs_done"]) >= done_before + 2
    assert status["model_loads"] == "1"
    assert status["max_batch"] == "1"  # the default on a CPU


@pytest.mark.slow
def test_failed_job_reports_and_worker_goes_on(
    api_url: str, worker_process: subprocess.Popen, redis_url: str, service_env: dict[str, str]
) -> None:
    # Bad input only the worker can discover: bytes in storage that are not audio.
    settings = Settings(
        redis_url=redis_url,
        storage_root=service_env["SOUNDEDIT_STORAGE_ROOT"],
        profile="smoke",
    )
    edit_id = "f" * 32
    audio_key = edit_key(edit_id, "audio")
    LocalStorage(settings.storage_root).put(audio_key, b"this is not audio")
    params = EditParameters(
        steps=3, lr=0.05, lambda_l2=0.008, lambda_id=0, truncation=0.7, random_seed=0,
        text_mode="mix", inversion_steps=1,
    )  # fmt: skip
    job = EditJob(
        edit_id=edit_id,
        profile="smoke",
        audio_key=audio_key,
        source=SeedSource(seed=1),
        params=params,
    )
    enqueue_edit(connect(settings), settings, job, meta={"step": 0, "steps": 3})

    state, _ = poll(api_url, edit_id)
    assert state["status"] == "failed"
    assert state["error"]["status"] == 422
    assert "audio" in state["error"]["detail"].lower()
    assert worker_process.poll() is None  # the worker survived

    next_id = submit(api_url, seed="2", steps="3")
    assert poll(api_url, next_id)[0]["status"] == "succeeded"


@pytest.mark.slow
def test_text_joins_the_sound(api_url: str, worker_process: subprocess.Popen) -> None:
    edit_id = submit(api_url, "giggling.wav", seed="8", steps="4", text="a smiling face")
    state, _ = poll(api_url, edit_id)
    assert state["status"] == "succeeded", state
    assert state["progress"]["steps"] == 8  # "mix": a sound-guided and a text-guided run
    assert {"clip_text_before", "clip_text_after"} <= set(state["metrics"])
    assert state["metrics"]["mix_layer_split"] == SMOKE_N_LATENT // 2


@pytest.mark.slow
def test_readyz_sees_the_worker(api_url: str, worker_process: subprocess.Popen) -> None:
    body = httpx.get(f"{api_url}/readyz").json()
    assert body["ready"] is True and body["profile"] == "smoke"
    assert body["workers"][0]["profile"] == "smoke"
