"""Shared test fixtures: paths to the read-only material beside the checkout."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from cli import processes
from cli.processes import free_port, start_cli, stop, wait_for

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


def start_redis(data_dir: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A real redis-server as production runs it: AOF on, every write synced, noeviction."""
    return processes.start_redis(data_dir, port=port, fsync_always=True)


def start_api(env: dict[str, str], log_dir: Path) -> tuple[subprocess.Popen, str]:
    """The HTTP API as its own uvicorn process on a free port."""
    port = free_port()
    log = (log_dir / f"api-{port}.log").open("wb")
    process = start_cli(["api", "--port", str(port)], env, log, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(url + "/healthz").status_code == 200, 60, "the API", process)
    return process, url


def start_worker(env: dict[str, str], log_dir: Path) -> subprocess.Popen:
    """An edit worker process, returned once it has loaded its models and announced itself."""
    log = (log_dir / f"worker-{time.monotonic_ns()}.log").open("wb")
    process = start_cli(["worker"], env, log, cwd=ROOT)
    redis = Redis.from_url(env["SOUNDEDIT_REDIS_URL"], decode_responses=True)

    def announced() -> bool:
        return any(
            redis.hget(key, "pid") == str(process.pid)
            for key in redis.scan_iter("soundedit:worker:*")
        )

    wait_for(announced, START_TIMEOUT_S, "the worker", process)
    return process


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop(process)


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


WEBHOOK_SECRET = "test-webhook-secret"


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
        "SOUNDEDIT_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="session")
def api_url(service_env: dict[str, str], logs: Path) -> Iterator[str]:
    """The API whose edits the test worker serves."""
    process, url = start_api(service_env, logs)
    yield url
    stop(process)


@pytest.fixture(scope="session")
def idle_api_url(service_env: dict[str, str], logs: Path) -> Iterator[str]:
    """An API whose queue no worker serves: its edits stay queued, whatever else runs."""
    process, url = start_api({**service_env, "SOUNDEDIT_QUEUE_NAME": "unserved"}, logs)
    yield url
    stop(process)


@pytest.fixture(scope="session")
def worker_process(service_env: dict[str, str], logs: Path) -> Iterator[subprocess.Popen]:
    """One edit worker (smoke profile) on the main queue."""
    process = start_worker(service_env, logs)
    yield process
    stop(process)
