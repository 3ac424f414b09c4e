"""The running service, measured: redis-server, one edit worker and the API as real processes.

Everything binds to 127.0.0.1. The load generator is bounded (a fixed number of requests from a
few threads) and talks to an API whose jobs stay queued once the worker has been stopped, so
what it measures is the API and Redis, not the optimiser.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import soundfile as sf
from redis import Redis

from benchmarks.measure import percentile

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
START_TIMEOUT_S = 180.0  # a worker imports torch and builds its models first
POLL_INTERVAL_S = 0.02
EDIT_TIMEOUT_S = 240.0
AUDIO_RATE = 44_100
AUDIO_SECONDS = 2.0
FINAL = {"succeeded", "failed", "canceled"}
WORKER_KEYS = "soundedit:worker:*"
LOAD_QUEUE_ROOM = 10_000  # the idle queue must not push back during the load test

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], T], timeout: float, what: str, process: subprocess.Popen[bytes]
) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            result = predicate()
            if result:
                return result
        except Exception:  # not up yet
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is required (make system-deps installs it)")
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="soundedit-bench-") as tmp:
        root = Path(tmp)
        try:
            port = free_port()
            redis_proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", HOST, "--dir", str(root),
                 "--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction"],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            processes.append(redis_proc)
            redis_url = f"redis://{HOST}:{port}/0"
            wait_for(lambda: Redis.from_url(redis_url).ping(), 10, "redis-server", redis_proc)
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
            api = subprocess.Popen(
                [sys.executable, "-m", "cli", "api", "--host", HOST, "--port", str(api_port)],
                env=env, cwd=ROOT, stdout=(root / "api.log").open("wb"), stderr=subprocess.STDOUT,
            )  # fmt: skip
            processes.append(api)
            started = time.monotonic()
            worker = subprocess.Popen(
                [sys.executable, "-m", "cli", "worker"],
                env=env, cwd=ROOT, stdout=(root / "worker.log").open("wb"),
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            processes.append(worker)
            api_url = f"http://{HOST}:{api_port}"
            wait_for(lambda: httpx.get(api_url + "/healthz").status_code == 200, 60, "API", api)
            redis = Redis.from_url(redis_url)
            wait_for(lambda: redis.keys(WORKER_KEYS), START_TIMEOUT_S, "the worker", worker)
            yield Service(redis_url, api_url, api, worker, time.monotonic() - started, env, root)
        finally:
            for process in reversed(processes):
                stop(process)


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
