"""Where uploads and results live: a small key/value interface with a local-directory backend.

Keys are relative POSIX paths such as ``edits/<id>/audio``. Jobs carry keys, never bytes.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Protocol

import numpy as np


class Storage(Protocol):
    """What the API and the worker need from a blob store."""

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def writable(self) -> bool: ...


class LocalStorage:
    """A directory on a local or shared filesystem (the compose file mounts one volume)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        """The file behind ``key``; refuses keys that would escape the root."""
        rel = PurePosixPath(key)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"invalid storage key: {key!r}")
        return self.root.joinpath(*rel.parts)

    def put(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target then rename, so readers never see half a file.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def writable(self) -> bool:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                return True
        except OSError:
            return False


def edit_key(edit_id: str, name: str) -> str:
    """The storage key of one file of an edit (``audio``, ``result.png``, ...)."""
    return f"edits/{edit_id}/{name}"


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as float32 ``.npy`` bytes (never pickled)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()
