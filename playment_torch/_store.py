"""The frame store: what one frame of the index is on disk, how it gets there, and how it comes back. Torch-free.

The dataset, the CLI, export and evaluation all load frames through :class:`FrameStore`, so a frame has one
stored form and one definition of its cache keys.

The stored form (one write per file; for binary PCDs fewer bytes than were downloaded):

* a **points record**: the frame's finished points, float32 ``(N, C)`` in ``point_fields`` order, keyed by the
  point cloud's URL identity and the point fields. A relabelled job keeps its point clouds, so they are not
  downloaded again; a change of ``point_fields`` is a new key, and costs one download of every point cloud.
* a **mask record**: the frame's label keys in the smallest integer type that holds them, keyed by the result's
  digest (a relabelled job gets new masks).

* a **labels record**, derived: the mask mapped through the frame's lookup table under this store's
  ``classes`` and ``ignore_index``, again in the smallest integer type that holds it, keyed by the mask's key
  parts plus a digest of that mapping. It is made from the mask record, never downloaded: the first read of a
  frame under a class map maps the mask and writes it (as does a read that misses it: an evicted entry; a
  read-only cache just maps the mask on every read). Every later read is two file reads and one widening to
  int64 instead of a gather per point (~80 us of a 120k-point frame's ~0.25 ms). Prefetch leaves it to that
  first read, which has the class map a training run uses; its cost there is one write of a byte a point.

A change of ``classes`` or ``ignore_index`` therefore downloads nothing: it writes a new labels record (one byte
a point, usually) on each frame's first read. A legacy frame's single PCD holds both the points and the label
keys; one download fills all three records.

Non-finite coordinates (NaN, inf) are kept, as Playment's masks count them: a frame that has them is reported
once per process with a warning when it is decoded, and counted in ``DatasetStats.nonfinite_points``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from playment_torch.cache import ArrayCache, cache_key
from playment_torch.client import PlaymentClient
from playment_torch.errors import CacheError, FrameError, PlaymentError, PlaymentFormatError, redact_url
from playment_torch.formats.masks import label_keys, read_mask
from playment_torch.formats.pcd import read_pcd
from playment_torch.index import FrameIndex

__all__ = ["LABELS", "MASK", "POINTS", "FrameStore", "Loaded", "compact_keys", "select_fields"]

#: A frame's records (indices into FrameStore._key_of and columns of its digest memo).
POINTS, MASK, LABELS = 0, 1, 2
# Seconds a process stops offering labels records to a cache that refused one.
_REFUSED_PAUSE = 60.0


@dataclass(frozen=True)
class Loaded:
    """One frame's arrays as the store returns them.

    Attributes:
        points: float32 ``(N, C)``.
        labels: int64 ``(N,)`` class indices.
        failure: With ``lenient=True``, the error that made these a placeholder (``None`` when the frame loaded).
    """

    points: np.ndarray
    labels: np.ndarray
    failure: PlaymentError | None = None


class FrameStore:
    """Keys, get-or-create, decoding and label mapping for the frames of one index.

    Args:
        index: The frames.
        cache: Where the records live.
        client: Returns the API client (called only on a cache miss, so offline use needs no key).
        point_fields: PCD fields that become the columns of the points.
        ignore_index: The label of unlabeled points.
        offline: Never download: a miss is a :class:`CacheError`.
        count: Receives counter deltas (``hits``, ``misses``, ``bytes_downloaded``, ...).
    """

    def __init__(
        self,
        index: FrameIndex,
        cache: ArrayCache,
        client: Callable[[], PlaymentClient],
        *,
        point_fields: Sequence[str],
        ignore_index: int,
        offline: bool,
        count: Callable[..., None],
    ) -> None:
        self.index = index
        self.cache = cache
        self._client = client
        self.point_fields = tuple(point_fields)
        self.ignore_index = int(ignore_index)
        self.offline = offline
        self._count = count
        # Short and stable: the point fields are part of every points key.
        self._fields_tag = hashlib.sha256(json.dumps(self.point_fields).encode()).hexdigest()[:12]
        self._columns = len(self.point_fields)
        self._warned: set[tuple[str, str]] = set()
        self._warned_lock = threading.Lock()
        self._labels_refused_until = 0.0  # see _write_labels
        # Each frame's three key digests, made on first use: a warm read needs only the digest (the cache's file
        # table leads to the value file), and building a key (URL identity, escaping) costs ~20 us.
        self._digests: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_warned_lock"]
        state["_warned"] = set()
        state["_digests"] = None  # remade on first use; keeps a pickled dataset small
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._warned_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------- identity

    def where(self, position: int) -> str:
        """``"job J, frame F"`` of a position, the prefix of every message about it."""
        return f"job {self.index.job_of(position).job_id}, frame {self.index.frame_ids[position]}"

    def points_key(self, position: int) -> str:
        """The cache key of a frame's points record."""
        kind = f"points@{self._fields_tag}"
        if self.index.legacy[position]:
            # A legacy point cloud is also the mask: relabelling rewrites it, so its key names the digest too.
            kind += f"@{self.index.job_of(position).digest}"
        return self._frame_key(kind, position, self.index.pointcloud_urls[position])

    def mask_key(self, position: int) -> str:
        """The cache key of a frame's mask record (the result digest names the labelling it comes from)."""
        return self._frame_key(f"mask@{self.index.job_of(position).digest}", position, self.index.mask_urls[position])

    def labels_key(self, position: int) -> str:
        """The cache key of a frame's labels record: the mask key's parts plus a digest of the frame's mapping
        from label keys to class indices under this store's class map and ``ignore_index``."""
        keys, classes = self.index.label_table(position)
        mapping = hashlib.blake2b(digest_size=8)
        mapping.update(np.ascontiguousarray(keys, dtype="<i8").tobytes())
        mapping.update(np.ascontiguousarray(classes, dtype="<i8").tobytes())
        mapping.update(self.ignore_index.to_bytes(8, "little", signed=True))
        kind = f"labels@{self.index.job_of(position).digest}@{mapping.hexdigest()}"
        return self._frame_key(kind, position, self.index.mask_urls[position])

    def _frame_key(self, kind: str, position: int, url: str) -> str:
        """A record's cache key: ``kind`` and the frame's identity (project, job, frame, sensor, file URL)."""
        index = self.index
        return cache_key(
            kind,
            project_id=index.project_id,
            job_id=index.job_of(position).job_id,
            frame_id=index.frame_ids[position],
            sensor_id=index.sensor_ids[position],
            url=url,
        )

    def keys(self, position: int) -> tuple[str, str]:
        """``(points key, mask key)`` of a frame."""
        return self.points_key(position), self.mask_key(position)

    # ------------------------------------------------------------------------------------------- reads

    def load(self, position: int, *, lenient: bool = False) -> Loaded:
        """Points and labels of a frame, from the cache or the network.

        Args:
            position: The frame.
            lenient: Instead of raising, return a placeholder of this same frame: its points with every label
                ``ignore_index`` when only the mask failed, no points at all when the point cloud failed.

        Returns:
            The arrays (and, with ``lenient``, the failure they stand in for).

        Raises:
            PlaymentError: The frame could not be loaded and ``lenient`` is false.
        """
        try:
            points = self.points(position)
        except PlaymentError as exc:
            if not lenient:
                raise
            empty = np.zeros((0, self._columns), dtype=np.float32)
            return Loaded(empty, np.zeros(0, dtype=np.int64), exc)
        try:
            labels = self.labels(position, len(points))
        except PlaymentError as exc:
            if not lenient:
                raise
            return Loaded(points, np.full(len(points), self.ignore_index, dtype=np.int64), exc)
        return Loaded(points, labels)

    def instances(self, position: int) -> np.ndarray:
        """Instance ids of a frame's points (an index into its job's tracks; -1 for none)."""
        mask = self.mask(position, len(self.points(position)))
        return self.index.instances_of(position, mask)

    def points(self, position: int) -> np.ndarray:
        """The finished float32 ``(N, C)`` points of a frame.

        Raises:
            CacheError: Offline and not cached.
            PlaymentFormatError: The point cloud does not decode or lacks a point field.
            FrameError: The download failed.
        """
        points = self._cached(position, POINTS)
        if points is None:
            points = self._download_points(position)
        self._columns = points.shape[1]  # what a placeholder of a frame that failed has (COUNT > 1 fields widen)
        return points

    def _download_points(self, position: int) -> np.ndarray:
        index = self.index
        url = index.pointcloud_urls[position]
        legacy = bool(index.legacy[position])

        def decode(body: bytes) -> np.ndarray:
            data = read_pcd(body, copy=False).data
            points = select_fields(data, self.point_fields, self.where(position))
            if legacy:
                # The same file carries the label keys: store them now rather than download it twice.
                self.cache.put_array(self.mask_key(position), compact_keys(label_keys(data)))
            self._check_finite(position, points)
            return points

        # Legacy files are Playment's private result files: always through the attachments API.
        return self._get_or_download(position, POINTS, url, decode, private=legacy)

    def mask(self, position: int, points: int) -> np.ndarray:
        """The label keys of a frame, one per point, in their compact integer type.

        Args:
            position: The frame.
            points: The frame's point count: a mask of another length is a :class:`PlaymentFormatError`.

        Raises:
            CacheError: Offline and not cached.
            PlaymentFormatError: The mask does not decode or does not match the point count.
            FrameError: The download failed.
        """
        legacy = bool(self.index.legacy[position])
        url = self.index.pointcloud_urls[position] if legacy else self.index.mask_urls[position]

        def decode(body: bytes) -> np.ndarray:
            return compact_keys(label_keys(read_pcd(body, copy=False).data)) if legacy else _decode_mask(body)

        mask = self._get_or_download(position, MASK, url, decode, private=True)
        self.check_lengths(position, points=points, keys=len(mask))
        return mask

    def labels(self, position: int, points: int) -> np.ndarray:
        """The class index of each of a frame's points, from its labels record (made from the mask if missing).

        Args:
            position: The frame.
            points: The frame's point count.

        Returns:
            int64 ``(points,)``, a new array.

        Raises:
            CacheError: Offline and the mask is not cached.
            PlaymentFormatError: The mask does not decode or does not match the point count.
            FrameError: The mask's download failed.
        """
        stored = self._cached(position, LABELS)
        if stored is not None and stored.shape == (points,) and stored.dtype.kind in "iu":
            return stored.astype(np.int64)
        # Missing, or not this frame's (a length or type no labels record has): the mask decides, and raises
        # what is wrong with it.
        return self._write_labels(position, self.mask(position, points))

    def _write_labels(self, position: int, mask: np.ndarray) -> np.ndarray:
        """Map a frame's mask to class indices and store them as its labels record; return them (int64).

        The record is derived and optional: a cache that refuses it (read-only, full) costs a gather per read,
        nothing else, and is not asked again for a minute (each refused write costs a database reopen).
        """
        labels = self.index.classes_of(position, mask, self.ignore_index)
        if time.monotonic() >= self._labels_refused_until:
            try:
                self.cache.put_array(self.labels_key(position), compact_labels(labels))
            except CacheError:
                self._labels_refused_until = time.monotonic() + _REFUSED_PAUSE
        return labels

    def check_lengths(self, position: int, *, points: int, keys: int) -> None:
        """Raise unless a frame's mask has one label key per point.

        Raises:
            PlaymentFormatError: The lengths differ (the message names the frame and both lengths).
        """
        if keys != points:
            raise PlaymentFormatError(
                f"{self.where(position)}: the mask has {keys} label keys but the point cloud has {points} points"
            )

    def ensure(self, position: int) -> bool:
        """Make sure a frame's records are cached (prefetch).

        Returns:
            Whether anything had to be downloaded.

        Raises:
            PlaymentError: The frame could not be loaded.
        """
        before = self._downloads_in_this_thread()
        points = self.points(position)
        self.mask(position, len(points))
        return self._downloads_in_this_thread() > before

    def records(self, position: int) -> tuple[int, ...]:
        """The records of a frame that :meth:`ensure_record` can fetch independently: points and mask, or only
        the points for a legacy frame (its one file fills both records)."""
        return (POINTS,) if self.index.legacy[position] else (POINTS, MASK)

    def ensure_record(self, position: int, record: int) -> tuple[bool, int]:
        """Make sure one record of a frame is cached, without waiting for the other: prefetch fetches a frame's
        point cloud and mask at once, then checks their lengths with :meth:`check_lengths`.

        Args:
            position: The frame.
            record: ``POINTS`` or ``MASK`` (see :meth:`records`).

        Returns:
            Whether it had to be downloaded, and its length (points, or label keys).

        Raises:
            PlaymentError: The record could not be loaded (for a legacy frame's points: either record).
        """
        before = self._downloads_in_this_thread()
        if record == POINTS:
            length = len(self.points(position))
            if self.index.legacy[position]:
                self.mask(position, length)
        else:
            url = self.index.mask_urls[position]
            length = len(self._get_or_download(position, MASK, url, _decode_mask, private=True))
        return self._downloads_in_this_thread() > before, length

    # ------------------------------------------------------------------------------------------- plumbing

    _per_thread = threading.local()

    @classmethod
    def _downloads_in_this_thread(cls) -> int:
        # get_or_create runs a download in the thread that asked: prefetch tells cached frames apart by this.
        return int(getattr(cls._per_thread, "downloads", 0))

    def _digest(self, position: int, record: int) -> bytes:
        """The cache key digest of a frame's ``POINTS``, ``MASK`` or ``LABELS`` record, memoised."""
        digests = self._digests
        if digests is None or len(digests) != len(self.index):
            digests = self._digests = np.zeros((len(self.index), len(self._key_of)), dtype=np.uint64)
        known = int(digests[position, record])
        if known:
            return known.to_bytes(8, "little")
        digest = ArrayCache.key_digest(self._key_of[record](self, position))
        digests[position, record] = int.from_bytes(digest, "little")
        return digest

    def _cached(self, position: int, record: int) -> np.ndarray | None:
        """A record from the cache (counted as a hit), or ``None``: the warm path, which needs only its digest."""
        found = self.cache.find_array(self._digest(position, record), lambda: self._key_of[record](self, position))
        if found is not None:
            self._count(hits=1)
        return found

    def _get_or_download(
        self, position: int, record: int, url: str, decode: Callable[[bytes], np.ndarray], *, private: bool
    ) -> np.ndarray:
        cached = self._cached(position, record)
        if cached is not None:
            return cached
        key = self._key_of[record](self, position)
        if self.offline:
            raise CacheError(f"{self.where(position)}: {redact_url(url)} is not cached and refresh='never'")

        def create() -> np.ndarray:
            started = time.perf_counter()
            body = self._client().download(url, private=private, in_place=True)
            downloaded = time.perf_counter()
            try:
                array = decode(body)
            except PlaymentFormatError as exc:
                message = str(exc)
                where = self.where(position)
                if not message.startswith(where):
                    message = f"{where}: {redact_url(url)}: {message}"
                raise PlaymentFormatError(message) from exc
            self._per_thread.downloads = self._downloads_in_this_thread() + 1
            self._count(
                misses=1,
                bytes_downloaded=len(body),
                download_seconds=downloaded - started,
                decode_seconds=time.perf_counter() - downloaded,
            )
            return array

        try:
            return self.cache.get_or_create(key, create)
        except (PlaymentFormatError, CacheError, FrameError):
            raise
        except PlaymentError as exc:
            job_id, frame_id = self.index.job_of(position).job_id, self.index.frame_ids[position]
            raise FrameError(str(exc), job_id=job_id, frame_id=frame_id) from exc

    _key_of = (points_key, mask_key, labels_key)

    def _check_finite(self, position: int, points: np.ndarray) -> None:
        """Count (and report once per frame and process) points whose coordinates are NaN or infinite."""
        if not points.size or np.isfinite(points).all():
            return  # the common case, ~50x cheaper than counting per point (a finite cloud is wholly finite)
        bad = int(np.count_nonzero(~np.isfinite(points[:, : min(3, points.shape[1])]).all(axis=1)))
        if not bad:
            return
        self._count(nonfinite_points=bad)
        identity = (self.index.job_of(position).job_id, self.index.frame_ids[position])
        with self._warned_lock:
            if identity in self._warned:
                return
            self._warned.add(identity)
        warnings.warn(
            f"{self.where(position)}: {bad} of {len(points)} points have non-finite coordinates (kept; their "
            "labels still count)",
            RuntimeWarning,
            stacklevel=2,
        )


def select_fields(data: np.ndarray, point_fields: Sequence[str], where: str) -> np.ndarray:
    """The ``point_fields`` columns of a decoded cloud, as float32 ``(N, C)``.

    A field is found by its exact name, else case-insensitively when that is unambiguous; a ``COUNT > 1``
    field gives several columns.

    Args:
        data: A structured array (:attr:`PointCloud.data`).
        point_fields: The wanted fields, in column order.
        where: Names the frame in errors.

    Returns:
        A new C-contiguous float32 array (``(0, C)`` for an empty cloud).

    Raises:
        PlaymentFormatError: A field is missing (the message lists the cloud's fields).
    """
    names = data.dtype.names or ()
    chosen = []
    for wanted in point_fields:
        name = wanted if wanted in names else _case_insensitive(wanted, names)
        if name is None:
            raise PlaymentFormatError(
                f"{where}: the point cloud has no field {wanted!r}; it has {', '.join(names) or 'no fields'} "
                "(choose point_fields among them)"
            )
        chosen.append(name)
    fields: Mapping[str, Any] = data.dtype.fields or {}
    widths = [int(np.prod(fields[name][0].shape, dtype=np.int64)) for name in chosen]
    out = np.empty((len(data), sum(widths)), dtype=np.float32)
    if not len(data):
        return out
    offsets = [fields[name][1] for name in chosen]
    if (
        data.flags.c_contiguous
        and all(fields[name][0] == np.float32 for name in chosen)
        and offsets == list(range(offsets[0], offsets[0] + 4 * len(chosen), 4))
    ):
        # The common case (x y z intensity ... stored as consecutive float32): copy each point's run of bytes as
        # one opaque record, ~5x faster than numpy's element-wise copy of an (N, C) strided float view.
        run = np.dtype(f"V{4 * len(chosen)}")
        records = np.ndarray((len(data),), run, buffer=data, offset=offsets[0], strides=(data.itemsize,))
        out.view(run).reshape(len(data))[:] = records
        return out
    at = 0
    for name, width in zip(chosen, widths, strict=True):
        out[:, at : at + width] = data[name].reshape(len(data), width)
        at += width
    return out


def _decode_mask(body: bytes) -> np.ndarray:
    """A JSON mask's label keys, compact (the mask record)."""
    return compact_keys(read_mask(body))


def compact_keys(keys: np.ndarray) -> np.ndarray:
    """Label keys in the smallest integer type that holds them (masks are mostly small keys)."""
    if keys.size == 0:
        return keys.astype(np.uint8)
    low, high = int(keys.min()), int(keys.max())
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return keys.astype(dtype)
    return keys.astype(np.int64, copy=False)


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Class indices in the smallest integer type that holds them: int8 with a negative ``ignore_index``."""
    if labels.size:
        low, high = int(labels.min()), int(labels.max())
        for dtype in (np.uint8, np.int8, np.int16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= low and high <= info.max:
                return labels.astype(dtype)
    return labels.astype(np.uint8 if not labels.size else np.int64, copy=False)


def _case_insensitive(wanted: str, names: Sequence[str]) -> str | None:
    matches = [n for n in names if n.lower() == wanted.lower()]
    return matches[0] if len(matches) == 1 else None
