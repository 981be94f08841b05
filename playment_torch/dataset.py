"""``PlaymentSegmentationDataset``: Playment project and job ids in, training tensors out.

Construction resolves ids into a compact :class:`~playment_torch.index.FrameIndex` (API responses and job
results are cached on disk under the ``refresh`` policy). ``ds[i]`` reads the frame's decoded point cloud and
mask from the disk cache, downloading and decoding them on a miss, and maps label keys to class indices through
the frame's lookup table.

Choices where the issue is silent (also in the README):

* ``refresh="if_missing"`` uses the cached answers for completed jobs and their results; project and batch
  listings are asked again (batches gain jobs), as are jobs that were not completed. ``"always"`` asks the API
  for all of them again and downloads only what changed: point clouds are keyed by URL and stay; masks (and
  legacy mask clouds) are keyed by the result's digest too, so a relabelled job gets new masks. ``"never"``
  never touches the network.
* With ``on_error="skip"`` a job that fails to resolve is left out at construction; a frame that fails to load
  in ``ds[i]`` is replaced by the next frame that loads, trying at most 8 (the length of a map-style dataset
  cannot change under a running DataLoader), with one warning per frame; :meth:`prefetch` removes failing
  frames from the index.
* Warm items are one read: each frame's finished ``(points, labels)`` is cached beside the decoded point cloud
  and mask (``cache_samples=True``), keyed by the result digest, the point fields and the class map; the
  decoded arrays stay, so other fields or classes are derived again without the network.
* Multi-sweep (``sweeps=k``): ``sweep_reference="shared"`` (the default, Playment's rule that a job's point
  clouds and poses share one frame of reference) moves nothing between sweeps; ``"ego_pose"`` treats each cloud
  as being in its own ego/lidar frame with ``ego_pose`` its pose in a shared world, and moves sweep ``j`` by
  ``inv(E_key) @ E_j``. A last column holds the sweep index (0 for the key frame).
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from playment_torch._catalog import (
    Catalog,
    FrameCacheReport,
    Refresh,
    Snapshot,
    cache_report,
    frames_of,
    read_snapshot,
    write_snapshot,
)
from playment_torch.cache import ArrayCache, cache_key
from playment_torch.client import PlaymentClient
from playment_torch.errors import (
    CacheError,
    ConfigError,
    FrameError,
    PlaymentError,
    PlaymentFormatError,
    redact_url,
)
from playment_torch.formats.masks import label_keys, read_mask
from playment_torch.formats.pcd import read_pcd
from playment_torch.geometry import Camera, invert_transform
from playment_torch.index import FrameIndex
from playment_torch.labels import ClassMap
from playment_torch.models import FrameRef
from playment_torch.sample import Sample

__all__ = ["DatasetStats", "PlaymentSegmentationDataset", "PrefetchReport"]

logger = logging.getLogger("playment_torch")

REFRESH_POLICIES = ("if_missing", "always", "never")
_MAX_SUBSTITUTES = 8
ON_ERROR = ("raise", "skip")
FRAMES = ("native", "ego")
SWEEP_REFERENCES = ("shared", "ego_pose")


@dataclass
class DatasetStats:
    """What this process's dataset did: look here when an epoch is slow.

    Attributes:
        items: Samples built.
        hits: Reads the disk cache served: a finished sample counts once, a point cloud or mask once each.
        misses: Point clouds and masks that had to be downloaded and decoded.
        bytes_downloaded: Bytes of point clouds and masks downloaded.
        download_seconds: Time spent downloading (summed over threads).
        decode_seconds: Time spent decoding PCD and mask bytes.
        load_seconds: Time spent in ``ds[i]`` in all (cache reads, decoding, labels, tensors).
    """

    items: int = 0
    hits: int = 0
    misses: int = 0
    bytes_downloaded: int = 0
    download_seconds: float = 0.0
    decode_seconds: float = 0.0
    load_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class PrefetchReport:
    """The outcome of :meth:`PlaymentSegmentationDataset.prefetch`.

    Attributes:
        frames: Frames checked.
        downloaded: Frames that needed a download (the others were in the cache already).
        bytes_downloaded: Bytes downloaded.
        seconds: Wall time.
        failures: ``(job_id, frame_id, message)`` of frames that failed.
    """

    frames: int = 0
    downloaded: int = 0
    bytes_downloaded: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        mib = self.bytes_downloaded / 2**20
        return (
            f"{self.frames} frames ({self.downloaded} downloaded, {mib:.1f} MiB) in {self.seconds:.1f}s, "
            f"{len(self.failures)} failed"
        )


class PlaymentSegmentationDataset(torch.utils.data.Dataset[Sample]):
    """Point cloud segmentation frames of Playment jobs, as ``(points, labels, poses, intrinsics)`` samples.

    Args:
        project_id: The Playment project.
        job_ids: Jobs to use. With ``batch_ids`` too, both are used.
        batch_ids: Batches whose jobs to use (listed page by page). Neither given: every batch of the project.
        client: The API client; by default one is made on first need with ``PLAYMENT_API_KEY``.
        cache_dir: The disk cache's folder; default ``PLAYMENT_TORCH_CACHE`` or the user's cache folder.
        classes: ``None`` (the sorted union of label names), a list of names, or a dict name -> index.
        ignore_index: The label of unlabeled points and of classes left out.
        point_fields: PCD fields that become the columns of ``points`` (a COUNT > 1 field gives several).
        transform: Called on every :class:`Sample` (see :mod:`playment_torch.transforms`).
        refresh: ``"if_missing"``, ``"always"`` or ``"never"`` (see the module docstring).
        on_error: ``"raise"`` or ``"skip"`` a job or frame that fails.
        frame: ``"native"`` keeps points and poses in the point cloud's frame; ``"ego"`` expresses both in the
            ego frame of the (key) frame.
        sweeps: Frames per sample: the key frame and up to ``sweeps - 1`` earlier frames of the same job.
        label_sweeps: Keep the labels of earlier sweeps (by default they are ``ignore_index``).
        sweep_reference: How sweeps relate, ``"shared"`` or ``"ego_pose"`` (see the module docstring).
        num_threads: Threads for resolving jobs.
        progress: ``False`` silences progress bars; otherwise they are shown on a terminal.
        cache_size_limit: Bytes the cache may use before evicting least recently used entries.
        cache_samples: Also cache each frame's finished ``(points, labels)`` (about 4 bytes per point per
            field plus 8 per label), so that a warm ``ds[i]`` is a single read. ``False`` saves that disk space
            and derives them from the decoded arrays on every access.
        offline_subset: With ``refresh="never"``, keep only the frames the cache holds (with one warning)
            instead of failing when some are missing. Either way ``offline_report`` then holds the per job
            counts of every resolved frame, cached and missing (what ``inspect --offline`` prints).

    Raises:
        ConfigError: an option has a wrong value.
        PlaymentError: resolution failed (``on_error="raise"``), or ``refresh="never"`` and something is not
            cached (:class:`CacheError`, listing what).
    """

    def __init__(
        self,
        project_id: str,
        *,
        job_ids: Iterable[str] | None = None,
        batch_ids: Iterable[str] | None = None,
        client: PlaymentClient | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        classes: Sequence[str] | Mapping[str, int] | None = None,
        ignore_index: int = -100,
        point_fields: Sequence[str] = ("x", "y", "z", "intensity"),
        transform: Callable[[Sample], Sample] | None = None,
        refresh: str = "if_missing",
        on_error: str = "raise",
        frame: str = "native",
        sweeps: int = 1,
        label_sweeps: bool = False,
        sweep_reference: str = "shared",
        num_threads: int = 16,
        progress: bool | None = None,
        cache_size_limit: int | None = None,
        cache_samples: bool = True,
        offline_subset: bool = False,
        _snapshot: tuple[Snapshot, bool] | None = None,
    ) -> None:
        _choose("refresh", refresh, REFRESH_POLICIES)
        _choose("on_error", on_error, ON_ERROR)
        _choose("frame", frame, FRAMES)
        _choose("sweep_reference", sweep_reference, SWEEP_REFERENCES)
        if not isinstance(project_id, str) or not project_id:
            raise ConfigError(f"project_id must be a non-empty string, got {project_id!r}")
        if isinstance(point_fields, str) or not point_fields:
            raise ConfigError("point_fields must be a non-empty sequence of field names")
        if not isinstance(sweeps, int) or sweeps < 1:
            raise ConfigError(f"sweeps must be an integer >= 1, got {sweeps!r}")
        moves_points = frame == "ego" or sweeps > 1 or sweep_reference == "ego_pose"
        if moves_points and [str(f).lower() for f in tuple(point_fields)[:3]] != ["x", "y", "z"]:
            raise ConfigError(
                "frame='ego', sweeps and sweep_reference='ego_pose' move points, so point_fields must start with "
                f"x, y, z; got {tuple(point_fields)}"
            )
        self.project_id = project_id
        self.ignore_index = int(ignore_index)
        self.point_fields = tuple(point_fields)
        self.transform = transform
        self.refresh = refresh
        self.on_error = on_error
        self.frame = frame
        self.sweeps = sweeps
        self.label_sweeps = label_sweeps
        self.sweep_reference = sweep_reference
        self.num_threads = max(1, int(num_threads))
        self.progress = progress
        self.cache_samples = cache_samples
        self._client = client
        self.cache = ArrayCache(cache_dir, size_limit=cache_size_limit)
        self._stats = DatasetStats()
        self._stats_lock = threading.Lock()
        self._per_thread = threading.local()
        self._warned: set[int] = set()

        self.offline_subset = offline_subset
        # With refresh="never": what the cache held of every resolved frame (before offline_subset dropped any).
        self.offline_report: FrameCacheReport | None = None
        catalog = Catalog(
            project_id,
            cache=self.cache,
            client=lambda: self.client,
            refresh=Refresh.parse(refresh),
            on_error=on_error,
            num_threads=self.num_threads,
            bar=self._bar,
        )
        if _snapshot is None:
            index = catalog.open(
                None if job_ids is None else list(job_ids), None if batch_ids is None else list(batch_ids)
            )
        else:
            index = catalog.index(catalog.resolve_pinned(_snapshot[0].jobs, follow_changes=_snapshot[1]))
        self.class_map = ClassMap(classes, available=index.label_names, ignore_index=self.ignore_index)
        index.apply_classes(self.class_map)
        # What a cached sample depends on besides the frame: fields, class map, ignore index.
        recipe = json.dumps([self.point_fields, sorted(self.class_map.mapping.items()), self.ignore_index])
        self._sample_signature = hashlib.sha256(recipe.encode()).hexdigest()[:16]
        if _snapshot is not None:
            index = _pinned_frames(index, _snapshot[0], follow_changes=_snapshot[1])
        self._index = index
        if index.skipped_frames:
            logger.info("%d frames have no lidar point cloud or no mask and are not items", index.skipped_frames)
        if catalog.refresh is Refresh.NEVER:
            self._check_offline(fallback=refresh != "never")

    # ------------------------------------------------------------------------------------------- basics

    @property
    def client(self) -> PlaymentClient:
        """The API client, made on first need (so ``refresh="never"`` works without a key)."""
        if self._client is None:
            self._client = PlaymentClient()
        return self._client

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names by training index."""
        return self.class_map.names

    @property
    def frames(self) -> Sequence[FrameRef]:
        """The items, as :class:`FrameRef` objects rebuilt on access (the index itself stays compact)."""
        return _FrameSequence(self._index)

    @property
    def index(self) -> FrameIndex:
        """The compact frame index (numpy arrays)."""
        return self._index

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return (
            f"PlaymentSegmentationDataset(project_id={self.project_id!r}, jobs={len(self._index.jobs)}, "
            f"frames={len(self)}, classes={len(self.classes)}, cache={str(self.cache.directory)!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        # Workers get the index and the configuration; sessions, locks and databases reopen in each process.
        state = self.__dict__.copy()
        del state["_stats_lock"]
        del state["_per_thread"]
        state["_stats"] = DatasetStats()
        state["_warned"] = set()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._stats_lock = threading.Lock()
        self._per_thread = threading.local()

    def cameras(self, i: int) -> tuple[Camera, ...]:
        """The cameras of item ``i``'s job, in ``sensor_meta`` order (models, distortion, scale factors)."""
        return self._index.job_of(self._position(i)).cameras

    def stats(self) -> DatasetStats:
        """This process's counters (cache hits and misses, bytes, download and decode time)."""
        with self._stats_lock:
            return DatasetStats(**self._stats.as_dict())  # type: ignore[arg-type]

    def _count(self, **deltas: float) -> None:
        with self._stats_lock:
            for name, delta in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + delta)
        if "misses" in deltas:
            self._per_thread.misses = self._thread_misses() + int(deltas["misses"])

    def _thread_misses(self) -> int:
        """Downloads made by the calling thread (prefetch tells frames that needed one from cached ones)."""
        return int(getattr(self._per_thread, "misses", 0))

    def _position(self, i: int) -> int:
        i = operator.index(i)
        n = len(self._index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"item {i} out of range for a dataset of {n} frames")
        return i

    # ------------------------------------------------------------------------------------------- items

    def __getitem__(self, i: int) -> Sample:
        position = self._position(i)
        started = time.perf_counter()
        if self.on_error == "raise":
            sample = self._sample(position)
        else:
            sample = self._sample_or_next(position)
        if self.transform is not None:
            sample = self.transform(sample)
        self._count(items=1, load_seconds=time.perf_counter() - started)
        return sample

    def _sample_or_next(self, position: int) -> Sample:
        n = len(self._index)
        failure: PlaymentError | None = None
        # A few substitutes at most: when the server is down, every frame fails, each after its retries.
        for step in range(min(n, _MAX_SUBSTITUTES + 1)):
            candidate = (position + step) % n
            try:
                return self._sample(candidate)
            except PlaymentError as exc:
                failure = exc
                if candidate not in self._warned:
                    self._warned.add(candidate)
                    warnings.warn(f"skipping {exc}", RuntimeWarning, stacklevel=3)
        raise PlaymentError(
            f"on_error='skip': item {position} and the {min(n, _MAX_SUBSTITUTES + 1) - 1} frames after it all "
            f"failed; last: {failure}"
        ) from failure

    def instances(self, i: int) -> torch.Tensor:
        """Per-point instance ids of item ``i``, for panoptic work.

        Args:
            i: The item.

        Returns:
            int64 ``(N,)`` in point order: an index into the job's tracks (``ds.index.job_of(i).tracks``), the
            same for an object in every frame of its job; -1 where a point belongs to no track.
        """
        position = self._position(i)
        data = self._points_array(position)
        mask = self._mask_array(position, data)
        return torch.from_numpy(self._index.instances_of(position, mask))

    def _sample(self, position: int) -> Sample:
        index = self._index
        job = index.job_of(position)
        poses = index.poses(position)
        reference = poses[0]
        points, labels = self._frame_arrays(position)
        if self.sweeps > 1:
            points, labels = self._accumulate(position, points, labels, reference)
        if self.sweep_reference == "ego_pose":
            # Each cloud is in its own ego frame and ego_pose is a world pose: express the poses in the cloud's
            # frame (the ego pose becomes the identity), as the Sample contract says. The points already are
            # in the ego frame, so frame="ego" has nothing left to do.
            poses = invert_transform(reference) @ poses
        elif self.frame == "ego":
            to_ego = invert_transform(reference)
            points = _transform_xyz(points, to_ego)
            poses = to_ego @ poses
        return Sample(
            torch.from_numpy(points),
            torch.from_numpy(labels),
            torch.from_numpy(poses),
            torch.from_numpy(job.intrinsics.copy()),
        )

    def _frame_arrays(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """Points ``(N, C)`` float32 and labels ``(N,)`` int64 of one frame, from the cache or the network.

        The finished pair is cached too (``cache_samples``), under a key that names the result digest, the
        point fields and the class map: a warm ``ds[i]`` is then one read into the arrays it returns, with no
        per-point work at all. The decoded point cloud and mask stay cached beside it, so another choice of
        fields or classes is derived again without the network.
        """
        key = self._sample_key(position) if self.cache_samples else None
        if key is not None:
            cached = self.cache.get_array(key)
            if cached is not None:
                self._count(hits=1)
                return _split_sample(cached)
        data = self._points_array(position)
        mask = self._mask_array(position, data)
        if len(mask) != len(data):
            raise PlaymentFormatError(
                f"{self._where(position)}: the mask has {len(mask)} label keys but the point cloud has "
                f"{len(data)} points"
            )
        # The mask is a fresh array of this call's own: mapping may overwrite it instead of allocating.
        labels = self._index.classes_of(position, mask, self.ignore_index, consume=True)
        points = self._select_fields(position, data)
        if key is not None:
            self.cache.put_array(key, _join_sample(points, labels))
        return points, labels

    def _sample_key(self, position: int) -> str:
        index = self._index
        job = index.job_of(position)
        return cache_key(
            f"sample@{job.digest}@{self._sample_signature}",
            project_id=self.project_id,
            job_id=job.job_id,
            frame_id=index.frame_ids[position],
            sensor_id=index.sensor_ids[position],
            url=index.pointcloud_urls[position],
        )

    def _accumulate(
        self, position: int, points: np.ndarray, labels: np.ndarray, reference: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Merge up to ``sweeps - 1`` earlier frames of the same job into the key frame's coordinates."""
        index = self._index
        key_to_world = reference if self.sweep_reference == "ego_pose" else None
        parts = [np.column_stack([points, np.zeros(len(points), dtype=np.float32)])]
        label_parts = [labels]
        for back in range(1, self.sweeps):
            earlier = position - back
            if earlier < 0 or index.frame_job[earlier] != index.frame_job[position]:
                break  # frames at the start of a job use what exists
            sweep_points, sweep_labels = self._frame_arrays(earlier)
            if key_to_world is not None:
                motion = invert_transform(key_to_world) @ index.poses(earlier)[0]
                sweep_points = _transform_xyz(sweep_points, motion)
            parts.append(np.column_stack([sweep_points, np.full(len(sweep_points), back, dtype=np.float32)]))
            if not self.label_sweeps:
                sweep_labels = np.full_like(sweep_labels, self.ignore_index)
            label_parts.append(sweep_labels)
        return np.concatenate(parts).astype(np.float32, copy=False), np.concatenate(label_parts)

    def _where(self, position: int) -> str:
        return f"job {self._index.job_of(position).job_id}, frame {self._index.frame_ids[position]}"

    def _select_fields(self, position: int, data: np.ndarray) -> np.ndarray:
        """The ``point_fields`` columns of a structured array, as float32 ``(N, C)``."""
        names = data.dtype.names or ()
        chosen = []
        for wanted in self.point_fields:
            name = wanted if wanted in names else _case_insensitive(wanted, names)
            if name is None:
                raise PlaymentFormatError(
                    f"{self._where(position)}: the point cloud has no field {wanted!r}; it has "
                    f"{', '.join(names) or 'no fields'} (choose point_fields among them)"
                )
            chosen.append(name)
        fields: Mapping[str, Any] = data.dtype.fields or {}
        offsets = [fields[name][1] for name in chosen]
        if (
            data.flags.c_contiguous
            and all(fields[name][0] == np.float32 for name in chosen)
            and offsets == list(range(offsets[0], offsets[0] + 4 * len(chosen), 4))
        ):
            # The common case (x y z intensity ... stored as consecutive float32): one strided copy.
            view = np.ndarray(
                (len(data), len(chosen)), np.float32, buffer=data, offset=offsets[0], strides=(data.itemsize, 4)
            )
            return view.copy()
        columns = [data[name].reshape(len(data), -1) for name in chosen]
        out = np.empty((len(data), sum(c.shape[1] for c in columns)), dtype=np.float32)
        at = 0
        for column in columns:
            out[:, at : at + column.shape[1]] = column
            at += column.shape[1]
        return out

    def _points_array(self, position: int) -> np.ndarray:
        index = self._index
        url = index.pointcloud_urls[position]
        legacy = bool(index.legacy[position])
        # A legacy point cloud is also the mask: relabelling rewrites it, so its key names the result's digest.
        key = cache_key(
            f"points@{index.job_of(position).digest}" if legacy else "points",
            project_id=self.project_id,
            job_id=index.job_of(position).job_id,
            frame_id=index.frame_ids[position],
            sensor_id=index.sensor_ids[position],
            url=url,
        )
        return self._cached_array(position, key, url, lambda body: read_pcd(body).data, private=legacy)

    def _mask_array(self, position: int, points: np.ndarray) -> np.ndarray:
        index = self._index
        if index.legacy[position]:
            # A legacy mask is a PCD with x y z label_key: the point cloud already holds it.
            try:
                return label_keys(points)
            except PlaymentFormatError as exc:
                raise PlaymentFormatError(f"{self._where(position)}: {exc}") from exc
        job = index.job_of(position)
        url = index.mask_urls[position]
        key = cache_key(
            f"mask@{job.digest}",
            project_id=self.project_id,
            job_id=job.job_id,
            frame_id=index.frame_ids[position],
            sensor_id=index.sensor_ids[position],
            url=url,
        )
        return self._cached_array(position, key, url, lambda body: _compact_keys(read_mask(body)), private=True)

    def _cached_array(
        self, position: int, key: str, url: str, decode: Callable[[bytes], np.ndarray], *, private: bool = False
    ) -> np.ndarray:
        cached = self.cache.get_array(key)
        if cached is not None:
            self._count(hits=1)
            return cached
        if self.refresh == "never":
            raise CacheError(f"{self._where(position)}: {redact_url(url)} is not cached and refresh='never'")

        def create() -> np.ndarray:
            started = time.perf_counter()
            # Masks (and legacy mask clouds) are Playment's private files: always through the attachments API.
            body = self.client.download(url, private=private)
            downloaded = time.perf_counter()
            try:
                array = decode(body)
            except PlaymentFormatError as exc:
                raise PlaymentFormatError(f"{self._where(position)}: {redact_url(url)}: {exc}") from exc
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
            job = self._index.job_of(position).job_id
            raise FrameError(str(exc), job_id=job, frame_id=self._index.frame_ids[position]) from exc

    # ------------------------------------------------------------------------------------------- prefetch

    def prefetch(self, num_threads: int = 16, progress: bool | None = True) -> PrefetchReport:
        """Download and cache every frame's point cloud and mask, concurrently.

        Args:
            num_threads: Concurrent downloads.
            progress: Allow a progress bar (it is shown only on a terminal).

        Returns:
            Frames, bytes, time and failures. With ``on_error="skip"`` failing frames leave the index.

        Raises:
            PlaymentError: some frames failed and ``on_error="raise"`` (the first failure is chained).
        """
        started = time.perf_counter()
        before = self.stats()
        report = PrefetchReport(frames=len(self))
        failed = np.zeros(len(self), dtype=bool)
        errors: list[PlaymentError] = []

        downloaded = np.zeros(len(self), dtype=bool)

        def load(position: int) -> None:
            # Downloads happen in this thread (get_or_create runs the download in its caller): count them here.
            before = self._thread_misses()
            try:
                self._frame_arrays(position)  # the finished sample too, so that the first epoch is warm
            except PlaymentError as exc:
                failed[position] = True
                errors.append(exc)
                report.failures.append((self._index.job_of(position).job_id, self._index.frame_ids[position], str(exc)))
            downloaded[position] = self._thread_misses() > before

        with (
            ThreadPoolExecutor(max(1, num_threads)) as pool,
            self._bar(len(self), "prefetch", "frame", progress) as bar,
        ):
            for _ in pool.map(load, range(len(self))):
                bar.update(1)
        after = self.stats()
        report.downloaded = int(downloaded.sum())
        report.bytes_downloaded = after.bytes_downloaded - before.bytes_downloaded
        report.seconds = time.perf_counter() - started
        report.failures.sort()
        if errors and self.on_error == "raise":
            raise PlaymentError(
                f"prefetch: {len(errors)} of {len(self)} frames failed; first: {report.failures[0][2]}"
            ) from errors[0]
        if errors:
            warnings.warn(
                f"prefetch: leaving out {len(errors)} frames that failed, e.g. {report.failures[0][2]}",
                RuntimeWarning,
                stacklevel=2,
            )
            self._index = self._index.subset(~failed)
        return report

    def _bar(self, total: int, desc: str, unit: str, progress: bool | None = None) -> Any:
        """A progress bar, shown only on a terminal and only when neither the call nor the dataset said no."""
        allowed = (progress is not False) and (self.progress is not False) and total > 0
        # tqdm's disable=None means "only when writing to a terminal".
        return tqdm(total=total, desc=desc, unit=unit, disable=None if allowed else True, leave=False)

    # ------------------------------------------------------------------------------------------- the catalog

    def _check_offline(self, *, fallback: bool) -> None:
        """Offline, every frame must be in the cache: say up front what is not, rather than fail at ``ds[i]``."""
        report = self.cache_report()
        self.offline_report = report
        if not report.missing:
            return
        if fallback:
            warnings.warn(f"the API host is unreachable and {report.summary()}", RuntimeWarning, stacklevel=3)
        elif self.offline_subset:
            warnings.warn(
                f"offline_subset=True: keeping the {report.frames - report.missing} cached frames; "
                f"{report.summary()}",
                RuntimeWarning,
                stacklevel=3,
            )
            self._index = self._index.subset(report.cached)
        else:
            raise CacheError(
                f"refresh='never' but {report.summary()} (pass offline_subset=True to use only the cached frames, "
                "or prefetch them with the network)"
            )

    def cache_report(self) -> FrameCacheReport:
        """Which frames the disk cache can serve without the network, per job (existence checks, not reads).

        Returns:
            Per job counts of frames and cached frames, and one flag per item (``report.cached``).
        """
        signature = self._sample_signature if self.cache_samples else None
        return cache_report(self._index, self.cache, sample_signature=signature)

    def snapshot(self, path: str | os.PathLike[str]) -> Snapshot:
        """Write a small JSON lock file that pins this dataset: its frames, their results and the label recipe.

        It records the format version, the project, each job's result identity (URL without signature) and
        digest, every item as ``(job, frame, sensor)``, the class map, ``ignore_index`` and ``point_fields``.
        :meth:`from_snapshot` gives exactly these frames and labels later.

        Args:
            path: Where to write (replaced whole, never half-written).

        Returns:
            What was written.
        """
        return write_snapshot(
            path,
            self._index,
            classes=self.class_map.mapping,
            ignore_index=self.ignore_index,
            point_fields=self.point_fields,
        )

    @classmethod
    def from_snapshot(
        cls, path: str | os.PathLike[str], *, follow_changes: bool = False, **options: Any
    ) -> PlaymentSegmentationDataset:
        """The dataset a snapshot pinned: the same frames with the same labels, whatever changed since.

        Each job's pinned result comes from the cache when it is there (even if the job was relabelled on the
        server since), else from the server if the server still has that version.

        Args:
            path: A file written by :meth:`snapshot`.
            follow_changes: For jobs whose pinned result is neither cached nor on the server any more, use the
                current result (with a warning listing them) instead of failing; of their frames, those the
                snapshot lists and the new result still has are kept.
            **options: Any other option of the constructor (``client``, ``cache_dir``, ``transform``, ...); the
                project, jobs, classes, ``ignore_index`` and ``point_fields`` come from the snapshot.

        Returns:
            The dataset.

        Raises:
            ConfigError: the file is not a snapshot, or ``options`` tries to override what it pins.
            PlaymentError: pinned results changed on the server and are not cached (the message names the
                jobs), unless ``follow_changes``.
        """
        pinned = read_snapshot(path)
        fixed = {"job_ids", "batch_ids", "classes", "ignore_index", "point_fields"} & set(options)
        if fixed:
            raise ConfigError(f"{', '.join(sorted(fixed))}: fixed by the snapshot {path}")
        return cls(
            pinned.project_id,
            classes=pinned.classes,
            ignore_index=pinned.ignore_index,
            point_fields=pinned.point_fields,
            _snapshot=(pinned, follow_changes),
            **options,
        )


def _pinned_frames(index: FrameIndex, pinned: Snapshot, *, follow_changes: bool) -> FrameIndex:
    """The rows of ``index`` that ``pinned`` lists (all of them, unless a followed change dropped some)."""
    wanted = set(pinned.frames)
    keep = np.fromiter((frame in wanted for frame in frames_of(index)), dtype=bool, count=len(index))
    if int(keep.sum()) != len(wanted):
        lost = len(wanted) - int(keep.sum())
        message = f"{lost} of the snapshot's {len(wanted)} frames are not in the results"
        if not follow_changes:
            raise PlaymentError(f"{message}: the snapshot does not match its pinned results")
        warnings.warn(f"{message} followed: they are left out", RuntimeWarning, stacklevel=4)
    return index.subset(keep)


class _FrameSequence(Sequence[FrameRef]):
    """``ds.frames``: a read-only sequence view that builds FrameRefs on access."""

    def __init__(self, index: FrameIndex) -> None:
        self._index = index

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._index.frame_ref(j) for j in range(*i.indices(len(self)))]
        i = operator.index(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} out of range")
        return self._index.frame_ref(i)


def _join_sample(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One byte buffer: labels (int64, first, so they stay 8-byte aligned) then points (float32, C order)."""
    out = np.empty(8 + labels.nbytes + points.nbytes, dtype=np.uint8)
    out[:8].view(np.int64)[0] = points.shape[1]
    out[8 : 8 + labels.nbytes].view(np.int64)[:] = labels
    out[8 + labels.nbytes :].view(np.float32)[:] = points.ravel()
    return out


def _split_sample(buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Views of :func:`_join_sample`'s buffer: ``(points (N, C) float32, labels (N,) int64)``, no copy."""
    columns = int(buffer[:8].view(np.int64)[0])
    count = (buffer.size - 8) // (8 + 4 * columns)
    labels = buffer[8 : 8 + 8 * count].view(np.int64)
    points = buffer[8 + 8 * count :].view(np.float32).reshape(count, columns)
    return points, labels


def _compact_keys(keys: np.ndarray) -> np.ndarray:
    """Label keys in the smallest integer type that holds them (masks are mostly small keys)."""
    if keys.size == 0:
        return keys
    low, high = int(keys.min()), int(keys.max())
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return keys.astype(dtype)
    return keys


def _choose(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _case_insensitive(wanted: str, names: Sequence[str]) -> str | None:
    matches = [n for n in names if n.lower() == wanted.lower()]
    return matches[0] if len(matches) == 1 else None


def _transform_xyz(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid transform to columns 0..2 (computed in float64), keeping the other columns."""
    out = points.copy()
    xyz = points[:, :3].astype(np.float64)
    out[:, :3] = xyz @ matrix[:3, :3].T + matrix[:3, 3]
    return out
