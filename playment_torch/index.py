"""The dataset's frame index: every (job, frame) item in a handful of numpy arrays.

A million-frame project must not become a million Python objects: DataLoader workers touch every object they
read, and reference counting then copies the pages of a forked parent's memory one by one. So frames live in
flat arrays (ids and URLs in :class:`StringTable` buffers, poses as 7-vectors, label lookup tables shared by
the frames they fit and concatenated with offsets), and :class:`~playment_torch.models.FrameRef` objects are
rebuilt only when asked for.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from playment_torch._columns import JobColumns, columns_of
from playment_torch.errors import redact_url
from playment_torch.geometry import Camera, Pose
from playment_torch.labels import ClassMap, map_keys
from playment_torch.models import FrameRef, JobResult, LabelEntry

__all__ = ["FrameIndex", "IndexBuilder", "StringTable"]

#: Version of :meth:`FrameIndex.to_bytes`'s layout (and of how an index is derived from results): part of the
#: cache key of a cached index, so a change here never reads an index of another layout.
INDEX_FORMAT = 2
_LUT_COLUMNS = ("lut_keys", "lut_classes", "lut_instances", "lut_labels")
_STRING_COLUMNS = ("frame_ids", "sensor_ids", "pointcloud_urls", "mask_urls")


class _Packed:
    """Strings as one UTF-8 buffer and an offsets array: no Python object per string."""

    __slots__ = ("buffer", "offsets")

    def __init__(self, strings: Iterable[str] = ()) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    @classmethod
    def from_arrays(cls, buffer: np.ndarray, offsets: np.ndarray) -> _Packed:
        packed = cls.__new__(cls)
        packed.buffer = buffer.astype(np.uint8, copy=False)
        packed.offsets = offsets.astype(np.int64, copy=False)
        return packed

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

    def _parts(self) -> dict[str, np.ndarray]:
        return {
            "heads": self._heads.buffer,
            "head_offsets": self._heads.offsets,
            "head_ids": self._head_ids,
            "tails": self._tails.buffer,
            "tail_offsets": self._tails.offsets,
        }

    @classmethod
    def _from_parts(cls, parts: dict[str, np.ndarray]) -> StringTable:
        table = cls.__new__(cls)
        table._heads = _Packed.from_arrays(parts["heads"], parts["head_offsets"])
        table._head_ids = parts["head_ids"].astype(np.int32, copy=False)
        table._tails = _Packed.from_arrays(parts["tails"], parts["tail_offsets"])
        return table

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
# Up to this many poses, pose_matrices is plain arithmetic (faster than numpy's per-call overhead).
_FEW_POSES = 16
_NAN_MATRIX = (float("nan"),) * 16


def pose_matrices(vectors: np.ndarray) -> np.ndarray:
    """``(M, 7)`` pose vectors ``(w, x, y, z, tx, ty, tz)`` -> ``(M, 4, 4)`` matrices (NaN rows stay NaN).

    Quaternions were normalised when parsed. This runs on every ``ds[i]``: a frame has a handful of poses (the
    ego pose and one per camera), for which plain float arithmetic and one array costs a few microseconds,
    where numpy's per-call overhead cost ~40; many poses take two numpy operations instead.
    """
    count = len(vectors)
    if count <= _FEW_POSES:
        rows = []
        for w, x, y, z, tx, ty, tz in vectors.tolist():
            if w != w or x != x or y != y or z != z or tx != tx or ty != ty or tz != tz:  # NaN: not given
                rows.append(_NAN_MATRIX)
                continue
            rows.append(
                (
                    1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y), tx,
                    2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x), ty,
                    2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y), tz,
                    0.0, 0.0, 0.0, 1.0,
                )
            )  # fmt: skip
        return np.array(rows, dtype=np.float64).reshape(count, 4, 4)
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
    result_url: str = ""  # the result's identity: its URL without signature parameters


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
        # Frames of the results that are not items (no lidar point cloud or no mask), for the log.
        self.skipped_frames = 0

    @classmethod
    def build(
        cls, project_id: str, results: Iterable[tuple[JobResult, str]], class_map: ClassMap | None = None
    ) -> FrameIndex:
        """Index the frames of parsed results (see :class:`IndexBuilder` to add them one job at a time).

        Args:
            project_id: The project.
            results: ``(result, digest)`` per job, in the dataset's order; ``digest`` identifies the result's
                content (a relabelled job gets a new one, and with it new mask cache keys). An iterator is
                consumed job by job: no job's parsed result is kept.
            class_map: Maps label names to training indices; ``None`` leaves the classes to
                :meth:`apply_classes`.

        Returns:
            The index.
        """
        builder = IndexBuilder(project_id)
        for result, digest in results:
            builder.add(result, digest)
        index = builder.finish()
        if class_map is not None:
            index.apply_classes(class_map)
        return index

    @property
    def label_names(self) -> frozenset[str]:
        """Every class name an annotation of the index uses."""
        return frozenset(label for label, _ in self.labels_table)

    @property
    def class_ids(self) -> frozenset[str]:
        """Every Playment class id an annotation of the index names ("" left out)."""
        return frozenset(class_id for _, class_id in self.labels_table if class_id)

    def apply_classes(self, class_map: ClassMap) -> None:
        """Set every lookup row's class index from ``class_map`` (the rest of the index does not depend on it).

        Rows refer to ``(label, class_id)`` pairs, so this is one class lookup per distinct pair and one gather,
        however many frames there are: a cached index serves any class map.
        """
        pair_classes = np.array(
            [class_map.index_of(LabelEntry(0, label, class_id)) for label, class_id in self.labels_table],
            dtype=np.int32,
        )
        self.lut_classes = pair_classes[self.lut_labels] if len(self.lut_labels) else np.zeros(0, dtype=np.int32)

    def _archive(self) -> io.BytesIO:
        arrays: dict[str, np.ndarray] = {}
        for name, value in vars(self).items():
            if name == "lut_classes":
                continue
            if isinstance(value, np.ndarray):
                arrays[name] = value
            elif isinstance(value, StringTable):
                for part, array in value._parts().items():
                    arrays[f"{name}.{part}"] = array
        meta = {
            "version": INDEX_FORMAT,
            "project_id": self.project_id,
            "labels_table": [list(pair) for pair in self.labels_table],
            "skipped_frames": self.skipped_frames,
            "jobs": [
                {
                    "job_id": job.job_id,
                    "digest": job.digest,
                    "cameras": [dataclasses.asdict(c) for c in job.cameras],
                    "tracks": list(job.tracks),
                    "result_url": job.result_url,
                }
                for job in self.jobs
            ],
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        out = io.BytesIO()
        np.savez(out, **arrays)  # type: ignore[arg-type]
        return out

    def to_bytes(self) -> bytes:
        """Serialise the index (everything but the class indices) for the cache: an ``.npz`` archive whose
        metadata is JSON, so that reading it back never unpickles anything from a shared directory."""
        return self._archive().getvalue()

    def to_array(self) -> np.ndarray:
        """What :meth:`to_bytes` gives, as a uint8 array over the archive's own buffer: one copy of a
        1,000,000-frame index (250 MiB) fewer while it is written to the cache."""
        return np.frombuffer(self._archive().getbuffer(), dtype=np.uint8)

    @classmethod
    def from_bytes(cls, data: bytes | np.ndarray) -> FrameIndex:
        """Read what :meth:`to_bytes` wrote; call :meth:`apply_classes` before mapping labels.

        Raises:
            ValueError: the bytes are not an index of this format version.
        """
        # Read in place: a copy of the whole archive would double a large index's memory while it loads.
        view = np.ascontiguousarray(data).data if isinstance(data, np.ndarray) else memoryview(data)
        buffer = _MemoryFile(view.cast("B"))
        try:
            with np.load(buffer, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except zipfile.BadZipFile as exc:
            raise ValueError(f"not an index archive: {exc}") from exc
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
        if meta.get("version") != INDEX_FORMAT:
            raise ValueError(f"index format {meta.get('version')!r}, expected {INDEX_FORMAT}")
        index = cls()
        index.project_id = meta["project_id"]
        index.labels_table = tuple((label, class_id) for label, class_id in meta["labels_table"])
        index.skipped_frames = int(meta["skipped_frames"])
        for job in meta["jobs"]:
            cameras = tuple(
                Camera(**{**c, "radial": tuple(c["radial"]), "tangential": tuple(c["tangential"])})
                for c in job["cameras"]
            )
            info = JobInfo(
                job["job_id"], job["digest"], cameras, _intrinsics(cameras), tuple(job["tracks"]), job["result_url"]
            )
            index.jobs.append(info)
        for name in _STRING_COLUMNS:
            parts = {key.split(".", 1)[1]: arrays.pop(key) for key in list(arrays) if key.startswith(name + ".")}
            setattr(index, name, StringTable._from_parts(parts))
        for name, array in arrays.items():
            setattr(index, name, array)
        index.lut_classes = np.zeros(0, dtype=np.int32)
        return index

    def __len__(self) -> int:
        return len(self.frame_job)

    def job_of(self, i: int) -> JobInfo:
        return self.jobs[int(self.frame_job[i])]

    def _table_rows(self, i: int) -> tuple[int, int]:
        table = self.frame_table[i]
        return int(self.lut_offsets[table]), int(self.lut_offsets[table + 1])

    def label_table(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame ``i``'s lookup table: its sorted label keys and the class index of each (views, not copies)."""
        start, stop = self._table_rows(i)
        return self.lut_keys[start:stop], self.lut_classes[start:stop]

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
        out.skipped_frames = self.skipped_frames
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


class _MemoryFile(io.RawIOBase):
    """A read-only, seekable file over a buffer, without copying it (``io.BytesIO`` copies anything but
    ``bytes``)."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        chunk = self._view[self._position : self._position + len(buffer)]
        size = len(chunk)
        memoryview(buffer).cast("B")[:size] = chunk
        self._position += size
        return size


class _StringColumn:
    """A :class:`StringTable` grown job by job: per job a few numpy arrays, never one object per string."""

    def __init__(self) -> None:
        self._heads: dict[str, int] = {}
        self._head_ids: list[np.ndarray] = []
        self._tails: list[bytes] = []
        self._lengths: list[np.ndarray] = []

    def extend(self, strings: Sequence[str]) -> None:
        ids = np.empty(len(strings), dtype=np.int32)
        tails = []
        for i, text in enumerate(strings):
            cut = text.rfind("/") + 1
            ids[i] = self._heads.setdefault(text[:cut], len(self._heads))
            tails.append(text[cut:].encode("utf-8"))
        self._head_ids.append(ids)
        self._tails.append(b"".join(tails))
        self._lengths.append(np.fromiter(map(len, tails), dtype=np.int64, count=len(tails)))

    def finish(self) -> StringTable:
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        heads = _Packed(self._heads)
        head_ids = np.concatenate(self._head_ids) if self._head_ids else np.zeros(0, dtype=np.int32)
        tails = np.frombuffer(b"".join(self._tails), dtype=np.uint8)
        return StringTable._from_parts(
            {
                "heads": heads.buffer,
                "head_offsets": heads.offsets,
                "head_ids": head_ids,
                "tails": tails,
                "tail_offsets": offsets,
            }
        )


def _intrinsics(cameras: Sequence[Camera]) -> np.ndarray:
    return np.stack([c.matrix() for c in cameras]) if cameras else np.zeros((0, 3, 3))


class IndexBuilder:
    """Builds a :class:`FrameIndex` one job at a time, keeping only numpy columns between jobs.

    A 2,000-job project's parsed results are gigabytes of Python objects; the index is megabytes. Each
    :meth:`add` turns one job's result into a few arrays and drops every reference to it, so memory stays
    near the size of the finished index however many jobs there are.

    Args:
        project_id: The project.
    """

    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        self.jobs: list[JobInfo] = []
        self._pairs: dict[tuple[str, str], int] = {}
        self._table_ids: dict[bytes, int] = {}
        self._tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._columns: dict[str, list[np.ndarray]] = {
            k: [] for k in ("job", "position", "legacy", "ego", "cams", "ncam", "table")
        }
        self._strings = {name: _StringColumn() for name in _STRING_COLUMNS}
        self._skipped = 0

    def __len__(self) -> int:
        return sum(len(part) for part in self._columns["job"])

    def add(self, result: JobResult, digest: str, *, result_url: str = "") -> None:
        """Append one job's frames (in the job's frame order).

        Args:
            result: The job's parsed result.
            digest: Identifies the result's content (a relabelled job gets a new one).
            result_url: Where the result came from (kept without its signature parameters).
        """
        self.add_columns(columns_of(result), digest, result_url=result_url)

    def add_columns(self, job: JobColumns, digest: str, *, result_url: str = "") -> None:
        """Append one job's frames from its columns (see :func:`playment_torch._columns.read_columns`).

        Args:
            job: The job's result as columns.
            digest: Identifies the result's content (a relabelled job gets a new one).
            result_url: Where the result came from (kept without its signature parameters).
        """
        job_number = len(self.jobs)
        info = JobInfo(
            job.job_id,
            digest,
            job.cameras,
            _intrinsics(job.cameras),
            job.tracks,
            redact_url(result_url) if result_url else "",
        )
        self.jobs.append(info)
        self._skipped += job.skipped
        count = len(job)
        columns = self._columns
        columns["job"].append(np.full(count, job_number, dtype=np.int32))
        columns["position"].append(job.positions.astype(np.int32, copy=False))
        columns["legacy"].append(job.legacy.astype(bool, copy=False))
        columns["ego"].append(job.ego_poses.reshape(-1, 7))
        columns["cams"].append(job.camera_poses.reshape(-1, 7))
        columns["ncam"].append(job.camera_counts.astype(np.int64, copy=False))
        self._strings["frame_ids"].extend(job.frame_ids)
        self._strings["sensor_ids"].extend(job.sensor_ids)
        self._strings["pointcloud_urls"].extend(job.pointcloud_urls)
        self._strings["mask_urls"].extend(job.mask_urls)
        # The job's pairs join the project-wide table in their order of first appearance, as they always did.
        pairs = self._pairs
        glob = np.array([pairs.setdefault(pair, len(pairs)) for pair in job.pair_names], dtype=np.int32)
        labels = glob[job.pairs] if len(job.pairs) else np.zeros(0, dtype=np.int32)
        keys = job.keys.astype(np.int64, copy=False)
        instances = job.instances.astype(np.int32, copy=False)
        offsets = job.row_offsets
        tables = np.empty(count, dtype=np.int32)
        for i in range(count):
            start, stop = int(offsets[i]), int(offsets[i + 1])
            # Instance ids index the job's own tracks and labels a project-wide table, so equal bytes mean
            # equal lookups in any job: frames share one table.
            frame_keys, frame_labels, frame_instances = keys[start:stop], labels[start:stop], instances[start:stop]
            signature = frame_keys.tobytes() + b"|" + frame_labels.tobytes() + b"|" + frame_instances.tobytes()
            table = self._table_ids.get(signature)
            if table is None:
                table = self._table_ids[signature] = len(self._tables)
                self._tables.append((frame_keys.copy(), frame_instances.copy(), frame_labels.copy()))
            tables[i] = table
        columns["table"].append(tables)

    def finish(self) -> FrameIndex:
        """The index of every job added, without class indices (see :meth:`FrameIndex.apply_classes`)."""
        index = FrameIndex()
        index.project_id = self.project_id
        index.jobs = self.jobs
        index.labels_table = tuple(self._pairs)
        index.skipped_frames = self._skipped

        def joined(name: str, dtype: type, shape: tuple[int, ...] = ()) -> np.ndarray:
            # Each column's parts are let go as soon as they are joined: a large index is built with little
            # more than its own size in memory.
            parts, self._columns[name] = self._columns[name], []
            return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros((0, *shape), dtype=dtype)

        index.frame_job = joined("job", np.int32)
        index.frame_position = joined("position", np.int32)
        index.legacy = joined("legacy", bool)
        index.ego_poses = joined("ego", np.float64, (7,))
        index.camera_poses = joined("cams", np.float64, (7,))
        index.camera_offsets = np.concatenate([[0], np.cumsum(joined("ncam", np.int64))]).astype(np.int64)
        index.frame_table = joined("table", np.int32)
        for name in _STRING_COLUMNS:
            column, self._strings[name] = self._strings[name], _StringColumn()
            setattr(index, name, column.finish())
            del column
        lengths = np.array([len(t[0]) for t in self._tables], dtype=np.int64)
        index.lut_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # Keys stay int64 (any integer Playment sends); the rest fits int32, which keeps a big index small.
        for position, name in enumerate(("lut_keys", "lut_instances", "lut_labels")):
            dtype = np.int64 if name == "lut_keys" else np.int32
            parts = [t[position] for t in self._tables]
            setattr(index, name, np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype))
        index.lut_classes = np.zeros(0, dtype=np.int32)
        self._columns = {k: [] for k in self._columns}
        self._tables = []
        return index


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
