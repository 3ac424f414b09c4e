"""``soundedit serve | api | worker``: run the service, or one of its processes."""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from redis import Redis
from redis.exceptions import RedisError

from app.settings import get_settings

logger = logging.getLogger(__name__)

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
REDIS_START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0  # a worker finishing its current step before exiting


def register(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run everything on this machine: Redis (if none answers), a worker and the API",
        description="Start a local redis-server when SOUNDEDIT_REDIS_URL points at this machine "
        "and nothing answers there, then one worker and the HTTP API. Ctrl-C stops them all.",
    )
    _add_http_options(serve)
    serve.set_defaults(func=run_serve)

    api = commands.add_parser("api", help="run the HTTP API only (uvicorn)")
    _add_http_options(api)
    api.set_defaults(func=run_api)

    worker = commands.add_parser(
        "worker",
        help="run one edit worker: loads the models once, then serves its profile's queue",
        description="One worker per GPU (select it with CUDA_VISIBLE_DEVICES). The model profile "
        "comes from SOUNDEDIT_PROFILE (default auto: the best one whose weights are cached).",
    )
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.set_defaults(func=run_worker)


def _add_http_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")


def run_api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port)
    return 0


def run_worker(args: argparse.Namespace) -> int:
    from worker.main import run_worker as work

    work(get_settings(), burst=args.burst)
    return 0


def _redis_answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except RedisError:
        return False


def _start_redis(url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    parsed = urlparse(url)
    if parsed.hostname not in LOCAL_HOSTS:
        raise SystemExit(f"Redis at {url} does not answer, and it is not on this machine")
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "no Redis answers and redis-server is not installed: "
            "apt-get install redis-server (or point SOUNDEDIT_REDIS_URL at a running Redis)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        binary,
        "--bind", parsed.hostname or "127.0.0.1",
        "--port", str(parsed.port or 6379),
        "--dir", str(data_dir.resolve()),
        "--appendonly", "yes",
        "--save", "",
        "--maxmemory-policy", "noeviction",
    ]  # fmt: skip
    logger.info("starting %s", " ".join(command))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while not _redis_answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"redis-server did not start (exit code {process.poll()})")
        time.sleep(0.1)
    return process


def run_serve(args: argparse.Namespace) -> int:
    settings = get_settings()
    children: list[subprocess.Popen[bytes]] = []
    if not _redis_answers(settings.redis_url):
        children.append(_start_redis(settings.redis_url, settings.storage_root.parent / "redis"))
    me = [sys.executable, "-m", "cli"]
    children.append(subprocess.Popen([*me, "worker"]))
    children.append(subprocess.Popen([*me, "api", "--host", args.host, "--port", str(args.port)]))
    logger.info("API on http://%s:%d (docs at /docs); Ctrl-C stops", args.host, args.port)

    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            if any(child.poll() is not None for child in children):
                logger.error("a service process exited; stopping the others")
                break
            time.sleep(0.5)
    finally:
        for child in reversed(children):  # API first, Redis last
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0 if stopping else 1
