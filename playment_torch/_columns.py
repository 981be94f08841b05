"""One job's result as the index needs it: a few columns, never one Python object per annotation.

The dataset indexes a 2,000-job project from its cached results: 50 frames x 83 label keys is ~4,000
annotations and ~1.35 MiB of JSON a job. Parsing that into :class:`~playment_torch.models.JobResult` (a
:class:`~playment_torch.models.LabelEntry` per annotation, a :class:`~playment_torch.models.FrameRef` per frame)
costs ~60-100 ms of CPU a job, three minutes for the project. :func:`read_columns` reads the same result in
bulk instead:

* **msgspec** decodes the JSON straight into typed structs holding only the fields the index reads (label key,
  label, class id, track id and frame id of an annotation; ids, URLs and poses of frames, sensors and masks).
  It skips the rest without building it and checks every type while decoding, so the JSON decode, the usual
  cost of a result, drops from ~17 ms (``json.loads``) to ~5 ms. Measured on one 1.35 MiB result:
  ``json.loads`` 17-18 ms, ``orjson.loads`` 10-13 ms, ``msgspec`` untyped 11-14 ms, ``msgspec`` typed 5 ms.
* Annotations are grouped by frame with numpy (sort by frame, key, precedence and result order), and the
  rules of :func:`~playment_torch.models._frame_labels` (a frame's own annotation beats one for every frame;
  the first of each kind wins; a key naming two classes is an error) become vectorised checks.
* Poses are normalised as :class:`~playment_torch.geometry.Pose` does, in one numpy pass; any quaternion not
  unit to a couple of ulps takes ``Pose`` itself, so the numbers are the same bits.

The fast path accepts only the common shape of a result. Anything unusual (a type it does not expect, a
missing field the validating parser defaults, an error of any kind, the legacy format) raises
:class:`Unusual`, and the caller parses the result with :meth:`JobResult.from_api
<playment_torch.models.JobResult.from_api>`, which gives the same index or the error naming the JSON path of
the problem. So errors are the validating parser's, word for word, and every result indexes to the same bytes
either way (``tests/test_bulk_index.py`` compares :meth:`FrameIndex.to_bytes
<playment_torch.index.FrameIndex.to_bytes>` of both on generated and hostile results).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np

from playment_torch.errors import PlaymentError
from playment_torch.geometry import _UNIT_TOLERANCE, Camera, Pose
from playment_torch.models import (
    JobResult,
    _choose_lidar,
    _Lidar,
    _MaskRef,
    _match_sensor,
    _Node,
    _parse_sensor_meta,
    _SensorMeta,
)

__all__ = ["JobColumns", "Unusual", "columns_of", "read_columns"]

_IDENTITY_ROW = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
# Rows whose quaternion norm is within this of 1 are unit for Pose too (its tolerance is twice this, which
# covers the last-bit difference between this norm and Pose's); the rest take Pose itself.
_SAFE_UNIT = _UNIT_TOLERANCE / 4


class Unusual(Exception):
    """The result is not of the common shape the bulk reader handles: parse it with the validating parser."""


# ----------------------------------------------------------------------------------------------- the schema
# Only what the index reads. A JSON type other than the one declared (a numeric id, a null where a string is
# expected, a label key beyond int64) fails the decode, and the validating parser takes over. gc=False: these
# structs never take part in a reference cycle, and leaving them out of the garbage collector makes the decode
# ~30% faster (4,000 of them a job).

_Key = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class _Annotation(msgspec.Struct, gc=False):
    label_key: _Key | None = None
    label: str | None = None
    class_id: str | None = None
    track_id: str | None = None
    frame_id: str | None = None


class _Mask(msgspec.Struct, gc=False):
    frame_id: str | None = None
    sensor_id: str | None = None
    label_url: str | None = None
    url: str | None = None


class _AnnotationData(msgspec.Struct, gc=False):
    annotations: list[_Annotation] | None = None
    masks: list[_Mask] | None = None


class _Quaternion(msgspec.Struct, gc=False):
    w: float
    x: float
    y: float
    z: float


class _Position(msgspec.Struct, gc=False):
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0


class _Pose(msgspec.Struct, gc=False):
    heading: _Quaternion | None = None
    position: _Position | None = None


class _Sensor(msgspec.Struct, gc=False):
    sensor_id: str | None = None
    data_url: str | None = None
    original_url: str | None = None
    sensor_pose: _Pose | None = None


class _Frame(msgspec.Struct, gc=False):
    frame_id: str | None = None
    ident: str | None = msgspec.field(default=None, name="_id")
    ego_pose: _Pose | None = None
    sensors: list[_Sensor] | None = None


class _SensorData(msgspec.Struct, gc=False):
    frames: list[_Frame] | None = None
    sensor_meta: Any = None  # small: parsed by the validating parser's own code


class _Result(msgspec.Struct, gc=False):
    annotation_data: _AnnotationData | None = None
    sensor_data: _SensorData | None = None


_DECODER = msgspec.json.Decoder(_Result)


# ----------------------------------------------------------------------------------------------- the columns


@dataclass(frozen=True)
class JobColumns:
    """What the index keeps of one job's result, as columns (a handful of objects per job).

    Attributes:
        job_id: The job.
        cameras: The job's cameras in ``sensor_meta`` order.
        tracks: Track ids in order of first appearance among the annotations (an instance id indexes this).
        frame_ids: The items' frame ids, in the job's frame order.
        positions: Each item's position in the job's frame order.
        sensor_ids: Each item's lidar.
        pointcloud_urls: Each item's point cloud.
        mask_urls: Each item's mask.
        ego_poses: ``(F, 7)`` normalised ``(w, x, y, z, tx, ty, tz)``.
        camera_poses: One row per item and camera, item by item (NaN where the frame gives no pose).
        camera_counts: Each item's number of camera poses (the job's cameras, for a parsed result).
        legacy: One flag per item.
        row_offsets: ``(F + 1,)``: item ``f``'s label rows are ``row_offsets[f]:row_offsets[f + 1]``.
        keys: Label keys, sorted within each item.
        pairs: Each row's ``(label, class_id)`` as an index into ``pair_names``.
        pair_names: Distinct pairs in order of first appearance among the rows.
        instances: Each row's instance id (index into ``tracks``, -1 for none).
        skipped: How many frames of the result are not items.
    """

    job_id: str
    cameras: tuple[Camera, ...]
    tracks: tuple[str, ...]
    frame_ids: Sequence[str]
    positions: np.ndarray
    sensor_ids: Sequence[str]
    pointcloud_urls: Sequence[str]
    mask_urls: Sequence[str]
    ego_poses: np.ndarray
    camera_poses: np.ndarray
    camera_counts: np.ndarray
    legacy: np.ndarray
    row_offsets: np.ndarray
    keys: np.ndarray
    pairs: np.ndarray
    pair_names: Sequence[tuple[str, str]]
    instances: np.ndarray
    skipped: int

    def __len__(self) -> int:
        return len(self.frame_ids)


def columns_of(result: JobResult) -> JobColumns:
    """The columns of a parsed result (what :func:`read_columns` gives for the same JSON)."""
    tracks: dict[str, int] = {}
    for entry in result.labels:
        if entry.track_id and entry.track_id not in tracks:
            tracks[entry.track_id] = len(tracks)
    frames = result.frames
    pair_ids: dict[tuple[str, str], int] = {}
    keys: list[int] = []
    pairs: list[int] = []
    instances: list[int] = []
    lengths: list[int] = []
    for frame in frames:
        ordered = sorted(frame.labels, key=lambda e: e.label_key)
        keys += [e.label_key for e in ordered]
        pairs += [pair_ids.setdefault((e.label, e.class_id), len(pair_ids)) for e in ordered]
        instances += [tracks.get(e.track_id, -1) if e.track_id else -1 for e in ordered]
        lengths.append(len(ordered))
    return JobColumns(
        job_id=result.job_id,
        cameras=result.cameras,
        tracks=tuple(tracks),
        frame_ids=[f.frame_id for f in frames],
        positions=np.array([f.frame_index for f in frames], dtype=np.int32),
        sensor_ids=[f.sensor_id for f in frames],
        pointcloud_urls=[f.pointcloud_url for f in frames],
        mask_urls=[f.mask_url for f in frames],
        ego_poses=np.array([_pose_vector(f.ego_pose) for f in frames], dtype=np.float64).reshape(-1, 7),
        camera_poses=np.array([_pose_vector(p) for f in frames for p in f.camera_poses], dtype=np.float64).reshape(
            -1, 7
        ),
        camera_counts=np.array([len(f.camera_poses) for f in frames], dtype=np.int64),
        legacy=np.array([f.legacy for f in frames], dtype=bool),
        row_offsets=_offsets(lengths),
        keys=np.array(keys, dtype=np.int64),
        pairs=np.array(pairs, dtype=np.int32),
        pair_names=tuple(pair_ids),
        instances=np.array(instances, dtype=np.int32),
        skipped=len(result.skipped_frames),
    )


def _pose_vector(pose: Pose | None) -> tuple[float, ...]:
    if pose is None:
        return (np.nan,) * 7
    return (*pose.rotation, *pose.translation)


def _offsets(lengths: Sequence[int]) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


# ----------------------------------------------------------------------------------------------- bulk reader


def read_columns(body: bytes | np.ndarray, *, job_id: str) -> JobColumns:
    """Read a current-format result's JSON straight into columns.

    Args:
        body: The result file's bytes (or a uint8 array of them).
        job_id: The job.

    Returns:
        The same columns :func:`columns_of` gives for ``JobResult.from_api`` of the same JSON.

    Raises:
        Unusual: the result is not of the common shape (or is malformed): parse it with the validating parser,
            which gives the same columns or the error that names the problem.
    """
    try:
        result = _DECODER.decode(body.data if isinstance(body, np.ndarray) else body)
        return _Reader(result, job_id).columns()
    except (msgspec.MsgspecError, PlaymentError, RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise Unusual(str(exc)) from exc


@dataclass(frozen=True)
class _FrameSlot:
    frame: _Frame
    frame_id: str
    index: int
    explicit: bool


class _Reader:
    """The steps of ``models._parse_current``, on typed structs, for the common shape only."""

    def __init__(self, result: _Result, job_id: str) -> None:
        if result.sensor_data is None or result.sensor_data.frames is None:
            # No result, no sensor_data, or the single-frame layout without ``frames``: the validating parser.
            raise Unusual("not the multi-frame layout")
        self.job_id = job_id
        self.sensor_data = result.sensor_data
        data = result.annotation_data
        self.annotations = (data.annotations if data is not None else None) or []
        self.masks = (data.masks if data is not None else None) or []
        self.context = _Node(None, "", f"job {job_id}")

    def columns(self) -> JobColumns:
        metas = _parse_sensor_meta(_Node(self.sensor_data.sensor_meta, "sensor_data.sensor_meta", self.context.context))
        cameras = tuple(m.camera for m in metas if m.camera is not None)
        labels = _AnnotationColumns(self.annotations)
        layout = self._layout(labels)
        masks = self._masks(layout)
        matched: dict[str, _SensorMeta | None] = {}
        # Every pose of the job, one row each, normalised together at the end; -1: no pose (NaN).
        raw: list[tuple[float, ...]] = []
        ego_rows: list[int] = []
        camera_rows: list[int] = []
        items: list[tuple[_FrameSlot, _Lidar, str]] = []
        skipped = 0
        for slot in layout:
            ego = len(raw)
            raw.append(_raw_pose(slot.frame.ego_pose))  # every frame's, as the validating parser checks them all
            poses: dict[tuple[str, str], int] = {}
            lidars: list[_Lidar] = []
            for sensor in slot.frame.sensors or ():
                reference = sensor.sensor_id or ""
                if reference in matched:
                    meta = matched[reference]
                else:
                    meta = matched[reference] = _match_sensor(self.context, reference, metas)
                url = sensor.data_url or sensor.original_url or ""
                if meta is not None and meta.modality == "camera":
                    poses[(meta.name, meta.id)] = len(raw)
                    raw.append(_raw_pose(sensor.sensor_pose))
                elif meta is not None and meta.modality == "lidar":
                    lidars.append(_Lidar(meta, meta.id or reference, reference, url))
                elif meta is None and not metas and url.split("?")[0].lower().endswith(".pcd"):
                    lidars.append(_Lidar(None, reference, reference, url))
            choice = _choose_lidar(self.context, lidars, masks.get(slot.frame_id, ()), metas)
            if isinstance(choice, str):
                skipped += 1
                continue
            lidar, mask_url = choice
            items.append((slot, lidar, mask_url))
            ego_rows.append(ego)
            camera_rows += [poses.get((c.name, c.sensor_id), -1) for c in cameras]
        known = {slot.frame_id for slot in layout}
        skipped += len((masks.keys() | labels.named) - known)
        vectors = _pose_rows(np.array(raw, dtype=np.float64).reshape(-1, 7))
        vectors = np.concatenate([vectors, np.full((1, 7), np.nan)])  # row -1: no pose
        keys, pairs, pair_names, instances, offsets = labels.tables([slot.frame_id for slot, _, _ in items])
        return JobColumns(
            job_id=self.job_id,
            cameras=cameras,
            tracks=labels.tracks,
            frame_ids=[slot.frame_id for slot, _, _ in items],
            positions=np.array([slot.index for slot, _, _ in items], dtype=np.int32),
            sensor_ids=[lidar.sensor_id for _, lidar, _ in items],
            pointcloud_urls=[lidar.url for _, lidar, _ in items],
            mask_urls=[url for _, _, url in items],
            ego_poses=vectors[np.array(ego_rows, dtype=np.int64)],
            camera_poses=vectors[np.array(camera_rows, dtype=np.int64)],
            camera_counts=np.full(len(items), len(cameras), dtype=np.int64),
            legacy=np.zeros(len(items), dtype=bool),
            row_offsets=offsets,
            keys=keys,
            pairs=pairs,
            pair_names=pair_names,
            instances=instances,
            skipped=skipped,
        )

    def _layout(self, labels: _AnnotationColumns) -> list[_FrameSlot]:
        """``models._frame_layout`` and ``models._adopt_frame_id``: frame ids, unique."""
        frames = self.sensor_data.frames or []
        slots: list[_FrameSlot] = []
        seen: set[str] = set()
        for index, frame in enumerate(frames):
            named = frame.frame_id or frame.ident or ""
            frame_id = named or str(index)
            if frame_id in seen:
                raise Unusual(f"frame id {frame_id!r} is used twice")
            seen.add(frame_id)
            slots.append(_FrameSlot(frame, frame_id, index, bool(named)))
        if len(slots) == 1 and not slots[0].explicit:
            named_ids = set(labels.named) | {mask.frame_id or "" for mask in self.masks}
            named_ids.discard("")
            if len(named_ids) == 1:
                slots = [_FrameSlot(slots[0].frame, named_ids.pop(), 0, True)]
        return slots

    def _masks(self, layout: list[_FrameSlot]) -> dict[str, list[_MaskRef]]:
        """``models._masks_by_frame``."""
        single = layout[0] if len(layout) == 1 else None
        masks: dict[str, list[_MaskRef]] = {}
        for mask in self.masks:
            url = mask.label_url or mask.url or ""
            if not url:
                continue
            frame_id = mask.frame_id or ""
            if single is not None and (not frame_id or not single.explicit):
                frame_id = single.frame_id
            elif not frame_id:
                raise Unusual("a mask without frame_id in a job of several frames")
            masks.setdefault(frame_id, []).append(_MaskRef(mask.sensor_id or "", url, ""))
        return masks


def _raw_pose(pose: _Pose | None) -> tuple[float, ...]:
    """``models._parse_pose`` before normalisation: missing parts are the identity's."""
    if pose is None:
        return _IDENTITY_ROW
    heading, position = pose.heading, pose.position
    rotation = (1.0, 0.0, 0.0, 0.0) if heading is None else (heading.w, heading.x, heading.y, heading.z)
    translation = (0.0, 0.0, 0.0) if position is None else (position.x, position.y, position.z)
    return (*rotation, *translation)


def _pose_rows(raw: np.ndarray) -> np.ndarray:
    """``(M, 7)`` raw poses -> the vectors :class:`Pose` stores: normalised, canonical quaternions.

    Raises:
        Unusual: a pose is not finite.
        PlaymentFormatError: a quaternion is zero (from :class:`Pose`).
    """
    if not np.isfinite(raw).all():
        raise Unusual("a pose is not finite")
    out = raw.copy()
    quaternions = out[:, :4]
    norms = np.sqrt(np.einsum("ij,ij->i", quaternions, quaternions))
    odd = np.abs(norms - 1.0) > _SAFE_UNIT
    for row in np.flatnonzero(odd):
        w, x, y, z = raw[row, :4].tolist()
        pose = Pose.from_quaternion(w, x, y, z, position=raw[row, 4:].tolist())
        out[row] = (*pose.rotation, *pose.translation)
    # q and -q are one rotation: Pose keeps the one whose first non-zero component is positive.
    rows = np.flatnonzero(~odd)
    if len(rows):
        q = quaternions[rows]
        first = q[np.arange(len(rows)), np.argmax(q != 0.0, axis=1)]
        flip = rows[first < 0.0]
        out[flip, :4] = -out[flip, :4]
    return out


class _AnnotationColumns:
    """A job's annotations as integer codes (frame, key, label, pair, track), one entry per annotation."""

    def __init__(self, annotations: list[_Annotation]) -> None:
        count = len(annotations)
        keys = [a.label_key for a in annotations]
        labels = [a.label for a in annotations]
        if None in keys or not all(labels):
            # No key (labels no point) or no label (named by text or class id): the validating parser decides.
            raise Unusual("an annotation without label_key or label")
        frames = [a.frame_id or "" for a in annotations]
        classes = [a.class_id or "" for a in annotations]
        tracks = [a.track_id or "" for a in annotations]
        frame_codes = _codes(frames)
        self.frame_code = frame_codes
        self.named = {frame for frame in frame_codes if frame}
        self.keys = np.fromiter(keys, dtype=np.int64, count=count)
        self.frames = np.fromiter(map(frame_codes.__getitem__, frames), dtype=np.int64, count=count)
        label_codes = _codes(labels)
        self.labels = np.fromiter(map(label_codes.__getitem__, labels), dtype=np.int64, count=count)
        class_codes = _codes(classes)
        class_ids = np.fromiter(map(class_codes.__getitem__, classes), dtype=np.int64, count=count)
        # A (label, class id) pair as one integer: no tuple per annotation.
        combined = self.labels * max(len(class_codes), 1) + class_ids
        distinct, self.pairs = np.unique(combined, return_inverse=True)
        label_names, class_names = list(label_codes), list(class_codes)
        width = max(len(class_codes), 1)
        self.pair_names = [(label_names[int(c) // width], class_names[int(c) % width]) for c in distinct]
        distinct_tracks = dict.fromkeys(tracks)
        distinct_tracks.pop("", None)  # no track: instance -1
        track_codes = _codes(distinct_tracks)
        self.tracks = tuple(track_codes)
        self.instances = np.fromiter(map(track_codes.get, tracks, itertools.repeat(-1)), dtype=np.int64, count=count)

    def tables(
        self, frame_ids: list[str]
    ) -> tuple[np.ndarray, np.ndarray, tuple[tuple[str, str], ...], np.ndarray, np.ndarray]:
        """Each item's label table, as ``models._frame_labels`` builds it, concatenated in item order.

        Returns:
            ``(keys, pairs, pair names, instances, row offsets)``: pairs index the pair names, which are in
            order of first appearance among the rows.

        Raises:
            Unusual: a key names two classes in a frame (the validating parser says where).
        """
        count = len(frame_ids)
        code_item = np.full(len(self.frame_code) + 1, -1, dtype=np.int64)
        for position, frame_id in enumerate(frame_ids):
            code = self.frame_code.get(frame_id)
            if code is not None:
                code_item[code] = position
        shared_code = self.frame_code.get("")
        if shared_code is not None:
            code_item[shared_code] = -1
        own_items = code_item[self.frames]
        own_rows = np.flatnonzero(own_items >= 0)
        rows = [own_rows]
        items = [own_items[own_rows]]
        precedence = [np.zeros(len(own_rows), dtype=np.int8)]
        if shared_code is not None and count:
            # Annotations for every frame: a candidate row in each item, after the item's own.
            shared_rows = np.flatnonzero(self.frames == shared_code)
            rows.append(np.tile(shared_rows, count))
            items.append(np.repeat(np.arange(count, dtype=np.int64), len(shared_rows)))
            precedence.append(np.ones(count * len(shared_rows), dtype=np.int8))
        row = np.concatenate(rows)
        item = np.concatenate(items)
        order = np.lexsort((row, np.concatenate(precedence), self.keys[row], item))
        row, item = row[order], item[order]
        keys = self.keys[row]
        starts = np.ones(len(row), dtype=bool)
        starts[1:] = (item[1:] != item[:-1]) | (keys[1:] != keys[:-1])
        group = np.cumsum(starts) - 1
        first = np.flatnonzero(starts)
        labels = self.labels[row]
        if (labels != labels[first][group]).any():
            raise Unusual("a label key names two classes in a frame")
        winners = row[first]
        offsets = np.zeros(count + 1, dtype=np.int64)
        np.cumsum(np.bincount(item[first], minlength=count), out=offsets[1:])
        local = self.pairs[winners]
        used, seen_at = np.unique(local, return_index=True)
        appearance = used[np.argsort(seen_at, kind="stable")]
        renumber = np.zeros(len(self.pair_names), dtype=np.int32)
        renumber[appearance] = np.arange(len(appearance), dtype=np.int32)
        names = tuple(self.pair_names[int(p)] for p in appearance)
        return (
            self.keys[winners],
            renumber[local],
            names,
            self.instances[winners].astype(np.int32),
            offsets,
        )


def _codes(values: Any) -> dict[Any, int]:
    """Distinct values in order of first appearance -> 0, 1, 2, ..."""
    return {value: code for code, value in enumerate(dict.fromkeys(values))}
