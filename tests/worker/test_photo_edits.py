"""Editing an uploaded photo through the service: align, invert, edit, each phase reported."""

from __future__ import annotations

import io
import subprocess
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import AUDIO, IMAGES
from tests.worker.test_worker_e2e import poll

pytestmark = pytest.mark.slow

INVERSION_STEPS = 6
EDIT_STEPS = 3


def submit_photo(api_url: str, photo: str, **data: Any) -> str:
    files = {
        "audio": ("giggling.wav", (AUDIO / "giggling.wav").read_bytes()),
        "image": (photo, (IMAGES / photo).read_bytes()),
    }
    response = httpx.post(f"{api_url}/edits", files=files, data=data, timeout=30)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_a_face_photo_goes_through_all_phases(
    api_url: str, worker_process: subprocess.Popen
) -> None:
    edit_id = submit_photo(
        api_url, "astronaut.png", inversion_steps=str(INVERSION_STEPS), steps=str(EDIT_STEPS)
    )
    state, _ = poll(api_url, edit_id)
    assert state["status"] == "succeeded", state
    assert state["progress"]["phases"] == {
        "aligning": {"step": 1, "steps": 1},
        "inverting": {"step": INVERSION_STEPS, "steps": INVERSION_STEPS},
        "editing": {"step": EDIT_STEPS, "steps": EDIT_STEPS},
    }
    report = state["metrics"]
    assert report["faces_found"] == 1
    assert report["reconstruction_psnr"] > 0 and 0 < report["reconstruction_ssim"] <= 1
    assert -1 <= report["identity_similarity"] <= 1
    for name in ("aligned", "reconstruction", "result", "source"):
        image = np.asarray(
            Image.open(io.BytesIO(httpx.get(f"{api_url}{state['links'][name]}").content))
        )
        assert image.shape == (64, 64, 3), name


def test_a_photo_without_a_face_fails_clearly(
    api_url: str, worker_process: subprocess.Popen
) -> None:
    state, _ = poll(api_url, submit_photo(api_url, "chelsea.png", inversion_steps="2", steps="2"))
    assert state["status"] == "failed"
    assert state["error"]["status"] == 422
    assert "face" in state["error"]["detail"].lower()
