"""``soundedit serve | api | worker``: run the service, or one of its processes."""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from app.settings import get_settings
from cli.processes import HOST, redis_answers, start_cli, start_redis, stop

logger = logging.getLogger(__name__)

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


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
        "comes from SOUNDEDIT_PROFILE (default auto: the best one whose weights are cached). "
        "Compatible queued edits run as one batch of up to SOUNDEDIT_MAX_BATCH (default 8 on a "
        "GPU, 1 on a CPU).",
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


def _start_redis(url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    """A local redis-server where ``url`` points; exits with a clear message if it cannot."""
    parsed = urlparse(url)
    if parsed.hostname not in LOCAL_HOSTS:
        raise SystemExit(f"Redis at {url} does not answer, and it is not on this machine")
    logger.info("starting redis-server for %s (data in %s)", url, data_dir)
    try:
        process, _ = start_redis(data_dir, parsed.hostname or HOST, parsed.port or 6379)
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(f"no Redis answers at {url}, and starting one failed: {exc}") from exc
    return process


def run_serve(args: argparse.Namespace) -> int:
    settings = get_settings()
    children: list[subprocess.Popen[bytes]] = []
    if not redis_answers(settings.redis_url):
        children.append(_start_redis(settings.redis_url, settings.storage_root.parent / "redis"))
    children.append(start_cli(["worker"]))
    children.append(start_cli(["api", "--host", args.host, "--port", str(args.port)]))
    logger.info("API on http://%s:%d (docs at /docs); Ctrl-C stops", args.host, args.port)

    stopping = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stopping:
            if any(child.poll() is not None for child in children):
                logger.error("a service process exited; stopping the others")
                break
            time.sleep(0.5)
    finally:
        for child in reversed(children):  # API first, Redis last
            stop(child)
    return 0 if stopping else 1
