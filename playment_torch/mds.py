"""Export a dataset snapshot to MosaicML Streaming (MDS) shards, and read it back as :class:`Sample` values.

For many nodes, do not make every node fetch from Playment: export the frames once, from a warm cache, to MDS
shards in a local folder or any remote Streaming supports (``s3://``, ``gs://``, ``oci://``, ``azure://``,
``sftp://``...), and train with ``PlaymentStreamingDataset``, a thin ``streaming.StreamingDataset`` that yields
the same :class:`~playment_torch.sample.Sample` as the dataset (so transforms, ``collate_points`` and the metrics
work unchanged). Streaming then does what it is built for: each node copies each shard it needs once into its
``local`` folder, partitions samples deterministically across nodes, ranks and workers, and resumes mid-epoch from
``state_dict``. Needs the ``[mds]`` extra (``pip install 'playment-torch[mds]'``); the core never imports it.

Layout of an export (format version 1):

* columns per sample: ``points``, ``labels``, ``poses``, ``intrinsics`` as raw little-endian bytes (float32,
  int64, float64, float64) with their shapes in ``shape`` = ``[N, C, 1 + K, K]``; ``job_id``, ``frame_id``,
  ``sensor_id``, ``digest`` (the job result's digest) and ``item`` (the frame's index in the exported dataset).
  Raw bytes rather than MDS's ``ndarray`` because MDS refuses 0-element arrays (a job without cameras has
  ``(0, 3, 3)`` intrinsics; a cloud may be empty).
* ``playment.json`` beside ``index.json``: format name and version, project, classes, ``ignore_index``,
  ``point_fields``, the frame options, frames, and the snapshot id.

A snapshot is frozen: relabelling a job changes its result digest but not the shards. :func:`snapshot_id` names
the exported content (jobs and their digests, fields, classes); put it in the export path and export again when it
changes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from playment_torch.errors import ConfigError, PlaymentError

if TYPE_CHECKING:
    from playment_torch.dataset import PlaymentSegmentationDataset
    from playment_torch.sample import Sample

__all__ = [
    "FORMAT_VERSION",
    "ExportReport",
    "ExportedFrame",
    "export_command",
    "export_mds",
    "read_metadata",
    "record_from_sample",
    "sample_from_record",
    "snapshot_id",
]

FORMAT_NAME = "playment-torch-mds"
FORMAT_VERSION = 1
METADATA_FILE = "playment.json"
COLUMNS = {
    "points": "bytes",
    "labels": "bytes",
    "poses": "bytes",
    "intrinsics": "bytes",
    "shape": "ndarray:int64:4",
    "job_id": "str",
    "frame_id": "str",
    "sensor_id": "str",
    "digest": "str",
    "item": "int",
}
COMPRESSIONS = (None, "zstd", "zstd:1", "zstd:3", "zstd:9", "zstd:19", "gz", "bz2", "br", "snappy")
_INSTALL_HINT = "MosaicML Streaming is not installed: pip install 'playment-torch[mds]'"


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_mds` wrote.

    Attributes:
        out: Where (as given).
        frames: Samples written.
        shards: Shard files.
        bytes: Bytes of the shard files (as stored, after compression).
        seconds: Wall time.
        snapshot: The snapshot id (see :func:`snapshot_id`).
    """

    out: str
    frames: int
    shards: int
    bytes: int
    seconds: float
    snapshot: str

    def __str__(self) -> str:
        rate = self.frames / self.seconds if self.seconds else 0.0
        return (
            f"{self.frames} frames in {self.shards} shards, {self.bytes / 2**20:.1f} MiB, {self.seconds:.1f} s "
            f"({rate:.0f} frames/s), snapshot {self.snapshot} -> {self.out}"
        )


@dataclass(frozen=True)
class ExportedFrame:
    """The identity of an exported frame.

    Attributes:
        job_id: The Playment job.
        frame_id: The frame within the job.
        sensor_id: The lidar sensor.
        digest: The digest of the job result the labels came from.
        item: The frame's index in the dataset that was exported.
    """

    job_id: str
    frame_id: str
    sensor_id: str
    digest: str
    item: int


# ------------------------------------------------------------------------------------------------ the engine


def import_streaming() -> ModuleType:
    """Import ``streaming``, working around torchvision's import failure beside a CPU-only torch.

    ``import streaming`` imports torchvision. PyPI's Linux torchvision wheels are CUDA builds: beside a CPU-only
    torch their ``_C`` extension does not load, which torchvision tolerates except for two unconditional fake
    registrations that then fail with ``operator torchvision::nms does not exist`` (pytorch/vision#9085). When
    and only when that happens, the two operator *schemas* are declared (no kernels: calling ``nms`` still says
    the ops are missing) and the import is tried again. A torch where torchvision's extension loads is untouched.

    Returns:
        The ``streaming`` module.

    Raises:
        ConfigError: the ``[mds]`` extra is not installed.
    """
    if "streaming" in sys.modules:
        return sys.modules["streaming"]
    try:
        import streaming
    except ImportError as exc:
        raise ConfigError(f"{_INSTALL_HINT} ({exc})") from exc
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        _declare_torchvision_schemas()
        for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "streaming")]:
            del sys.modules[name]
        import streaming
    return streaming


_TORCHVISION_SCHEMAS: list[Any] = []  # keeps the declaring library alive for the life of the process


def _declare_torchvision_schemas() -> None:
    import torch

    if _TORCHVISION_SCHEMAS:
        return
    library = torch.library.Library("torchvision", "FRAGMENT")
    for name in ("nms", "qnms"):
        schema = f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
        with contextlib.suppress(RuntimeError):  # already declared (by torchvision, or an earlier attempt)
            library.define(schema)
    _TORCHVISION_SCHEMAS.append(library)


# ------------------------------------------------------------------------------------------------ export


def snapshot_id(dataset: PlaymentSegmentationDataset) -> str:
    """A short id of what an export of ``dataset`` contains: its jobs and their result digests, and its options.

    Relabelling a job changes its digest and so the id: put the id in the export path (``.../{snapshot}``) and
    export again when it changes.

    Args:
        dataset: The dataset.

    Returns:
        16 hex characters.
    """
    jobs: dict[str, str] = {}
    for i in range(len(dataset)):
        job = dataset.index.job_of(i)
        jobs.setdefault(job.job_id, job.digest)
    recipe = {
        "format": FORMAT_VERSION,
        "project": dataset.project_id,
        "jobs": sorted(jobs.items()),
        "frames": len(dataset),
        "classes": list(dataset.classes),
        "ignore_index": dataset.ignore_index,
        "point_fields": list(dataset.point_fields),
        "options": _frame_options(dataset),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _frame_options(dataset: PlaymentSegmentationDataset) -> dict[str, Any]:
    names = ("frame", "sweeps", "label_sweeps", "sweep_reference")
    return {name: getattr(dataset, name) for name in names if hasattr(dataset, name)}


def export_mds(
    dataset: PlaymentSegmentationDataset,
    out: str | os.PathLike[str] | tuple[str | os.PathLike[str], str],
    *,
    compression: str | None = None,
    num_workers: int = 8,
    size_limit: int = 1 << 26,
    progress: bool | None = True,
) -> ExportReport:
    """Write every frame of ``dataset`` to MDS shards, with classes and fields in ``playment.json``.

    Frames are read through the dataset, so a warm cache is read and a cold frame is downloaded (in parallel,
    like ``prefetch``); the dataset's ``transform`` is not applied (augmentations belong to training). Frames are
    written in the dataset's order; a frame that fails stops the export before ``index.json`` is written, so a
    half-written export is never readable.

    Args:
        dataset: The dataset to export.
        out: A local folder (new or empty), a remote Streaming supports (``s3://bucket/path``...; shards are
            staged in a temporary folder and uploaded as they are written), or ``(local, remote)`` to keep the
            local copy too. ``"{snapshot}"`` anywhere in it is replaced by :func:`snapshot_id`.
        compression: ``None``, ``"zstd"`` (or ``"zstd:<level>"``), ``"gz"``, ``"bz2"``, ``"br"``, ``"snappy"``.
        num_workers: Threads reading (and decoding or downloading) frames while the writer writes.
        size_limit: Shard size in bytes before compression.
        progress: Allow a progress bar (shown only on a terminal).

    Returns:
        What was written.

    Raises:
        ConfigError: the ``[mds]`` extra is missing, an option is wrong, or ``out`` is not empty or not
            supported.
        PlaymentError: a frame failed (chained; it names the job and frame).
    """
    if compression not in COMPRESSIONS:
        raise ConfigError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    if num_workers < 1 or size_limit < 1:
        raise ConfigError("num_workers and size_limit must be at least 1")
    import_streaming()
    from streaming import MDSWriter
    from tqdm.auto import tqdm

    started = time.perf_counter()
    snapshot = snapshot_id(dataset)
    if isinstance(out, tuple):
        local, remote = (os.fspath(part).replace("{snapshot}", snapshot) for part in out)
        destination: str | tuple[str, str] = (local, remote)
        target = remote
    else:
        destination = target = os.fspath(out).replace("{snapshot}", snapshot)
    # Read through a copy without the transform: the user's dataset keeps its own.
    source = copy.copy(dataset)
    source.transform = None
    try:
        writer = MDSWriter(
            out=destination,
            columns=COLUMNS,
            compression=compression,
            size_limit=size_limit,
            keep_local=isinstance(out, tuple),
            progress_bar=False,
        )
    except (FileExistsError, ValueError, OSError) as exc:
        raise ConfigError(f"cannot export to {target}: {exc}") from exc
    total = len(source)
    failed = True
    try:
        show = progress is not False and getattr(dataset, "progress", None) is not False
        with tqdm(total=total, desc="export", unit="frame", disable=None if show else True, leave=False) as bar:
            for record in _records(source, num_workers):
                writer.write(record)
                bar.update(1)
        failed = False
    finally:
        if failed:
            writer.cancel_future_jobs()
            writer.executor.shutdown(wait=False)
    # The sidecar first, index.json (written by finish) last: an export whose index exists is complete.
    _write_metadata(writer, dataset, snapshot, total)
    try:
        writer.finish()
    except Exception as exc:  # Streaming raises a bare Exception when an upload thread failed
        raise PlaymentError(f"export to {target}: writing the shards failed: {exc}") from exc
    shards = [shard["zip_data"] or shard["raw_data"] for shard in writer.shards]
    return ExportReport(
        out=target,
        frames=total,
        shards=len(shards),
        bytes=sum(int(info["bytes"]) for info in shards),
        seconds=time.perf_counter() - started,
        snapshot=snapshot,
    )


def _records(dataset: PlaymentSegmentationDataset, num_workers: int) -> Iterator[dict[str, Any]]:
    """The dataset's frames as MDS records, in order, read by ``num_workers`` threads a bounded window ahead."""
    window = 4 * num_workers
    with ThreadPoolExecutor(num_workers, thread_name_prefix="playment-export") as pool:
        pending: deque[Future[dict[str, Any]]] = deque()
        next_item = 0
        try:
            while pending or next_item < len(dataset):
                while next_item < len(dataset) and len(pending) < window:
                    pending.append(pool.submit(_record, dataset, next_item))
                    next_item += 1
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _record(dataset: PlaymentSegmentationDataset, i: int) -> dict[str, Any]:
    try:
        sample = dataset[i]
    except PlaymentError as exc:
        raise PlaymentError(f"export: item {i} failed: {exc}") from exc
    ref = dataset.frames[i]
    frame = ExportedFrame(ref.job_id, ref.frame_id, ref.sensor_id, dataset.index.job_of(i).digest, i)
    return record_from_sample(sample, frame)


def record_from_sample(sample: Sample, frame: ExportedFrame) -> dict[str, Any]:
    """The MDS record of one frame (the inverse of :func:`sample_from_record`).

    Args:
        sample: The frame's sample.
        frame: Its identity.

    Returns:
        The record, with the columns of :data:`COLUMNS`.

    Raises:
        PlaymentError: the sample's shapes are not those of the :class:`Sample` contract.
    """
    points = np.ascontiguousarray(sample.points.numpy(), dtype="<f4")
    labels = np.ascontiguousarray(sample.labels.numpy(), dtype="<i8")
    poses = np.ascontiguousarray(sample.poses.numpy(), dtype="<f8")
    intrinsics = np.ascontiguousarray(sample.intrinsics.numpy(), dtype="<f8")
    if (
        points.ndim != 2
        or labels.shape != (len(points),)
        or poses.shape[1:] != (4, 4)
        or intrinsics.shape[1:] != (3, 3)
    ):
        raise PlaymentError(
            f"export: item {frame.item} (job {frame.job_id}, frame {frame.frame_id}) has shapes the format does "
            f"not hold: points {points.shape}, labels {labels.shape}, poses {poses.shape}, "
            f"intrinsics {intrinsics.shape}"
        )
    return {
        "points": points.tobytes(),
        "labels": labels.tobytes(),
        "poses": poses.tobytes(),
        "intrinsics": intrinsics.tobytes(),
        "shape": np.array([points.shape[0], points.shape[1], len(poses), len(intrinsics)], dtype=np.int64),
        "job_id": frame.job_id,
        "frame_id": frame.frame_id,
        "sensor_id": frame.sensor_id,
        "digest": frame.digest,
        "item": frame.item,
    }


def _write_metadata(writer: Any, dataset: PlaymentSegmentationDataset, snapshot: str, frames: int) -> None:
    metadata = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "project_id": dataset.project_id,
        "classes": list(dataset.classes),
        "ignore_index": dataset.ignore_index,
        "point_fields": list(dataset.point_fields),
        "options": _frame_options(dataset),
        "frames": frames,
        "snapshot": snapshot,
    }
    text = json.dumps(metadata, indent=2, sort_keys=True)
    if writer.remote is None or writer.keep_local:
        _atomic_write(os.path.join(writer.local, METADATA_FILE), text)
        if writer.remote is not None:
            writer.cloud_writer.upload_file(METADATA_FILE)
        return
    # The writer's local staging folder goes when it finishes; stage the sidecar in a folder of its own.
    from streaming.base.storage.upload import CloudUploader

    with tempfile.TemporaryDirectory() as staging:
        uploader = CloudUploader.get((staging, writer.remote), keep_local=False)
        _atomic_write(os.path.join(staging, METADATA_FILE), text)
        uploader.upload_file(METADATA_FILE)


def _atomic_write(path: str, text: str) -> None:
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)


# ------------------------------------------------------------------------------------------------ reading


def read_metadata(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``playment.json`` of a local export folder.

    Args:
        folder: The folder holding ``index.json`` and ``playment.json``.

    Returns:
        The metadata (classes, ``ignore_index``, ``point_fields``, ``version``...).

    Raises:
        PlaymentFormatError: missing, not JSON, or not a version this library reads.
    """
    from playment_torch.errors import PlaymentFormatError

    path = os.path.join(os.fspath(folder), METADATA_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            metadata = json.load(handle)
    except (OSError, ValueError) as exc:
        raise PlaymentFormatError(f"{path}: not a playment-torch MDS export ({exc})") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise PlaymentFormatError(f"{path}: not a playment-torch MDS export")
    if metadata.get("version") != FORMAT_VERSION:
        raise PlaymentFormatError(
            f"{path}: export format version {metadata.get('version')}; this library reads {FORMAT_VERSION}"
        )
    return metadata


def sample_from_record(record: Mapping[str, Any]) -> Sample:
    """An MDS record of an export as a :class:`Sample` of writable tensors.

    Args:
        record: The decoded record, as ``streaming.StreamingDataset`` returns it.

    Returns:
        The sample.
    """
    import torch

    from playment_torch.sample import Sample

    n, c, p, k = (int(v) for v in record["shape"])
    return Sample(
        torch.from_numpy(_array(record["points"], "<f4", (n, c))),
        torch.from_numpy(_array(record["labels"], "<i8", (n,))),
        torch.from_numpy(_array(record["poses"], "<f8", (p, 4, 4))),
        torch.from_numpy(_array(record["intrinsics"], "<f8", (k, 3, 3))),
    )


def _array(buffer: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    # MDS hands out read-only buffers; the copy makes tensors that transforms may modify in place.
    return np.frombuffer(buffer, dtype=dtype).reshape(shape).astype(dtype[1:], copy=True)


def __getattr__(name: str) -> Any:
    # The reader's classes (not in __all__: they need the extra) are defined on first use.
    if name in ("PlaymentStreamingDataLoader", "PlaymentStreamingDataset"):
        from playment_torch import _mds_reader

        return getattr(_mds_reader, name)
    raise AttributeError(f"module 'playment_torch.mds' has no attribute {name!r}")


# ------------------------------------------------------------------------------------------------ command


def export_command(args: argparse.Namespace) -> None:
    """``playment-torch export``: build the dataset from the cache (fetching what is missing) and export it.

    Args:
        args: The parsed command line (``project``, ``batch``, ``job``, ``cache_dir``, ``base_url``, ``threads``,
            ``format``, ``out``, ``compression``, ``fields`` (the CLI maps ``--point-fields`` to it), ``quiet``).

    Raises:
        PlaymentError: resolution or a frame failed, or the export could not be written.
    """
    from playment_torch.client import DEFAULT_BASE_URL, PlaymentClient
    from playment_torch.dataset import PlaymentSegmentationDataset

    if args.format != "mds":
        raise ConfigError(f"unknown export format {args.format!r}")
    fields = tuple(name.strip() for name in args.fields.split(",") if name.strip())
    progress = False if args.quiet else None
    dataset = PlaymentSegmentationDataset(
        args.project,
        job_ids=args.job,
        batch_ids=args.batch,
        client=PlaymentClient(base_url=args.base_url or DEFAULT_BASE_URL),
        cache_dir=args.cache_dir,
        point_fields=fields,
        progress=progress,
        num_threads=args.threads,
    )
    report = export_mds(dataset, args.out, compression=args.compression, num_workers=args.threads, progress=progress)
    print(f"project {args.project}: {report}")
