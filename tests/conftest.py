"""Shared test fixtures: paths to the read-only material beside the checkout."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
GOLDEN = FIXTURES / "golden"
AUDIO = FIXTURES / "audio"
IMAGES = FIXTURES / "images"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    return AUDIO


@pytest.fixture(scope="session")
def images_dir() -> Path:
    return IMAGES


# --- real processes: redis-server, the API (uvicorn), an edit worker -------------------------


START_TIMEOUT_S = 120.0  # a worker imports torch and builds its models before it is ready


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate, timeout: float, what: str, process: subprocess.Popen | None = None):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}")
        try:
            result = predicate()
            if result:
                return result
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port, as the service runs it (AOF on, noeviction)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is required (make system-deps installs it)"
    port = free_port()
    data = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
         "--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: Redis.from_url(url).ping(), 10, "redis-server", process)
    yield url
    stop(process)


@pytest.fixture(scope="session")
def service_env(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for the service's processes: smoke profile, temporary storage and cache."""
    root = tmp_path_factory.mktemp("service")
    return {
        **os.environ,
        "SOUNDEDIT_REDIS_URL": redis_url,
        "SOUNDEDIT_STORAGE_ROOT": str(root / "storage"),
        "SOUNDEDIT_MODEL_CACHE": str(root / "models"),
        "SOUNDEDIT_PROFILE": "smoke",
        "SOUNDEDIT_DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
    }


def start_api(env: dict[str, str], log_dir: Path) -> tuple[subprocess.Popen, str]:
    """The HTTP API as its own uvicorn process on a free port."""
    port = free_port()
    log = (log_dir / f"api-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "api", "--port", str(port)],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(url + "/healthz").status_code == 200, 60, "the API", process)
    return process, url


@pytest.fixture(scope="session")
def api_url(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API whose edits the test worker serves."""
    process, url = start_api(service_env, tmp_path_factory.mktemp("logs"))
    yield url
    stop(process)


@pytest.fixture(scope="session")
def idle_api_url(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An API whose queue no worker serves: its edits stay queued, whatever else runs."""
    env = {**service_env, "SOUNDEDIT_QUEUE_NAME": "unserved"}
    process, url = start_api(env, tmp_path_factory.mktemp("logs"))
    yield url
    stop(process)


@pytest.fixture(scope="session")
def worker_process(
    service_env: dict[str, str], redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen]:
    """One edit worker (smoke profile), ready once it has announced itself in Redis."""
    log_path = tmp_path_factory.mktemp("logs") / "worker.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "worker"],
        env=service_env, cwd=ROOT, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    redis = Redis.from_url(redis_url)
    wait_until(lambda: redis.keys("soundedit:worker:*"), START_TIMEOUT_S, "the worker", process)
    yield process
    stop(process)
