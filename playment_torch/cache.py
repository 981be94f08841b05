"""Decoded arrays on disk: stable keys, checked integrity, an optional size limit, process safety.

The cache holds what parsing produced (numpy arrays, JSON job results), never the downloaded files, so
every epoch after the first pays a file read instead of a parse. It is a thin layer over :mod:`diskcache`
(SQLite for the index, one file per large value) shared by every DataLoader worker and rank on a machine.

Two diskcache stores share the directory: arrays in the directory itself (the only store a ``size_limit``
applies to) and JSON values (project and batch listings, jobs, results: the metadata everything else is found
through) in its ``meta`` subfolder, which is never evicted. Array traffic therefore cannot evict the metadata
that ``refresh="never"`` needs; JSON is small (kilobytes per job).

Each value is stored as ``bytes`` in a small frame of our own::

    offset  size  field
    0       4     magic b"PTAC"
    4       1     format version (2; entries of other versions read as misses and are fetched again)
    5       1     kind: 0 = numpy array, 1 = UTF-8 JSON
    6       2     ndim
    8       4     header length (a multiple of 64, so the payload is aligned for any dtype)
    12      8     payload length in bytes (before padding)
    20      8     payload sum: sum of the payload's 64-bit little-endian words w[i], mod 2**64
    28      8     payload weighted sum: sum of (i mod 509 + 1) * w[i], mod 2**64
    36      4     CRC-32 of the header (bytes 0..36 and 40..header length)
    40      8     key digest: the first 8 bytes of BLAKE2b of the entry's key (UTF-8)
    48      8*n   shape
    ...           dtype descr (``numpy.lib.format.dtype_to_descr``, as a Python literal), zero padding
    hlen    ...   payload, zero padded to a multiple of 8 bytes

The key digest makes an entry name its key: a valid value file copied over another key's file (a restore gone
wrong, a misdirected ``cp``) reads as damage, never as the other key's value.

Why not CRC-32 over the payload: on the 2.2 MB array a training step reads, ``zlib.crc32`` takes ~320 us here,
more than three times ``np.load`` of the same array (~90 us), which would make the warm path slower than not
caching decoded arrays. The two 64-bit sums take one vectorised pass (~30 us: column sums of the payload
viewed as rows of 509 words) and catch what damages cache files in practice: truncation (the length is
checked first), a changed 64-bit word (always), zero-filled or garbage regions (all but ~2**-64 of them), and
words or 4 KiB pages moved elsewhere (the weights: a move changes a word's weight unless its distance is a
multiple of 509 words, and 509, a prime, shares no factor with the 512-word page). The header, which is small,
has a real CRC. Changes built to cancel in both sums are not caught: this protects against accidents, not
tampering.

What each read checks, exactly: the header (magic, version, lengths, CRC, key digest, dtype and shape) always.
The payload sums on the first read of a value file version since the machine booted, by any process using the
cache, and again whenever the file's identity changed: device, inode, size, modification time and status-change
time (``st_ctime_ns``, which ``os.utime`` cannot set back), from the ``fstat`` of the open file. The record of
checked versions is the file table (``files.table``, see :class:`_FileTable`): ``checked_table_bytes`` (default
32 MiB, 32 bytes per entry, 1,048,576 entries; a newer entry that lands on the same slot replaces an older one,
which is then simply checked again), memory-mapped and shared by every process, and keyed with the boot id, so
a reboot (which may lose unflushed pages) checks everything again. A file version is trusted without its payload
check only if it was written at least two seconds before it was checked (file times tick coarsely). Small
values kept inside SQLite (under 32 KiB) are always checked in full. A change that keeps all five stat fields
(possible only for whoever can set the system clock or write the block device) goes unnoticed until the next
boot. :meth:`ArrayCache.verify` always checks everything.

The same table makes warm reads cheap: it also records which value file holds each array, so a read opens that
file directly, without a SQLite query, and falls back to the database whenever the file is gone or its header
names another key.

A full disk or a read-only directory: opening diskcache writes its settings, which fails there. The cache then
reads through a read-only SQLite connection (``mode=ro``, or ``immutable=1`` when even SQLite's shared-memory
file cannot be created) and reports writes as :class:`~playment_torch.errors.CacheError`; a warm cache keeps
serving reads, and :meth:`ArrayCache.clear` frees the value files first so the database has room to record it.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import functools
import hashlib
import io
import json
import logging
import math
import mmap
import os
import re
import shutil
import sqlite3
import struct
import threading
import time
import warnings
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, cast

import diskcache
import numpy as np
import numpy.lib.format as npformat

from playment_torch.errors import CacheError, ConfigError, url_identity

_fcntl: ModuleType | None
try:  # POSIX only; elsewhere get_or_create falls back to per-process (thread) locking.
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    _fcntl = None

__all__ = [
    "ArrayCache",
    "CacheStats",
    "MovedAside",
    "ProjectUsage",
    "VerifyReport",
    "cache_key",
    "default_cache_dir",
    "parse_duration",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# --- the frame ----------------------------------------------------------------------------------------------

_MAGIC = b"PTAC"
_VERSION = 2
_KIND_ARRAY = 0
_KIND_JSON = 1
_KIND_NAMES = {_KIND_ARRAY: "array", _KIND_JSON: "JSON"}
# magic, version, kind, ndim, header length, payload length, the two sums, header CRC, key digest
_PREFIX = struct.Struct("<4sBBHIQQQI8s")
_CRC_OFFSET = 36
_HEADER_ALIGN = 64
# Row width of the checksum's column sums: a prime near a 4 KiB page, so a word or page that moves by anything
# but a multiple of 509 words lands under a different weight. Column sums are the fastest numpy reduction here
# (contiguous rows added as vectors), faster even than a plain sum.
_SUM_WIDTH = 509
_SUM_WEIGHTS = np.arange(1, _SUM_WIDTH + 1, dtype=np.uint64)
# Small enough for a dimension count no real array reaches, large enough to refuse a damaged header cheaply.
_MAX_NDIM = 64
# The file table's size: 32 bytes per value file, so 1,048,576 slots (a 32 MiB file, allocated when created).
_CHECKED_TABLE_BYTES = 32 << 20
_SETTLED_NS = 2_000_000_000
_U64 = (1 << 64) - 1
#: Sets the file table's size (see ArrayCache); the suite uses it for small tables.
TABLE_BYTES_ENV = "PLAYMENT_TORCH_FILE_TABLE_BYTES"


def _table_bytes_from_environment() -> int:
    """The file table's size from ``PLAYMENT_TORCH_FILE_TABLE_BYTES``, else the default (32 MiB).

    Raises:
        ConfigError: The variable is set to something other than a whole number of bytes.
    """
    raw = os.environ.get(TABLE_BYTES_ENV, "").strip()
    if not raw:
        return _CHECKED_TABLE_BYTES
    if not (raw.isascii() and raw.isdigit()):
        raise ConfigError(f"{TABLE_BYTES_ENV} must be a whole number of bytes, not {raw!r}")
    return int(raw)


# No size limit means "never evict": diskcache's own default would silently cap the cache at 1 GiB.
_UNBOUNDED = 1 << 62
_DB_NAME = "cache.db"
# diskcache's default: smaller values live inside SQLite, larger ones in files.
_FILE_THRESHOLD = 1 << 15
_LOCKS_DIR = "locks"
# The array store's file table (see _FileTable), beside its database.
_FILE_TABLE = "files.table"
# Folders other modules keep in the cache directory that are not the cache's: PredictionWriter's default
# folder and the datasets' shared counters. A damaged database never takes them with it.
_NOT_CACHE_DIRS = ("predictions", "stats")
_META_DIR = "meta"
# diskcache's value modes (diskcache.core.MODE_RAW / MODE_BINARY): bytes in the row, or a value file.
_MODE_RAW = 1
_MODE_BINARY = 2
# How long get_or_create waits for another thread or process creating the same key (see ArrayCache).
_LOCK_TIMEOUT = 300.0
# The key under which touch_project records when a project was last opened (see ArrayCache.touch_project).
_USED_KIND = "used"


class _CorruptEntry(Exception):
    """Internal: an entry's bytes do not decode; the caller drops the entry and reports a miss."""


class _OutdatedEntry(_CorruptEntry):
    """Internal: an intact entry of an older format version: a miss, not damage."""


def _key_digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def _payload_sums(words: np.ndarray) -> tuple[int, int]:
    """Return the two 64-bit payload sums of ``words`` (a little-endian uint64 view of the padded payload)."""
    rows = words.size // _SUM_WIDTH
    columns = words[: rows * _SUM_WIDTH].reshape(rows, _SUM_WIDTH).sum(axis=0, dtype=np.uint64)
    tail = words[rows * _SUM_WIDTH :]
    # uint64 arithmetic wraps modulo 2**64, which is exactly the sum we want.
    columns[: tail.size] += tail
    return int(columns.sum(dtype=np.uint64)), int((columns * _SUM_WEIGHTS).sum(dtype=np.uint64))


def _header_crc(header: memoryview) -> int:
    return zlib.crc32(header[_CRC_OFFSET + 4 :], zlib.crc32(header[:_CRC_OFFSET]))


def _frame_parts(
    kind: int, payload: bytes | memoryview, key: str, shape: tuple[int, ...] = (), descr: bytes = b""
) -> tuple[bytes, memoryview, bytes]:
    """The header described in the module docstring, the payload (not copied) and its zero padding."""
    body = memoryview(payload).cast("B")
    length = body.nbytes
    padding = b"\0" * (-length % 8)
    plain, weighted = _payload_sums(_padded_words(body, padding))
    meta = struct.pack(f"<{len(shape)}Q", *shape) + descr
    header_len = -(-(_PREFIX.size + len(meta)) // _HEADER_ALIGN) * _HEADER_ALIGN
    header = bytearray(header_len)
    _PREFIX.pack_into(
        header, 0, _MAGIC, _VERSION, kind, len(shape), header_len, length, plain, weighted, 0, _key_digest(key)
    )
    header[_PREFIX.size : _PREFIX.size + len(meta)] = meta
    struct.pack_into("<I", header, _CRC_OFFSET, _header_crc(memoryview(header)))
    return bytes(header), body, padding


def _padded_words(body: memoryview, padding: bytes) -> np.ndarray:
    """The payload as little-endian 64-bit words, zero padded (copies only the last partial word)."""
    whole = body.nbytes - body.nbytes % 8
    words = np.frombuffer(body[:whole], dtype="<u8")
    if not padding:
        return words
    return np.concatenate([words, np.frombuffer(bytes(body[whole:]) + padding, dtype="<u8")])


def _frame(kind: int, payload: bytes, key: str, shape: tuple[int, ...] = (), descr: bytes = b"") -> bytes:
    """A whole entry as one ``bytes``."""
    return b"".join(_frame_parts(kind, payload, key, shape, descr))


class _Entry:
    """An entry's parts, handed to :class:`_EntryDisk` as one value: written to the value file part by part,
    straight from the array's memory (joining header and payload first would copy every array again)."""

    __slots__ = ("parts",)

    def __init__(self, parts: tuple[bytes, memoryview, bytes]) -> None:
        self.parts = [memoryview(part).cast("B") for part in parts if len(part)]


class _EntryDisk(diskcache.Disk):
    """diskcache's storage of values, with our entries written here rather than by ``Disk._write``.

    That one calls ``os.makedirs`` before every file and copies the value through 4 MiB reads. Here the file
    is created first, and its folder only when it is missing; the parts are written unbuffered; a write that
    fails (a full disk) removes its file, so nothing half-written is left behind. Everything else is
    diskcache's, the file layout included (see :meth:`filename` for the one difference).
    """

    def filename(self, key: Any = diskcache.core.UNKNOWN, value: Any = diskcache.core.UNKNOWN) -> tuple[str, str]:
        """diskcache's random ``ab/cd/<28 hex>.val``, with the second level one of 16 folders instead of 256.

        Creating a folder costs ~0.1-0.2 ms (ext4 here); spread over 65,536 folders, a cache creates one for
        nearly every file until it holds hundreds of thousands. With 4,096 the folders exist after the first
        few thousand files, and a million-frame cache still has under a thousand files per folder.
        """
        hex_name = os.urandom(16).hex()
        filename = os.path.join(hex_name[:2], hex_name[2] + "0", hex_name[4:] + ".val")
        return filename, os.path.join(self._directory, filename)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple[int, int, Any, Any]:
        if not isinstance(value, _Entry):
            return cast("tuple[int, int, Any, Any]", super().store(value, read, key=key))
        filename, full_path = self.filename(key, value)
        for attempt in range(10):
            try:
                handle = open(full_path, "xb", buffering=0)  # noqa: SIM115 - closed below, removed on failure
                break
            except FileNotFoundError:
                if attempt == 9:
                    raise
                # The folder is missing, or another cache removed it just now (as diskcache, try again).
                with contextlib.suppress(OSError):
                    os.makedirs(os.path.dirname(full_path), exist_ok=True)
        try:
            with handle:
                size = 0
                for part in value.parts:
                    while part.nbytes:
                        written = handle.write(part)
                        size += written
                        part = part[written:]
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(full_path)
            raise
        return size, diskcache.core.MODE_BINARY, filename, None


def _encode_array(array: np.ndarray, key: str) -> tuple[bytes, memoryview, bytes]:
    if array.dtype.hasobject:
        raise CacheError(f"cannot cache an array of dtype {array.dtype}: it holds Python objects")
    descr = repr(npformat.dtype_to_descr(array.dtype)).encode("utf-8")  # field names may be any str
    # The payload is the array's memory in C order (copied only if it is not C-contiguous already); the shape
    # is what restores it.
    payload = np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
    return _frame_parts(_KIND_ARRAY, payload, key, tuple(array.shape), descr)


@functools.lru_cache(maxsize=256)
def _dtype_from_descr(padded: bytes) -> np.dtype[Any]:
    # literal_eval costs tens of microseconds for a structured descr; a cache holds a handful of dtypes. Keyed
    # by the descr with its zero padding (what the header holds), so a warm read does not strip it first.
    return npformat.descr_to_dtype(ast.literal_eval(padded.rstrip(b"\0").decode("utf-8")))


def _unframe(buffer: np.ndarray, key: str | bytes, *, check_payload: bool = True) -> tuple[int, np.ndarray | bytes]:
    """Check and decode one stored entry.

    Args:
        buffer: The entry's bytes as a 1-D uint8 array.
        key: The key the entry was read under (or its :func:`_key_digest`); the header must name it.
        check_payload: Verify the payload sums (the header is always checked).

    Returns:
        ``(kind, value)``: an array viewing ``buffer`` (zero copy) for arrays, the payload bytes for JSON.

    Raises:
        _OutdatedEntry: An entry written by an older version of this module.
        _CorruptEntry: Anything does not add up: magic, lengths, CRC, key, sums, dtype, shape.
    """
    total = buffer.size
    view = buffer.data  # a memoryview: what struct and zlib take (typed stubs do not see ndarray as a buffer)
    if total < _PREFIX.size:
        if total >= 6 and bytes(view[:4]) == _MAGIC and view[4] < _VERSION:
            raise _OutdatedEntry(f"format version {view[4]}, this version reads {_VERSION}")
        raise _CorruptEntry(f"{total} bytes is shorter than the {_PREFIX.size}-byte header")
    magic, version, kind, ndim, header_len, length, plain, weighted, crc, digest = _PREFIX.unpack_from(view, 0)
    if magic != _MAGIC:
        raise _CorruptEntry(f"bad magic {magic!r}")
    if version != _VERSION or kind not in _KIND_NAMES:
        if version < _VERSION:
            raise _OutdatedEntry(f"format version {version}, this version reads {_VERSION}")
        raise _CorruptEntry(f"unknown format version {version} / kind {kind}")
    if ndim > _MAX_NDIM or header_len % _HEADER_ALIGN or not _PREFIX.size + 8 * ndim <= header_len <= total:
        raise _CorruptEntry(f"implausible header: ndim {ndim}, header {header_len} of {total} bytes")
    if total != header_len + length + (-length % 8):
        raise _CorruptEntry(f"entry is {total} bytes, its header says {header_len + length + (-length % 8)}")
    if _header_crc(view[:header_len]) != crc:
        raise _CorruptEntry("header checksum mismatch")
    if digest != (key if isinstance(key, bytes) else _key_digest(key)):
        raise _CorruptEntry("the entry was written for another key")
    if check_payload and _payload_sums(buffer[header_len:].view("<u8")) != (plain, weighted):
        raise _CorruptEntry("payload checksum mismatch")
    if kind == _KIND_JSON:
        return kind, bytes(view[header_len : header_len + length])
    shape_end = _PREFIX.size + 8 * ndim
    shape = (
        _SHAPES[ndim].unpack_from(view, _PREFIX.size)
        if ndim < len(_SHAPES)
        else struct.unpack_from(f"<{ndim}Q", view, _PREFIX.size)
    )
    try:
        dtype = _dtype_from_descr(bytes(view[shape_end:header_len]))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError) as exc:
        raise _CorruptEntry(f"undecodable dtype descr: {exc}") from exc
    if math.prod(shape) * dtype.itemsize != length:
        raise _CorruptEntry(f"shape {shape} of {dtype} does not match {length} payload bytes")
    # A view over the buffer we read into: no copy, writable, aligned (header length is a multiple of 64).
    return kind, np.ndarray(shape, dtype=dtype, buffer=buffer, offset=header_len)


# The shapes of arrays of up to 3 dimensions, decoded without building a struct format per read.
_SHAPES = tuple(struct.Struct(f"<{ndim}Q") for ndim in range(4))


# device, inode, size, modification time, status-change time
_FileVersion = tuple[int, int, int, int, int]


def _read_path(path: str) -> tuple[np.ndarray, _FileVersion]:
    """:func:`_read_all` of the file at ``path``, through its descriptor alone (a Python file object costs
    ~10 us to open and close, a twentieth of a warm 120k-point frame).

    Raises:
        OSError: The file cannot be opened or read.
    """
    if not hasattr(os, "preadv"):  # pragma: no cover - Windows has no vectored reads
        with open(path, "rb") as handle:
            return _read_all(handle)
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    try:
        status = os.fstat(fd)
        size = status.st_size
        buffer = np.empty(size, dtype=np.uint8)
        view = buffer.data  # (typed stubs do not see ndarray as a buffer)
        done = os.preadv(fd, (view,), 0)
        while done < size:  # a short read (signals, network file systems): read on from where it stopped
            count = os.preadv(fd, (view[done:],), done)
            if not count:
                buffer = buffer[:done]  # shrank under us: the frame check will call it truncated
                break
            done += count
    finally:
        os.close(fd)
    return buffer, (status.st_dev, status.st_ino, size, status.st_mtime_ns, status.st_ctime_ns)


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _read_all(handle: io.BufferedIOBase) -> tuple[np.ndarray, _FileVersion]:
    """Read an open value file into a fresh, aligned uint8 array (one ``readinto``, no intermediate bytes).

    Returns:
        The bytes, and the file's version: device, inode, size, modification and status-change times.
    """
    status = os.fstat(handle.fileno())
    version = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
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


class _FileTable:
    """Per key: the value file holding it, and the version of that file that was checked in full.

    Shared by every process using the cache, through a memory-mapped file (``files.table`` in the array store's
    folder), so a warm read skips SQLite (the table says which file to open) and the payload sums (the table
    says that version was checked), in a fresh DataLoader worker as much as in a long-lived one.

    A direct-mapped table of 32-byte slots: the key's 64-bit digest, a 64-bit hash of the checked file version
    (0: not checked), and the value file's 128-bit name (diskcache names a file ``ab/cd/<28 hex>.val``; 0: not
    known). A newer key that lands on the same slot replaces the older one, which then takes the SQLite path
    again. Nothing in a slot is trusted on its own: the file named must still exist and its header must name
    the key's digest (so a stale, torn or forged slot costs a lookup, never a wrong value), and the version
    hash covers the file's device, inode, size, modification and status-change times and the boot id (so
    after a reboot, which may have lost unflushed pages, every file is checked again).

    Where the file cannot be created and allocated (a read-only cache, a full disk, a system without
    ``posix_fallocate``) the table lives in shared anonymous memory: this process and its forked children only.
    """

    _SLOT_WORDS = 4
    _NAME = re.compile(r"([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{28})\.val")

    def __init__(self, path: Path | None, budget_bytes: int) -> None:
        self.slots = budget_bytes // (8 * self._SLOT_WORDS)
        self.shared = False
        self._words = np.zeros((0, self._SLOT_WORDS), dtype=np.uint64)
        if not self.slots:
            return
        size = self.slots * 8 * self._SLOT_WORDS
        memory: mmap.mmap | None = None
        if path is not None:
            memory = self._map_file(path, size)
        if memory is None:
            memory = mmap.mmap(-1, size)  # anonymous, MAP_SHARED: kept across fork, private to this process tree
        else:
            self.shared = True
        self._memory = memory
        self._words = np.frombuffer(memory, dtype="<u8").reshape(self.slots, self._SLOT_WORDS)

    @staticmethod
    def _map_file(path: Path, size: int) -> mmap.mmap | None:
        allocate = getattr(os, "posix_fallocate", None)
        if allocate is None:  # not Linux: no way to reserve the blocks, so no shared file (see below)
            return None
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError:
            return None
        try:
            # Every block reserved up front (by each process, for the part it maps; a no-op once done): a write
            # into a mapped page the file system cannot back (a sparse file on a full disk) kills the process
            # with SIGBUS. On a disk too full for the table, this process keeps it in memory instead. The file
            # is never shrunk: another process may have mapped more of it (another budget; its keys land in
            # other slots, which only costs lookups).
            allocate(descriptor, 0, size)
            return mmap.mmap(descriptor, size)
        except (OSError, ValueError):
            return None
        finally:
            os.close(descriptor)

    @staticmethod
    def version_hash(version: _FileVersion) -> int:
        packed = struct.pack("<5q", *version) + _BOOT_ID
        return int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "little") or 1

    def find(self, digest: int) -> tuple[str | None, int]:
        """``(value file name relative to the store, checked version hash)`` of a key; ``(None, 0)`` if unknown."""
        if not self.slots:
            return None, 0
        found, version, high, low = self._words[digest % self.slots].tolist()
        if found != digest:
            return None, 0
        if not high and not low:
            return None, version
        name = f"{high:016x}{low:016x}"
        return f"{name[:2]}/{name[2:4]}/{name[4:]}.val", version

    def remember(self, digest: int, *, filename: str | None = None, version: int | None = None) -> None:
        """Record the key's value file and/or the version hash checked in full (what is not given is kept if
        the slot is this key's, else cleared)."""
        if not self.slots:
            return
        row = self._words[digest % self.slots]
        old_digest, old_version, high, low = row.tolist()
        if old_digest != digest:
            old_version, high, low = 0, 0, 0
        if filename is not None:
            match = self._NAME.fullmatch(filename.replace(os.sep, "/"))
            if match is None:
                high = low = 0
            else:
                name = "".join(match.groups())
                high, low = int(name[:16], 16), int(name[16:], 16)
        row[:] = (digest, old_version if version is None else version, high, low)

    def forget(self, digest: int) -> None:
        if self.slots and int(self._words[digest % self.slots, 0]) == digest:
            self._words[digest % self.slots] = 0


def _boot_id() -> bytes:
    """What changes at every boot: Linux's boot id, else the boot time to ten seconds (a sleep that shifts it
    only costs a check again)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as handle:
            return handle.read().strip()
    except OSError:
        return str(round(time.time() - time.monotonic(), -1)).encode()


_BOOT_ID = _boot_id()


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

    The URL enters as :func:`~playment_torch.errors.url_identity` gives it: the parameters of presigned URLs
    (S3, GCS, Azure, CloudFront, Playment) change on every request and are dropped, as are user info and the
    fragment; every other query parameter (``versionId``) names different content and is kept, in a canonical
    order.

    Args:
        kind: What the value is, e.g. ``"points"``, ``"mask"``, ``"result"``.
        project_id: The Playment project.
        job_id: The job, if the value belongs to one.
        frame_id: The frame, if any.
        sensor_id: The sensor, if any.
        url: Where the value was downloaded from; reduced to its identity as described above.

    Returns:
        ``"kind|project|job|frame|sensor|url"``, with ``%`` and ``|`` inside parts escaped as ``%25``/``%7C``.

    Raises:
        ConfigError: ``kind`` or ``project_id`` is empty.
    """
    if not kind or not project_id:
        raise ConfigError("cache_key needs a non-empty kind and project_id")
    parts = (kind, project_id, job_id, frame_id, sensor_id, url_identity(url) if url else "")
    return "|".join(_key_part(str(part)) for part in parts)


# --- reports ------------------------------------------------------------------------------------------------


@dataclass
class CacheStats:
    """What this process's handle did since it was created, forked or reset.

    Attributes:
        hits: ``get_*`` calls that returned a value.
        misses: ``get_*`` calls that returned ``None`` (corrupt and outdated entries included).
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


@dataclass(frozen=True)
class MovedAside:
    """A damaged cache database that was replaced by an empty one.

    Attributes:
        database: The damaged ``cache.db``.
        reason: What was wrong with it.
        destination: The folder its contents were moved to (``<cache dir>.corrupt-<timestamp>``, with a
            ``meta`` subfolder for the metadata store); ``None`` when they could not be moved and were deleted.
    """

    database: Path
    reason: str
    destination: Path | None


@dataclass
class VerifyReport:
    """Outcome of :meth:`ArrayCache.verify`.

    Attributes:
        checked: Entries read and checked.
        bad: Keys whose entries are damaged (or whose value file is missing).
        repaired: Bad and outdated entries deleted (only with ``repair=True``).
        outdated: Intact entries of an older format version (read as misses; fetched again when needed).
        moved_aside: Databases found damaged during this verification (their entries are gone from the cache).
    """

    checked: int = 0
    bad: list[str] = field(default_factory=list)
    repaired: int = 0
    outdated: int = 0
    moved_aside: list[MovedAside] = field(default_factory=list)


@dataclass(frozen=True)
class ProjectUsage:
    """What one project occupies in the cache (see :meth:`ArrayCache.projects`).

    Attributes:
        project_id: The project; ``None`` for keys not made by :func:`cache_key`.
        entries: Cached entries (arrays and JSON).
        frames: Distinct (job, frame) pairs with at least one cached entry.
        bytes: Bytes of the entries' values (database pages shared by all projects not counted).
        last_used: When a dataset last opened the project (:meth:`ArrayCache.touch_project`) or an entry of
            it was last written, whichever is later, in seconds since the epoch.
    """

    project_id: str | None
    entries: int
    frames: int
    bytes: int
    last_used: float


def parse_duration(text: str) -> float:
    """Parse a duration such as ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"`` or ``"2w"``.

    Args:
        text: A non-negative number followed by one unit letter (``s``, ``m``, ``h``, ``d``, ``w``).

    Returns:
        The duration in seconds.

    Raises:
        ConfigError: ``text`` is not such a duration.
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    value = text.strip().lower()
    try:
        number = float(value[:-1])
    except ValueError:
        number = -1.0
    if not value or value[-1] not in units or not number >= 0 or number == float("inf"):
        raise ConfigError(f"not a duration: {text!r} (use a number and a unit: 90s, 30m, 12h, 7d, 2w)")
    return number * units[value[-1]]


def _unescape(part: str) -> str:
    return part.replace("%7C", "|").replace("%25", "%")


def _key_parts(key: str) -> list[str] | None:
    """Split a :func:`cache_key` key into its unescaped parts; ``None`` for keys of another shape."""
    parts = key.split("|")
    if len(parts) != 6 or not parts[0] or not parts[1]:
        return None
    return [_unescape(part) for part in parts]


# --- database state -----------------------------------------------------------------------------------------


def _is_damaged_database(exc: sqlite3.DatabaseError) -> bool:
    """Tell a damaged cache.db from a transient failure (a lock timeout, a full disk)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return True
    text = str(exc).lower()
    # "no such table": the file was truncated to nothing under an open handle, so the schema vanished.
    return "malformed" in text or "not a database" in text or "no such table" in text


_UNWRITABLE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _is_unwritable(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk is full or the directory cannot be written (rather than damage)."""
    if isinstance(exc, OSError):
        return exc.errno in _UNWRITABLE_ERRNOS
    if isinstance(exc, sqlite3.DatabaseError):
        name = getattr(exc, "sqlite_errorname", "") or ""
        if name.startswith(("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR")):
            return True
        text = str(exc).lower()
        return any(words in text for words in ("disk is full", "disk i/o error", "readonly database", "unable to open"))
    return False


class _CacheUnwritable(CacheError):
    """Internal: a write failed because the disk is full or the directory is read-only."""


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


# --- locks ----------------------------------------------------------------------------------------------------

# Lock files this process holds: closed in a forked child, which must not keep duplicates of them open.
_HELD_LOCK_FDS: set[int] = set()
# Whether this process has warned that cross-process locking degraded to threads only (a one-element list, so
# the flag can change without a global statement).
_DEGRADED_WARNED = [False]


def _warn_degraded(reason: str) -> None:
    if not _DEGRADED_WARNED[0]:
        _DEGRADED_WARNED[0] = True
        warnings.warn(
            f"playment_torch cache: {reason}; locking between processes is off, so processes sharing this cache "
            "may download the same file at the same time (the cache stays correct)",
            RuntimeWarning,
            stacklevel=4,
        )


def _acquire(fd: int, deadline: float | None) -> bool:
    """``flock`` ``fd`` exclusively, waiting until ``deadline`` (``time.monotonic()``; ``None``: forever)."""
    assert _fcntl is not None
    if deadline is None:
        _fcntl.flock(fd, _fcntl.LOCK_EX)
        return True
    pause = 0.001
    while True:
        try:
            _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.05)


def _lock_fd(path: Path, deadline: float | None) -> int | str | None:
    """Open and lock ``path``: the locked descriptor, ``None`` on timeout, or why locking is unavailable."""
    assert _fcntl is not None
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # O_CLOEXEC: a subprocess started while the lock is held must not inherit (and so keep) it.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            return f"cannot create lock files in {path.parent} ({exc.strerror or exc})"
        try:
            acquired = _acquire(fd, deadline)
        except OSError as exc:
            os.close(fd)
            return f"the file system of {path.parent} does not support flock ({exc.strerror or exc})"
        if not acquired:
            os.close(fd)
            return None
        st = os.fstat(fd)
        if _inode(path) == (st.st_dev, st.st_ino):
            return fd
        # We locked a file its last holder unlinked on release: lock the new one instead.
        _fcntl.flock(fd, _fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def _file_lock(path: Path, *, timeout: float | None = None, what: str = "", warn: bool = False) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` across processes.

    The file is unlinked on release so lock files do not pile up, one per key ever created. That is safe
    because whoever wins the lock checks that the file it locked is still the one at ``path``; a waiter that
    locked an unlinked file retries on the new one. Release is an explicit ``LOCK_UN``: a process forked while
    the lock is held shares the open file, and a plain ``close`` would leave the lock with that child for its
    whole life.

    Args:
        path: The lock file.
        timeout: Seconds to wait; ``None`` waits for ever. On timeout the body runs without the lock.
        what: Names the lock in the timeout warning.
        warn: Warn (once per process) when locking is unavailable and degrades to nothing.

    Yields:
        Whether the lock is held (``False``: no fcntl, no lock file possible, no flock support, or timeout).
    """
    if _fcntl is None:
        if warn:
            _warn_degraded("fcntl is not available on this platform")
        yield False
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    fd = _lock_fd(path, deadline)
    if not isinstance(fd, int):
        if fd is None:
            warnings.warn(
                f"playment_torch cache: waited {timeout:.3g} s for the lock on {what or path}, which another "
                "thread or process holds; going on without it (the work may be done twice, the cache stays "
                "correct)",
                RuntimeWarning,
                stacklevel=3,
            )
        elif warn:
            _warn_degraded(fd)
        yield False
        return
    _HELD_LOCK_FDS.add(fd)
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            _fcntl.flock(fd, _fcntl.LOCK_UN)
        _HELD_LOCK_FDS.discard(fd)
        os.close(fd)


# Every live cache, so a forked child can reset their in-process locks (see _after_fork_in_child).
_LIVE_CACHES: weakref.WeakSet[ArrayCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A thread of the parent may have held a key lock or the open lock at the moment of the fork; that thread
    # does not exist here, so its locks would stay held for ever. Start every cache over with fresh ones.
    for fd in list(_HELD_LOCK_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)  # our duplicate only: the parent still holds (and will release) the lock itself
    _HELD_LOCK_FDS.clear()
    for cache in list(_LIVE_CACHES):
        cache._reset_process_state()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
# --- the stores -----------------------------------------------------------------------------------------------


class _Foreign:
    """A diskcache value of a mode this module never writes (read as damage)."""

    def __init__(self, mode: int) -> None:
        self.mode = mode


class _ReadOnlyCache:
    """diskcache's table read without writing a byte, for a full disk or a read-only directory.

    Offers the few ``diskcache.Cache`` methods the cache uses; writes raise ``OSError(EROFS)`` and ``delete``
    deletes nothing. Reads diskcache's schema directly (table ``Cache``: ``key``, ``raw``, ``mode``,
    ``filename``, ``value``, ``size``, ``store_time``), the format of every diskcache 5 release.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        db = directory / _DB_NAME
        try:
            exists = db.stat().st_size > 0
        except OSError:
            exists = False
        if not exists:
            return  # no database yet: an empty cache
        uri = db.absolute().as_uri()
        failure: sqlite3.Error | None = None
        # mode=ro sees what live writers committed but needs SQLite's shared-memory file; immutable=1 needs
        # nothing, at the price of not seeing commits still in another process's write-ahead log.
        for option in ("mode=ro", "immutable=1"):
            connection = sqlite3.connect(f"{uri}?{option}", uri=True, check_same_thread=False, timeout=60)
            try:
                connection.execute("SELECT count(*) FROM Cache").fetchone()
            except sqlite3.Error as exc:
                connection.close()
                failure = exc
                continue
            self._connection = connection
            return
        assert failure is not None
        raise failure

    def _rows(self, query: str, parameters: tuple[Any, ...] = ()) -> list[Any]:
        if self._connection is None:
            return []
        with self._lock:
            return self._connection.execute(query, parameters).fetchall()

    def get(self, key: str, default: Any = None, read: bool = False, retry: bool = False) -> Any:
        rows = self._rows("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1", (key,))
        if not rows:
            return default
        mode, filename, value = rows[0]
        if mode == _MODE_RAW:
            return bytes(value)
        if mode == _MODE_BINARY and filename:
            try:
                return open(self.directory / filename, "rb")
            except FileNotFoundError:
                return default  # as diskcache does: a row whose file vanished reads as missing
        return _Foreign(mode)

    def __contains__(self, key: object) -> bool:
        return bool(self._rows("SELECT 1 FROM Cache WHERE key = ? AND raw = 1", (key,)))

    def __len__(self) -> int:
        rows = self._rows("SELECT count(*) FROM Cache")
        return int(rows[0][0]) if rows else 0

    def iterkeys(self) -> Iterator[str]:
        return iter([key for (key,) in self._rows("SELECT key FROM Cache WHERE raw = 1 ORDER BY key")])

    def volume(self) -> int:
        if self._connection is None:
            return 0
        ((pages,),) = self._rows("PRAGMA page_count")
        ((page_size,),) = self._rows("PRAGMA page_size")
        ((values,),) = self._rows("SELECT COALESCE(SUM(size), 0) FROM Cache")
        return int(pages * page_size + values)

    def entries(self) -> list[tuple[str, int, float, str | None]]:
        """``(key, bytes, store time, value file)`` of every entry."""
        return self._rows(
            "SELECT key, CASE WHEN mode = 1 THEN length(value) ELSE size END, store_time, filename"
            " FROM Cache WHERE raw = 1"
        )

    def delete(self, key: str, retry: bool = False) -> bool:
        return False

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, "the cache is open read-only")

    set = clear = cull = _refuse

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass(frozen=True)
class _Handle:
    """An open store, the process that opened it and the identity of the cache.db it opened."""

    cache: Any  # diskcache.Cache, or _ReadOnlyCache when the disk is full or the directory read-only
    pid: int
    db: tuple[int, int] | None
    readonly: str = ""  # why the store is read-only, "" when it is writable


_MISSING = object()
_MISSING_FILE_ATTEMPTS = 4


class _Store:
    """One diskcache database: opened lazily in each process, replaced when damaged, read-only when it must be.

    Args:
        top: The cache directory.
        sub: The store's subfolder of ``top`` ("" for ``top`` itself).
        settings: diskcache settings.
        size_limit: Evict down to this on opening (``None``: unbounded).
        events: Where to record databases moved aside.
    """

    def __init__(
        self, top: Path, sub: str, settings: dict[str, Any], size_limit: int | None, events: list[MovedAside]
    ) -> None:
        self.top = top
        self.sub = sub
        self.directory = top / sub if sub else top
        self.folder = str(self.directory)  # for os.path.join on the warm path (a Path join costs ~10 us)
        self.settings = settings
        self.size_limit = size_limit
        self.events = events
        self.handle: _Handle | None = None
        self.lock = threading.RLock()
        self.warned_readonly = False

    def reset(self) -> None:
        """Forget the handle and lock of another process (after a fork)."""
        self.handle = None
        self.lock = threading.RLock()

    @property
    def db_path(self) -> Path:
        return self.directory / _DB_NAME

    @property
    def rebuild_lock_path(self) -> Path:
        return self.top / _LOCKS_DIR / (f"{self.sub}-rebuild.lock" if self.sub else "rebuild.lock")

    def current(self) -> _Handle:
        handle = self.handle
        if handle is not None and handle.pid == os.getpid():
            return handle
        with self.lock:
            if self.handle is None or self.handle.pid != os.getpid():
                self.handle = self._open()
            return self.handle

    def drop(self, handle: _Handle) -> None:
        """Close ``handle`` if it is still the current one, so the next use reopens."""
        with self.lock:
            if self.handle is handle:
                with contextlib.suppress(Exception):
                    handle.cache.close()
                self.handle = None

    def close(self) -> None:
        with self.lock:
            handle, self.handle = self.handle, None
        if handle is not None and handle.pid == os.getpid():
            handle.cache.close()

    def _open(self) -> _Handle:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if _is_unwritable(exc):
                return self._open_readonly(exc)
            raise CacheError(f"cannot create the cache directory {self.directory}: {exc}") from exc
        # Opening (which may create the database) and moving a damaged one aside exclude each other across
        # processes, so nobody moves aside a database another process is creating at that moment.
        with _file_lock(self.rebuild_lock_path):
            if _emptied_database(self.directory):
                self.move_aside("it is empty while value files remain")
            for attempt in range(2):
                try:
                    cache = diskcache.Cache(str(self.directory), timeout=60, disk=_EntryDisk, **self.settings)
                except sqlite3.DatabaseError as exc:
                    if not attempt and _is_damaged_database(exc):
                        self.move_aside(exc)
                        continue
                    if _is_unwritable(exc):
                        return self._open_readonly(exc)
                    raise CacheError(f"cannot open the cache database in {self.directory}: {exc}") from exc
                except (OSError, diskcache.Timeout) as exc:
                    if _is_unwritable(exc):
                        return self._open_readonly(exc)
                    raise CacheError(f"cannot open the cache in {self.directory}: {exc}") from exc
                break
        handle = _Handle(cache, os.getpid(), _inode(self.db_path))
        if self.size_limit is not None:
            # Reopened with a smaller limit than the cache already uses: evict down to it now. diskcache culls
            # ten least recently used entries at a time, a fine enough step for limits of many entries.
            with contextlib.suppress(sqlite3.DatabaseError, diskcache.Timeout, OSError):
                if cache.volume() > self.size_limit:
                    cache.cull(retry=True)
        return handle

    def _open_readonly(self, cause: BaseException) -> _Handle:
        # Opening diskcache writes its settings, which a full disk or a read-only directory refuses; reading
        # needs no write, so a warm cache keeps serving.
        try:
            cache = _ReadOnlyCache(self.directory)
        except sqlite3.Error as exc:
            raise CacheError(f"cannot open the cache in {self.directory}: {cause}; read-only: {exc}") from exc
        if not self.warned_readonly:  # once per store and process: every write tries (and logs) no more
            self.warned_readonly = True
            logger.warning("cache %s cannot be written (%s): reading only", self.directory, cause)
        return _Handle(cache, os.getpid(), _inode(self.db_path), readonly=str(cause) or type(cause).__name__)

    def move_aside(self, reason: object) -> None:
        """Move the damaged store's contents to ``<cache dir>.corrupt-<timestamp>[/sub]`` and warn once.

        Called with the rebuild lock held. Falls back to deleting what cannot be moved.
        """
        stamp = time.strftime("%Y%m%dT%H%M%S")
        suffix = 0
        while True:
            root = self.top.with_name(f"{self.top.name}.corrupt-{stamp}" + (f"-{suffix}" if suffix else ""))
            aside = root / self.sub if self.sub else root
            if not aside.exists():
                break
            suffix += 1
        moved = True
        try:
            aside.mkdir(parents=True)
        except OSError:
            moved = False
        skip = {_LOCKS_DIR} if self.sub else {_LOCKS_DIR, _META_DIR, *_NOT_CACHE_DIRS}
        for child in list(self.directory.iterdir()):
            if child.name in skip:
                # Lock files carry no data, and other processes may be holding them right now; the metadata
                # store has a database of its own, which is not the damaged one; a user's predictions and the
                # datasets' counters live beside the cache, not in its database.
                continue
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
        self.events.append(MovedAside(self.db_path, str(reason), aside if moved else None))
        where = f"moved its contents to {aside}" if moved else "deleted its contents"
        warnings.warn(
            f"playment_torch cache database {self.db_path} is damaged ({reason}); {where} and started an empty cache",
            RuntimeWarning,
            stacklevel=2,
        )

    def call(self, what: str, operation: Callable[[Any], _T], *, check_stale: bool = True, write: bool = False) -> _T:
        """Run one diskcache operation, rebuilding a damaged database once and wrapping every failure.

        Args:
            what: Names the operation in error messages.
            operation: Receives the open ``diskcache.Cache`` (or its read-only stand-in).
            check_stale: First make sure the open database is still the one at ``directory/cache.db``
                (another process may have moved a damaged cache aside, or someone deleted the directory);
                reopen if not. A ``stat``: cheap, but skipped on the hit path, where a stale handle costs
                nothing worse than a miss (and misses check).
            write: The operation writes. A read-only store first tries to reopen writable (the disk may have
                room again); a read that fails because the disk is full switches to read-only and retries.

        Returns:
            Whatever ``operation`` returns.

        Raises:
            CacheError: The cache is unusable (unwritable, locked for too long, damaged twice in a row).
        """
        for attempt in range(3):
            handle = self.current()
            if check_stale and _inode(self.db_path) != handle.db:
                self.drop(handle)
                handle = self.current()
            if write and handle.readonly:
                self.drop(handle)
                handle = self.current()
                if handle.readonly:
                    raise _CacheUnwritable(
                        f"cache {self.directory}: {what} failed: the cache cannot be written ({handle.readonly})"
                    )
            try:
                return operation(handle.cache)
            except sqlite3.DatabaseError as exc:
                if not attempt and _is_damaged_database(exc):
                    with self.lock:
                        if self.handle is handle:  # not already rebuilt by another thread
                            with _file_lock(self.rebuild_lock_path):
                                # Another process that saw the damage first has already put a new database
                                # in place: use it rather than moving it aside too.
                                if _inode(self.db_path) == handle.db:
                                    self.move_aside(exc)
                            self.drop(handle)
                    continue
                failure: BaseException = exc
            except (OSError, diskcache.Timeout) as exc:
                failure = exc
            if _is_unwritable(failure):
                if not write and not handle.readonly and attempt < 2:
                    # A bounded cache records access times on reads; a full disk refuses that. Read only.
                    with self.lock:
                        if self.handle is handle:
                            with contextlib.suppress(Exception):
                                handle.cache.close()
                            self.handle = self._open_readonly(failure)
                    continue
                raise _CacheUnwritable(f"cache {self.directory}: {what} failed: {failure}") from failure
            raise CacheError(f"cache {self.directory}: {what} failed: {failure}") from failure
        raise CacheError(f"cache {self.directory}: {what} failed repeatedly")

    def entries(self) -> list[tuple[str, int, float, str | None]]:
        """``(key, bytes, store time, value file)`` of every entry, read without writing."""
        try:
            reader = _ReadOnlyCache(self.directory)
        except sqlite3.Error:
            self.call("open", len)  # a damaged database: let the usual recovery move it aside
            reader = _ReadOnlyCache(self.directory)
        try:
            return reader.entries()
        except sqlite3.Error as exc:
            raise CacheError(f"cache {self.directory}: listing entries failed: {exc}") from exc
        finally:
            reader.close()

    def free_value_files(self, keys: set[str] | None) -> int:
        """Unlink the value files of ``keys`` (all when ``None``) so a full disk has room to delete their rows.

        The rows are deleted right after; a reader that finds a row without its file meanwhile reads a miss.

        Returns:
            The number of files unlinked.
        """
        unlinked = 0
        for key, _size, _stored, filename in self.entries():
            if filename and (keys is None or key in keys):
                with contextlib.suppress(OSError):
                    os.unlink(self.directory / filename)
                    unlinked += 1
        return unlinked

    def delete_many(self, keys: list[str]) -> int:
        """Delete ``keys``, in transactions of 1000, freeing value files first when the disk is full."""

        def delete_all(cache: Any) -> int:
            deleted = 0
            for start in range(0, len(keys), 1000):
                with cache.transact(retry=True):
                    deleted += sum(bool(cache.delete(key, retry=True)) for key in keys[start : start + 1000])
            return deleted

        if not keys:
            return 0
        try:
            return self.call("delete", delete_all, write=True)
        except _CacheUnwritable:
            self.free_value_files(set(keys))
            return self.call("delete", delete_all, write=True)

    def clear(self) -> int:
        """Delete every entry, freeing value files first when the disk is full.

        Then remove value files no entry names: a write that failed half-way (a full disk) leaves its file
        behind, taking space no entry accounts for. A value file another process is writing at this very
        moment goes too; its entry then reads as a miss, as if cleared a moment later.
        """
        try:
            removed = int(self.call("clear", lambda cache: cache.clear(retry=True), write=True))
        except _CacheUnwritable:
            self.free_value_files(None)
            removed = int(self.call("clear", lambda cache: cache.clear(retry=True), write=True))
        for folder in self.directory.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]"):
            for orphan in folder.glob("*.val"):
                with contextlib.suppress(OSError):
                    orphan.unlink()
            with contextlib.suppress(OSError):
                folder.rmdir()
                folder.parent.rmdir()
        return removed


def _has(key: str, cache: Any) -> bool:
    return key in cache


def _present_keys(directory: Path, keys: list[str]) -> set[str]:
    """Which of ``keys`` have a live row in the diskcache table in ``directory`` (see ArrayCache.contains_many).

    Raises:
        sqlite3.Error: the database cannot be read.
    """
    reader = _ReadOnlyCache(directory)
    try:
        now = time.time()
        live = "(expire_time IS NULL OR expire_time > ?)"
        rows = reader._rows("SELECT count(*) FROM Cache")
        if not rows or rows[0][0] <= 4 * len(keys):
            # Not much more in the table than asked for: one scan of its keys is cheaper than looking each up.
            wanted = set(keys)
            scanned = reader._rows(f"SELECT key FROM Cache WHERE raw = 1 AND {live}", (now,))
            return {key for (key,) in scanned if key in wanted}
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            # As diskcache's __contains__: string keys are stored raw, and an expired row is no entry.
            query = f"SELECT key FROM Cache WHERE raw = 1 AND key IN ({marks}) AND {live}"
            found.update(key for (key,) in reader._rows(query, (*chunk, now)))
        return found
    finally:
        reader.close()


class ArrayCache:
    """A process-safe disk cache of numpy arrays and JSON values.

    Every read checks the entry's header and the key it was written for; the payload checksum is checked on
    the first read of each value file version in a process (see the module docstring for exactly when a
    read trusts a file it checked before). A damaged entry is deleted and reported as missing so the caller
    fetches it again. A damaged cache database is moved aside to ``<directory>.corrupt-<timestamp>`` (with
    one warning, and recorded in :attr:`moved_aside`) and replaced by an empty one. On a full disk or a
    read-only directory the cache reads without writing. The handle pickles to its options and opens lazily
    in each process.

    Args:
        directory: Where the cache lives; ``None`` means :func:`default_cache_dir`.
        size_limit: Bytes the array store may occupy on disk before least-recently-used arrays are evicted;
            ``None`` means unbounded. JSON values (job metadata) are kept apart and never evicted. The limit
            is soft: a write that finds the store over it evicts the two least recently used entries.
            Bounded caches pay for the bookkeeping: every read also records its access time.
        lock_timeout: Seconds :meth:`get_or_create` waits for another thread or process creating the same
            key; ``None`` waits for ever. On timeout it warns and creates the value itself (the lock only
            saves duplicate work: writes are atomic, so the cache stays correct).
        checked_table_bytes: Size of the file table shared by the processes using the cache, which remembers
            where each array's value file is and which file versions were checked in full (32 bytes per file,
            allocated on disk up front; 0: no table, every read asks SQLite and checks in full). Default:
            ``PLAYMENT_TORCH_FILE_TABLE_BYTES`` from the environment, else 32 MiB.

    Attributes:
        directory: The cache directory (created on first use).
        size_limit: As given.
        lock_timeout: As given.
        stats: A :class:`CacheStats` for this process.
        moved_aside: Damaged databases this handle replaced, in this process.

    Raises:
        ConfigError: ``size_limit`` is not positive, or another option is negative.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        size_limit: int | None = None,
        lock_timeout: float | None = _LOCK_TIMEOUT,
        checked_table_bytes: int | None = None,
    ) -> None:
        if size_limit is not None and size_limit <= 0:
            raise ConfigError(f"size_limit must be a positive number of bytes or None, not {size_limit!r}")
        if lock_timeout is not None and not lock_timeout >= 0:
            raise ConfigError(f"lock_timeout must be a number of seconds >= 0 or None, not {lock_timeout!r}")
        if checked_table_bytes is None:
            checked_table_bytes = _table_bytes_from_environment()
        if checked_table_bytes < 0:
            raise ConfigError(f"checked_table_bytes must be >= 0, not {checked_table_bytes!r}")
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self.size_limit = size_limit
        self.lock_timeout = lock_timeout
        self.checked_table_bytes = checked_table_bytes
        self.moved_aside: list[MovedAside] = []
        if size_limit is None:
            # No eviction, so no access-time bookkeeping: reads stay a single SELECT instead of a write
            # transaction, which also keeps concurrent readers from queueing on SQLite's write lock.
            settings: dict[str, Any] = {"eviction_policy": "none", "size_limit": _UNBOUNDED}
        else:
            # cull_limit=2: a write that finds the cache over its limit evicts the two least recently used
            # entries. One would leave a cache that is over its limit (entries of varying size, a limit
            # lowered on reopening) over it for good; diskcache's default of 10 empties a small cache at once.
            settings = {"eviction_policy": "least-recently-used", "size_limit": size_limit, "cull_limit": 2}
        self._arrays = _Store(self.directory, "", settings, size_limit, self.moved_aside)
        self._meta = _Store(
            self.directory, _META_DIR, {"eviction_policy": "none", "size_limit": _UNBOUNDED}, None, self.moved_aside
        )
        self._pid = os.getpid()
        self._reset_process_state()
        _LIVE_CACHES.add(self)

    def _reset_process_state(self) -> None:
        """Fresh handles, locks, counters and check table: at creation and in a forked child."""
        self._pid = os.getpid()
        self._arrays.reset()
        self._meta.reset()
        self._lock = threading.RLock()  # guards the per-key lock table
        self._stats_lock = threading.Lock()
        self._key_locks: dict[str, list[Any]] = {}  # key -> [lock, number of holders and waiters]
        # A forked child keeps the parent's file table (a shared mapping, and keyed by file identity, which a
        # fork does not change); a process that unpickled the cache maps the same file on first use.
        self._file_table: _FileTable | None = getattr(self, "_file_table", None)
        self._stats = CacheStats()

    @property
    def _files(self) -> _FileTable:
        """The file table, mapped on first use (the directory may not exist before)."""
        table = self._file_table
        if table is None:
            with self._lock:
                if self._file_table is None:
                    with contextlib.suppress(OSError):
                        self.directory.mkdir(parents=True, exist_ok=True)
                    self._file_table = _FileTable(self.directory / _FILE_TABLE, self.checked_table_bytes)
                table = self._file_table
        return table

    @property
    def stats(self) -> CacheStats:
        """This process's counters: fresh in a forked child or an unpickled copy; ``reset()`` zeroes them."""
        self._check_fork()
        return self._stats

    def __repr__(self) -> str:
        return f"ArrayCache({str(self.directory)!r}, size_limit={self.size_limit!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Only what is needed to reopen: no SQLite connection, lock or file handle crosses a process boundary.
        return {
            "directory": str(self.directory),
            "size_limit": self.size_limit,
            "lock_timeout": self.lock_timeout,
            "checked_table_bytes": self.checked_table_bytes,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["directory"],
            size_limit=state["size_limit"],
            lock_timeout=state.get("lock_timeout", _LOCK_TIMEOUT),
            checked_table_bytes=state.get("checked_table_bytes", _CHECKED_TABLE_BYTES),
        )

    def __enter__(self) -> ArrayCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_fork(self) -> None:
        # The at-fork hook resets forked children; this covers a fork it did not see (os.register_at_fork
        # runs for os.fork and multiprocessing, not for a fork made by a C extension).
        if os.getpid() != self._pid:
            self._reset_process_state()

    @property
    def _handle(self) -> _Handle | None:
        """The array store's open handle (``None`` until first use, and in a fresh copy): for tests."""
        return self._arrays.handle

    def _store(self, kind: int, *, metadata: bool = False) -> _Store:
        self._check_fork()
        return self._meta if kind == _KIND_JSON or metadata else self._arrays

    # --- reads --------------------------------------------------------------------------------------------

    def _read_entry(self, store: _Store, key: str) -> tuple[np.ndarray, _FileVersion | None, str | None] | None:
        """Return the stored bytes of ``key`` as a writable uint8 array, ``None`` if absent.

        The bytes come with their value file's version and name (relative to the store), or ``None`` twice for
        small values kept inside SQLite.

        Raises:
            _CorruptEntry: The row exists but its value file does not, or cannot be read.
        """

        def fetch(cache: Any) -> tuple[np.ndarray, _FileVersion | None, str | None] | object:
            value = cache.get(key, default=_MISSING, read=True, retry=True)
            if value is _MISSING:
                return _MISSING
            if isinstance(value, bytes):  # small values live inside SQLite; copy so the result is writable
                return np.frombuffer(bytearray(value), dtype=np.uint8), None, None
            if not isinstance(value, io.BufferedIOBase):
                raise _CorruptEntry(f"entry is a {type(value).__name__}, not bytes written by this module")
            try:
                with value:
                    buffer, version = _read_all(value)
            except OSError as exc:
                raise _CorruptEntry(f"value file unreadable: {exc}") from exc
            name = getattr(value, "name", None)
            relative = os.path.relpath(name, store.directory) if isinstance(name, str) else None
            return buffer, version, relative

        for attempt in range(_MISSING_FILE_ATTEMPTS):
            value = store.call("get", fetch, check_stale=False)
            if value is not _MISSING:
                return cast("tuple[np.ndarray, _FileVersion | None, str | None]", value)
            # diskcache answers "missing" both for absent keys and for rows whose file vanished. Look again:
            # an overwrite of the same key deletes the old file right after its commit, and a reader that
            # selected the old row just before can find the file gone. That is churn, not damage: retry.
            if not store.call("contains", lambda cache: key in cache):
                return None
            time.sleep(0.001 * attempt)
        # Persistently missing. Worst case (an overwrite storm outlasting every retry) this drops a good
        # entry, which costs a fetch, never a wrong value.
        raise _CorruptEntry("value file missing")

    def _read_located(self, digest: bytes) -> np.ndarray | None:
        """The warm path: read an array from the value file the file table names, without asking SQLite, and
        count the hit.

        Returns:
            The array, or ``None`` whenever anything is not as the table says (the file is gone, it is another
            key's, its checks fail): the caller then takes the SQLite path, which tells a stale slot from a
            damaged entry.
        """
        number = int.from_bytes(digest, "little")
        filename, checked = self._files.find(number)
        if filename is None:
            return None
        try:
            buffer, version = _read_path(f"{self._arrays.folder}{os.sep}{filename}")
        except OSError:
            return None
        seen = _FileTable.version_hash(version)
        try:
            found, payload = _unframe(buffer, digest, check_payload=seen != checked)
        except _CorruptEntry:
            return None
        if found != _KIND_ARRAY:
            return None
        if seen != checked and time.time_ns() - version[3] > _SETTLED_NS:
            self._files.remember(number, version=seen)
        with self._stats_lock:
            self._stats.hits += 1
            self._stats.bytes_read += buffer.size
        return cast(np.ndarray, payload)

    def _get(
        self,
        key: str | Callable[[], str],
        kind: int,
        *,
        count_miss: bool = True,
        metadata: bool = False,
        digest: bytes | None = None,
        use_table: bool = True,
    ) -> tuple[bool, Any]:
        """Look a key up and decode it as ``kind``, keeping the statistics.

        Args:
            key: The key, or what makes it (called only when the file table does not lead to the value).
            kind: Array or JSON.
            count_miss: Count a miss in the statistics.
            metadata: Look in the metadata store.
            digest: The key's :func:`_key_digest`, when the caller has it.
            use_table: Try the file table first (``False`` when the caller just did).

        Returns:
            ``(True, value)`` for a hit, ``(False, None)`` for a miss or a damaged (now deleted) entry.

        Raises:
            CacheError: The cache is unusable.
        """
        store = self._store(kind, metadata=metadata)
        if digest is None:
            digest = _key_digest(key if isinstance(key, str) else key())
        number = int.from_bytes(digest, "little")
        # (Not for a bounded cache: its reads must reach SQLite, which records access times for LRU eviction.)
        if use_table and store is self._arrays and kind == _KIND_ARRAY and self.size_limit is None:
            located = self._read_located(digest)
            if located is not None:
                return True, located
        if not isinstance(key, str):
            key = key()
        try:
            entry = self._read_entry(store, key)
            if entry is None:
                with self._stats_lock:
                    self._stats.misses += count_miss
                return False, None
            buffer, version, filename = entry
            seen = _FileTable.version_hash(version) if version is not None else 0
            checked = version is not None and self._files.find(number)[1] == seen
            found, payload = _unframe(buffer, digest, check_payload=not checked)
            # Only a file that has been still for a while is remembered: file times tick coarsely (milliseconds),
            # so a rewrite right after the check could otherwise keep the same modification time.
            settled = version is not None and (checked or time.time_ns() - version[3] > _SETTLED_NS)
            if version is not None:
                # The value file is recorded only for the array store, whose warm reads go through the table.
                self._files.remember(
                    number,
                    filename=filename if store is self._arrays and found == _KIND_ARRAY else "",
                    version=seen if settled else 0,
                )
            if found != kind:
                # The metadata store holds JSON and some arrays (put_array(..., metadata=True)): asking for the
                # other kind is a miss, not damage, and must not delete the entry.
                with self._stats_lock:
                    self._stats.misses += count_miss
                return False, None
            if kind == _KIND_JSON:
                try:
                    payload = json.loads(cast(bytes, payload))
                except ValueError as exc:  # checksummed yet undecodable: not ours to trust either
                    raise _CorruptEntry(f"undecodable JSON: {exc}") from exc
        except _CorruptEntry as exc:
            # Damage is not an error for the caller: drop the entry and let them fetch the value again.
            self._files.forget(number)
            store.call("delete", lambda cache: cache.delete(key, retry=True))
            with self._stats_lock:
                self._stats.corrupt += not isinstance(exc, _OutdatedEntry)
                self._stats.misses += 1
            return False, None
        with self._stats_lock:
            self._stats.hits += 1
            self._stats.bytes_read += buffer.size
        return True, payload

    def get_array(self, key: str, *, metadata: bool = False) -> np.ndarray | None:
        """Return the array stored under ``key`` (in the metadata store with ``metadata=True``).

        Arrays and JSON values are kept apart: a key stored with :meth:`put_json` is not found here.

        Args:
            key: A key from :func:`cache_key` (any string works).

        Returns:
            The array, with its dtype and shape as stored, as a zero-copy view over the freshly read entry (so
            it is writable and owned by nobody else); ``None`` when the key is missing or its entry was
            damaged (the damaged entry is deleted and counted in ``stats.corrupt``) or written by an older
            version of this module.

        Raises:
            CacheError: The cache is unusable.
        """
        return cast("np.ndarray | None", self._get(key, _KIND_ARRAY, metadata=metadata)[1])

    def find_array(self, digest: bytes, key: Callable[[], str]) -> np.ndarray | None:
        """:meth:`get_array` for hot paths that keep each key's digest instead of its string.

        A warm read finds the value file through the file table and never needs the key itself; ``key`` is
        called only when the table does not lead to the value.

        Args:
            digest: :meth:`key_digest` of the key.
            key: Makes the key.

        Returns:
            As :meth:`get_array`.

        Raises:
            CacheError: The cache is unusable.
        """
        if self.size_limit is None:  # the warm path of _get, without its generality (~5 us of a 120 kB read)
            self._check_fork()
            located = self._read_located(digest)
            if located is not None:
                return located
        found = self._get(key, _KIND_ARRAY, digest=digest, use_table=False)
        return cast("np.ndarray | None", found[1])

    @staticmethod
    def key_digest(key: str) -> bytes:
        """The 8-byte digest of ``key`` that :meth:`find_array` takes (and every entry's header holds)."""
        return _key_digest(key)

    def get_json(self, key: str) -> Any | None:
        """Return the JSON value stored under ``key``, ``None`` when missing, damaged or outdated.

        Args:
            key: A key from :func:`cache_key`.

        Returns:
            The decoded JSON value, or ``None`` (a stored JSON ``null`` reads back as ``None`` too, though
            ``stats`` counts it as a hit).

        Raises:
            CacheError: The cache is unusable.
        """
        return self._get(key, _KIND_JSON)[1]

    # --- writes -------------------------------------------------------------------------------------------

    def _put(self, store: _Store, key: str, parts: tuple[bytes, memoryview, bytes] | bytes) -> None:
        # diskcache writes a value file completely before inserting the row that points to it, in one
        # transaction, so readers never see a half-written entry; `bytes` (not pickle) keeps large values
        # as plain files that reads can pull in with one readinto.
        framed = parts if isinstance(parts, tuple) else (parts, memoryview(b""), b"")
        size = sum(len(part) if isinstance(part, bytes) else part.nbytes for part in framed)
        if size < _FILE_THRESHOLD:
            entry = b"".join(framed)
            store.call("put", lambda cache: cache.set(key, entry, retry=True), write=True)
        else:
            # Written by _EntryDisk, part by part. (A fresh value per attempt: a rebuilt database retries the write.)
            store.call("put", lambda cache: cache.set(key, _Entry(framed), retry=True), write=True)
        if store is self._arrays:
            # A reader must not be led to the value file this write replaced (it is deleted, but not atomically).
            self._files.forget(int.from_bytes(_key_digest(key), "little"))
        with self._stats_lock:
            self._stats.bytes_written += size

    def put_array(self, key: str, array: np.ndarray, *, metadata: bool = False) -> None:
        """Store ``array`` under ``key``, replacing any previous array.

        Args:
            key: A key from :func:`cache_key`.
            array: Any shape and dtype (structured and subarray fields included) except object dtypes.
            metadata: Keep it in the metadata store, which a ``size_limit`` never evicts (a job result's bytes,
                the frame index: what ``refresh="never"`` needs to find the frames at all). Read it back with
                ``get_array(key, metadata=True)``.

        Raises:
            CacheError: The array holds Python objects, or the cache is unusable (a full disk included).
        """
        self._put(self._store(_KIND_ARRAY, metadata=metadata), key, _encode_array(np.asarray(array), key))

    def put_json(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable ``value`` under ``key``, framed and checksummed like arrays.

        JSON values live in the metadata store, which a ``size_limit`` never evicts.

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
        self._put(self._store(_KIND_JSON), key, _frame(_KIND_JSON, payload, key))

    def touch_project(self, project_id: str) -> bool:
        """Record that ``project_id`` is in use now: what ``cache info`` shows as its last use.

        Datasets call this when they open a project (a warm epoch reads without writing, so reads alone would
        leave no trace). Best effort: on a full disk or a read-only cache nothing is recorded.

        Args:
            project_id: The project.

        Returns:
            Whether the time was recorded.
        """
        try:
            self.put_json(cache_key(_USED_KIND, project_id=project_id), {"project_id": project_id})
        except CacheError as exc:
            logger.debug("cannot record the use of project %s: %s", project_id, exc)
            return False
        return True

    # --- create once ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        timeout = self.lock_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            entry = self._key_locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        thread_lock: threading.Lock = entry[0]
        held = False
        try:
            held = thread_lock.acquire(timeout=-1 if timeout is None else timeout)
            if held:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                name = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest() + ".lock"
                path = self.directory / _LOCKS_DIR / name
                with _file_lock(path, timeout=remaining, what=f"cache key {key!r}", warn=True):
                    yield
            else:
                warnings.warn(
                    f"playment_torch cache: waited {timeout:.3g} s for the lock on cache key {key!r}, which another "
                    "thread holds; going on without it (the work may be done twice, the cache stays correct)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                yield
        finally:
            if held:
                thread_lock.release()
            with self._lock:
                entry[1] -= 1
                if not entry[1] and self._key_locks.get(key) is entry:
                    self._key_locks.pop(key, None)

    def get_or_create(self, key: str, create: Callable[[], np.ndarray]) -> np.ndarray:
        """Return the array under ``key``, calling ``create`` and storing its result if there is none.

        Concurrent callers for one key, in threads or in processes sharing the directory, call ``create``
        once: the others wait for it (up to ``lock_timeout``) and then read the stored value.

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
        self._check_fork()
        with self._key_lock(key):
            found, value = self._get(key, _KIND_ARRAY, count_miss=False)
            if found:
                return cast(np.ndarray, value)
            created = np.asarray(create())
            self.put_array(key, created)
            return created

    # --- bookkeeping --------------------------------------------------------------------------------------

    def _stores(self) -> tuple[_Store, _Store]:
        self._check_fork()
        return self._arrays, self._meta

    def __contains__(self, key: object) -> bool:
        """Whether an entry exists for ``key`` (its integrity is checked only when it is read)."""
        return any(store.call("contains", lambda cache: key in cache) for store in self._stores())

    def __len__(self) -> int:
        return sum(int(store.call("len", len)) for store in self._stores())

    def contains_many(self, keys: Sequence[str]) -> np.ndarray:
        """Whether an entry exists for each of ``keys``: ``key in cache`` for many keys at once.

        A query per key costs ~25 us (diskcache's ``__contains__``), 5 s for the 200,000 records of a
        100,000-frame dataset. This reads each store's table (diskcache's schema, as the read-only stand-in
        does) through one read-only connection: one scan of its keys when it holds at most four times as many
        rows as asked for, else 500 keys per ``IN`` query over its ``(key, raw)`` index. Should
        that fail (a damaged database), it falls back to ``key in cache`` one key at a time, whose recovery
        moves the damaged database aside.

        Args:
            keys: The keys.

        Returns:
            One flag per key, in order (integrity is checked only when an entry is read).
        """
        wanted = list(dict.fromkeys(keys))
        present: set[str] = set()
        for store in self._stores():
            try:
                present |= _present_keys(store.directory, wanted)
            except sqlite3.Error:
                for key in wanted:
                    if key not in present and store.call("contains", functools.partial(_has, key)):
                        present.add(key)
        return np.fromiter((key in present for key in keys), dtype=bool, count=len(keys))

    def keys(self) -> Iterator[str]:
        """Iterate over the keys present when called (in key order; a key holding both kinds appears once).

        Returns:
            An iterator over a snapshot of the keys.
        """
        found: set[str] = set()
        for store in self._stores():
            found.update(store.call("keys", lambda cache: list(cache.iterkeys())))
        return iter(sorted(found))

    def delete(self, key: str) -> bool:
        """Delete ``key``'s entries (array and JSON).

        Args:
            key: The key.

        Returns:
            Whether there was an entry to delete.
        """
        return bool(sum(store.delete_many([key]) for store in self._stores()))

    def projects(self) -> list[ProjectUsage]:
        """Summarise the cache per project, read without writing (so it works on a full disk too).

        The project is the second part of a :func:`cache_key` key; keys of another shape are summed under
        ``project_id=None``.

        Returns:
            One :class:`ProjectUsage` per project, most recently used first.
        """
        entries: dict[str | None, int] = {}
        sizes: dict[str | None, int] = {}
        used: dict[str | None, float] = {}
        frames: dict[str | None, set[tuple[str, str]]] = {}
        for store in self._stores():
            for key, size, stored, _filename in store.entries():
                parts = _key_parts(key)
                project = parts[1] if parts else None
                entries[project] = entries.get(project, 0) + 1
                sizes[project] = sizes.get(project, 0) + int(size or 0)
                used[project] = max(used.get(project, 0.0), float(stored or 0.0))
                if parts and parts[3]:
                    frames.setdefault(project, set()).add((parts[2], parts[3]))
        usage = [
            ProjectUsage(project, entries[project], len(frames.get(project, ())), sizes[project], used[project])
            for project in entries
        ]
        return sorted(usage, key=lambda item: (-item.last_used, item.project_id or ""))

    def matching_keys(self, *, project_id: str | None = None, older_than: float | None = None) -> list[str]:
        """Keys of one project, or of projects not used for a while, as :meth:`clear` selects them.

        Args:
            project_id: Only this project's keys (see :meth:`projects`); ``None``: every project.
            older_than: Only projects whose last use (see :class:`ProjectUsage`) is at least this many
                seconds ago; keys of no project go by their own store time. ``None``: whatever their age.

        Returns:
            The matching keys, sorted.
        """
        rows = [(key, stored) for store in self._stores() for key, _size, stored, _file in store.entries()]
        last_used: dict[str | None, float] = {}
        projects = []
        for key, stored in rows:
            parts = _key_parts(key)
            project = parts[1] if parts else None
            projects.append(project)
            if project is not None:
                last_used[project] = max(last_used.get(project, 0.0), float(stored or 0.0))
        cutoff = None if older_than is None else time.time() - older_than
        chosen = set()
        for (key, stored), project in zip(rows, projects, strict=True):
            if project_id is not None and project != project_id:
                continue
            when = last_used[project] if project is not None else float(stored or 0.0)
            if cutoff is not None and when > cutoff:
                continue
            chosen.add(key)
        return sorted(chosen)

    def delete_many(self, keys: Iterable[str]) -> int:
        """Delete the entries of ``keys`` (array and JSON), on a full disk too.

        Args:
            keys: The keys.

        Returns:
            The number of entries deleted.
        """
        wanted = list(keys)
        return sum(store.delete_many(wanted) for store in self._stores())

    def clear(self, *, project_id: str | None = None, older_than: float | None = None) -> int:
        """Delete every entry, or those :meth:`matching_keys` selects. Works on a full disk.

        Args:
            project_id: Only this project's entries.
            older_than: Only entries of projects not used for this many seconds.

        Returns:
            The number of entries deleted.
        """
        if project_id is None and older_than is None:
            return sum(store.clear() for store in self._stores())
        return self.delete_many(self.matching_keys(project_id=project_id, older_than=older_than))

    def volume(self) -> int:
        """Return the bytes the cache occupies on disk: database pages plus value files, of both stores."""
        return sum(int(store.call("volume", lambda cache: cache.volume())) for store in self._stores())

    def verify(self, *, repair: bool = False) -> VerifyReport:
        """Read and check every entry, whatever this process checked before.

        Args:
            repair: Delete the damaged and outdated entries found.

        Returns:
            A :class:`VerifyReport`. ``stats`` is not changed.
        """
        report = VerifyReport()
        first_event = len(self.moved_aside)
        for store in self._stores():
            for key in store.call("keys", lambda cache: list(cache.iterkeys())):
                try:
                    entry = self._read_entry(store, key)
                    if entry is None:
                        continue  # deleted since the key snapshot
                    _unframe(entry[0], key)
                except _OutdatedEntry:
                    report.outdated += 1
                    if repair and store.delete_many([key]):
                        report.repaired += 1
                except _CorruptEntry:
                    report.bad.append(key)
                    if repair and store.delete_many([key]):
                        report.repaired += 1
                report.checked += 1
        report.bad.sort()
        report.moved_aside = self.moved_aside[first_event:]
        return report

    def close(self) -> None:
        """Close this process's database connections; the cache reopens by itself when used again."""
        for store in (self._arrays, self._meta):
            store.close()

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
