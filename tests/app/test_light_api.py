"""The API process must stay light: no torch, no model libraries."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ("torch", "torchaudio", "torchvision", "open_clip", "timm")

PROBE = """
import sys
from fastapi.testclient import TestClient
from app.main import create_app
from app.settings import Settings

settings = Settings(redis_url="redis://127.0.0.1:1/0", profile="auto", model_cache=sys.argv[1])
with TestClient(create_app(settings)) as client:
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    # a request that runs the upload checks and the profile lookup
    assert client.post("/edits", files={"audio": ("a.wav", b"nope")}, data={"seed": "1"}).status_code == 415
loaded = sorted(name for name in sys.modules if name.split(".")[0] in {heavy})
print(",".join(loaded))
"""


def test_api_never_imports_torch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = PROBE.replace("{heavy}", repr(set(HEAVY)))
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"the API imported {done.stdout.strip()}"
