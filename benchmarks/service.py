"""The running service, measured: redis-server, one edit worker and the API as real processes.

Everything binds to 127.0.0.1. The load generator is bounded (a fixed number of requests from a
few threads) and talks to an API whose jobs stay queued once the worker has been stopped, so
what it measures is the API and Redis, not the optimiser.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import soundfile as sf
from redis import Redis

from benchmarks.measure import percentile
from cli.processes import HOST, free_port, start_cli, start_redis, stop, wait_for

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180.0  # a worker imports torch and builds its models first
POLL_INTERVAL_S = 0.02
EDIT_TIMEOUT_S = 240.0
AUDIO_RATE = 44_100
AUDIO_SECONDS = 2.0
FINAL = {"succeeded", "failed", "canceled"}
WORKER_KEYS = "soundedit:worker:*"
LOAD_QUEUE_ROOM = 10_000  # the idle queue must not push back during the load test

T = TypeVar("T")


def rss_mib_of(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def noise_clip() -> bytes:
    """A short seeded noise burst as WAV: any sound does for timing the service."""
    rng = np.random.default_rng(0)
    samples = (0.1 * rng.standard_normal(int(AUDIO_RATE * AUDIO_SECONDS))).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, samples, AUDIO_RATE, format="WAV")
    return buffer.getvalue()


@dataclass
class Service:
    redis_url: str
    api_url: str
    api: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes] | None
    worker_ready_s: float | None
    env: dict[str, str]
    logs: Path


@contextmanager
def running_service(max_queue: int = LOAD_QUEUE_ROOM) -> Iterator[Service]:
    """redis-server, the API and one smoke-profile worker on free ports; all stopped after."""
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="soundedit-bench-") as tmp:
        root = Path(tmp)
        try:
            redis_proc, redis_url = start_redis(root / "redis")
            processes.append(redis_proc)
            env = {
                **os.environ,
                "SOUNDEDIT_REDIS_URL": redis_url,
                "SOUNDEDIT_STORAGE_ROOT": str(root / "storage"),
                "SOUNDEDIT_MODEL_CACHE": str(root / "models"),
                "SOUNDEDIT_PROFILE": "smoke",
                "SOUNDEDIT_DEVICE": "cpu",
                "SOUNDEDIT_MAX_QUEUE_LENGTH": str(max_queue),
                "PYTHONUNBUFFERED": "1",
            }
            api_port = free_port()
            api = start_cli(
                ["api", "--host", HOST, "--port", str(api_port)],
                env, (root / "api.log").open("wb"), cwd=ROOT,
            )  # fmt: skip
            processes.append(api)
            started = time.monotonic()
            worker = start_worker(env, root)
            processes.append(worker)
            api_url = f"http://{HOST}:{api_port}"
            wait_for(lambda: httpx.get(api_url + "/healthz").status_code == 200, 60, "API", api)
            wait_for(lambda: worker_ready(redis_url, worker), START_TIMEOUT_S, "worker", worker)
            yield Service(redis_url, api_url, api, worker, time.monotonic() - started, env, root)
        finally:
            for process in reversed(processes):
                stop(process)


def start_worker(env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    log = (logs / f"worker-{time.monotonic_ns()}.log").open("wb")
    return start_cli(["worker"], env, log, cwd=ROOT)


def worker_ready(redis_url: str, worker: subprocess.Popen[bytes]) -> bool:
    """Whether ``worker`` has loaded its models and announced itself."""
    redis = Redis.from_url(redis_url, decode_responses=True)
    return any(redis.hget(key, "pid") == str(worker.pid) for key in redis.scan_iter(WORKER_KEYS))


def submit(client: httpx.Client, audio: bytes, **form: str) -> str:
    files = {"audio": ("noise.wav", audio, "audio/wav")}
    response = client.post("/edits", files=files, data=form)
    if response.status_code != 202:
        raise RuntimeError(f"submit answered {response.status_code}: {response.text[:200]}")
    return str(response.json()["id"])


def edit_latency(service: Service, steps: int, repeats: int) -> dict[str, Any]:
    """Submit -> succeeded through HTTP for short smoke-profile edits, one after another."""
    audio = noise_clip()
    latencies: list[float] = []
    worker_seconds: list[float] = []
    with httpx.Client(base_url=service.api_url, timeout=30) as client:
        for i in range(repeats):
            started = time.perf_counter()
            edit_id = submit(client, audio, seed=str(11 + i), steps=str(steps))
            deadline = time.monotonic() + EDIT_TIMEOUT_S
            state: dict[str, Any] = {}
            while time.monotonic() < deadline:
                state = client.get(f"/edits/{edit_id}").json()
                if state.get("status") in FINAL:
                    break
                time.sleep(POLL_INTERVAL_S)
            if state.get("status") != "succeeded":
                raise RuntimeError(f"edit {edit_id} ended {state.get('status')}: {state}")
            latencies.append(time.perf_counter() - started)
            metrics = state.get("metrics") or {}
            if isinstance(metrics.get("seconds"), int | float):
                worker_seconds.append(float(metrics["seconds"]))
    return {
        "steps": steps,
        "profile": "smoke",
        "latency_s": latencies,
        "first_s": latencies[0],
        "warm_median_s": float(np.median(latencies[1:] if len(latencies) > 1 else latencies)),
        "optimiser_s": worker_seconds,
    }


def _load(
    url: str, requests: int, concurrency: int, call: Callable[[httpx.Client, int], None]
) -> dict[str, Any]:
    """``requests`` calls spread over ``concurrency`` threads; latency percentiles, throughput."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                started = time.perf_counter()
                try:
                    call(client, i)
                except Exception as exc:  # counted, reported
                    with lock:
                        errors.append(repr(exc)[:200])
                    continue
                with lock:
                    latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "requests": requests,
        "concurrency": concurrency,
        "ok": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": _ms(percentile(latencies, 50)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "throughput_rps": len(latencies) / wall if wall > 0 else math.nan,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def batched_throughput(
    service: Service, batch_limits: Sequence[int], edits: int, steps: int
) -> list[dict[str, Any]]:
    """Edits per minute through the service when a fresh worker finds ``edits`` compatible
    edits queued, for each SOUNDEDIT_MAX_BATCH: the worker's batching, end to end.

    The time is that of the edits themselves (first start to last finish, as the API reports
    them), so the worker's start-up is not counted.
    """
    if service.worker is not None:
        stop(service.worker)
        service.worker = None
    audio = noise_clip()
    rows: list[dict[str, Any]] = []
    with httpx.Client(base_url=service.api_url, timeout=30) as client:
        for limit in batch_limits:
            ids = [submit(client, audio, seed=str(100 + i), steps=str(steps)) for i in range(edits)]
            worker = start_worker({**service.env, "SOUNDEDIT_MAX_BATCH": str(limit)}, service.logs)
            try:
                states = _wait_final(client, ids, worker)
            finally:
                stop(worker)
            failed = [state for state in states if state["status"] != "succeeded"]
            if failed:
                raise RuntimeError(f"a batched edit ended {failed[0]['status']}: {failed[0]}")
            started = min(datetime.fromisoformat(state["started_at"]) for state in states)
            finished = max(datetime.fromisoformat(state["finished_at"]) for state in states)
            wall = (finished - started).total_seconds()
            rows.append(
                {
                    "max_batch": limit,
                    "edits": edits,
                    "steps": steps,
                    "wall_s": wall,
                    "edits_per_min": 60 * edits / wall,
                    "batch_sizes": sorted({state["metrics"]["batch_size"] for state in states}),
                }
            )
    for row in rows:
        row["gain"] = row["edits_per_min"] / rows[0]["edits_per_min"]
    return rows


def _wait_final(
    client: httpx.Client, ids: Sequence[str], worker: subprocess.Popen[bytes]
) -> list[dict[str, Any]]:
    """The states of edits ``ids`` once all have ended."""
    states = wait_for(partial(_all_final, client, ids), EDIT_TIMEOUT_S, "the edits", worker)
    assert states is not None  # wait_for returns only a truthy value
    return states


def _all_final(client: httpx.Client, ids: Sequence[str]) -> list[dict[str, Any]] | None:
    states = [client.get(f"/edits/{edit_id}").json() for edit_id in ids]
    return states if all(state["status"] in FINAL for state in states) else None


def api_load(service: Service, submits: int, polls: int, concurrency: int) -> dict[str, Any]:
    """Submit and poll latency under a bounded load, with the worker stopped (jobs stay queued)."""
    if service.worker is not None:
        stop(service.worker)
        service.worker = None
    audio = noise_clip()
    ids: list[str] = []
    lock = threading.Lock()
    rss_before = rss_mib_of(service.api.pid)

    def do_submit(client: httpx.Client, i: int) -> None:
        edit_id = submit(client, audio, seed=str(i), steps="1")
        with lock:
            ids.append(edit_id)

    submit_stats = _load(service.api_url, submits, concurrency, do_submit)
    if not ids:
        raise RuntimeError(f"no submission succeeded: {submit_stats['first_error']}")

    def do_poll(client: httpx.Client, i: int) -> None:
        response = client.get(f"/edits/{ids[i % len(ids)]}")
        if response.status_code != 200:
            raise RuntimeError(f"poll answered {response.status_code}")

    poll_stats = _load(service.api_url, polls, concurrency, do_poll)
    return {
        "submit": submit_stats,
        "poll": poll_stats,
        "api_rss_mib_before": rss_before,
        "api_rss_mib_after": rss_mib_of(service.api.pid),
    }
