"""``PlaymentSegmentationDataset``: Playment project and job ids in, training tensors out.

A thin torch adapter over two torch-free parts: the catalog (:mod:`playment_torch._catalog`: ids -> job
results -> a compact :class:`~playment_torch.index.FrameIndex`, API answers and the index cached on disk under
the ``refresh`` policy) and the frame store (:mod:`playment_torch._store`: a frame's finished points and compact
mask in the disk cache, downloaded and decoded on a miss). ``ds[i]`` maps the mask's label keys to class indices
through the frame's lookup table and returns tensors; this module adds sweeps, frames of reference, ``on_error``,
``prefetch`` and counters.

Choices where the issue is silent (also in the README):

* ``refresh="if_missing"`` uses the cached answers for completed jobs and their results; project and batch
  listings are asked again (batches gain jobs), as are jobs that were not completed; when the API host does not
  answer at all, the cached listings are used (with one warning). ``"always"`` asks the API
  for all of them again and downloads only what changed: point clouds are keyed by URL and stay; masks (and
  legacy mask clouds) are keyed by the result's digest too, so a relabelled job gets new masks. ``"never"``
  never touches the network.
* With ``on_error="skip"`` a job that fails to resolve is left out at construction (``ds.failed_jobs`` names
  it). ``ds[i]`` is always frame ``i``: a frame that fails to load gives a placeholder of that same frame (its
  points with every label ``ignore_index`` when only the mask failed, no points when the point cloud failed),
  with one warning per frame and process, counted in ``stats().failed_frames``. To train on what loads only,
  narrow the dataset explicitly: ``ds.subset(ds.prefetch().loaded)`` returns a *new* dataset; nothing changes the
  index of a dataset that DataLoader workers already hold.
* The stored form of a frame is its finished points and its compact mask (see :mod:`playment_torch._store`);
  labels are mapped from the mask on every read, so another ``classes`` downloads nothing, while another
  ``point_fields`` downloads each point cloud once more.
* Multi-sweep (``sweeps=k``): ``sweep_reference="shared"`` (the default, Playment's rule that a job's point
  clouds and poses share one frame of reference) moves nothing between sweeps; ``"ego_pose"`` treats each cloud
  as being in its own ego/lidar frame with ``ego_pose`` its pose in a shared world, and moves sweep ``j`` by
  ``inv(E_key) @ E_j``. A last column holds the sweep index (0 for the key frame).
"""

from __future__ import annotations

import copy
import logging
import operator
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
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
from playment_torch._counters import SharedCounters
from playment_torch._prefetch import default_processes, fetch_frames
from playment_torch._store import FrameStore
from playment_torch.cache import ArrayCache
from playment_torch.client import PlaymentClient
from playment_torch.errors import (
    CacheError,
    ConfigError,
    HostUnreachableError,
    PlaymentError,
)
from playment_torch.geometry import Camera, invert_transform
from playment_torch.index import FrameIndex
from playment_torch.labels import ClassMap, check_known_classes
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
    """What a dataset did, summed over every process that holds a copy of it on this machine (the main
    process, its DataLoader workers, DDP ranks sharing the cache directory): look here when an epoch is slow.

    Counters only grow; for one epoch, subtract: ``before = ds.stats(); ...; print(ds.stats() - before)``.

    Attributes:
        items: Samples built.
        hits: Records the disk cache served (a frame's points and its labels, or its mask, count once each).
        misses: Point clouds and masks that had to be downloaded and decoded.
        bytes_downloaded: Bytes of point clouds and masks downloaded.
        download_seconds: Time spent downloading (summed over threads and processes).
        decode_seconds: Time spent decoding PCD and mask bytes.
        load_seconds: Time spent in ``ds[i]`` in all (cache reads, decoding, labels, tensors).
        nonfinite_points: Points with NaN or infinite coordinates, counted when their frame was decoded.
        failed_frames: Items that gave a placeholder because their frame failed (``on_error="skip"``).
    """

    items: int = 0
    hits: int = 0
    misses: int = 0
    bytes_downloaded: int = 0
    download_seconds: float = 0.0
    decode_seconds: float = 0.0
    load_seconds: float = 0.0
    nonfinite_points: int = 0
    failed_frames: int = 0

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def _from_totals(cls, totals: Mapping[str, float]) -> DatasetStats:
        values = {f.name: (float if f.type == "float" else int)(totals.get(f.name, 0)) for f in fields(cls)}
        return cls(**values)  # type: ignore[arg-type]

    def __sub__(self, other: DatasetStats) -> DatasetStats:
        return DatasetStats(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    @property
    def hit_ratio(self) -> float:
        """Share of record reads the cache served (1.0 when nothing was read)."""
        reads = self.hits + self.misses
        return self.hits / reads if reads else 1.0

    def __str__(self) -> str:
        per_item = 1000 * self.load_seconds / self.items if self.items else 0.0
        text = (
            f"{self.items} items, cache hit ratio {self.hit_ratio:.1%}, {self.misses} downloads "
            f"({self.bytes_downloaded / 2**20:.1f} MiB in {self.download_seconds:.1f}s), "
            f"{per_item:.2f} ms per item"
        )
        if self.failed_frames:
            text += f", {self.failed_frames} failed"
        if self.nonfinite_points:
            text += f", {self.nonfinite_points} non-finite points"
        return text


@dataclass
class PrefetchReport:
    """The outcome of :meth:`PlaymentSegmentationDataset.prefetch`.

    Attributes:
        frames: Frames checked.
        downloaded: Frames that needed a download (the others were in the cache already).
        bytes_downloaded: Bytes downloaded.
        seconds: Wall time.
        failures: ``(job_id, frame_id, reason)`` of frames that failed, sorted; ``reason`` does not repeat the
            job and frame.
        failed: Positions (dataset indices) of the frames that failed.
        unreachable_hosts: Hosts the client gave up on (``HostUnreachableError``): when a server is gone, every
            remaining frame fails at once for that one reason, which callers should report once.
        first_error: The first failure's exception (the others are kept as messages only, so that a large
            project failing systematically does not hold every download's traceback and body).
    """

    frames: int = 0
    downloaded: int = 0
    bytes_downloaded: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    unreachable_hosts: list[str] = field(default_factory=list)
    first_error: PlaymentError | None = field(default=None, repr=False)

    @property
    def loaded(self) -> list[int]:
        """Positions of the frames that are cached now: ``ds.subset(report.loaded)`` keeps exactly those."""
        failed = set(self.failed)
        return [i for i in range(self.frames) if i not in failed]

    def failures_by_job(self) -> dict[str, list[tuple[str, str]]]:
        """``job_id -> [(frame_id, reason), ...]``, jobs sorted."""
        grouped: dict[str, list[tuple[str, str]]] = {}
        for job_id, frame_id, reason in self.failures:
            grouped.setdefault(job_id, []).append((frame_id, reason))
        return dict(sorted(grouped.items()))

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
        allow_unknown_classes: Accept names in ``classes`` that no job of the dataset uses (a class list shared
            across projects). By default such a name is a :class:`ConfigError` that lists the project's names,
            because a typo (``"Road"`` for ``"road"``) would silently turn a class into ``ignore_index``.
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
        allow_unknown_classes: bool = False,
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
        self._client = client
        self.cache = ArrayCache(cache_dir, size_limit=cache_size_limit)
        self._counters = SharedCounters(self.cache.directory)
        self._warned: set[int] = set()
        #: Jobs left out at construction (``on_error="skip"``): job id -> why.
        self.failed_jobs: dict[str, str] = {}
        #: Jobs that are not completed and so have no result yet: job id -> status.
        self.pending_jobs: dict[str, str] = {}

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
        self.failed_jobs, self.pending_jobs = catalog.failed_jobs, catalog.pending_jobs
        self.class_map = ClassMap(classes, available=index.label_names, ignore_index=self.ignore_index)
        if index.jobs and not allow_unknown_classes:
            check_known_classes(self.class_map, index.label_names, index.class_ids)
        index.apply_classes(self.class_map)
        if _snapshot is not None:
            index = _pinned_frames(index, _snapshot[0], follow_changes=_snapshot[1])
        self._index = index
        if index.skipped_frames:
            logger.info("%d frames have no lidar point cloud or no mask and are not items", index.skipped_frames)
        self.cache.touch_project(project_id)  # for `playment-torch cache info`; best effort on a full disk
        self._store = self._make_store()
        if catalog.refresh is Refresh.NEVER:
            self._check_offline(fallback=refresh != "never")

    # ------------------------------------------------------------------------------------------- basics

    @property
    def client(self) -> PlaymentClient:
        """The API client, made on first need (so ``refresh="never"`` works without a key)."""
        if self._client is None:
            self._client = PlaymentClient()
        return self._client

    def _get_client(self) -> PlaymentClient:
        return self.client

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
        state["_warned"] = set()
        return state

    def _make_store(self) -> FrameStore:
        return FrameStore(
            self._index,
            self.cache,
            self._get_client,  # a bound method, not a lambda: the store pickles with the dataset
            point_fields=self.point_fields,
            ignore_index=self.ignore_index,
            offline=self.refresh == "never",
            count=self._counters.add,
        )

    def subset(self, positions: Iterable[int]) -> PlaymentSegmentationDataset:
        """A new dataset of some of this one's frames (in dataset order); this dataset does not change.

        For example ``ds.subset(ds.prefetch().loaded)`` keeps the frames that are cached, and
        ``ds.subset(range(0, len(ds), 10))`` every tenth. The new dataset shares the configuration, the cache
        and the client; its stats start at zero.

        Args:
            positions: Items of this dataset (negative positions count from the end).

        Returns:
            The narrowed dataset.

        Raises:
            IndexError: A position is out of range.
        """
        keep = np.zeros(len(self), dtype=bool)
        for i in positions:
            keep[self._position(i)] = True
        narrowed = copy.copy(self)
        narrowed._index = self._index.subset(keep)
        narrowed._counters = SharedCounters(self.cache.directory)
        narrowed._warned = set()
        narrowed._store = narrowed._make_store()
        return narrowed

    def cameras(self, i: int) -> tuple[Camera, ...]:
        """The cameras of item ``i``'s job, in ``sensor_meta`` order (models, distortion, scale factors)."""
        return self._index.job_of(self._position(i)).cameras

    def stats(self) -> DatasetStats:
        """Counters of this dataset summed over every process that holds a copy of it on this machine.

        DataLoader workers (persistent or not) and DDP ranks sharing the cache directory all count here; see
        :class:`DatasetStats` for an epoch's share.
        """
        return DatasetStats._from_totals(self._counters.totals())

    def reset_stats(self) -> None:
        """Set this dataset's counters back to zero, in every process that holds a copy of it."""
        self._counters.reset()

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
        sample = self._sample(position)
        if self.transform is not None:
            sample = self.transform(sample)
        self._counters.add(items=1, load_seconds=time.perf_counter() - started)
        return sample

    def instances(self, i: int) -> torch.Tensor:
        """Per-point instance ids of item ``i``, for panoptic work.

        Args:
            i: The item.

        Returns:
            int64 ``(N,)`` in point order: an index into the job's tracks (``ds.index.job_of(i).tracks``), the
            same for an object in every frame of its job; -1 where a point belongs to no track.
        """
        return torch.from_numpy(self._store.instances(self._position(i)))

    def _frame(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """Points and labels of one frame; with ``on_error="skip"`` a placeholder of it when it fails."""
        if self.on_error == "raise":
            loaded = self._store.load(position)
        else:
            loaded = self._store.load(position, lenient=True)
            if loaded.failure is not None:
                self._counters.add(failed_frames=1)
                if position not in self._warned:
                    self._warned.add(position)
                    kept = "no points" if not len(loaded.points) else "every label ignore_index"
                    warnings.warn(
                        f"on_error='skip': {self._store.where(position)} failed, so item {position} has {kept}: "
                        f"{_reason(loaded.failure, self._store.where(position))}",
                        RuntimeWarning,
                        stacklevel=4,
                    )
        return loaded.points, loaded.labels

    def _sample(self, position: int) -> Sample:
        index = self._index
        job = index.job_of(position)
        poses = index.poses(position)
        reference = poses[0]
        points, labels = self._frame(position)
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

    def _earlier_frame(self, position: int, back: int) -> int | None:
        """The item holding the frame ``back`` frames before ``position``'s in its job, if this dataset has it.

        Adjacency is by the frames' positions in their job, not by item number: a dataset narrowed with
        :meth:`subset` (or a job with frames that are not items) must not merge frames that were not adjacent.
        """
        index = self._index
        wanted = int(index.frame_position[position]) - back
        job = index.frame_job[position]
        candidate = position - 1
        # Items of a job are in frame order, so the wanted frame, if present, is among the few items before.
        while candidate >= 0 and index.frame_job[candidate] == job and index.frame_position[candidate] > wanted:
            candidate -= 1
        if candidate < 0 or index.frame_job[candidate] != job or index.frame_position[candidate] != wanted:
            return None
        return candidate

    def _accumulate(
        self, position: int, points: np.ndarray, labels: np.ndarray, reference: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Merge up to ``sweeps - 1`` earlier frames of the same job into the key frame's coordinates.

        The last column is how many frames before the key frame a point's frame was (0 for the key frame).
        Frames missing from the dataset are left out, so a sweep may hold fewer clouds at a job's start.
        """
        index = self._index
        key_to_world = reference if self.sweep_reference == "ego_pose" else None
        parts = [np.column_stack([points, np.zeros(len(points), dtype=np.float32)])]
        label_parts = [labels]
        for back in range(1, self.sweeps):
            earlier = self._earlier_frame(position, back)
            if earlier is None:
                continue
            sweep_points, sweep_labels = self._frame(earlier)
            if key_to_world is not None:
                motion = invert_transform(key_to_world) @ index.poses(earlier)[0]
                sweep_points = _transform_xyz(sweep_points, motion)
            parts.append(np.column_stack([sweep_points, np.full(len(sweep_points), back, dtype=np.float32)]))
            if not self.label_sweeps:
                sweep_labels = np.full_like(sweep_labels, self.ignore_index)
            label_parts.append(sweep_labels)
        return np.concatenate(parts).astype(np.float32, copy=False), np.concatenate(label_parts)

    # ------------------------------------------------------------------------------------------- prefetch

    def prefetch(
        self, num_threads: int = 16, progress: bool | None = True, *, processes: int | None = None
    ) -> PrefetchReport:
        """Download and cache every frame's points and mask, concurrently. The dataset itself does not change.

        Args:
            num_threads: Concurrent downloads, in all.
            progress: Allow a progress bar (it is shown only on a terminal).
            processes: Worker processes sharing the work, each with its share of the threads: a cold frame
                costs ~15-30 ms of CPU, mostly Python holding the GIL, so threads alone stop at about one core.
                ``None``: one per core this process may use, at most 8 and at most one per 16 frames. Needs
                ``fork`` (Linux); elsewhere, and with ``1``, threads in this process only. Inside each rank of a
                multi-process job, pass what that rank's share of the cores is (often 1).

        Returns:
            Frames, bytes, time and failures; ``ds.subset(report.loaded)`` is a new dataset of the frames that
            loaded.

        Raises:
            PlaymentError: some frames failed and ``on_error="raise"`` (the first failure is chained).
        """
        started = time.perf_counter()
        before = self.stats()
        report = PrefetchReport(frames=len(self))
        count = default_processes(len(self)) if processes is None else max(1, int(processes))
        if self._client is not None:
            # A connection per thread, none thrown away. (A client made later, on the first miss, keeps its
            # default pool of 64; making one here would need a key even when everything is cached.)
            self._client.ensure_pool_size(-(-num_threads // count))
        with self._bar(len(self), "prefetch", "frame", progress) as bar:
            outcome = fetch_frames(
                self._store, range(len(self)), threads=num_threads, processes=count, on_progress=bar.update
            )
        for position, exc in sorted(outcome.failures, key=operator.itemgetter(0)):
            report.failed.append(position)
            where = self._store.where(position)
            report.failures.append(
                (self._index.job_of(position).job_id, self._index.frame_ids[position], _reason(exc, where))
            )
            if report.first_error is None:
                report.first_error = exc
            host = _unreachable_host(exc)
            if host and host not in report.unreachable_hosts:
                report.unreachable_hosts.append(host)
        after = self.stats()
        report.downloaded = len(outcome.downloaded)
        report.bytes_downloaded = after.bytes_downloaded - before.bytes_downloaded
        report.seconds = time.perf_counter() - started
        report.failures.sort()
        if report.failures and self.on_error == "raise":
            job_id, frame_id, reason = report.failures[0]
            raise PlaymentError(
                f"prefetch: {len(report.failures)} of {len(self)} frames failed; first: job {job_id}, frame "
                f"{frame_id}: {reason}"
            ) from report.first_error
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
                f"offline_subset=True: keeping the {report.frames - report.missing} cached frames; {report.summary()}",
                RuntimeWarning,
                stacklevel=3,
            )
            self._index = self._index.subset(report.cached)
            self._store = self._make_store()
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
        store = self._store
        # One definition of a frame's records: the frame store's keys (points and mask).
        return cache_report(self._index, self.cache, store.keys)

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


def _choose(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _unreachable_host(exc: BaseException) -> str:
    """The host of a :class:`HostUnreachableError` in an error's cause chain, "" if there is none."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return ""
        if isinstance(seen, HostUnreachableError):
            return seen.host or "the API host"
        seen = seen.__cause__
    return ""


def _reason(exc: BaseException, where: str, limit: int = 1000) -> str:
    """An error's message without the ``job J, frame F:`` it may start with (the caller names the frame once),
    at most ``limit`` characters (a report of many failures keeps messages, never megabytes of them)."""
    message = " ".join(str(exc).split())
    for prefix in (where + ": ", where + " "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
            break
    return message if len(message) <= limit else f"{message[: limit - 120]} ... {message[-100:]}"


def _transform_xyz(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid transform to columns 0..2 (computed in float64), keeping the other columns."""
    out = points.copy()
    xyz = points[:, :3].astype(np.float64)
    out[:, :3] = xyz @ matrix[:3, :3].T + matrix[:3, 3]
    return out
