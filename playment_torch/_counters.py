"""A dataset's counters, summed over every process that holds a copy of it on this machine.

DataLoader workers and DDP ranks each get a pickled copy of the dataset, so counters kept in memory would show
the main process only (zeros, when workers do the loading). Instead each process owns one small file in the
cache directory, ``stats/<dataset token>/<host>-<pid>.bin``, memory-mapped, and adds to it in place: an update is
a few memory writes (no system call), and any process reads the sum by reading every file of the token. Copies
of one dataset share its token; a new dataset (or :meth:`~PlaymentSegmentationDataset.subset`) gets a new one.

Tokens older than a week are removed when a new one is made, so the folder stays small. Where the cache
directory cannot be written, counters fall back to this process alone.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FIELDS", "SharedCounters"]

#: The counters, in file order (float64 each: counts stay exact up to 2**53).
FIELDS = (
    "items",
    "hits",
    "misses",
    "bytes_downloaded",
    "download_seconds",
    "decode_seconds",
    "load_seconds",
    "nonfinite_points",
    "failed_frames",
)
_SIZE = 8 * len(FIELDS)
_POSITION = {name: i for i, name in enumerate(FIELDS)}
_OPENING = threading.Lock()


def _reset_after_fork() -> None:
    global _OPENING
    _OPENING = threading.Lock()  # a parent thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
_DIR = "stats"
_MAX_AGE = 7 * 24 * 3600


class SharedCounters:
    """Counters of one dataset, shared by its copies in every process on this machine.

    Args:
        directory: The cache directory (``None``: this process only).
        token: The dataset's identity; ``None`` makes a new one.
    """

    def __init__(self, directory: Path | None, token: str | None = None) -> None:
        self.directory = directory
        self.token = token or uuid.uuid4().hex
        self._lock = threading.Lock()
        self._pid = -1
        self._values: np.ndarray | None = None
        self._map: mmap.mmap | None = None
        if token is None and directory is not None:
            _remove_stale(directory / _DIR)

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "token": self.token}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"], state["token"])  # type: ignore[misc]

    @property
    def _folder(self) -> Path | None:
        return None if self.directory is None else self.directory / _DIR / self.token

    def _mine(self) -> np.ndarray:
        """This process's counters (a view of its mapped file, or plain memory when there is no file)."""
        pid = os.getpid()
        if self._values is not None and self._pid == pid:
            return self._values
        with _OPENING:  # threads of one process open its file once, and none zeroes counts another added
            if self._values is not None and self._pid == pid:
                return self._values
            self._lock = threading.Lock()  # a forked child must not inherit a lock held by a parent thread
            self._map = None
            values = np.zeros(len(FIELDS), dtype=np.float64)
            folder = self._folder
            if folder is not None:
                with contextlib.suppress(OSError, ValueError):
                    folder.mkdir(parents=True, exist_ok=True)
                    path = folder / f"{socket.gethostname()}-{pid}.bin"
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                    try:
                        os.ftruncate(fd, _SIZE)
                        self._map = mmap.mmap(fd, _SIZE)
                    finally:
                        os.close(fd)
                    values = np.frombuffer(self._map, dtype=np.float64)
                    values[:] = 0.0
            self._values = values
            self._pid = pid
            return values

    def add(self, **deltas: float) -> None:
        """Add to this process's counters (names from :data:`FIELDS`)."""
        values = self._mine()
        with self._lock:
            for name, delta in deltas.items():
                values[_POSITION[name]] += delta

    def totals(self) -> dict[str, float]:
        """The sum over every process of this dataset on this machine (this process included)."""
        mine = self._mine()
        total = np.zeros(len(FIELDS), dtype=np.float64)
        folder = self._folder
        counted_self = False
        if folder is not None and self._map is not None:
            with contextlib.suppress(OSError):
                for path in folder.iterdir():
                    raw = path.read_bytes()
                    if len(raw) == _SIZE:
                        total += np.frombuffer(raw, dtype=np.float64)
                counted_self = True
        if not counted_self:
            total += mine
        return dict(zip(FIELDS, total.tolist(), strict=True))

    def reset(self) -> None:
        """Zero every process's counters of this dataset (the files stay; their owners keep adding)."""
        values = self._mine()
        with self._lock:
            values[:] = 0.0
        folder = self._folder
        if folder is not None and self._map is not None:
            with contextlib.suppress(OSError):
                for path in folder.iterdir():
                    if path.stat().st_size == _SIZE:
                        with open(path, "r+b") as handle:
                            handle.write(bytes(_SIZE))


def _remove_stale(root: Path) -> None:
    """Delete the counters of datasets made more than a week ago."""
    with contextlib.suppress(OSError):
        now = time.time()
        for folder in root.iterdir():
            with contextlib.suppress(OSError):
                if now - folder.stat().st_mtime > _MAX_AGE:
                    shutil.rmtree(folder, ignore_errors=True)
