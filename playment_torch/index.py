"""The dataset's frame index: every (job, frame) item in a handful of numpy arrays.

A million-frame project must not become a million Python objects: DataLoader workers touch every object they
read, and reference counting then copies the pages of a forked parent's memory one by one. So frames live in
flat arrays (ids and URLs in :class:`StringTable` buffers, poses as 7-vectors, label lookup tables shared by
the frames they fit and concatenated with offsets), and :class:`~playment_torch.models.FrameRef` objects are
rebuilt only when asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from playment_torch.geometry import Camera, Pose
from playment_torch.labels import ClassMap, map_keys
from playment_torch.models import FrameRef, JobResult, LabelEntry

__all__ = ["FrameIndex", "StringTable"]

_NAN_POSE = np.full(7, np.nan)
_LUT_COLUMNS = ("lut_keys", "lut_classes", "lut_instances", "lut_labels")


class _Packed:
    """Strings as one UTF-8 buffer and an offsets array: no Python object per string."""

    __slots__ = ("buffer", "offsets")

    def __init__(self, strings: Iterable[str] = ()) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, i: int) -> str:
        return self.buffer[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8")

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes + self.offsets.nbytes)


class StringTable(Sequence[str]):
    """An immutable list of strings: each split after its last ``/``, the distinct heads stored once.

    URLs of one job share their folder (``https://host/project/job/masks/``), so a million URLs cost little
    more than their file names; everything stays in numpy buffers, never one Python object per string.
    """

    __slots__ = ("_head_ids", "_heads", "_tails")

    def __init__(self, strings: Iterable[str] = ()) -> None:
        heads: dict[str, int] = {}
        ids: list[int] = []
        tails: list[str] = []
        for text in strings:
            cut = text.rfind("/") + 1
            ids.append(heads.setdefault(text[:cut], len(heads)))
            tails.append(text[cut:])
        self._heads = _Packed(heads)
        self._head_ids = np.array(ids, dtype=np.int32)
        self._tails = _Packed(tails)

    @classmethod
    def concatenate(cls, tables: Sequence[StringTable]) -> StringTable:
        """Join several tables into one, in order."""
        return cls(text for table in tables for text in table)

    def take(self, indices: np.ndarray) -> StringTable:
        """A new table with the strings at ``indices``."""
        return StringTable(self[int(i)] for i in indices)

    def __len__(self) -> int:
        return len(self._head_ids)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        return self._heads.get(int(self._head_ids[i])) + self._tails.get(i)

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    @property
    def nbytes(self) -> int:
        return self._heads.nbytes + int(self._head_ids.nbytes) + self._tails.nbytes


def _pose_vector(pose: Pose | None) -> np.ndarray:
    if pose is None:
        return _NAN_POSE
    return np.array((*pose.rotation, *pose.translation), dtype=np.float64)


def _rotation_basis() -> tuple[np.ndarray, np.ndarray]:
    """Constants that turn a unit quaternion's outer product ``q qᵀ`` into its rotation matrix, linearly.

    With ``q = (w, x, y, z)``, every entry of the Hamilton rotation matrix is ``[i == j] + 2 * (a linear
    combination of q_a q_b)``, e.g. ``R00 = 1 - 2(y² + z²)``; one matrix product then converts many poses.
    """
    w, x, y, z = range(4)
    terms = {
        (0, 0): [(-2, y, y), (-2, z, z)],
        (0, 1): [(2, x, y), (-2, w, z)],
        (0, 2): [(2, x, z), (2, w, y)],
        (1, 0): [(2, x, y), (2, w, z)],
        (1, 1): [(-2, x, x), (-2, z, z)],
        (1, 2): [(2, y, z), (-2, w, x)],
        (2, 0): [(2, x, z), (-2, w, y)],
        (2, 1): [(2, y, z), (2, w, x)],
        (2, 2): [(-2, x, x), (-2, y, y)],
    }
    basis = np.zeros((16, 9))
    for (row, column), products in terms.items():
        for factor, a, b in products:
            basis[4 * a + b, 3 * row + column] += factor
    return basis, np.eye(3).ravel()


_BASIS, _IDENTITY = _rotation_basis()


def pose_matrices(vectors: np.ndarray) -> np.ndarray:
    """``(M, 7)`` pose vectors ``(w, x, y, z, tx, ty, tz)`` -> ``(M, 4, 4)`` matrices (NaN rows stay NaN).

    Quaternions were normalised when parsed. This runs on every ``ds[i]``, so it is two numpy operations
    rather than one per matrix entry.
    """
    count = len(vectors)
    quaternions = vectors[:, :4]
    outer = (quaternions[:, :, None] * quaternions[:, None, :]).reshape(count, 16)
    out = np.zeros((count, 4, 4))
    out[:, :3, :3] = (outer @ _BASIS + _IDENTITY).reshape(count, 3, 3)
    out[:, :3, 3] = vectors[:, 4:7]
    out[:, 3, 3] = 1.0
    unknown = np.isnan(vectors).any(axis=1)
    if unknown.any():
        out[unknown] = np.nan
    return out


@dataclass(frozen=True)
class JobInfo:
    """What the index keeps per job (a few objects per job, never per frame)."""

    job_id: str
    digest: str
    cameras: tuple[Camera, ...]
    intrinsics: np.ndarray  # (K, 3, 3)
    tracks: tuple[str, ...]  # instance id -> track id


class FrameIndex:
    """Flat arrays describing every item of the dataset.

    Build it with :meth:`build` from parsed job results; select items with :meth:`subset`.
    """

    def __init__(self) -> None:
        self.project_id = ""
        self.jobs: list[JobInfo] = []
        # Distinct (label, class id) pairs of every annotation, referred to by lut_labels.
        self.labels_table: tuple[tuple[str, str], ...] = ()
        self.frame_job = np.zeros(0, dtype=np.int32)
        self.frame_position = np.zeros(0, dtype=np.int32)
        self.legacy = np.zeros(0, dtype=bool)
        self.frame_ids = StringTable()
        self.sensor_ids = StringTable()
        self.pointcloud_urls = StringTable()
        self.mask_urls = StringTable()
        self.ego_poses = np.zeros((0, 7))
        self.camera_poses = np.zeros((0, 7))
        self.camera_offsets = np.zeros(1, dtype=np.int64)
        # Label lookup tables, one run of rows per frame.
        # Label lookup tables, deduplicated: frames whose keys mean the same share one table (a job's frames
        # often do), which keeps a large index small. frame_table[i] is frame i's table.
        self.frame_table = np.zeros(0, dtype=np.int32)
        self.lut_offsets = np.zeros(1, dtype=np.int64)
        self.lut_keys = np.zeros(0, dtype=np.int64)
        self.lut_classes = np.zeros(0, dtype=np.int32)
        self.lut_instances = np.zeros(0, dtype=np.int32)
        self.lut_labels = np.zeros(0, dtype=np.int32)

    @classmethod
    def build(cls, project_id: str, results: Sequence[tuple[JobResult, str]], class_map: ClassMap) -> FrameIndex:
        """Index the frames of parsed results.

        Args:
            project_id: The project.
            results: ``(result, digest)`` per job, in the dataset's order; ``digest`` identifies the result's
                content (a relabelled job gets a new one, and with it new mask cache keys).
            class_map: Maps label names to training indices.

        Returns:
            The index.
        """
        index = cls()
        index.project_id = project_id
        pairs: dict[tuple[str, str], int] = {}
        columns: dict[str, list[Any]] = {
            k: [] for k in ("job", "position", "legacy", "frame", "sensor", "points", "mask", "ego", "cams", "ncam")
        }
        luts: list[tuple[np.ndarray, ...]] = []
        table_ids: dict[bytes, int] = {}
        frame_tables: list[int] = []
        for job_number, (result, digest) in enumerate(results):
            tracks: dict[str, int] = {}
            for entry in result.labels:
                if entry.track_id and entry.track_id not in tracks:
                    tracks[entry.track_id] = len(tracks)
            intrinsics = np.stack([c.matrix() for c in result.cameras]) if result.cameras else np.zeros((0, 3, 3))
            index.jobs.append(JobInfo(result.job_id, digest, result.cameras, intrinsics, tuple(tracks)))
            for frame in result.frames:
                columns["job"].append(job_number)
                columns["position"].append(frame.frame_index)
                columns["legacy"].append(frame.legacy)
                columns["frame"].append(frame.frame_id)
                columns["sensor"].append(frame.sensor_id)
                columns["points"].append(frame.pointcloud_url)
                columns["mask"].append(frame.mask_url)
                columns["ego"].append(_pose_vector(frame.ego_pose))
                columns["cams"].extend(_pose_vector(p) for p in frame.camera_poses)
                columns["ncam"].append(len(frame.camera_poses))
                ordered = sorted(frame.labels, key=lambda e: e.label_key)
                lookup = class_map.lookup(ordered, tracks)
                labels = [pairs.setdefault((e.label, e.class_id), len(pairs)) for e in ordered]
                table = (lookup.keys, lookup.classes, lookup.instances, np.array(labels, dtype=np.int64))
                # Instance ids index the job's own tracks, so equal bytes mean equal lookups in any job.
                signature = b"|".join(column.tobytes() for column in table)
                if signature not in table_ids:
                    table_ids[signature] = len(luts)
                    luts.append(table)
                frame_tables.append(table_ids[signature])
        index.labels_table = tuple(pairs)
        index.frame_job = np.array(columns["job"], dtype=np.int32)
        index.frame_position = np.array(columns["position"], dtype=np.int32)
        index.legacy = np.array(columns["legacy"], dtype=bool)
        index.frame_ids = StringTable(columns["frame"])
        index.sensor_ids = StringTable(columns["sensor"])
        index.pointcloud_urls = StringTable(columns["points"])
        index.mask_urls = StringTable(columns["mask"])
        index.ego_poses = np.array(columns["ego"], dtype=np.float64).reshape(-1, 7)
        index.camera_poses = np.array(columns["cams"], dtype=np.float64).reshape(-1, 7)
        index.camera_offsets = np.concatenate([[0], np.cumsum(columns["ncam"], dtype=np.int64)]).astype(np.int64)
        index.frame_table = np.array(frame_tables, dtype=np.int32)
        index.lut_offsets = np.concatenate([[0], np.cumsum([len(t[0]) for t in luts], dtype=np.int64)])
        index.lut_offsets = index.lut_offsets.astype(np.int64)
        # Keys stay int64 (any integer Playment sends); the rest fits int32, which keeps a big index small.
        for position, name in enumerate(_LUT_COLUMNS):
            dtype = np.int64 if name == "lut_keys" else np.int32
            parts = [t[position] for t in luts]
            setattr(index, name, np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype))
        return index

    def __len__(self) -> int:
        return len(self.frame_job)

    def job_of(self, i: int) -> JobInfo:
        return self.jobs[int(self.frame_job[i])]

    def _table_rows(self, i: int) -> tuple[int, int]:
        table = self.frame_table[i]
        return int(self.lut_offsets[table]), int(self.lut_offsets[table + 1])

    def classes_of(self, i: int, mask: np.ndarray, ignore_index: int, *, consume: bool = False) -> np.ndarray:
        """Class indices of frame ``i``'s label keys (``consume=True`` lets the mask be overwritten)."""
        start, stop = self._table_rows(i)
        scratch = mask if consume and mask.flags.writeable and mask.dtype == np.int64 else None
        return map_keys(self.lut_keys[start:stop], self.lut_classes[start:stop], mask, ignore_index, scratch=scratch)

    def instances_of(self, i: int, mask: np.ndarray) -> np.ndarray:
        """Instance ids (index into the job's tracks, -1 for none) of frame ``i``'s label keys."""
        start, stop = self._table_rows(i)
        return map_keys(self.lut_keys[start:stop], self.lut_instances[start:stop], mask, -1)

    def poses(self, i: int) -> np.ndarray:
        """``(1 + K, 4, 4)``: the ego pose, then one pose per camera (NaN when the frame does not give it)."""
        start, stop = self.camera_offsets[i], self.camera_offsets[i + 1]
        return pose_matrices(np.concatenate([self.ego_poses[i : i + 1], self.camera_poses[start:stop]]))

    def frame_ref(self, i: int) -> FrameRef:
        """Rebuild the :class:`FrameRef` of item ``i``."""
        job = self.job_of(i)
        frame_id = self.frame_ids[i]
        start, stop = self._table_rows(i)
        labels = tuple(
            LabelEntry(
                label_key=int(self.lut_keys[r]),
                label=self.labels_table[self.lut_labels[r]][0],
                class_id=self.labels_table[self.lut_labels[r]][1],
                track_id=job.tracks[self.lut_instances[r]] if self.lut_instances[r] >= 0 else "",
                frame_id=frame_id,
            )
            for r in range(start, stop)
        )
        cam_start, cam_stop = self.camera_offsets[i], self.camera_offsets[i + 1]
        camera_poses = tuple(
            None if np.isnan(v).any() else Pose(tuple(v[:4]), tuple(v[4:]))
            for v in self.camera_poses[cam_start:cam_stop]
        )
        ego = self.ego_poses[i]
        return FrameRef(
            project_id=self.project_id,
            job_id=job.job_id,
            frame_id=frame_id,
            frame_index=int(self.frame_position[i]),
            sensor_id=self.sensor_ids[i],
            pointcloud_url=self.pointcloud_urls[i],
            mask_url=self.mask_urls[i],
            labels=labels,
            ego_pose=Pose(tuple(ego[:4]), tuple(ego[4:])),
            camera_poses=camera_poses,
            cameras=job.cameras,
            legacy=bool(self.legacy[i]),
        )

    def subset(self, keep: np.ndarray) -> FrameIndex:
        """A new index with only the items where ``keep`` (a boolean array) is true."""
        keep = np.asarray(keep, dtype=bool)
        rows = np.flatnonzero(keep)
        out = FrameIndex()
        out.project_id = self.project_id
        out.jobs = self.jobs
        out.labels_table = self.labels_table
        out.frame_job = self.frame_job[rows]
        out.frame_position = self.frame_position[rows]
        out.legacy = self.legacy[rows]
        out.frame_ids = self.frame_ids.take(rows)
        out.sensor_ids = self.sensor_ids.take(rows)
        out.pointcloud_urls = self.pointcloud_urls.take(rows)
        out.mask_urls = self.mask_urls.take(rows)
        out.ego_poses = self.ego_poses[rows]
        cam_rows = _ranges(self.camera_offsets, rows)
        out.camera_poses = self.camera_poses[cam_rows]
        out.camera_offsets = _offsets_of(self.camera_offsets, rows)
        # Tables are shared and small: the subset keeps all of them and selects frames only.
        out.frame_table = self.frame_table[rows]
        out.lut_offsets = self.lut_offsets
        for name in _LUT_COLUMNS:
            setattr(out, name, getattr(self, name))
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (what a worker process inherits)."""
        total = 0
        for value in vars(self).values():
            if isinstance(value, (np.ndarray, StringTable)):
                total += value.nbytes
        return total


def _ranges(offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Concatenated ``range(offsets[r], offsets[r + 1])`` for every row, vectorised."""
    starts, stops = offsets[rows], offsets[rows + 1]
    lengths = stops - starts
    if lengths.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    shifts = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(int(lengths.sum()), dtype=np.int64) + shifts


def _offsets_of(offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    lengths = offsets[rows + 1] - offsets[rows]
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
