"""Evaluation frame by frame: predictions on disk against a dataset's labels.

:func:`evaluate` reads one prediction per frame (see :mod:`playment_torch.predictions`), compares it with the
frame's labels and gives an :class:`EvaluationReport`: IoU per class, mIoU and accuracy over every point
(:class:`~playment_torch.metrics.SegmentationMetrics`), the same per frame, the frames without a prediction,
and the worst frames. :meth:`EvaluationReport.write` saves per-frame metrics as JSON lines and CSV, the worst
frames, a summary and a confusion-matrix picture (:func:`render_confusion_matrix`, needs the ``viz`` extra).

Choices where the issue is silent:

* Predictions are matched to the dataset's classes **by name**; a predicted class the dataset does not know is
  appended to the evaluation's classes (it can only be wrong, and lowers the IoU of the classes it replaced).
  Ground-truth classes the predictions' class list lacks are evaluated as classes that are never predicted.
* A point predicted as ``ignore_index`` (the model abstained) is a miss: it lowers accuracy and its true
  class's IoU, and is no class's false positive. Points whose *label* is ``ignore_index`` are left out.
* A frame's mIoU averages the classes present in that frame's labels or predictions; a frame with no labelled
  point has no mIoU (NaN, ``null`` in JSON, empty in CSV) and is never among the worst frames.
* Worst frames: lowest frame mIoU first; ties keep dataset order.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from playment_torch.errors import ConfigError, PlaymentError, PlaymentFormatError
from playment_torch.metrics import SegmentationMetrics
from playment_torch.predictions import Predictions, _atomic_write, load_predictions

if TYPE_CHECKING:
    import argparse

    from playment_torch.dataset import PlaymentSegmentationDataset

__all__ = [
    "ConfusionLayout",
    "EvaluationFiles",
    "EvaluationReport",
    "FrameMetrics",
    "evaluate",
    "render_confusion_matrix",
    "run_evaluate_command",
]


@dataclass(frozen=True)
class FrameMetrics:
    """The scores of one frame.

    Attributes:
        job_id: The job.
        frame_id: The frame.
        index: The frame's item index in the dataset.
        points: Points of the frame.
        labelled_points: Points whose label is a class (not ``ignore_index``).
        accuracy: Share of labelled points predicted right (NaN without labelled points).
        miou: Mean IoU over the classes present in the frame's labels or predictions (NaN without labelled
            points).
        iou: IoU per class, NaN for classes absent from both.
    """

    job_id: str
    frame_id: str
    index: int
    points: int
    labelled_points: int
    accuracy: float
    miou: float
    iou: tuple[float, ...]


@dataclass(frozen=True)
class EvaluationFiles:
    """What :meth:`EvaluationReport.write` wrote.

    Attributes:
        frames_jsonl: Per-frame metrics, one JSON object per line.
        frames_csv: The same as CSV.
        worst_csv: The worst frames, worst first (same columns).
        summary_json: Per-class IoU, mIoU, accuracy, counts, the missing frames and the worst frames.
        missing_csv: Frames without a prediction (``None`` when there are none).
        confusion_png: The confusion-matrix picture (``None`` when not asked for).
    """

    frames_jsonl: Path
    frames_csv: Path
    worst_csv: Path
    summary_json: Path
    missing_csv: Path | None = None
    confusion_png: Path | None = None

    def paths(self) -> list[Path]:
        """Every file written."""
        found = [self.frames_jsonl, self.frames_csv, self.worst_csv, self.summary_json]
        return found + [p for p in (self.missing_csv, self.confusion_png) if p is not None]


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


@dataclass(frozen=True, eq=False)
class EvaluationReport:
    """The outcome of :func:`evaluate`.

    Attributes:
        metrics: Every evaluated point, accumulated (IoU per class, mIoU, accuracy, the confusion matrix).
        frames: Per-frame scores of the evaluated frames, in dataset order.
        missing: ``(job_id, frame_id)`` of dataset frames without a prediction (not evaluated).
        unmatched: Predictions of frames that are not in the dataset (ignored).
    """

    metrics: SegmentationMetrics
    frames: tuple[FrameMetrics, ...]
    missing: tuple[tuple[str, str], ...] = ()
    unmatched: int = 0

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names of the evaluation (the dataset's, then predicted classes it does not know)."""
        return self.metrics.class_names

    @property
    def iou(self) -> tuple[float, ...]:
        """IoU per class over every evaluated point (NaN for classes never labelled nor predicted)."""
        return tuple(self.metrics.iou().tolist())

    @property
    def miou(self) -> float:
        """Mean IoU over the classes present."""
        return self.metrics.miou()

    @property
    def accuracy(self) -> float:
        """Share of labelled points predicted right."""
        return self.metrics.accuracy()

    @property
    def confusion_matrix(self) -> np.ndarray:
        """``(C, C)`` int64 point counts: rows are labels, columns predictions."""
        return self.metrics.confusion_matrix.numpy()

    def worst(self, n: int = 20) -> list[FrameMetrics]:
        """The ``n`` frames with the lowest mIoU (frames without labelled points are never listed)."""
        scored = [f for f in self.frames if not math.isnan(f.miou)]
        return sorted(scored, key=lambda f: f.miou)[: max(0, n)]

    def table(self) -> str:
        """Per-class IoU, support, mIoU and accuracy as plain text (see :meth:`SegmentationMetrics.table`)."""
        return self.metrics.table()

    def __str__(self) -> str:
        def percent(value: float) -> str:
            return "-" if math.isnan(value) else f"{100 * value:.2f}%"

        return (
            f"{len(self.frames)} frames evaluated, {len(self.missing)} without a prediction: "
            f"mIoU {percent(self.miou)}, accuracy {percent(self.accuracy)}"
        )

    def frame_record(self, frame: FrameMetrics) -> dict[str, Any]:
        """One frame as the JSON object of ``frames.jsonl`` (NaN becomes ``null``)."""
        return {
            "job_id": frame.job_id,
            "frame_id": frame.frame_id,
            "index": frame.index,
            "points": frame.points,
            "labelled_points": frame.labelled_points,
            "accuracy": _nan_to_none(frame.accuracy),
            "miou": _nan_to_none(frame.miou),
            "iou": {name: _nan_to_none(v) for name, v in zip(self.classes, frame.iou, strict=True)},
        }

    def summary(self, *, worst: int = 20) -> dict[str, Any]:
        """Everything but the per-frame rows, JSON-ready."""
        support = self.metrics.support().tolist()
        return {
            "frames_evaluated": len(self.frames),
            "frames_missing": len(self.missing),
            "predictions_unmatched": self.unmatched,
            "points": int(sum(support)),
            "miou": _nan_to_none(self.miou),
            "accuracy": _nan_to_none(self.accuracy),
            "classes": [
                {"name": name, "iou": _nan_to_none(value), "points": int(count)}
                for name, value, count in zip(self.classes, self.iou, support, strict=True)
            ],
            "confusion_matrix": self.confusion_matrix.tolist(),
            "missing": [{"job_id": job, "frame_id": frame} for job, frame in self.missing],
            "worst": [self.frame_record(f) for f in self.worst(worst)],
        }

    def _csv(self, frames: Iterable[FrameMetrics]) -> bytes:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        header = ["job_id", "frame_id", "index", "points", "labelled_points", "accuracy", "miou"]
        writer.writerow(header + [f"iou_{name}" for name in self.classes])
        for f in frames:
            values = [f.accuracy, f.miou, *f.iou]
            writer.writerow(
                [f.job_id, f.frame_id, f.index, f.points, f.labelled_points]
                + ["" if math.isnan(v) else f"{v:.6f}" for v in values]
            )
        return buffer.getvalue().encode("utf-8")

    def write(self, directory: str | os.PathLike[str], *, worst: int = 20, picture: bool = True) -> EvaluationFiles:
        """Write the report's files into ``directory`` (created; files replaced atomically).

        Files: ``frames.jsonl`` and ``frames.csv`` (one row per evaluated frame: ``job_id, frame_id, index,
        points, labelled_points, accuracy, miou`` and ``iou_<class>`` per class; empty/``null`` where
        undefined), ``worst.csv`` (the ``worst`` lowest-mIoU frames, same columns), ``summary.json``,
        ``missing.csv`` (``job_id, frame_id``; only when frames lack a prediction) and ``confusion.png``.

        Args:
            directory: The output folder.
            worst: How many worst frames to list.
            picture: Render ``confusion.png`` (needs Pillow: ``pip install playment-torch[viz]``).

        Returns:
            The paths written.

        Raises:
            ConfigError: ``picture`` and Pillow is not installed.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)

        def put(name: str, content: bytes) -> Path:
            path = out / name
            _atomic_write(path, lambda handle: handle.write(content))
            return path

        jsonl = "".join(json.dumps(self.frame_record(f)) + "\n" for f in self.frames).encode("utf-8")
        files = EvaluationFiles(
            frames_jsonl=put("frames.jsonl", jsonl),
            frames_csv=put("frames.csv", self._csv(self.frames)),
            worst_csv=put("worst.csv", self._csv(self.worst(worst))),
            summary_json=put("summary.json", json.dumps(self.summary(worst=worst), indent=2).encode("utf-8")),
        )
        missing_csv = None
        if self.missing:
            rows = "job_id,frame_id\n" + "".join(_csv_row(job, frame) for job, frame in self.missing)
            missing_csv = put("missing.csv", rows.encode("utf-8"))
        confusion_png = None
        if picture:
            confusion_png = out / "confusion.png"
            render_confusion_matrix(self.confusion_matrix, self.classes, confusion_png)
        return EvaluationFiles(
            files.frames_jsonl, files.frames_csv, files.worst_csv, files.summary_json, missing_csv, confusion_png
        )


def _csv_row(*values: object) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def evaluate(
    dataset: PlaymentSegmentationDataset,
    predictions: str | os.PathLike[str] | Predictions,
    *,
    progress: bool | None = None,
) -> EvaluationReport:
    """Score the predictions in a folder against a dataset's labels, frame by frame.

    The dataset gives the labels: build it with ``sweeps=1``, no ``transform`` (predictions are one per point
    of the frame's cloud, in file order) and ``on_error="raise"`` (a substituted frame would be scored against
    another frame's prediction). Its point fields do not matter; ``("x", "y", "z")`` reads least. Frames
    without a prediction are not loaded.

    Args:
        dataset: The ground truth.
        predictions: A predictions folder (see :class:`~playment_torch.predictions.PredictionWriter`) or an
            opened one.
        progress: ``False`` hides the progress bar (otherwise shown on a terminal).

    Returns:
        The report.

    Raises:
        ConfigError: the dataset moves, merges or substitutes points (see above).
        PlaymentFormatError: a prediction does not have one entry per point of its frame, or is damaged (the
            message names the job and frame).
        PlaymentError: a frame could not be loaded.
    """
    from tqdm.auto import tqdm

    if getattr(dataset, "transform", None) is not None or getattr(dataset, "sweeps", 1) != 1:
        raise ConfigError(
            "evaluate needs each frame's labels in the order of its point cloud: use a dataset without a "
            "transform and with sweeps=1"
        )
    if getattr(dataset, "on_error", "raise") != "raise":
        raise ConfigError("evaluate needs on_error='raise': a skipped frame would be scored against another frame")
    opened = predictions if isinstance(predictions, Predictions) else load_predictions(predictions)
    ignore = int(dataset.ignore_index)
    classes = list(dataset.classes)
    known = set(classes)
    classes += [name for name in opened.classes if name not in known]
    if 0 <= ignore < len(classes):
        raise ConfigError(
            f"the dataset's ignore_index {ignore} is a class index of the evaluation ({classes[ignore]!r})"
        )
    position = {name: i for i, name in enumerate(classes)}
    # Prediction index -> evaluation index; the extra last entry maps the predictions' ignore_index.
    remap = np.array([position[name] for name in opened.classes] + [ignore], dtype=np.int64)

    total = SegmentationMetrics(len(classes), ignore_index=ignore, class_names=classes, count_unpredicted=True)
    frames: list[FrameMetrics] = []
    missing: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    refs = dataset.frames
    disable = True if progress is False or len(refs) == 0 else None
    for i in tqdm(range(len(refs)), desc="evaluate", unit="frame", disable=disable, leave=False):
        ref = refs[i]
        seen.add((ref.job_id, ref.frame_id))
        predicted = opened.get(ref.job_id, ref.frame_id)
        if predicted is None:
            missing.append((ref.job_id, ref.frame_id))
            continue
        labels = dataset[i].labels.numpy()
        if len(predicted) != len(labels):
            raise PlaymentFormatError(
                f"job {ref.job_id}, frame {ref.frame_id}: the prediction has {len(predicted)} entries but the frame "
                f"has {len(labels)} points ({opened.path(ref.job_id, ref.frame_id)})"
            )
        predicted = predicted.astype(np.int64)
        abstained = predicted == opened.ignore_index
        bad = ~abstained & ((predicted < 0) | (predicted >= len(opened.classes)))
        if bad.any():
            raise PlaymentFormatError(
                f"job {ref.job_id}, frame {ref.frame_id}: predicted class {int(predicted[bad][0])} is outside "
                f"[0, {len(opened.classes)}) and is not the predictions' ignore_index {opened.ignore_index}"
            )
        mapped = remap[np.where(abstained, len(opened.classes), predicted)]
        # Counted with numpy: torch's per-call overhead and thread pool cost 10-100x more for one frame.
        kept = labels != ignore
        target, guess = labels[kept], mapped[kept]
        if target.size and (target.min() < 0 or target.max() >= len(classes)):
            raise PlaymentFormatError(f"job {ref.job_id}, frame {ref.frame_id}: a label is outside the classes")
        missed = guess == ignore
        c = len(classes)
        frame = SegmentationMetrics(c, ignore_index=ignore, class_names=classes, count_unpredicted=True)
        frame.update_counts(
            np.bincount(target[~missed] * c + guess[~missed], minlength=c * c).reshape(c, c),
            np.bincount(target[missed], minlength=c),
        )
        total.merge(frame)
        frames.append(
            FrameMetrics(
                job_id=ref.job_id,
                frame_id=ref.frame_id,
                index=i,
                points=len(labels),
                labelled_points=int((labels != ignore).sum()),
                accuracy=frame.accuracy(),
                miou=frame.miou(),
                iou=tuple(frame.iou().tolist()),
            )
        )
    unmatched = sum(1 for key in opened if key not in seen)
    return EvaluationReport(metrics=total, frames=tuple(frames), missing=tuple(missing), unmatched=unmatched)


# ------------------------------------------------------------------------------------------- the picture

#: The colour of a row whose class has no labelled point (its shares are undefined).
NO_DATA_COLOUR = (214, 214, 214)


def scale_colour(value: float) -> tuple[int, int, int]:
    """The picture's colour for a share in ``[0, 1]`` (viridis; values outside are clipped).

    Args:
        value: The share.

    Returns:
        ``(r, g, b)``.
    """
    from playment_torch.viz import ramp_colors  # the one viridis-like ramp of every picture (numpy only)

    r, g, b = (int(c) for c in ramp_colors(np.array([value], dtype=np.float64), (0.0, 1.0))[0])
    return (r, g, b)


@dataclass(frozen=True)
class ConfusionLayout:
    """Where :func:`render_confusion_matrix` drew things, in pixels.

    Attributes:
        path: The PNG written.
        size: ``(width, height)`` of the picture.
        origin: Top-left corner of cell ``(0, 0)``.
        cell: Side of a cell.
        scale: ``(left, top, right, bottom)`` of the colour scale: its top row is share 1, its bottom share 0.
    """

    path: Path
    size: tuple[int, int]
    origin: tuple[int, int]
    cell: int
    scale: tuple[int, int, int, int]

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` of the cell of label ``row``, prediction ``column`` (right/bottom
        exclusive)."""
        left = self.origin[0] + column * self.cell
        top = self.origin[1] + row * self.cell
        return left, top, left + self.cell, top + self.cell


def _have_pillow() -> bool:
    try:
        import PIL  # noqa: F401
    except ImportError:
        return False
    return True


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render_confusion_matrix(
    confusion: Any,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "Confusion matrix (rows: label, normalised; columns: prediction)",
) -> ConfusionLayout:
    """Draw a confusion matrix as a PNG: rows normalised to shares, class names on both axes, a colour scale.

    Each cell is coloured by the share of its row's labelled points predicted as its column
    (:func:`scale_colour`); big enough cells also print the share in percent. Rows of classes without a
    labelled point are grey (``NO_DATA_COLOUR``).

    Args:
        confusion: ``(C, C)`` counts, rows labels and columns predictions (numpy or torch).
        class_names: ``C`` names.
        path: The PNG to write (replaced atomically).
        title: A line above the matrix.

    Returns:
        Where the cells and the scale are.

    Raises:
        ConfigError: Pillow is not installed (``pip install playment-torch[viz]``), or the shapes disagree.
    """
    try:
        from PIL import Image, ImageDraw
    except ImportError as exc:
        raise ConfigError("the confusion-matrix picture needs Pillow: pip install playment-torch[viz]") from exc
    matrix = np.asarray(confusion.numpy() if hasattr(confusion, "numpy") else confusion, dtype=np.float64)
    c = len(class_names)
    if matrix.shape != (c, c) or c == 0:
        raise ConfigError(f"a confusion matrix of shape {matrix.shape} for {c} class names")
    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, matrix / np.where(totals > 0, totals, 1), np.nan)

    cell = 44 if c <= 12 else max(14, 560 // c)
    font = _font(12 if cell >= 24 else 10)
    small = _font(11 if cell >= 40 else 9)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str, which: Any = font) -> tuple[int, int]:
        left, top, right, bottom = probe.textbbox((0, 0), text, font=which)
        return int(right - left), int(bottom - top)

    name_width = max(text_size(name)[0] for name in class_names)
    line = text_size("Ag")[1] + 4
    margin = 12
    left = margin + line + 6 + name_width + 8  # axis title, names, gap
    top = margin + line + 8
    grid = cell * c
    scale_gap, scale_width = 18, 16
    scale_left = left + grid + scale_gap
    tick_width = text_size("100%", small)[0]
    width = max(scale_left + scale_width + 6 + tick_width + margin, left + text_size(title)[0] + margin)
    bottom_labels = top + grid + 8
    height = bottom_labels + name_width + 8 + line + margin
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((margin, margin), title, fill=(0, 0, 0), font=font)

    for row in range(c):
        for column in range(c):
            share = shares[row, column]
            colour = NO_DATA_COLOUR if math.isnan(share) else scale_colour(share)
            x0, y0 = left + column * cell, top + row * cell
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=colour)
            if cell >= 30 and not math.isnan(share):
                text = f"{100 * share:.0f}"
                w, h = text_size(text, small)
                luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
                ink = (0, 0, 0) if luminance > 128 else (255, 255, 255)
                draw.text((x0 + (cell - w) // 2, y0 + (cell - h) // 2 - 1), text, fill=ink, font=small)
    draw.rectangle((left - 1, top - 1, left + grid, top + grid), outline=(90, 90, 90))

    for row, name in enumerate(class_names):
        w, h = text_size(name)
        draw.text((left - 8 - w, top + row * cell + (cell - h) // 2 - 1), name, fill=(0, 0, 0), font=font)
    for column, name in enumerate(class_names):
        w, h = text_size(name)
        label = Image.new("RGB", (w + 2, line), (255, 255, 255))
        ImageDraw.Draw(label).text((0, 0), name, fill=(0, 0, 0), font=font)
        rotated = label.rotate(90, expand=True)  # reads bottom to top
        x = left + column * cell + (cell - rotated.width) // 2
        image.paste(rotated, (x, bottom_labels))  # the name ends next to its column
    axis = "prediction"
    draw.text(
        (left + (grid - text_size(axis)[0]) // 2, bottom_labels + name_width + 8), axis, fill=(0, 0, 0), font=font
    )
    label_axis = Image.new("RGB", (text_size("label")[0] + 2, line), (255, 255, 255))
    ImageDraw.Draw(label_axis).text((0, 0), "label", fill=(0, 0, 0), font=font)
    label_axis = label_axis.rotate(90, expand=True)
    image.paste(label_axis, (margin, top + (grid - label_axis.height) // 2))

    # The colour scale: one row of pixels per share step, 100% at the top.
    for y in range(grid):
        share = 1.0 - y / max(1, grid - 1)
        draw.line((scale_left, top + y, scale_left + scale_width - 1, top + y), fill=scale_colour(share))
    draw.rectangle((scale_left - 1, top - 1, scale_left + scale_width, top + grid), outline=(90, 90, 90))
    for share in (1.0, 0.5, 0.0):
        text = f"{100 * share:.0f}%"
        y = top + round((1.0 - share) * (grid - 1))
        th = text_size(text, small)[1]
        draw.text(
            (scale_left + scale_width + 6, min(max(top, y - th // 2), top + grid - th)),
            text,
            fill=(0, 0, 0),
            font=small,
        )

    out = Path(path)
    _atomic_write(out, lambda handle: image.save(handle, format="PNG"))
    return ConfusionLayout(
        path=out,
        size=(width, height),
        origin=(left, top),
        cell=cell,
        scale=(scale_left, top, scale_left + scale_width, top + grid),
    )


# ------------------------------------------------------------------------------------------- the command


def run_evaluate_command(args: argparse.Namespace, dataset_factory: Any) -> None:
    """``playment-torch evaluate``: score a predictions folder, print the table and the worst frames, write files.

    Args:
        args: The parsed command line (``predictions``, ``out``, ``worst``, ``allow_missing``, ``no_picture``,
            ``playment_results``, ``url_prefix``, ``quiet``).
        dataset_factory: ``factory(**options)`` building the ground-truth dataset of the selection.

    Raises:
        PlaymentError: the evaluation failed, or frames lack a prediction and ``--allow-missing`` was not given
            (after everything was printed and written).
    """
    opened = load_predictions(args.predictions)
    # The dataset's own classes (every label name it has): evaluate() matches them to the predictions' by name,
    # so a labelled class the model does not know counts as never predicted instead of vanishing.
    # --point-fields (default: the training default), so frames a training run cached are read, not downloaded.
    dataset = dataset_factory()
    report = evaluate(dataset, opened, progress=not args.quiet)
    print(f"project {args.project}: {report}")
    if report.unmatched:
        print(f"{report.unmatched} predictions are of frames outside the selection (ignored)")
    print(report.table())
    worst = report.worst(args.worst)
    if worst:
        print(f"\nworst {len(worst)} frames by mIoU:")
        print(f"{'mIoU %':>7}  {'acc %':>7}  {'points':>8}  job / frame")
        for f in worst:
            print(f"{100 * f.miou:>7.2f}  {100 * f.accuracy:>7.2f}  {f.points:>8}  {f.job_id} / {f.frame_id}")
    for job, frame in report.missing[:20]:
        print(f"  no prediction: job {job}, frame {frame}")
    if len(report.missing) > 20:
        print(f"  ... and {len(report.missing) - 20} more (missing.csv)")
    picture = not args.no_picture
    if picture and not _have_pillow():
        # The numbers are the point of the command; a missing optional extra costs only the picture.
        print("note: confusion.png skipped: it needs Pillow (pip install playment-torch[viz])", file=sys.stderr)
        picture = False
    files = report.write(args.out, worst=args.worst, picture=picture)
    print("\nwrote " + ", ".join(str(p) for p in files.paths()))
    if args.playment_results:
        from playment_torch.predictions import write_playment_results

        results = write_playment_results(dataset, opened, args.playment_results, url_prefix=args.url_prefix)
        print(f"wrote {len(results.result_urls)} Playment results ({results.frames} masks) to {results.directory}")
    if report.missing and not args.allow_missing:
        raise PlaymentError(
            f"{len(report.missing)} of {len(dataset)} frames have no prediction (listed above); "
            "pass --allow-missing to accept that"
        )
