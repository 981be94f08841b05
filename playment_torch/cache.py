"""Decoded arrays on disk: stable keys, integrity on every read, an optional size limit, process safety.

The cache holds what parsing produced (numpy arrays, JSON job results), never the downloaded files, so
every epoch after the first pays a file read instead of a parse. It is a thin layer over :mod:`diskcache`
(SQLite for the index, one file per large value) shared by every DataLoader worker and rank on a machine.

Each value is stored as ``bytes`` in a small frame of our own::

    offset  size  field
    0       4     magic b"PTAC"
    4       1     format version (1)
    5       1     kind: 0 = numpy array, 1 = UTF-8 JSON
    6       2     ndim
    8       4     header length (a multiple of 64, so the payload is aligned for any dtype)
    12      8     payload length in bytes (before padding)
    20      8     payload sum: sum of the payload's 64-bit little-endian words w[i], mod 2**64
    28      8     payload weighted sum: sum of (i mod 509 + 1) * w[i], mod 2**64
    36      4     CRC-32 of the header (bytes 0..36 and 40..header length)
    40      8*n   shape
    ...           dtype descr (``numpy.lib.format.dtype_to_descr``, as a Python literal), zero padding
    hlen    ...   payload, zero padded to a multiple of 8 bytes

Why not CRC-32 over the payload: on the 2.2 MB array a training step reads, ``zlib.crc32`` takes ~320 us here,
more than three times ``np.load`` of the same array (~90 us), which would make the warm path slower than not
caching decoded arrays. The two 64-bit sums take one vectorised pass (~30 us: column sums of the payload
viewed as rows of 509 words) and catch what damages cache files in practice: truncation (the length is
checked first), a changed 64-bit word (always), zero-filled or garbage regions (all but ~2**-64 of them), and
words or 4 KiB pages moved elsewhere (the weights: a move changes a word's weight unless its distance is a
multiple of 509 words, and 509, a prime, shares no factor with the 512-word page). The header, which is small,
has a real CRC. Changes built to cancel in both sums are not caught: this protects against accidents, not
tampering.

The payload sums are checked on the first read of an entry's file in a process; later reads of the same file
version (same device, inode, size and modification time, from the ``fstat`` of the open file, and written at
least two seconds before it was checked) check the header only. Every epoch after the first then costs one
file read, like ``np.load``. Anything that rewrites a value file changes its size or modification time (and
diskcache writes a new file for every new value), so damage done after a check is still caught on the next
read; only a change that keeps all four stat fields would go unnoticed until the next process, which checks
again. ``verify()`` always checks everything.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import sqlite3
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, cast

import diskcache
import numpy as np
import numpy.lib.format as npformat

from playment_torch.errors import CacheError, ConfigError, redact_url

_fcntl: ModuleType | None
try:  # POSIX only; elsewhere get_or_create falls back to per-process (thread) locking.
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    _fcntl = None

__all__ = ["ArrayCache", "CacheStats", "VerifyReport", "cache_key", "default_cache_dir"]

_T = TypeVar("_T")

# --- the frame ----------------------------------------------------------------------------------------------

_MAGIC = b"PTAC"
_VERSION = 1
_KIND_ARRAY = 0
_KIND_JSON = 1
_KIND_NAMES = {_KIND_ARRAY: "array", _KIND_JSON: "JSON"}
# magic, version, kind, ndim, header length, payload length, the two sums, header CRC
_PREFIX = struct.Struct("<4sBBHIQQQI")
_CRC_OFFSET = 36
_HEADER_ALIGN = 64
# Row width of the checksum's column sums: a prime near a 4 KiB page, so a word or page that moves by anything
# but a multiple of 509 words lands under a different weight. Column sums are the fastest numpy reduction here
# (contiguous rows added as vectors), faster even than a plain sum.
_SUM_WIDTH = 509
_SUM_WEIGHTS = np.arange(1, _SUM_WIDTH + 1, dtype=np.uint64)
# Small enough for a dimension count no real array reaches, large enough to refuse a damaged header cheaply.
_MAX_NDIM = 64
# Entries whose payload check this process remembers (about 200 bytes each).
_CHECKED_MAX = 1 << 20
_SETTLED_NS = 2_000_000_000

# No size limit means "never evict": diskcache's own default would silently cap the cache at 1 GiB.
_UNBOUNDED = 1 << 62
_DB_NAME = "cache.db"
# diskcache's default: smaller values live inside SQLite, larger ones in files.
_FILE_THRESHOLD = 1 << 15
_LOCKS_DIR = "locks"


class _CorruptEntry(Exception):
    """Internal: an entry's bytes do not decode; the caller drops the entry and reports a miss."""


def _payload_sums(words: np.ndarray) -> tuple[int, int]:
    """Return the two 64-bit payload sums of ``words`` (a little-endian uint64 view of the padded payload)."""
    rows = words.size // _SUM_WIDTH
    columns = words[: rows * _SUM_WIDTH].reshape(rows, _SUM_WIDTH).sum(axis=0, dtype=np.uint64)
    tail = words[rows * _SUM_WIDTH :]
    # uint64 arithmetic wraps modulo 2**64, which is exactly the sum we want.
    columns[: tail.size] += tail
    return int(columns.sum(dtype=np.uint64)), int((columns * _SUM_WEIGHTS).sum(dtype=np.uint64))


def _header_crc(header: memoryview) -> int:
    return zlib.crc32(header[_PREFIX.size :], zlib.crc32(header[:_CRC_OFFSET]))


def _frame(kind: int, payload: bytes, shape: tuple[int, ...] = (), descr: bytes = b"") -> bytes:
    """Wrap ``payload`` in the header described in the module docstring."""
    length = len(payload)
    padding = b"\0" * (-length % 8)
    body = payload + padding if padding else payload
    plain, weighted = _payload_sums(np.frombuffer(body, dtype="<u8"))
    meta = struct.pack(f"<{len(shape)}Q", *shape) + descr
    header_len = -(-(_PREFIX.size + len(meta)) // _HEADER_ALIGN) * _HEADER_ALIGN
    header = bytearray(header_len)
    _PREFIX.pack_into(header, 0, _MAGIC, _VERSION, kind, len(shape), header_len, length, plain, weighted, 0)
    header[_PREFIX.size : _PREFIX.size + len(meta)] = meta
    struct.pack_into("<I", header, _CRC_OFFSET, _header_crc(memoryview(header)))
    return b"".join((header, body))


def _encode_array(array: np.ndarray) -> bytes:
    if array.dtype.hasobject:
        raise CacheError(f"cannot cache an array of dtype {array.dtype}: it holds Python objects")
    descr = repr(npformat.dtype_to_descr(array.dtype)).encode("utf-8")  # field names may be any str
    # tobytes() is C order whatever the input layout; the shape is what restores it.
    return _frame(_KIND_ARRAY, array.tobytes(), tuple(array.shape), descr)


@functools.lru_cache(maxsize=256)
def _dtype_from_descr(text: bytes) -> np.dtype[Any]:
    # literal_eval costs tens of microseconds for a structured descr; a cache holds a handful of dtypes.
    return npformat.descr_to_dtype(ast.literal_eval(text.decode("utf-8")))


def _unframe(buffer: np.ndarray, *, check_payload: bool = True) -> tuple[int, np.ndarray | bytes]:
    """Check and decode one stored entry.

    Args:
        buffer: The entry's bytes as a 1-D uint8 array.
        check_payload: Verify the payload sums (the header is always checked).

    Returns:
        ``(kind, value)``: an array viewing ``buffer`` (zero copy) for arrays, the payload bytes for JSON.

    Raises:
        _CorruptEntry: Anything does not add up: magic, version, lengths, CRC, sums, dtype, shape.
    """
    total = buffer.size
    if total < _PREFIX.size:
        raise _CorruptEntry(f"{total} bytes is shorter than the {_PREFIX.size}-byte header")
    view = buffer.data  # a memoryview: what struct and zlib take (typed stubs do not see ndarray as a buffer)
    magic, version, kind, ndim, header_len, length, plain, weighted, crc = _PREFIX.unpack_from(view, 0)
    if magic != _MAGIC:
        raise _CorruptEntry(f"bad magic {magic!r}")
    if version != _VERSION or kind not in _KIND_NAMES:
        raise _CorruptEntry(f"unknown format version {version} / kind {kind}")
    if ndim > _MAX_NDIM or header_len % _HEADER_ALIGN or not _PREFIX.size + 8 * ndim <= header_len <= total:
        raise _CorruptEntry(f"implausible header: ndim {ndim}, header {header_len} of {total} bytes")
    padded = length + (-length % 8)
    if total != header_len + padded:
        raise _CorruptEntry(f"entry is {total} bytes, its header says {header_len + padded}")
    if _header_crc(view[:header_len]) != crc:
        raise _CorruptEntry("header checksum mismatch")
    words = buffer[header_len:].view("<u8")
    if check_payload and _payload_sums(words) != (plain, weighted):
        raise _CorruptEntry("payload checksum mismatch")
    if kind == _KIND_JSON:
        return kind, bytes(view[header_len : header_len + length])
    shape_end = _PREFIX.size + 8 * ndim
    shape = struct.unpack_from(f"<{ndim}Q", view, _PREFIX.size)
    descr = bytes(view[shape_end:header_len]).rstrip(b"\0")
    try:
        dtype = _dtype_from_descr(descr)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError) as exc:
        raise _CorruptEntry(f"undecodable dtype descr: {exc}") from exc
    if int(np.prod(shape, dtype=np.uint64)) * dtype.itemsize != length:
        raise _CorruptEntry(f"shape {shape} of {dtype} does not match {length} payload bytes")
    # A view over the buffer we read into: no copy, writable, aligned (header length is a multiple of 64).
    return kind, np.ndarray(shape, dtype=dtype, buffer=buffer, offset=header_len)


_FileVersion = tuple[int, int, int, int]


def _read_all(handle: io.BufferedIOBase) -> tuple[np.ndarray, _FileVersion]:
    """Read an open value file into a fresh, aligned uint8 array (one ``readinto``, no intermediate bytes).

    Returns:
        The bytes, and the file's version: device, inode, size and modification time.
    """
    status = os.fstat(handle.fileno())
    version = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
    size = status.st_size
    buffer = np.empty(size, dtype=np.uint8)
    view = buffer.data
    done = 0
    while done < size:
        count = handle.readinto(view[done:])
        if not count:
            return buffer[:done], version  # shrank under us: the frame check will call it truncated
        done += count
    return buffer, version


# --- keys and location --------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Return where the cache lives when no directory is given.

    ``PLAYMENT_TORCH_CACHE`` if set, else ``$XDG_CACHE_HOME/playment_torch`` (when that is an absolute path,
    as the XDG spec requires), else ``~/.cache/playment_torch``.

    Returns:
        The directory (not created).
    """
    configured = os.environ.get("PLAYMENT_TORCH_CACHE")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "playment_torch"


def _key_part(value: str) -> str:
    # "|" separates the parts; escaping it (and the escape character) keeps distinct identities distinct.
    return value.replace("%", "%25").replace("|", "%7C")


def cache_key(
    kind: str,
    *,
    project_id: str,
    job_id: str = "",
    frame_id: str = "",
    sensor_id: str = "",
    url: str = "",
) -> str:
    """Build the stable identity of a cached value.

    The URL keeps only ``scheme://host[:port]/path``: query strings carry signatures that change on every
    request, and user info may carry credentials; neither belongs in a key that must match across epochs.

    Args:
        kind: What the value is, e.g. ``"points"``, ``"mask"``, ``"result"``.
        project_id: The Playment project.
        job_id: The job, if the value belongs to one.
        frame_id: The frame, if any.
        sensor_id: The sensor, if any.
        url: Where the value was downloaded from; redacted as described above.

    Returns:
        ``"kind|project|job|frame|sensor|url"``, with ``%`` and ``|`` inside parts escaped as ``%25``/``%7C``.

    Raises:
        ConfigError: ``kind`` or ``project_id`` is empty.
    """
    if not kind or not project_id:
        raise ConfigError("cache_key needs a non-empty kind and project_id")
    parts = (kind, project_id, job_id, frame_id, sensor_id, redact_url(url) if url else "")
    return "|".join(_key_part(str(part)) for part in parts)


# --- reports ------------------------------------------------------------------------------------------------


@dataclass
class CacheStats:
    """What this process's handle did since it was created, forked or reset.

    Attributes:
        hits: ``get_*`` calls that returned a value.
        misses: ``get_*`` calls that returned ``None`` (corrupt entries included).
        corrupt: Entries found damaged on read and deleted.
        bytes_read: Entry bytes read for hits.
        bytes_written: Entry bytes written by ``put_*``.
    """

    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    def reset(self) -> None:
        """Set every counter back to zero."""
        self.hits = self.misses = self.corrupt = self.bytes_read = self.bytes_written = 0


@dataclass
class VerifyReport:
    """Outcome of :meth:`ArrayCache.verify`.

    Attributes:
        checked: Entries read and checked.
        bad: Keys whose entries are damaged (or whose value file is missing).
        repaired: Bad entries deleted (only with ``repair=True``).
    """

    checked: int = 0
    bad: list[str] = field(default_factory=list)
    repaired: int = 0


def _is_damaged_database(exc: sqlite3.DatabaseError) -> bool:
    """Tell a damaged cache.db from a transient failure (a lock timeout, a full disk)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return True
    text = str(exc).lower()
    # "no such table": the file was truncated to nothing under an open handle, so the schema vanished.
    return "malformed" in text or "not a database" in text or "no such table" in text


def _emptied_database(directory: Path) -> bool:
    """Whether cache.db was truncated to nothing while value files remain.

    SQLite takes an empty file for a new database, so without this check the index would silently restart
    empty and every value file would be orphaned. A cache being created has no value directories yet.
    """
    try:
        if (directory / _DB_NAME).stat().st_size:
            return False
        return any(len(child.name) == 2 and child.is_dir() for child in directory.iterdir())
    except OSError:
        return False


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (no-op where flock is unavailable).

    The file is unlinked on release so lock files do not pile up, one per key ever created. That is safe
    because whoever wins the lock checks that the file it locked is still the one at ``path``; a waiter that
    locked an unlinked file retries on the new one.
    """
    if _fcntl is None:
        yield
        return
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield  # unwritable lock directory: degrade to thread-only locking rather than fail reads
            return
        try:
            _fcntl.flock(fd, _fcntl.LOCK_EX)
        except OSError:  # a filesystem without flock support
            os.close(fd)
            yield
            return
        st = os.fstat(fd)
        if _inode(path) == (st.st_dev, st.st_ino):
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


@dataclass(frozen=True)
class _Handle:
    """An open diskcache, the process that opened it and the identity of the cache.db it opened."""

    cache: diskcache.Cache
    pid: int
    db: tuple[int, int] | None


_MISSING = object()
_MISSING_FILE_ATTEMPTS = 4


class ArrayCache:
    """A process-safe disk cache of numpy arrays and JSON values.

    Every read checks the entry's checksum; a damaged entry is deleted and reported as missing so the caller
    fetches it again. A damaged cache database is moved aside (with one warning) and replaced by an empty one.
    The handle pickles to its directory and size limit and opens lazily in each process.

    Args:
        directory: Where the cache lives; ``None`` means :func:`default_cache_dir`.
        size_limit: Bytes on disk before least-recently-used entries are evicted; ``None`` means unbounded.
            The limit is soft: a write that finds the cache over it evicts the two least recently used
            entries. Bounded caches pay for the bookkeeping: every read also records its access time.

    Attributes:
        directory: The cache directory (created on first use).
        size_limit: As given.
        stats: A :class:`CacheStats` for this process.

    Raises:
        ConfigError: ``size_limit`` is not positive.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, size_limit: int | None = None) -> None:
        if size_limit is not None and size_limit <= 0:
            raise ConfigError(f"size_limit must be a positive number of bytes or None, not {size_limit!r}")
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self.size_limit = size_limit
        self._stats = CacheStats()
        self._handle: _Handle | None = None
        self._pid = os.getpid()
        self._lock = threading.RLock()  # guards opening, recovery and the per-key lock table
        self._stats_lock = threading.Lock()
        self._key_locks: dict[str, list[Any]] = {}  # key -> [lock, number of holders and waiters]
        self._checked: dict[str, _FileVersion] = {}  # key -> the value file version whose payload was checked

    @property
    def stats(self) -> CacheStats:
        """This process's counters: fresh in a forked child or an unpickled copy; ``reset()`` zeroes them."""
        self._check_fork()
        return self._stats

    def __repr__(self) -> str:
        return f"ArrayCache({str(self.directory)!r}, size_limit={self.size_limit!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Only what is needed to reopen: no SQLite connection, lock or file handle crosses a process boundary.
        return {"directory": str(self.directory), "size_limit": self.size_limit}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"], size_limit=state["size_limit"])  # type: ignore[misc]

    def __enter__(self) -> ArrayCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the one door to diskcache ----------------------------------------------------------------------

    def _check_fork(self) -> None:
        pid = os.getpid()
        if pid != self._pid:
            # A forked child inherits the parent's SQLite connection and possibly locks held by parent threads
            # that do not exist here: start over with fresh ones.
            self._pid = pid
            self._handle = None
            self._lock = threading.RLock()
            self._stats_lock = threading.Lock()
            self._key_locks = {}
            self._checked = {}
            self._stats = CacheStats()

    def _current(self) -> _Handle:
        handle = self._handle
        if handle is not None and handle.pid == os.getpid():
            return handle
        self._check_fork()
        with self._lock:
            if self._handle is None:
                self._handle = self._open()
            return self._handle

    def _open(self) -> _Handle:
        settings: dict[str, Any]
        if self.size_limit is None:
            # No eviction, so no access-time bookkeeping: reads stay a single SELECT instead of a write
            # transaction, which also keeps concurrent readers from queueing on SQLite's write lock.
            settings = {"eviction_policy": "none", "size_limit": _UNBOUNDED}
        else:
            # cull_limit=2: a write that finds the cache over its limit evicts the two least recently used
            # entries. One would leave a cache that is over its limit (entries of varying size, a limit
            # lowered on reopening) over it for good; diskcache's default of 10 empties a small cache at once.
            settings = {
                "eviction_policy": "least-recently-used",
                "size_limit": self.size_limit,
                "cull_limit": 2,
            }
        db_path = self.directory / _DB_NAME
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create the cache directory {self.directory}: {exc}") from exc
        # Opening (which may create the database) and moving a damaged one aside exclude each other across
        # processes, so nobody moves aside a database another process is creating at that moment.
        with _file_lock(self._rebuild_lock_path):
            if _emptied_database(self.directory):
                self._move_aside("it is empty while value files remain")
            for attempt in range(2):
                try:
                    cache = diskcache.Cache(str(self.directory), timeout=60, **settings)
                except sqlite3.DatabaseError as exc:
                    if attempt or not _is_damaged_database(exc):
                        raise CacheError(f"cannot open the cache database in {self.directory}: {exc}") from exc
                    self._move_aside(exc)
                    continue
                except (OSError, diskcache.Timeout) as exc:
                    raise CacheError(f"cannot open the cache in {self.directory}: {exc}") from exc
                break
        handle = _Handle(cache, os.getpid(), _inode(db_path))
        if self.size_limit is not None:
            # Reopened with a smaller limit than the cache already uses: evict down to it now. diskcache culls
            # ten least recently used entries at a time, a fine enough step for limits of many entries.
            with contextlib.suppress(sqlite3.DatabaseError, diskcache.Timeout, OSError):
                if cache.volume() > self.size_limit:
                    cache.cull(retry=True)
        return handle

    @property
    def _rebuild_lock_path(self) -> Path:
        return self.directory / _LOCKS_DIR / "rebuild.lock"

    def _move_aside(self, reason: object) -> None:
        """Move the damaged cache's contents to ``<directory>.corrupt-<timestamp>`` and warn once.

        Called with the rebuild lock held. Falls back to deleting what cannot be moved.
        """
        db_path = self.directory / _DB_NAME
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.directory.with_name(f"{self.directory.name}.corrupt-{stamp}")
        suffix = 1
        while aside.exists():
            aside = self.directory.with_name(f"{self.directory.name}.corrupt-{stamp}-{suffix}")
            suffix += 1
        moved = True
        try:
            aside.mkdir(parents=True)
        except OSError:
            moved = False
        for child in list(self.directory.iterdir()):
            if child.name == _LOCKS_DIR:
                continue  # lock files carry no data, and other processes may be holding them right now
            try:
                if not moved:
                    raise OSError("no place to move to")
                os.replace(child, aside / child.name)
            except OSError:
                moved = False
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        child.unlink()
        where = f"moved its contents to {aside}" if moved else "deleted its contents"
        warnings.warn(
            f"playment_torch cache database {db_path} is damaged ({reason}); {where} and started an empty cache",
            RuntimeWarning,
            stacklevel=2,
        )

    def _call(self, what: str, operation: Callable[[diskcache.Cache], _T], *, check_stale: bool = True) -> _T:
        """Run one diskcache operation, rebuilding a damaged database once and wrapping every failure.

        Args:
            what: Names the operation in error messages.
            operation: Receives the open ``diskcache.Cache``.
            check_stale: First make sure the open database is still the one at ``directory/cache.db``
                (another process may have moved a damaged cache aside, or someone deleted the directory);
                reopen if not. A ``stat``: cheap, but skipped on the hit path, where a stale handle costs
                nothing worse than a miss (and misses check).

        Returns:
            Whatever ``operation`` returns.

        Raises:
            CacheError: The cache is unusable (unwritable, locked for too long, damaged twice in a row).
        """
        for attempt in range(2):
            handle = self._current()
            if check_stale and _inode(self.directory / _DB_NAME) != handle.db:
                with self._lock:
                    if self._handle is handle:
                        with contextlib.suppress(Exception):
                            handle.cache.close()
                        self._handle = None
                handle = self._current()
            try:
                return operation(handle.cache)
            except sqlite3.DatabaseError as exc:
                if attempt or not _is_damaged_database(exc):
                    raise CacheError(f"cache {self.directory}: {what} failed: {exc}") from exc
                with self._lock:
                    if self._handle is handle:  # not already rebuilt by another thread
                        with _file_lock(self._rebuild_lock_path):
                            # Another process that saw the damage first has already put a new database
                            # in place: use it rather than moving it aside too.
                            if _inode(self.directory / _DB_NAME) == handle.db:
                                self._move_aside(exc)
                        with contextlib.suppress(Exception):
                            handle.cache.close()
                        self._handle = None
            except (OSError, diskcache.Timeout) as exc:
                raise CacheError(f"cache {self.directory}: {what} failed: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # --- reads --------------------------------------------------------------------------------------------

    def _read_entry(self, key: str) -> tuple[np.ndarray, _FileVersion | None] | None:
        """Return the stored bytes of ``key`` as a writable uint8 array, ``None`` if absent.

        The bytes come with their value file's version, or ``None`` for small values kept inside SQLite.

        Raises:
            _CorruptEntry: The row exists but its value file does not, or cannot be read.
        """

        def fetch(cache: diskcache.Cache) -> tuple[np.ndarray, _FileVersion | None] | object:
            value = cache.get(key, default=_MISSING, read=True, retry=True)
            if value is _MISSING:
                return _MISSING
            if isinstance(value, bytes):  # small values live inside SQLite; copy so the result is writable
                return np.frombuffer(bytearray(value), dtype=np.uint8), None
            if not isinstance(value, io.BufferedIOBase):
                raise _CorruptEntry(f"entry is a {type(value).__name__}, not bytes written by this module")
            try:
                with value:
                    return _read_all(value)
            except OSError as exc:
                raise _CorruptEntry(f"value file unreadable: {exc}") from exc

        for attempt in range(_MISSING_FILE_ATTEMPTS):
            value = self._call("get", fetch, check_stale=False)
            if value is not _MISSING:
                return cast("tuple[np.ndarray, _FileVersion | None]", value)
            # diskcache answers "missing" both for absent keys and for rows whose file vanished. Look again:
            # an overwrite of the same key deletes the old file right after its commit, and a reader that
            # selected the old row just before can find the file gone. That is churn, not damage: retry.
            if not self._call("contains", lambda cache: key in cache):
                return None
            time.sleep(0.001 * attempt)
        # Persistently missing. Worst case (an overwrite storm outlasting every retry) this drops a good
        # entry, which costs a fetch, never a wrong value.
        raise _CorruptEntry("value file missing")

    def _get(self, key: str, kind: int, *, count_miss: bool = True) -> tuple[bool, Any]:
        """Look ``key`` up and decode it as ``kind``, keeping the statistics.

        Returns:
            ``(True, value)`` for a hit, ``(False, None)`` for a miss or a damaged (now deleted) entry.

        Raises:
            CacheError: The cache is unusable, or the entry holds the other kind of value.
        """
        try:
            entry = self._read_entry(key)
            if entry is None:
                with self._stats_lock:
                    self._stats.misses += count_miss
                return False, None
            buffer, version = entry
            checked = version is not None and self._checked.get(key) == version
            found, payload = _unframe(buffer, check_payload=not checked)
            # Only a file that has been still for a while is remembered: file times tick coarsely (milliseconds),
            # so a rewrite right after the check could otherwise keep the same modification time.
            if version is not None and not checked and time.time_ns() - version[3] > _SETTLED_NS:
                if len(self._checked) >= _CHECKED_MAX:
                    self._checked.clear()  # a bound on memory; entries are simply checked again
                self._checked[key] = version
            if found != kind:
                raise CacheError(f"cache entry {key!r} holds {_KIND_NAMES[found]}, not {_KIND_NAMES[kind]}")
            if kind == _KIND_JSON:
                try:
                    payload = json.loads(cast(bytes, payload))
                except ValueError as exc:  # checksummed yet undecodable: not ours to trust either
                    raise _CorruptEntry(f"undecodable JSON: {exc}") from exc
        except _CorruptEntry:
            # Damage is not an error for the caller: drop the entry and let them fetch the value again.
            self._checked.pop(key, None)
            self._call("delete", lambda cache: cache.delete(key, retry=True))
            with self._stats_lock:
                self._stats.corrupt += 1
                self._stats.misses += 1
            return False, None
        with self._stats_lock:
            self._stats.hits += 1
            self._stats.bytes_read += buffer.size
        return True, payload

    def get_array(self, key: str) -> np.ndarray | None:
        """Return the array stored under ``key``.

        Args:
            key: A key from :func:`cache_key` (any string works).

        Returns:
            The array, with its dtype and shape as stored, as a zero-copy view over the freshly read entry (so
            it is writable and owned by nobody else); ``None`` when the key is missing or its entry was
            damaged (the damaged entry is deleted and counted in ``stats.corrupt``).

        Raises:
            CacheError: The cache is unusable, or ``key`` holds a JSON value.
        """
        return cast("np.ndarray | None", self._get(key, _KIND_ARRAY)[1])

    def get_json(self, key: str) -> Any | None:
        """Return the JSON value stored under ``key``, ``None`` when missing or damaged.

        Args:
            key: A key from :func:`cache_key`.

        Returns:
            The decoded JSON value, or ``None`` (a stored JSON ``null`` reads back as ``None`` too, though
            ``stats`` counts it as a hit).

        Raises:
            CacheError: The cache is unusable, or ``key`` holds an array.
        """
        return self._get(key, _KIND_JSON)[1]

    # --- writes -------------------------------------------------------------------------------------------

    def _put(self, key: str, entry: bytes) -> None:
        # diskcache writes a value file completely before inserting the row that points to it, in one
        # transaction, so readers never see a half-written entry; `bytes` (not pickle) keeps large values
        # as plain files that reads can pull in with one readinto.
        if len(entry) < _FILE_THRESHOLD:
            self._call("put", lambda cache: cache.set(key, entry, retry=True))
        else:
            # As a file object diskcache copies the value in 4 MiB writes; given `bytes` it would iterate them
            # like text, line by line, and the many small writes leave a file that reads back ~1.6x slower.
            self._call("put", lambda cache: cache.set(key, io.BytesIO(entry), read=True, retry=True))
        with self._stats_lock:
            self._stats.bytes_written += len(entry)

    def put_array(self, key: str, array: np.ndarray) -> None:
        """Store ``array`` under ``key``, replacing any previous value.

        Args:
            key: A key from :func:`cache_key`.
            array: Any shape and dtype (structured and subarray fields included) except object dtypes.

        Raises:
            CacheError: The array holds Python objects, or the cache is unusable.
        """
        self._put(key, _encode_array(np.asarray(array)))

    def put_json(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable ``value`` under ``key``, framed and checksummed like arrays.

        Args:
            key: A key from :func:`cache_key`.
            value: Anything :func:`json.dumps` accepts.

        Raises:
            CacheError: ``value`` is not JSON-serialisable, or the cache is unusable.
        """
        try:
            payload = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:  # UnicodeEncodeError (lone surrogates) is a ValueError
            raise CacheError(f"value for cache entry {key!r} is not JSON-serialisable: {exc}") from exc
        self._put(key, _frame(_KIND_JSON, payload))

    # --- create once ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        with self._lock:
            entry = self._key_locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                name = hashlib.sha1(key.encode("utf-8")).hexdigest() + ".lock"
                with _file_lock(self.directory / _LOCKS_DIR / name):
                    yield
        finally:
            with self._lock:
                entry[1] -= 1
                if not entry[1]:
                    self._key_locks.pop(key, None)

    def get_or_create(self, key: str, create: Callable[[], np.ndarray]) -> np.ndarray:
        """Return the array under ``key``, calling ``create`` and storing its result if there is none.

        Concurrent callers for one key, in threads or in processes sharing the directory, call ``create``
        once: the others wait for it and then read the stored value.

        Args:
            key: A key from :func:`cache_key`.
            create: Makes the value (typically download and decode). Its exceptions propagate and nothing is
                stored, so the next caller tries again.

        Returns:
            The cached array, or what ``create`` returned (as an ndarray) when this call created it.

        Raises:
            CacheError: The cache is unusable or the created array cannot be stored.
        """
        value = self.get_array(key)
        if value is not None:
            return value
        with self._key_lock(key):
            found, value = self._get(key, _KIND_ARRAY, count_miss=False)
            if found:
                return cast(np.ndarray, value)
            created = np.asarray(create())
            self.put_array(key, created)
            return created

    # --- bookkeeping --------------------------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        """Whether an entry exists for ``key`` (its integrity is checked only when it is read)."""
        return self._call("contains", lambda cache: key in cache)

    def __len__(self) -> int:
        return int(self._call("len", len))

    def keys(self) -> Iterator[str]:
        """Iterate over the keys present when called (in key order).

        Returns:
            An iterator over a snapshot of the keys.
        """
        return iter(self._call("keys", lambda cache: list(cache.iterkeys())))

    def delete(self, key: str) -> bool:
        """Delete ``key``'s entry.

        Args:
            key: The key.

        Returns:
            Whether there was an entry to delete.
        """
        return bool(self._call("delete", lambda cache: cache.delete(key, retry=True)))

    def clear(self) -> int:
        """Delete every entry.

        Returns:
            The number of entries deleted.
        """
        return int(self._call("clear", lambda cache: cache.clear(retry=True)))

    def volume(self) -> int:
        """Return the bytes the cache occupies on disk: database pages plus value files."""
        return int(self._call("volume", lambda cache: cache.volume()))

    def verify(self, *, repair: bool = False) -> VerifyReport:
        """Read and check every entry.

        Args:
            repair: Delete the damaged entries found.

        Returns:
            A :class:`VerifyReport`. ``stats`` is not changed.
        """
        report = VerifyReport()
        for key in self.keys():
            try:
                entry = self._read_entry(key)
                if entry is None:
                    continue  # deleted since the key snapshot
                _unframe(entry[0])  # always the full check, whatever this process checked before
            except _CorruptEntry:
                report.bad.append(key)
                if repair and self.delete(key):
                    report.repaired += 1
            report.checked += 1
        return report

    def close(self) -> None:
        """Close this thread's database connection; the cache reopens by itself when used again."""
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is not None and handle.pid == os.getpid():
            handle.cache.close()

    def lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        """A lock on ``key`` across threads and processes sharing the directory (what :meth:`get_or_create`
        holds while it creates a value): for values made by several cache calls, such as a download and its
        digest record. Not reentrant.

        Args:
            key: A key from :func:`cache_key`.

        Returns:
            A context manager holding the lock.
        """
        return self._key_lock(key)
