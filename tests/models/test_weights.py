"""The weights cache against a local HTTP server: download, resume, verify, fail clearly."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cli import models as cli_models
from models import weights
from models.weights import WeightFile, WeightsError

PAYLOAD_BYTES = 300_000  # several read chunks once CHUNK_BYTES is shrunk below
TEST_CHUNK_BYTES = 16 * 1024
RESUME_AT = 100_000
DROP_AFTER = 64 * 1024
SERVER_POLL_S = 0.02  # how fast serve_forever notices shutdown()
_RANGE = re.compile(r"bytes=(\d+)-")


@dataclass
class Served:
    """What the server serves and how it misbehaves; the log records each GET."""

    files: dict[str, bytes]
    mode: str = "normal"  # normal | ignore_range | drop_once | drop_always | wrong | html
    log: list[tuple[str, str | None, int]] = field(default_factory=list)
    drops: int = 0


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            """Keep test output quiet."""

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            name = self.path.lstrip("/")
            range_header = self.headers.get("Range")
            data = served.files.get(name)
            if data is None:
                self._status(name, range_header, HTTPStatus.NOT_FOUND, b"no such file")
                return
            if served.mode == "wrong":
                data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
            start = 0
            match = _RANGE.fullmatch(range_header or "")
            if match and served.mode != "ignore_range":
                start = int(match.group(1))
                if start >= len(data):
                    served.log.append((name, range_header, 416))  # before answering: no race
                    self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            body = data[start:]
            code = HTTPStatus.PARTIAL_CONTENT if start else HTTPStatus.OK
            served.log.append((name, range_header, int(code)))
            self.send_response(code)
            content_type = "text/html" if served.mode == "html" else "application/octet-stream"
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            drop = served.mode == "drop_always" or (served.mode == "drop_once" and not served.drops)
            if drop:
                served.drops += 1
                self.wfile.write(body[:DROP_AFTER])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

        def _status(self, name: str, range_header: str | None, code: int, body: bytes) -> None:
            served.log.append((name, range_header, code))
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@dataclass
class Server:
    served: Served
    base_url: str

    def weight(self, name: str = "model.bin", **overrides: object) -> WeightFile:
        """A WeightFile pointing at this server, pinned to the served bytes by default."""
        data = self.served.files[name]
        wf = WeightFile(
            key=f"test-{name}",
            filename=name,
            url=f"{self.base_url}/{name}",
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            licence="Test Licence",
            licence_url="https://example.invalid/licence",
            role="generator",
            non_commercial=True,
        )
        return replace(wf, **overrides)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "RETRY_BACKOFF_S", 0.0)
    monkeypatch.setattr(weights, "CHUNK_BYTES", TEST_CHUNK_BYTES)


@pytest.fixture
def server() -> Iterator[Server]:
    rng = __import__("random").Random(1234)
    files = {
        "model.bin": rng.randbytes(PAYLOAD_BYTES),
        "other.bin": rng.randbytes(PAYLOAD_BYTES // 3),
    }
    served = Served(files=files)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(SERVER_POLL_S,), daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    try:
        yield Server(served, f"http://{host!s}:{port}")
    finally:
        httpd.shutdown()
        httpd.server_close()


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.endswith(weights.INCOMPLETE_SUFFIX))


def test_full_download_is_verified_and_reused(server: Server, tmp_path: Path) -> None:
    wf = server.weight()
    path = weights.download(wf, tmp_path, progress=False)
    assert path == tmp_path / "model.bin"
    assert path.read_bytes() == server.served.files["model.bin"]
    assert _leftovers(tmp_path) == []
    assert weights.file_state(wf, tmp_path) == "present"
    # A second call reuses the verified file without touching the network.
    assert weights.download(wf, tmp_path, progress=False) == path
    assert len(server.served.log) == 1


def test_verified_file_is_served_without_taking_the_lock(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = server.weight()
    weights.download(wf, tmp_path, progress=False)

    def no_lock(final: Path) -> object:
        raise AssertionError("a verified file needs no lock (read-only caches)")

    monkeypatch.setattr(weights, "_file_lock", no_lock)
    assert weights.download(wf, tmp_path, offline=True) == tmp_path / "model.bin"


def test_corrupt_file_is_replaced(server: Server, tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"not the model")
    wf = server.weight()
    assert weights.file_state(wf, tmp_path) == "corrupt"
    with pytest.raises(WeightsError, match="fails verification"):
        weights.download(wf, tmp_path, offline=True)  # offline: reported, left alone
    assert (tmp_path / "model.bin").exists()
    path = weights.download(wf, tmp_path, progress=False)
    assert path.read_bytes() == server.served.files["model.bin"]
    assert len(server.served.log) == 1


def test_progress_bar_runs(server: Server, tmp_path: Path) -> None:
    path = weights.download(server.weight("other.bin"), tmp_path, progress=True)
    assert path.read_bytes() == server.served.files["other.bin"]


def test_resume_requests_only_the_remainder(server: Server, tmp_path: Path) -> None:
    data = server.served.files["model.bin"]
    (tmp_path / "model.bin.incomplete").write_bytes(data[:RESUME_AT])
    wf = server.weight()
    assert weights.file_state(wf, tmp_path) == "partial"
    path = weights.download(wf, tmp_path, progress=False)
    assert path.read_bytes() == data
    assert server.served.log == [("model.bin", f"bytes={RESUME_AT}-", 206)]
    assert _leftovers(tmp_path) == []


def test_server_ignoring_range_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    data = server.served.files["model.bin"]
    (tmp_path / "model.bin.incomplete").write_bytes(b"stale bytes that are not the file")
    server.served.mode = "ignore_range"
    path = weights.download(server.weight(), tmp_path, progress=False)
    assert path.read_bytes() == data
    assert [code for _, _, code in server.served.log] == [200]


def test_complete_partial_answered_416_is_verified(server: Server, tmp_path: Path) -> None:
    data = server.served.files["model.bin"]
    (tmp_path / "model.bin.incomplete").write_bytes(data)
    wf = server.weight(size=None)  # unknown size: only the server can say it is complete
    path = weights.download(wf, tmp_path, progress=False)
    assert path.read_bytes() == data
    assert server.served.log == [("model.bin", f"bytes={len(data)}-", 416)]


def test_dropped_connection_is_resumed(server: Server, tmp_path: Path) -> None:
    server.served.mode = "drop_once"
    path = weights.download(server.weight(), tmp_path, progress=False)
    assert path.read_bytes() == server.served.files["model.bin"]
    assert server.served.log == [
        ("model.bin", None, 200),
        ("model.bin", f"bytes={DROP_AFTER}-", 206),
    ]


def test_connection_that_keeps_dropping_keeps_the_partial(server: Server, tmp_path: Path) -> None:
    server.served.mode = "drop_always"
    wf = server.weight()
    with pytest.raises(WeightsError, match="run again to resume") as info:
        weights.download(wf, tmp_path, progress=False, retries=1)
    assert wf.url is not None and wf.url in str(info.value)
    assert not (tmp_path / "model.bin").exists()
    assert (tmp_path / "model.bin.incomplete").stat().st_size == 2 * DROP_AFTER
    assert weights.file_state(wf, tmp_path) == "partial"
    # Once the network behaves, the next run continues where it stopped.
    server.served.mode = "normal"
    server.served.log.clear()
    weights.download(wf, tmp_path, progress=False)
    assert server.served.log == [("model.bin", f"bytes={2 * DROP_AFTER}-", 206)]


def test_checksum_mismatch_leaves_nothing_behind(server: Server, tmp_path: Path) -> None:
    server.served.mode = "wrong"
    wf = server.weight()
    with pytest.raises(WeightsError) as info:
        weights.download(wf, tmp_path, progress=False)
    message = str(info.value)
    assert "checksum mismatch" in message
    assert wf.sha256 is not None and wf.sha256 in message
    assert hashlib.sha256(b"").hexdigest() not in message
    assert not (tmp_path / "model.bin").exists()
    assert _leftovers(tmp_path) == []
    assert weights.file_state(wf, tmp_path) == "missing"


def test_size_mismatch_is_refused_before_downloading(server: Server, tmp_path: Path) -> None:
    wf = server.weight(size=PAYLOAD_BYTES + 1)
    with pytest.raises(WeightsError, match=f"should have {PAYLOAD_BYTES + 1}"):
        weights.download(wf, tmp_path, progress=False)
    assert not (tmp_path / "model.bin").exists()


def test_html_page_is_refused(server: Server, tmp_path: Path) -> None:
    server.served.mode = "html"
    with pytest.raises(WeightsError, match="HTML page"):
        weights.download(server.weight(sha256=None, size=None), tmp_path, progress=False)
    assert not (tmp_path / "model.bin").exists()


def test_http_404_is_not_retried(server: Server, tmp_path: Path) -> None:
    wf = server.weight(url=f"{server.base_url}/missing.bin")
    with pytest.raises(WeightsError, match="HTTP 404"):
        weights.download(wf, tmp_path, progress=False)
    assert len(server.served.log) == 1


def test_offline_names_url_and_cache_path(server: Server, tmp_path: Path) -> None:
    wf = server.weight()
    with pytest.raises(WeightsError) as info:
        weights.download(wf, tmp_path, progress=False, offline=True)
    message = str(info.value)
    assert wf.url is not None and wf.url in message
    assert str(tmp_path / "model.bin") in message
    assert "offline" in message
    assert server.served.log == []


def test_offline_still_serves_a_verified_file(server: Server, tmp_path: Path) -> None:
    wf = server.weight()
    weights.download(wf, tmp_path, progress=False)
    assert weights.download(wf, tmp_path, offline=True) == tmp_path / "model.bin"


def test_connection_refused_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/model.bin"
    wf = WeightFile(
        key="refused",
        filename="model.bin",
        url=url,
        sha256=None,
        size=None,
        licence="x",
        licence_url="https://example.invalid",
        role="clip",
    )
    with pytest.raises(WeightsError) as info:
        weights.download(wf, tmp_path, progress=False, retries=1)
    message = str(info.value)
    assert url in message and str(tmp_path / "model.bin") in message
    assert "refused" in message.lower()


def test_unpinned_digest_is_recorded_then_enforced(server: Server, tmp_path: Path) -> None:
    data = server.served.files["model.bin"]
    wf = server.weight(sha256=None, size=None)
    path = weights.download(wf, tmp_path, progress=False)
    digest = hashlib.sha256(data).hexdigest()
    assert weights.recorded_digest(wf, tmp_path) == digest
    assert weights.file_state(wf, tmp_path) == "present"

    # Same size, different bytes, new mtime: the recorded digest catches it.
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert weights.file_state(wf, tmp_path) == "corrupt"

    # Downloading again replaces it; if upstream content changed, the recorded digest refuses.
    server.served.mode = "wrong"
    with pytest.raises(WeightsError, match=f"expected sha256 {digest}"):
        weights.download(wf, tmp_path, progress=False)
    assert not path.exists()
    server.served.mode = "normal"
    assert weights.download(wf, tmp_path, progress=False).read_bytes() == data


def test_verification_is_cached(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = server.weight()
    weights.download(wf, tmp_path, progress=False)

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"{path} hashed again although unchanged")

    monkeypatch.setattr(weights, "_sha256_file", no_hashing)
    assert weights.file_state(wf, tmp_path) == "present"


def test_concurrent_downloads_fetch_once(server: Server, tmp_path: Path) -> None:
    wf = server.weight()
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(weights.download(wf, tmp_path, progress=False))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [tmp_path / "model.bin"] * 3
    assert len(server.served.log) == 1


def _profile(server: Server, monkeypatch: pytest.MonkeyPatch) -> tuple[WeightFile, WeightFile]:
    required = server.weight("model.bin")
    optional = WeightFile(
        key="manual-only",
        filename="manual.pth",
        url=None,
        sha256=None,
        size=None,
        licence="Manual Licence",
        licence_url="https://example.invalid/manual",
        role="identity",
        required=False,
        note="Fetch it by hand.",
    )
    monkeypatch.setitem(weights.PROFILES, "testprof", (required, optional))
    return required, optional


def test_status_and_profile_available(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    required, optional = _profile(server, monkeypatch)
    assert weights.status("testprof", tmp_path) == [(required, "missing"), (optional, "missing")]
    assert not weights.profile_available("testprof", tmp_path)
    weights.download(required, tmp_path, progress=False)
    assert weights.profile_available("testprof", tmp_path)  # the optional file may be absent
    (tmp_path / "model.bin").write_bytes(b"truncated")
    assert weights.status("testprof", tmp_path)[0] == (required, "corrupt")
    assert not weights.profile_available("testprof", tmp_path)
    assert weights.profile_available("smoke", tmp_path)
    with pytest.raises(WeightsError, match="choose one of: ffhq, landscape, smoke"):
        weights.status("nope", tmp_path)


def test_pull_reports_licences_and_skips_failed_optional(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    required, _ = _profile(server, monkeypatch)
    lines: list[str] = []
    paths = weights.pull("testprof", tmp_path, progress=False, report=lines.append)
    assert paths == [tmp_path / "model.bin"]
    text = "\n".join(lines)
    assert "Test Licence - non-commercial use only" in text and "Manual Licence" in text
    assert "skipped optional manual.pth" in text and "Fetch it by hand." in text


def test_pull_fails_when_a_required_file_fails(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _profile(server, monkeypatch)
    with pytest.raises(WeightsError, match="could not get model.bin"):
        weights.pull("testprof", tmp_path, progress=False, offline=True, report=lambda _: None)


def test_registry_is_well_formed() -> None:
    assert set(weights.PROFILES) == {"ffhq", "landscape", "smoke"}
    assert weights.PROFILES["smoke"] == ()
    for name in ("ffhq", "landscape"):
        files = weights.PROFILES[name]
        roles = {wf.role for wf in files if wf.required}
        assert roles == {"generator", "clip", "audio_encoder"}, name
        for wf in files:
            assert wf.url is None or wf.url.startswith("https://"), wf.key
            assert wf.licence and wf.licence_url.startswith("https://"), wf.key
            assert wf.url is not None or wf.note, wf.key
            assert weights.weight_file(wf.key) == wf
    clip = weights.weight_file("clip-vit-b-32-openai")
    assert clip.url is not None and clip.sha256 is not None and clip.sha256 in clip.url


# --- CLI --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soundedit")
    cli_models.register(parser.add_subparsers())
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    result: int = args.func(args)
    return result


def test_cli_pull_and_list(
    server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _profile(server, monkeypatch)
    monkeypatch.delenv("SOUNDEDIT_OFFLINE", raising=False)
    # argparse choices were fixed when the parser was built: build it after patching.
    assert _run(["models", "pull", "testprof", "--cache", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Test Licence" in out and "non-commercial" in out.lower()
    assert "ready" in out

    assert _run(["models", "list", "testprof", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].split()[:5] == ["PROFILE", "FILE", "STATE", "SIZE", "LICENCE"]
    assert re.search(
        r"testprof\s+model\.bin\s+present\s+293\.0 KiB\s+Test Licence \(non-commercial\)", out
    )
    assert re.search(r"manual\.pth \(optional\)\s+missing", out)


def test_cli_list_all_profiles_on_empty_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["models", "list", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "stylegan2-ffhq-1024x1024.pkl" in out and "landscape.pt" in out
    assert "missing" in out and "present" in out  # smoke needs nothing


def test_cli_pull_failure_is_one_line(
    server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _profile(server, monkeypatch)
    assert _run(["models", "pull", "testprof", "--offline", "--cache", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_cli_models_without_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["models"]) == 2
    assert "pull" in capsys.readouterr().err
