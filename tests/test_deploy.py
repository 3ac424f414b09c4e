"""The deployment files: the compose file validates and keeps the settings RQ depends on."""

from __future__ import annotations

import shutil
import subprocess

import yaml

from tests.conftest import ROOT


def test_compose_file_validates() -> None:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is required (make system-deps installs it)"
    done = subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert {"redis", "api", "worker"} <= set(services)
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command and "noeviction" in redis_command
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    for name in ("api", "worker"):
        assert services[name]["environment"]["SOUNDEDIT_REDIS_URL"] == "redis://redis:6379/0"
        assert any(
            str(v).endswith(":/data") or "/data" in str(v) for v in services[name]["volumes"]
        )


def test_api_image_installs_no_ml_stack() -> None:
    dockerfile = (ROOT / "docker" / "api.Dockerfile").read_text()
    assert "pip install ." in dockerfile and "[worker]" not in dockerfile
