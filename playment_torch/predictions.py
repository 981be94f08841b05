"""A model's per-point predictions on disk, keyed by (job, frame), and their export in Playment's result format.

The folder format (read by :func:`load_predictions`, ``playment-torch evaluate`` and ``show --predictions``)::

    DIR/classes.json                         {"classes": [...], "ignore_index": -100, "format": 1}
    DIR/<quote(job_id)>/<quote(frame_id)>.npy  1-D integer array: one class index per point of the frame's
                                               cloud, in file order; ignore_index where the model abstains

where ``quote`` is ``urllib.parse.quote(value, safe="")``, so any id is one safe file name. Class indices are
positions in ``classes`` (the training dataset's ``ds.classes``).

Safe with DataLoader workers and DDP ranks: every file is written to a temporary name in its folder and moved
into place with ``os.replace`` (readers see the old file or the new one, never half of one); there is no shared
index file, so processes writing different frames never touch the same file; ``classes.json`` is written once
the same way, and a writer whose classes differ from the folder's is refused.

Typical use, with a sampler whose order can be replayed (sequential, or ``DistributedSampler(shuffle=False)``
on each rank), so that each batch's frames are known::

    writer = pt.PredictionWriter("preds/run-7", classes=ds.classes, ignore_index=ds.ignore_index)
    batches = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(ds), 8, drop_last=False)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=pt.collate_points)
    for indices, batch in zip(batches, loader):
        logits = model(batch.points)                      # (N_total, C)
        writer.write_batch([ds.frames[i] for i in indices], logits, batch.offsets)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from playment_torch.errors import ConfigError, FrameError, PlaymentError, PlaymentFormatError

if TYPE_CHECKING:
    from playment_torch.dataset import PlaymentSegmentationDataset
    from playment_torch.models import FrameRef

__all__ = [
    "CLASSES_FILE",
    "FORMAT_VERSION",
    "PlaymentResults",
    "PredictionWriter",
    "Predictions",
    "default_predictions_dir",
    "load_predictions",
    "prediction_path",
    "read_prediction",
    "write_playment_results",
]

CLASSES_FILE = "classes.json"
FORMAT_VERSION = 1
_SUFFIX = ".npy"


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def prediction_path(directory: str | os.PathLike[str], job_id: str, frame_id: str) -> Path:
    """Where the prediction of one frame lives: ``DIR/<quote(job_id)>/<quote(frame_id)>.npy``.

    Args:
        directory: The predictions folder.
        job_id: The job.
        frame_id: The frame.

    Returns:
        The path (which may not exist).

    Raises:
        ConfigError: an empty id, or a job id ``.`` or ``..`` (which would name no folder of its own).
    """
    job, frame = str(job_id), str(frame_id)
    if job in ("", ".", "..") or not frame:
        # quote() leaves dots alone: these would name the folder itself or its parent, not a job's folder.
        raise ConfigError(f"job {job!r}, frame {frame!r}: ids '', '.' and '..' cannot name prediction files")
    return Path(directory) / _quote(job) / (_quote(frame) + _SUFFIX)


def default_predictions_dir(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder ``predictions/<name>`` inside the cache directory.

    Args:
        name: The run's name (one path component).
        cache_dir: The cache directory; by default ``PLAYMENT_TORCH_CACHE`` or the user's cache folder.

    Returns:
        The folder (not created).

    Raises:
        ConfigError: ``name`` is empty or not a single path component.
    """
    from playment_torch.cache import default_cache_dir

    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ConfigError(f"a predictions name must be one folder name, got {name!r}")
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / "predictions" / name


def _atomic_write(path: Path, write: Any) -> None:
    """Write through ``write(file)`` to a temporary file beside ``path``, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid + random: workers and ranks writing the same frame never share a temporary file.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _classes_payload(classes: Sequence[str], ignore_index: int) -> dict[str, Any]:
    return {"classes": list(classes), "ignore_index": int(ignore_index), "format": FORMAT_VERSION}


def _read_classes(directory: Path) -> tuple[tuple[str, ...], int]:
    path = directory / CLASSES_FILE
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{directory} is not a predictions folder: it has no {CLASSES_FILE}") from None
    except (OSError, ValueError) as exc:
        raise PlaymentFormatError(f"{path}: cannot read the predictions' classes: {exc}") from exc
    if not isinstance(payload, dict):
        raise PlaymentFormatError(f"{path}: expected a JSON object")
    if payload.get("format") != FORMAT_VERSION:
        raise PlaymentFormatError(f"{path}: unknown predictions format {payload.get('format')!r}")
    classes = payload.get("classes")
    ignore_index = payload.get("ignore_index")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) or not classes:
        raise PlaymentFormatError(f"{path}: 'classes' must be a non-empty list of names")
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise PlaymentFormatError(f"{path}: 'ignore_index' must be an integer")
    return tuple(classes), ignore_index


def _as_numpy(predicted: Any) -> np.ndarray:
    if hasattr(predicted, "detach"):  # a torch tensor, on any device; torch itself is not needed here
        predicted = predicted.detach().cpu().numpy()
    return np.asarray(predicted)


class PredictionWriter:
    """Stores a model's per-point predictions, one file per (job, frame), in a predictions folder.

    Picklable (it holds only the folder and the class list), so it can be handed to DataLoader workers, and
    every rank may make its own: writes are atomic and no file is shared between frames.

    Args:
        directory: The folder; by default ``predictions/<name>`` inside the cache directory.
        classes: Class names by index (``ds.classes``): what the predicted indices mean.
        ignore_index: The value of points the model leaves without a class.
        name: The run's name, for the default folder.
        cache_dir: The cache directory, for the default folder.

    Raises:
        ConfigError: no classes, ``ignore_index`` is a class index, or the folder already holds predictions
            over other classes (mixing them would make the indices meaningless).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        classes: Sequence[str],
        ignore_index: int = -100,
        name: str = "default",
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if isinstance(classes, str) or not classes:
            raise ConfigError("PredictionWriter needs the class names, e.g. classes=ds.classes")
        self.classes = tuple(str(c) for c in classes)
        self.ignore_index = int(ignore_index)
        if 0 <= self.ignore_index < len(self.classes):
            raise ConfigError(
                f"ignore_index {self.ignore_index} is the index of class {self.classes[self.ignore_index]!r}"
            )
        self.directory = Path(directory) if directory is not None else default_predictions_dir(name, cache_dir)
        self._dtype = np.int16 if max(len(self.classes), abs(self.ignore_index) + 1) < 2**15 else np.int32
        self._write_classes()

    def __repr__(self) -> str:
        return f"PredictionWriter({str(self.directory)!r}, classes={len(self.classes)})"

    def _write_classes(self) -> None:
        path = self.directory / CLASSES_FILE
        if not path.exists():
            text = json.dumps(_classes_payload(self.classes, self.ignore_index), indent=1).encode()
            _atomic_write(path, lambda handle: handle.write(text))
        # Read back, also after writing: another process may have raced us with other classes.
        classes, ignore_index = _read_classes(self.directory)
        if classes != self.classes or ignore_index != self.ignore_index:
            raise ConfigError(
                f"{self.directory} holds predictions over classes {list(classes)} (ignore_index {ignore_index}), "
                f"not {list(self.classes)} (ignore_index {self.ignore_index}); use another folder"
            )

    def _indices(self, predicted: Any, where: str) -> np.ndarray:
        array = _as_numpy(predicted)
        if array.ndim == 2:
            if array.shape[1] != len(self.classes):
                raise PlaymentFormatError(
                    f"{where}: scores have {array.shape[1]} columns for {len(self.classes)} classes"
                )
            if array.shape[0] == 0:
                return np.zeros(0, dtype=self._dtype)
            return array.argmax(axis=1).astype(self._dtype)
        if array.ndim != 1:
            raise PlaymentFormatError(
                f"{where}: predictions must be (N,) class indices or (N, C) scores, got {array.shape}"
            )
        if array.size and array.dtype.kind not in "iu":
            raise PlaymentFormatError(f"{where}: class indices must be integers, got dtype {array.dtype}")
        bad = ((array < 0) | (array >= len(self.classes))) & (array != self.ignore_index)
        if bad.any():
            raise PlaymentFormatError(
                f"{where}: predicted class {int(array[bad][0])} is outside [0, {len(self.classes)}) and is not "
                f"ignore_index {self.ignore_index}"
            )
        return array.astype(self._dtype)

    def write(self, job_id: str, frame_id: str, predicted: Any) -> Path:
        """Store one frame's prediction (replacing an earlier one).

        Args:
            job_id: The frame's job.
            frame_id: The frame.
            predicted: ``(N,)`` integer class indices (or ``ignore_index``), or ``(N, C)`` scores/logits reduced
                by argmax; a torch tensor on any device or anything numpy takes. ``N`` is the number of points
                of the frame's cloud, in file order.

        Returns:
            The file written.

        Raises:
            PlaymentFormatError: wrong shape or dtype, or an index that is not a class (names job and frame).
        """
        indices = self._indices(predicted, f"job {job_id}, frame {frame_id}")
        path = prediction_path(self.directory, job_id, frame_id)
        _atomic_write(path, lambda handle: np.save(handle, indices, allow_pickle=False))
        return path

    def write_batch(self, frames: Sequence[FrameRef | tuple[str, str]], predicted: Any, offsets: Any) -> list[Path]:
        """Store the predictions of a collated batch (:func:`~playment_torch.collate_points`), frame by frame.

        Args:
            frames: The batch's frames in batch order: :class:`~playment_torch.FrameRef` (``ds.frames[i]``)
                or ``(job_id, frame_id)`` pairs.
            predicted: ``(N_total,)`` class indices or ``(N_total, C)`` scores, rows in batch order.
            offsets: ``batch.offsets``, ``(B + 1,)``: frame ``b`` owns rows ``offsets[b]:offsets[b + 1]``.

        Returns:
            The files written, one per frame.

        Raises:
            PlaymentFormatError: ``frames`` and ``offsets`` disagree, or the rows do not match ``offsets[-1]``.
        """
        bounds = _as_numpy(offsets).astype(np.int64).reshape(-1)
        array = _as_numpy(predicted)
        if len(bounds) != len(frames) + 1:
            raise PlaymentFormatError(f"write_batch: {len(frames)} frames but {len(bounds)} offsets (expected B + 1)")
        if array.shape[:1] != (int(bounds[-1]),):
            raise PlaymentFormatError(f"write_batch: {array.shape[0]} predicted rows, offsets end at {int(bounds[-1])}")
        written = []
        for b, frame in enumerate(frames):
            job_id, frame_id = frame if isinstance(frame, tuple) else (frame.job_id, frame.frame_id)
            written.append(self.write(str(job_id), str(frame_id), array[bounds[b] : bounds[b + 1]]))
        return written


@dataclass(frozen=True)
class Predictions:
    """A predictions folder, opened for reading (see :func:`load_predictions`).

    Attributes:
        directory: The folder.
        classes: Class names by index.
        ignore_index: The value of points without a prediction.
    """

    directory: Path
    classes: tuple[str, ...]
    ignore_index: int

    def path(self, job_id: str, frame_id: str) -> Path:
        """The file of one frame (which may not exist)."""
        return prediction_path(self.directory, job_id, frame_id)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        return self.path(str(key[0]), str(key[1])).is_file()

    def get(self, job_id: str, frame_id: str) -> np.ndarray | None:
        """One frame's predicted class indices, or ``None`` when the folder has none for it.

        Raises:
            PlaymentFormatError: the file is damaged or not a 1-D integer array (names job, frame and file).
        """
        path = self.path(job_id, frame_id)
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as exc:
            raise PlaymentFormatError(f"job {job_id}, frame {frame_id}: damaged prediction file {path}: {exc}") from exc
        if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
            raise PlaymentFormatError(
                f"job {job_id}, frame {frame_id}: {path} holds a {array.dtype} array of shape {array.shape}, "
                "not one class index per point"
            )
        return array

    def keys(self) -> Iterator[tuple[str, str]]:
        """Every ``(job_id, frame_id)`` that has a prediction, in sorted file-name order."""
        with os.scandir(self.directory) as entries:
            jobs = sorted(e.name for e in entries if e.is_dir())
        for job in jobs:
            with os.scandir(self.directory / job) as entries:
                # Temporary files end in .tmp: only finished files are listed.
                names = sorted(e.name for e in entries if e.name.endswith(_SUFFIX) and e.is_file())
            for name in names:
                yield urllib.parse.unquote(job), urllib.parse.unquote(name[: -len(_SUFFIX)])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return self.keys()

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())


def load_predictions(directory: str | os.PathLike[str]) -> Predictions:
    """Open a predictions folder written by :class:`PredictionWriter`.

    Args:
        directory: The folder.

    Returns:
        The folder's reader; files are read on :meth:`Predictions.get`.

    Raises:
        ConfigError: the folder has no ``classes.json``.
        PlaymentFormatError: ``classes.json`` is malformed or of an unknown format version.
    """
    path = Path(directory)
    classes, ignore_index = _read_classes(path)
    return Predictions(directory=path, classes=classes, ignore_index=ignore_index)


def read_prediction(directory: str | os.PathLike[str] | Predictions, job_id: str, frame_id: str) -> np.ndarray:
    """One frame's predicted class indices.

    Args:
        directory: The predictions folder (or an opened one).
        job_id: The job.
        frame_id: The frame.

    Returns:
        The 1-D integer array, one class index (or ``ignore_index``) per point.

    Raises:
        FrameError: the folder has no prediction for that frame.
        PlaymentFormatError: the file is damaged.
    """
    predictions = directory if isinstance(directory, Predictions) else load_predictions(directory)
    array = predictions.get(job_id, frame_id)
    if array is None:
        raise FrameError(
            f"no prediction in {predictions.directory} (expected {predictions.path(job_id, frame_id)})",
            job_id=job_id,
            frame_id=frame_id,
        )
    return array


# ----------------------------------------------------------------------------------------- Playment format


@dataclass(frozen=True)
class PlaymentResults:
    """Predictions written as Playment job results (see :func:`write_playment_results`).

    Attributes:
        directory: The folder written.
        url_prefix: The URL prefix the results and masks name, standing for ``directory``.
        result_urls: Source job id -> the URL of its result object.
        frames: Masks written.
    """

    directory: Path
    url_prefix: str
    result_urls: Mapping[str, str] = field(default_factory=dict)
    frames: int = 0

    @property
    def local_roots(self) -> dict[str, str]:
        """The ``PlaymentClient(local_roots=...)`` mapping that reads these results from ``directory``."""
        return {self.url_prefix: str(self.directory)}


def _url(prefix: str, *parts: str) -> str:
    # Each part is already a quoted file name; the URL quotes it once more, so that the client's single unquote
    # (local_roots) or an object store's key decoding gives back the file name on disk.
    return prefix + urllib.parse.quote("/".join(parts), safe="/")


def _source_result(dataset: PlaymentSegmentationDataset, job_id: str) -> dict[str, Any]:
    """The job's result object as Playment returned it: from the dataset's cache, else from the API."""
    from playment_torch.cache import cache_key

    project_id = dataset.project_id
    cached_job = dataset.cache.get_json(cache_key("job", project_id=project_id, job_id=job_id))
    if isinstance(cached_job, dict) and cached_job.get("result"):
        cached = dataset.cache.get_json(
            cache_key("result", project_id=project_id, job_id=job_id, url=str(cached_job["result"]))
        )
        if isinstance(cached, dict) and isinstance(cached.get("result"), dict):
            return cached["result"]
    client = dataset.client
    payload = client.get_result_json(client.get_job(project_id, job_id))
    if not isinstance(payload, dict):
        raise PlaymentFormatError(f"job {job_id}: the result is not a JSON object")
    return payload


def _legacy_sensor_data(source: Mapping[str, Any]) -> dict[str, Any]:
    """A current-format ``sensor_data`` for a legacy result: one frame "0" whose lidar is the legacy cloud."""
    return {
        "frames": [
            {"frame_id": "0", "ego_pose": {}, "sensors": [{"sensor_id": "lidar", "data_url": source.get("url", "")}]}
        ],
        "sensor_meta": [{"id": "lidar", "name": "lidar", "modality": "lidar", "primary_view": True}],
    }


def write_playment_results(
    dataset: PlaymentSegmentationDataset,
    predictions: str | os.PathLike[str] | Predictions,
    out_dir: str | os.PathLike[str],
    *,
    url_prefix: str | None = None,
) -> PlaymentResults:
    """Write predictions as Playment point cloud segmentation results, one result object per job.

    For each job of ``dataset`` with at least one predicted frame: ``<out>/<quote(job)>/result.json`` holds
    ``annotation_data`` (one annotation per predicted class, with ``label``, ``text``, ``class_id`` (the
    source's class id for that label, else the name) and ``label_key`` = class index + 1; one mask per predicted
    frame) and the source result's ``sensor_data`` copied unchanged, so frames, poses, cameras and point cloud
    URLs stay. ``<out>/<quote(job)>/masks/<quote(frame)>.json`` is the frame's mask: a JSON array of label keys,
    0 where the model abstained (no annotation names key 0, so such points load as unlabeled). Frames without
    a prediction get no mask (a dataset skips them).

    The results name their masks by URL under ``url_prefix``: by default the folder's ``file://`` URI, read
    through ``PlaymentClient(local_roots=results.local_roots)``; give e.g. ``"s3://bucket/preds/"`` when the
    folder is to be uploaded there.

    Predictions are not checked against the point clouds here (that would download every cloud):
    :func:`~playment_torch.evaluate` checks the point counts, and a mask of the wrong length fails when the
    result is loaded.

    Args:
        dataset: The dataset the predictions were made on (its jobs' results provide ``sensor_data``).
        predictions: The predictions folder, or an opened one.
        out_dir: Where to write.
        url_prefix: The URL standing for ``out_dir`` (ending with ``/``).

    Returns:
        The folder, its URL prefix and each job's result URL.

    Raises:
        PlaymentFormatError: a prediction is damaged.
        PlaymentError: a job's source result could not be read.
    """
    from playment_torch.formats.masks import encode_mask

    opened = predictions if isinstance(predictions, Predictions) else load_predictions(predictions)
    directory = Path(out_dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    prefix = url_prefix if url_prefix is not None else directory.as_uri() + "/"
    if not prefix.endswith("/"):
        prefix += "/"
    keys = np.arange(1, len(opened.classes) + 1, dtype=np.int64)

    by_job: dict[str, list[FrameRef]] = {}
    for ref in dataset.frames:
        by_job.setdefault(ref.job_id, []).append(ref)
    result_urls: dict[str, str] = {}
    written = 0
    for job_id, refs in by_job.items():
        masks = []
        predicted_classes: set[int] = set()
        for ref in refs:
            array = opened.get(job_id, ref.frame_id)
            if array is None:
                continue
            array = array.astype(np.int64)
            known = array != opened.ignore_index
            if ((array[known] < 0) | (array[known] >= len(opened.classes))).any():
                raise PlaymentFormatError(
                    f"job {job_id}, frame {ref.frame_id}: a predicted class is outside [0, {len(opened.classes)})"
                )
            predicted_classes.update(np.unique(array[known]).tolist())
            mask = np.where(known, keys[np.where(known, array, 0)], 0)
            file_name = _quote(ref.frame_id) + ".json"
            body = encode_mask(mask)
            _atomic_write(directory / _quote(job_id) / "masks" / file_name, lambda handle, b=body: handle.write(b))
            masks.append(
                {
                    "_id": f"{job_id}:{ref.frame_id}",
                    "frame_id": ref.frame_id,
                    "sensor_id": ref.sensor_id or "lidar",  # legacy frames: the lidar of _legacy_sensor_data
                    "label_url": _url(prefix, _quote(job_id), "masks", file_name),
                    "type": "segmentation3d",
                    "url": "",
                }
            )
            written += 1
        if not masks:
            continue
        source = _source_result(dataset, job_id)
        legacy = "sensor_data" not in source and "legend" in source
        annotation_source = source.get("legend") if legacy else (source.get("annotation_data") or {}).get("annotations")
        class_ids: dict[str, str] = {}
        for item in annotation_source or ():
            if isinstance(item, dict):
                label = item.get("text" if legacy else "label") or item.get("text")
                class_id = item.get("id" if legacy else "class_id")
                if isinstance(label, str) and isinstance(class_id, str) and class_id:
                    class_ids.setdefault(label, class_id)
        lidar_id = refs[0].sensor_id or "lidar"
        annotations = [
            {
                "_id": f"{job_id}:class:{index}",
                "class_id": class_ids.get(opened.classes[index], opened.classes[index]),
                "label": opened.classes[index],
                "text": opened.classes[index],
                "label_key": int(keys[index]),
                "sensor_id": lidar_id,
                "track_id": "",
                "type": "segmentation3d",
                "attributes": {},
            }
            for index in sorted(predicted_classes)
        ]
        sensor_data = _legacy_sensor_data(source) if legacy else source.get("sensor_data")
        annotation_data = {} if legacy else dict(source.get("annotation_data") or {})
        result = {
            "annotation_data": {
                "annotations": annotations,
                "frames": [{"_id": ref.frame_id} for ref in refs],
                "masks": masks,
                "sensors": annotation_data.get("sensors") or [{"sensor_id": lidar_id, "sensor_type": "LIDAR"}],
                "tracks": [],
            },
            "sensor_data": sensor_data,
        }
        text = json.dumps(result).encode()
        _atomic_write(directory / _quote(job_id) / "result.json", lambda handle, t=text: handle.write(t))
        result_urls[job_id] = _url(prefix, _quote(job_id), "result.json")
    if not result_urls:
        raise PlaymentError(f"no frame of the dataset has a prediction in {opened.directory}")
    return PlaymentResults(directory=directory, url_prefix=prefix, result_urls=result_urls, frames=written)
