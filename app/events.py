"""Server-Sent Events for one edit: what changed since the last look, until the edit ends."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from app.queue import FINAL_STATUSES
from app.schemas import EditPublic

POLL_INTERVAL_S = 0.25
KEEPALIVE_S = 15.0  # a comment line now and then keeps proxies from closing an idle stream


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def edit_events(load: Callable[[], EditPublic | None]) -> Iterator[bytes]:
    """``status`` on every status change, ``progress`` on every new step, ``preview`` when a new
    preview image is stored, then ``done`` with the final state; ends with the edit."""
    last_status = last_preview = None
    last_step = -1
    quiet_since = time.monotonic()
    while True:
        edit = load()
        if edit is None:  # expired or deleted meanwhile
            yield sse("done", {"id": None, "status": "gone"})
            return
        sent = False
        if edit.status != last_status:
            last_status = edit.status
            yield sse(
                "status",
                {"id": edit.id, "status": edit.status, "queue_position": edit.queue_position},
            )
            sent = True
        if edit.progress.step != last_step:
            last_step = edit.progress.step
            yield sse("progress", {"id": edit.id, **edit.progress.model_dump()})
            sent = True
        if edit.links.preview and edit.links.preview != last_preview:
            last_preview = edit.links.preview
            yield sse(
                "preview", {"id": edit.id, "url": edit.links.preview, "step": edit.progress.step}
            )
            sent = True
        if edit.status in FINAL_STATUSES:
            yield sse("done", edit.model_dump(mode="json"))
            return
        if sent:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield b": keep-alive\n\n"
        time.sleep(POLL_INTERVAL_S)
