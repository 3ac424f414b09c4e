"""The service's processes on one machine: redis-server, the API, edit workers.

``soundedit serve``, the benchmarks and the tests all run the service as real processes and
start, wait for and stop them the same way.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TypeVar

from redis import Redis
from redis.exceptions import RedisError

HOST = "127.0.0.1"
REDIS_START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0  # a worker finishing its current step before exiting
POLL_S = 0.1

T = TypeVar("T")


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
) -> T:
    """The first truthy value of ``predicate()``; raising counts as not yet.

    Raises ``RuntimeError`` if ``process`` exits first, ``TimeoutError`` after ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}")
        try:
            result = predicate()
            if result:
                return result
        except Exception:  # not up yet
            pass
        time.sleep(POLL_S)
    raise TimeoutError(f"timed out waiting for {what}")


def stop(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM (a worker finishes its current edit), then SIGKILL after ``timeout`` s."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def redis_answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except RedisError:
        return False


def start_redis(
    data_dir: Path, host: str = HOST, port: int | None = None, fsync_always: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """redis-server as the service runs it (AOF on, no eviction); returns it and its URL.

    ``fsync_always`` syncs every write (no acknowledged job is lost to a power cut).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed: apt-get install redis-server "
            "(make system-deps), or point SOUNDEDIT_REDIS_URL at a running Redis"
        )
    port = port or free_port(host)
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        binary,
        "--bind", host,
        "--port", str(port),
        "--dir", str(data_dir.resolve()),
        "--appendonly", "yes",
        "--appendfsync", "always" if fsync_always else "everysec",
        "--save", "",
        "--maxmemory-policy", "noeviction",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"redis://{host}:{port}/0"
    wait_for(lambda: redis_answers(url), REDIS_START_TIMEOUT_S, "redis-server", process)
    return process, url


def start_cli(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    log: IO[bytes] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``soundedit ARGS`` in a child process of this Python, output to ``log`` if given."""
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
    )
