"""The HTTP contract of /edits against the real API process (no worker needed)."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import AUDIO, IMAGES
from tests.models.test_images import encode, png_declaring

FIRE = (AUDIO / "fire.wav").read_bytes()
PNG = (IMAGES / "coffee.png").read_bytes()


def wav(seconds: float, rate: int = 8000) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    tone = np.sin(np.arange(int(seconds * rate)) / 3).astype(np.float32)
    sf.write(buffer, tone, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


LONG_WAV = wav(61)  # over the default 60 s limit
N_LATENT_SMOKE = 10  # the smoke generator renders 64 px: 2·log2(64) − 2 layers


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def post(idle_api_url: str, files: dict[str, Any] | None = None, **data: Any) -> httpx.Response:
    return httpx.post(f"{idle_api_url}/edits", files=files, data=data, timeout=30)


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://")
    assert body["title"] and body["detail"]
    if field is not None:
        fields = {body.get("field")} | {e["field"] for e in body.get("errors", [])}
        assert field in fields, body
    return body


def test_submit_returns_202_with_location(idle_api_url: str) -> None:
    response = post(idle_api_url, files={"audio": ("fire.wav", FIRE, "audio/wav")}, seed="7")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert response.headers["location"] == f"/edits/{body['id']}"
    assert body["links"]["self"] == f"/edits/{body['id']}"

    state = httpx.get(f"{idle_api_url}/edits/{body['id']}").json()
    assert state["id"] == body["id"]
    assert state["profile"]["name"] == "smoke" and state["profile"]["smoke"] is True
    assert state["parameters"]["steps"] == 20  # the smoke profile's default
    assert state["source"] == {"kind": "seed", "seed": 7}


@pytest.mark.parametrize(
    ("kwargs", "status", "field"),
    [
        ({"data": {"seed": "1"}}, 422, "audio"),  # no audio
        ({"files": {"audio": ("a.wav", FIRE)}}, 422, "source"),  # no source
        (
            {"files": {"audio": ("a.wav", FIRE), "latent": ("l.npy", npy(np.zeros((10, 512))))},
             "data": {"seed": "1"}},
            422, "source",
        ),  # two sources
        ({"files": {"audio": ("a.txt", b"just some words\n" * 50)}, "data": {"seed": "1"}}, 415, "audio"),
        ({"files": {"audio": ("a.wav", b"")}, "data": {"seed": "1"}}, 422, "audio"),
        ({"files": {"audio": ("a.wav", FIRE)}, "data": {"seed": "1", "steps": "0"}}, 422, "steps"),
        ({"files": {"audio": ("a.wav", FIRE)}, "data": {"seed": "1", "steps": str(10**6)}}, 422, "steps"),
        ({"files": {"audio": ("a.wav", FIRE)}, "data": {"seed": "x"}}, 422, "seed"),
        ({"files": {"audio": ("a.wav", FIRE)}, "data": {"seed": "-1"}}, 422, "seed"),
        ({"files": {"audio": ("a.wav", FIRE)}, "data": {"seed": "1", "lr": "5"}}, 422, "lr"),
        ({"files": {"audio": ("a.wav", FIRE)}, "data": {"seed": "1", "truncation": "0"}}, 422, "truncation"),
        ({"files": {"audio": ("a.wav", FIRE)}, "data": {"seed": "1", "text_mode": "blend"}}, 422, "text_mode"),
        ({"files": {"audio": ("a.wav", FIRE)}, "data": {"seed": "1", "text": "x" * 301}}, 422, "text"),
        (
            {"files": {"audio": ("a.wav", FIRE), "latent": ("l.npy", npy(np.zeros((18, 512))))}},
            422, "latent",
        ),  # wrong W+ shape for this profile
        ({"files": {"audio": ("a.wav", FIRE), "latent": ("l.npy", b"not an array")}}, 415, "latent"),
        (
            {"files": {"audio": ("a.wav", FIRE), "latent": ("l.npy", npy(np.full((10, 512), np.nan)))}},
            422, "latent",
        ),
        ({"files": {"audio": ("a.wav", FIRE), "image": ("i.png", b"\x89PNG....")}}, 415, "image"),
        ({"files": {"audio": ("a.wav", FIRE)}, "data": {"seed": str(2**32)}}, 422, "seed"),
        ({"files": {"audio": ("a.wav", FIRE)}, "data": {"seed": "1", "random_seed": str(2**40)}}, 422, "random_seed"),
        ({"files": {"audio": ("a.wav", FIRE)}, "data": {"seed": "1", "lambda_l2": "-1"}}, 422, "lambda_l2"),
        ({"files": {"audio": ("a.wav", FIRE)}, "data": {"seed": "1", "lambda_id": "nan"}}, 422, "lambda_id"),
        ({"files": {"audio": ("a.wav", FIRE)}, "data": {"seed": "1", "steps": "1.5"}}, 422, "steps"),
        ({"files": {"audio": ("a.wav", FIRE)}, "data": {"seed": "1", "webhook_url": "ftp://x/y"}}, 422, "webhook_url"),
        ({"files": {"audio": ("a.wav", FIRE)}, "data": {"seed": "1", "webhook_events": "succeeded"}}, 422, "webhook_url"),
        (
            {"files": {"audio": ("a.wav", FIRE)},
             "data": {"seed": "1", "webhook_url": "http://127.0.0.1:9/h", "webhook_events": "exploded"}},
            422, "webhook_events",
        ),
        ({"files": {"audio": ("a.wav", FIRE), "latent": ("l.npy", npy(np.zeros(512)))}}, 422, "latent"),
        ({"files": {"audio": ("a.wav", FIRE), "latent": ("l.npy", npy(np.zeros((1, 1, 10, 512))))}}, 422, "latent"),
        ({"files": {"audio": ("a.wav", FIRE), "latent": ("l.npy", npy(np.array([{"x": 1}], dtype=object)))}}, 415, "latent"),
        ({"files": {"audio": ("a.wav", FIRE), "latent": ("l.npy", npy(np.array(["a"] * 10)))}}, 422, "latent"),
        ({"files": {"audio": ("a.png", PNG)}, "data": {"seed": "1"}}, 415, "audio"),
        ({"files": {"audio": ("a.wav", FIRE[:44])}, "data": {"seed": "1"}}, 422, "audio"),  # header, no samples
        ({"files": {"audio": ("a.wav", b"RIFF" + b"\x00" * 40)}, "data": {"seed": "1"}}, 415, "audio"),
        ({"files": {"audio": ("a.wav", LONG_WAV)}, "data": {"seed": "1"}}, 422, "audio"),
        ({"files": {"audio": ("a.wav", FIRE), "image": ("i.png", png_declaring(30000, 30000))}}, 413, "image"),
        ({"files": {"audio": ("a.wav", FIRE), "image": ("i.png", encode(Image.new("RGB", (1, 1)), "PNG"))}}, 422, "image"),
        ({"files": {"audio": ("a.wav", FIRE), "image": ("i.png", PNG[: len(PNG) // 2])}}, 415, "image"),
        ({"files": {"audio": ("a.wav", FIRE), "image": ("i.tif", encode(Image.new("RGB", (64, 64)), "TIFF"))}}, 415, "image"),
        ({"files": {"audio": ("a.wav", FIRE), "image": ("i.png", PNG)}, "data": {"face_index": "99"}}, 422, "face_index"),
        ({"files": {"audio": ("a.wav", FIRE), "image": ("i.png", PNG)}, "data": {"inversion_steps": "0"}}, 422, "inversion_steps"),
    ],
)  # fmt: skip
def test_bad_requests_get_problem_details(
    idle_api_url: str, kwargs: dict[str, Any], status: int, field: str
) -> None:
    response = httpx.post(f"{idle_api_url}/edits", timeout=30, **kwargs)
    assert_problem(response, status, field)


def test_silent_audio_is_refused(idle_api_url: str) -> None:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(44100, dtype=np.float32), 44100, format="WAV")
    response = post(idle_api_url, files={"audio": ("s.wav", buffer.getvalue())}, seed="1")
    assert_problem(response, 422, "audio")


def test_latent_source_accepts_both_shapes(idle_api_url: str) -> None:
    for shape in [(N_LATENT_SMOKE, 512), (1, N_LATENT_SMOKE, 512)]:
        latent = npy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        response = post(idle_api_url, files={"audio": ("a.wav", FIRE), "latent": ("l.npy", latent)})
        assert response.status_code == 202, response.text


def test_body_over_the_limit_is_413(idle_api_url: str) -> None:
    # The API runs with the default 64 MiB request limit; stream one chunk past it.
    limit = 64 * 1024 * 1024

    boundary = "soundedit-test-boundary"

    def body() -> Any:  # a well-formed multipart file part that never ends; no Content-Length
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; '
            f'filename="big.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        ).encode()
        chunk = b"0" * (1 << 20)
        for _ in range(limit // len(chunk) + 2):
            yield chunk

    response = httpx.post(
        f"{idle_api_url}/edits",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        timeout=60,
    )
    assert_problem(response, 413)


def test_unknown_edit_is_404(idle_api_url: str) -> None:
    assert_problem(httpx.get(f"{idle_api_url}/edits/{'0' * 32}"), 404)
    assert_problem(httpx.get(f"{idle_api_url}/edits/not-an-id"), 422)
    assert_problem(httpx.get(f"{idle_api_url}/edits/{'0' * 32}/result.png"), 404)


def test_files_of_an_unfinished_edit_are_409(idle_api_url: str) -> None:
    created = post(idle_api_url, files={"audio": ("fire.wav", FIRE)}, seed="3").json()
    response = httpx.get(f"{idle_api_url}/edits/{created['id']}/result.png")
    assert assert_problem(response, 409)["edit_status"] == "queued"


def test_queue_position_counts_up(idle_api_url: str) -> None:
    first = post(idle_api_url, files={"audio": ("fire.wav", FIRE)}, seed="4").json()
    second = post(idle_api_url, files={"audio": ("fire.wav", FIRE)}, seed="5").json()
    a = httpx.get(f"{idle_api_url}/edits/{first['id']}").json()["queue_position"]
    b = httpx.get(f"{idle_api_url}/edits/{second['id']}").json()["queue_position"]
    assert a is not None and b == a + 1


def test_openapi_documents_the_routes(idle_api_url: str) -> None:
    schema = httpx.get(f"{idle_api_url}/openapi.json").json()
    assert {
        "/edits",
        "/edits/{edit_id}",
        "/edits/{edit_id}/{filename}",
        "/healthz",
        "/readyz",
    } <= set(schema["paths"])
    assert httpx.get(f"{idle_api_url}/docs").status_code == 200


def test_one_file_over_its_limit_is_413(idle_api_url: str) -> None:
    huge = b"\0" * (25 * 1024 * 1024 + 1)  # the default per-file limit, plus one byte
    assert_problem(post(idle_api_url, files={"audio": ("a.wav", huge)}, seed="1"), 413, "audio")


def test_idempotency_key_too_long_is_422(idle_api_url: str) -> None:
    response = httpx.post(
        f"{idle_api_url}/edits", files={"audio": ("a.wav", FIRE)}, data={"seed": "1"},
        headers={"Idempotency-Key": "k" * 300},
    )  # fmt: skip
    assert_problem(response, 422, "Idempotency-Key")


def test_unknown_routes_and_methods(idle_api_url: str) -> None:
    assert_problem(httpx.get(f"{idle_api_url}/nothing-here"), 404)
    response = httpx.put(f"{idle_api_url}/edits/{'0' * 32}")
    assert_problem(response, 405)
    assert set(response.headers["allow"].split(", ")) == {"GET", "DELETE"}
    assert_problem(httpx.get(f"{idle_api_url}/edits/{'0' * 32}/secrets.txt"), 422)
    assert_problem(
        httpx.post(
            f"{idle_api_url}/edits", content=b"{}", headers={"content-type": "application/json"}
        ),
        422,
    )


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P"])
def test_photos_in_any_common_mode_are_accepted(idle_api_url: str, mode: str) -> None:
    photo = Image.open(IMAGES / "astronaut.png").convert(mode)
    data = encode(photo, "JPEG" if mode == "CMYK" else "PNG")
    response = post(idle_api_url, files={"audio": ("a.wav", FIRE), "image": ("p", data)})
    assert response.status_code == 202, response.text
    state = httpx.get(f"{idle_api_url}/edits/{response.json()['id']}").json()
    assert state["source"] == {"kind": "image", "face_index": 0}
    assert state["parameters"]["inversion_steps"] == 30  # the smoke profile's default
