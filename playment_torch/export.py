"""Export a frame with its labels for point cloud viewers: PLY (binary) and PCD with label fields.

CloudCompare, Open3D, MeshLab and PCL read either file. Both carry, per point:

* ``x``, ``y``, ``z`` (float32) in the frame the dataset gives (``frame="native"`` or ``"ego"``);
* ``intensity`` (float32), when ``"intensity"`` is one of the dataset's ``point_fields``;
* ``label`` (int32): the class index in ``ds.classes`` order, ``ignore_index`` (kept as is, e.g. -100) for
  unlabeled points;
* ``instance`` (int32): the track the point belongs to (an index into ``ds.index.job_of(i).tracks``, the same
  for an object in every frame of its job), -1 for none;
* ``prediction`` (int32), when predictions are given.

A PLY file is ``binary_little_endian 1.0`` with one ``vertex`` element; its header's comments name the job and
frame and hold the class list as JSON (``comment classes ["road", ...]``) and ``comment ignore_index -100``.
A PCD file is binary; PCD headers have no comments, so the class list is not in it.

Only the key frame is exported: a dataset with ``sweeps > 1`` gives earlier sweeps' points after the key
frame's, and those rows are left out. The dataset's ``transform`` is not applied.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from playment_torch.errors import ConfigError, PlaymentError, PlaymentFormatError
from playment_torch.formats.pcd import write_pcd

if TYPE_CHECKING:
    from playment_torch.dataset import PlaymentSegmentationDataset

__all__ = ["EXPORT_FORMATS", "export_frame", "frame_table", "write_labelled_pcd", "write_ply"]

#: File formats :func:`export_frame` writes, by suffix.
EXPORT_FORMATS = ("ply", "pcd")


def frame_table(
    points: Any,
    labels: Any,
    *,
    instances: Any = None,
    intensity: Any = None,
    predictions: Any = None,
) -> np.ndarray:
    """One structured array of a frame's per-point values, in the order both writers store them.

    Args:
        points: ``(N, C >= 3)`` array or tensor, x, y, z first.
        labels: ``(N,)`` class indices.
        instances: ``(N,)`` instance ids, or ``None`` (the field is then left out).
        intensity: ``(N,)`` intensities, or ``None``.
        predictions: ``(N,)`` predicted class indices, or ``None``.

    Returns:
        A structured array with fields ``x y z [intensity] label [instance] [prediction]``.

    Raises:
        ConfigError: shapes disagree, or a value does not fit int32.
    """
    xyz = _numpy(points)
    if xyz.ndim != 2 or xyz.shape[1] < 3:
        raise ConfigError(f"points must be (N, C >= 3) with x, y, z first, got shape {xyz.shape}")
    n = len(xyz)
    columns: list[tuple[str, str, np.ndarray]] = [(axis, "<f4", xyz[:, k]) for k, axis in enumerate("xyz")]
    if intensity is not None:
        columns.append(("intensity", "<f4", _column(intensity, n, "intensity")))
    columns.append(("label", "<i4", _integers(labels, n, "labels")))
    if instances is not None:
        columns.append(("instance", "<i4", _integers(instances, n, "instances")))
    if predictions is not None:
        columns.append(("prediction", "<i4", _integers(predictions, n, "predictions")))
    table = np.empty(n, dtype=[(name, dtype) for name, dtype, _ in columns])
    for name, _, values in columns:
        table[name] = values
    return table


def write_ply(dest: str | os.PathLike[str] | BinaryIO, table: np.ndarray, *, comments: Sequence[str] = ()) -> None:
    """Write a structured array as a binary little-endian PLY file (one ``vertex`` element).

    Args:
        dest: A path or a writable binary file object.
        table: Structured array of float32 / int32 / uint8 fields (:func:`frame_table`'s output).
        comments: Header comment lines (ASCII, one line each).

    Raises:
        ConfigError: a field type has no PLY name, or a comment is not one ASCII line.
        OSError: the file could not be written.
    """
    names = {"f4": "float", "f8": "double", "i4": "int", "u4": "uint", "i2": "short", "u2": "ushort"}
    names.update({"i1": "char", "u1": "uchar"})
    lines = ["ply", "format binary_little_endian 1.0"]
    for comment in comments:
        if "\n" in comment or "\r" in comment or not comment.isascii():
            raise ConfigError(f"a PLY comment must be one ASCII line, got {comment!r}")
        lines.append(f"comment {comment}")
    lines.append(f"element vertex {len(table)}")
    fields: Mapping[str, Any] = table.dtype.fields or {}
    for name in table.dtype.names or ():
        dtype = fields[name][0]
        code = f"{dtype.kind}{dtype.itemsize}"
        if code not in names or dtype.shape:
            raise ConfigError(f"field {name!r} of type {dtype} has no PLY type")
        lines.append(f"property {names[code]} {name}")
    lines.append("end_header")
    packed = table.astype(table.dtype.newbyteorder("<"), copy=False)
    # A packed little-endian copy: PLY rows are the fields back to back, no padding.
    packed = np.ascontiguousarray(packed)
    blob = ("\n".join(lines) + "\n").encode("ascii") + packed.tobytes()
    if isinstance(dest, str | os.PathLike):
        with open(dest, "wb") as f:
            f.write(blob)
    else:
        dest.write(blob)


def write_labelled_pcd(dest: str | os.PathLike[str] | BinaryIO, table: np.ndarray) -> None:
    """Write :func:`frame_table`'s array as a binary PCD file (the label fields as ``I 4`` fields).

    Raises:
        PlaymentFormatError: the array cannot be encoded.
        OSError: the file could not be written.
    """
    write_pcd(dest, table, encoding="binary")


def export_frame(
    ds: PlaymentSegmentationDataset,
    i: int,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    predictions: Any = None,
) -> Path:
    """Write item ``i`` with its labels, instances (and predictions) as PLY or PCD.

    Args:
        ds: The dataset (its ``point_fields`` must start with x, y, z).
        i: The item.
        path: The file to write.
        format: ``"ply"`` or ``"pcd"``; default the path's suffix.
        predictions: ``(N,)`` predicted class indices for the frame's points, stored as ``prediction``.

    Returns:
        The path written.

    Raises:
        ConfigError: unknown format, point fields not starting with x, y, z, or predictions of the wrong length.
        PlaymentError: the frame could not be loaded, or the file could not be written.
    """
    target = Path(path)
    chosen = (format or target.suffix.lstrip(".")).lower()
    if chosen not in EXPORT_FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(EXPORT_FORMATS)}; got {chosen!r} ({target})")
    fields = [f.lower() for f in ds.point_fields]
    if fields[:3] != ["x", "y", "z"]:
        raise ConfigError(f"export needs point_fields starting with x, y, z; got {tuple(ds.point_fields)}")
    from playment_torch.viz import _position, _untransformed

    position = _position(ds, i)
    ref = ds.frames[position]
    plain = _untransformed(ds)
    sample = plain[position]
    instances = plain.instances(position).numpy()
    n = len(instances)  # the key frame's points come first when there are sweeps
    if n > len(sample.points):
        raise PlaymentFormatError(
            f"job {ref.job_id}, frame {ref.frame_id}: {n} instance ids for {len(sample.points)} points"
        )
    points = sample.points.numpy()[:n]
    intensity = points[:, fields.index("intensity")] if "intensity" in fields else None
    if predictions is not None and len(np.asarray(predictions).reshape(-1)) != n:
        raise ConfigError(
            f"job {ref.job_id}, frame {ref.frame_id}: {len(np.asarray(predictions).reshape(-1))} predictions for "
            f"{n} points"
        )
    table = frame_table(
        points, sample.labels.numpy()[:n], instances=instances, intensity=intensity, predictions=predictions
    )
    try:
        if chosen == "ply":
            comments = [
                f"playment_torch export: project {_ascii(ds.project_id)}, job {_ascii(ref.job_id)}, "
                f"frame {_ascii(ref.frame_id)}",
                "classes " + json.dumps(list(ds.classes), ensure_ascii=True),
                f"ignore_index {ds.ignore_index}",
                "instance -1 is no track; label ignore_index is unlabeled",
            ]
            write_ply(target, table, comments=comments)
        else:
            write_labelled_pcd(target, table)
    except OSError as exc:
        raise PlaymentError(f"cannot write {target}: {exc}") from exc
    return target


def _ascii(text: str) -> str:
    """An id on one ASCII line (ids are ASCII in practice; anything else is escaped, not dropped)."""
    return json.dumps(text, ensure_ascii=True)[1:-1]


def _numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _column(values: Any, n: int, what: str) -> np.ndarray:
    array = _numpy(values).reshape(-1)
    if len(array) != n:
        raise ConfigError(f"{what} has {len(array)} values but there are {n} points")
    return array


def _integers(values: Any, n: int, what: str) -> np.ndarray:
    array = _column(values, n, what)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(f"{what} must be integers, got {array.dtype}")
    if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
        raise ConfigError(f"{what} do not fit int32")
    return array.astype(np.int32)
