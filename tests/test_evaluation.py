"""Evaluation frame by frame: values against hand-computed confusion matrices, the files, the picture, the CLI."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fast_client

from playment_torch.cli import main
from playment_torch.dataset import PlaymentSegmentationDataset
from playment_torch.errors import ConfigError, PlaymentFormatError
from playment_torch.evaluation import NO_DATA_COLOUR, evaluate, render_confusion_matrix, scale_colour
from playment_torch.metrics import SegmentationMetrics
from playment_torch.predictions import PredictionWriter
from playment_torch.testing.synthetic import add_synthetic_project

WORKTREE = Path(__file__).resolve().parents[1]
HAVE_PILLOW = importlib.util.find_spec("PIL") is not None
needs_pillow = pytest.mark.skipif(not HAVE_PILLOW, reason="the viz extra (Pillow) is not installed")


# ------------------------------------------------------------------------------------------- metrics


def test_unpredicted_points_count_as_misses():
    target = torch.tensor([0, 0, 0, 1, 1, 2, -100])
    pred = torch.tensor([0, 0, -100, 1, 0, 2, 1])
    with pytest.raises(PlaymentFormatError, match="predicted class -100 is outside"):
        SegmentationMetrics(3).update(pred, target)
    metrics = SegmentationMetrics(3, count_unpredicted=True)
    metrics.update(pred, target)
    # By hand: confusion [[2,0,0],[1,1,0],[0,0,1]], one class-0 point unpredicted.
    assert metrics.confusion_matrix.tolist() == [[2, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert metrics.unpredicted.tolist() == [1, 0, 0]
    assert metrics.support().tolist() == [3, 2, 1]
    # IoU = TP / (TP + FP + FN): class 0: 2 / (2 + 1 + 1); class 1: 1 / (1 + 0 + 1); class 2: 1.
    assert metrics.iou().tolist() == [0.5, 0.5, 1.0]
    assert metrics.accuracy() == pytest.approx(4 / 6)
    other = SegmentationMetrics(3, count_unpredicted=True)
    other.update(torch.tensor([-100]), torch.tensor([2]))
    metrics.merge(other)
    assert metrics.unpredicted.tolist() == [1, 0, 1]
    assert metrics.iou().tolist()[2] == 0.5 and metrics.accuracy() == pytest.approx(4 / 7)
    metrics.reset()
    assert metrics.unpredicted.tolist() == [0, 0, 0] and math.isnan(metrics.accuracy())
    with pytest.raises(ConfigError, match="count_unpredicted needs an ignore_index outside"):
        SegmentationMetrics(3, ignore_index=0, count_unpredicted=True)


def test_update_counts_equals_update():
    g = torch.Generator().manual_seed(1)
    target, pred = torch.randint(0, 4, (500,), generator=g), torch.randint(0, 4, (500,), generator=g)
    pred[:40] = -100
    by_points = SegmentationMetrics(4, count_unpredicted=True)
    by_points.update(pred, target)
    by_counts = SegmentationMetrics(4, count_unpredicted=True)
    kept = pred != -100
    confusion = np.bincount((target[kept] * 4 + pred[kept]).numpy(), minlength=16).reshape(4, 4)
    by_counts.update_counts(confusion, np.bincount(target[~kept].numpy(), minlength=4))
    assert by_counts.confusion_matrix.tolist() == by_points.confusion_matrix.tolist()
    assert by_counts.iou().tolist() == by_points.iou().tolist() and by_counts.accuracy() == by_points.accuracy()
    with pytest.raises(PlaymentFormatError, match="count_unpredicted"):
        SegmentationMetrics(4).update_counts(confusion, np.ones(4, dtype=np.int64))
    with pytest.raises(PlaymentFormatError, match=r"\(4, 4\) non-negative integers"):
        by_counts.update_counts(-np.ones((4, 4), dtype=np.int64))
    with pytest.raises(PlaymentFormatError, match=r"\(4, 4\) non-negative integers"):
        by_counts.update_counts(np.ones((3, 3), dtype=np.int64))


# ------------------------------------------------------------------------------------------- evaluate


@pytest.fixture
def project(server, monkeypatch):
    monkeypatch.setenv("PLAYMENT_API_KEY", server.api_key)
    return add_synthetic_project(server, n_jobs=2, frames_per_job=2, points_per_frame=10_000, seed=21, cameras=0)


@pytest.fixture
def ds(server, project, tmp_path):
    return PlaymentSegmentationDataset(
        server.project_id,
        client=fast_client(server),
        cache_dir=str(tmp_path / "cache"),
        point_fields=("x", "y", "z"),
        progress=False,
    )


def _iou(labels, predicted, c, ignore):
    """The confusion matrix and IoU of one frame, computed independently of the library."""
    kept = labels != ignore
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (labels[kept], predicted[kept]), 1)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore"):
        return confusion, np.where(union > 0, tp / np.maximum(union, 1), np.nan)


@pytest.fixture
def made(ds, tmp_path):
    """Frame 0 perfect, frame 1 with every car predicted as road, frame 2 all wrong, frame 3 missing."""
    writer = PredictionWriter(tmp_path / "preds", classes=ds.classes, ignore_index=ds.ignore_index)
    car, road = ds.classes.index("car"), ds.classes.index("road")
    predictions = {}
    for i in range(3):
        labels = ds[i].labels.numpy()
        predicted = np.where(labels == ds.ignore_index, 0, labels)
        if i == 1:
            assert (labels == car).any() and (labels == road).any()
            predicted[labels == car] = road
        if i == 2:
            predicted = (predicted + 1) % len(ds.classes)  # every point wrong
        writer.write(ds.frames[i].job_id, ds.frames[i].frame_id, predicted)
        predictions[i] = (labels, predicted)
    return predictions


def test_evaluate_values(ds, made, tmp_path):
    PredictionWriter(tmp_path / "preds", classes=ds.classes).write("a job", "not in the dataset", np.zeros(3, int))
    report = evaluate(ds, tmp_path / "preds", progress=False)
    c, ignore = len(ds.classes), ds.ignore_index
    assert report.classes == ds.classes
    assert [f.index for f in report.frames] == [0, 1, 2]
    assert report.missing == ((ds.frames[3].job_id, ds.frames[3].frame_id),)
    assert report.unmatched == 1

    total = sum(_iou(labels, predicted, c, ignore)[0] for labels, predicted in made.values())
    assert report.confusion_matrix.tolist() == total.tolist()
    tp = np.diag(total)
    union = total.sum(0) + total.sum(1) - tp
    expected_iou = [tp[k] / union[k] if union[k] else math.nan for k in range(c)]
    np.testing.assert_allclose(report.iou, expected_iou)
    assert report.miou == pytest.approx(np.nanmean(expected_iou))
    assert report.accuracy == pytest.approx(tp.sum() / total.sum())

    perfect, car_as_road, wrong = report.frames
    assert perfect.miou == 1.0 and perfect.accuracy == 1.0
    labels, _ = made[1]
    car, road = ds.classes.index("car"), ds.classes.index("road")
    n_car, n_road = int((labels == car).sum()), int((labels == road).sum())
    assert car_as_road.iou[car] == 0.0
    assert car_as_road.iou[road] == pytest.approx(n_road / (n_road + n_car))
    present = [k for k in range(c) if (labels == k).any()]
    assert car_as_road.miou == pytest.approx((len(present) - 2 + n_road / (n_road + n_car)) / len(present))
    assert car_as_road.accuracy == pytest.approx(1 - n_car / int((labels != ignore).sum()))
    assert car_as_road.points == len(labels) and car_as_road.labelled_points == int((labels != ignore).sum())
    assert wrong.miou == 0.0 and wrong.accuracy == 0.0
    assert [f.index for f in report.worst(2)] == [2, 1]


def test_report_files(ds, made, tmp_path):
    # A class the model knows but never predicts and no label has: its IoU is undefined in every frame.
    classes = (*ds.classes, "unicorn")
    writer = PredictionWriter(tmp_path / "with-unicorn", classes=classes, ignore_index=ds.ignore_index)
    for i, (_, predicted) in made.items():
        writer.write(ds.frames[i].job_id, ds.frames[i].frame_id, predicted)
    report = evaluate(ds, tmp_path / "with-unicorn", progress=False)
    assert report.classes == classes and math.isnan(report.iou[-1])
    files = report.write(tmp_path / "out", worst=1, picture=HAVE_PILLOW)
    rows = list(csv.DictReader(files.frames_csv.open()))
    assert [r["frame_id"] for r in rows] == [ds.frames[i].frame_id for i in range(3)]
    assert list(rows[0]) == ["job_id", "frame_id", "index", "points", "labelled_points", "accuracy", "miou"] + [
        f"iou_{name}" for name in classes
    ]
    for row, frame in zip(rows, report.frames, strict=True):
        assert row["job_id"] == frame.job_id and int(row["points"]) == frame.points
        assert float(row["miou"]) == pytest.approx(frame.miou, abs=1e-6)
        assert float(row["accuracy"]) == pytest.approx(frame.accuracy, abs=1e-6)
        for name, value in zip(classes, frame.iou, strict=True):
            cell = row[f"iou_{name}"]
            assert (cell == "") if math.isnan(value) else float(cell) == pytest.approx(value, abs=1e-6)
        assert row["iou_unicorn"] == ""
    lines = [json.loads(line) for line in files.frames_jsonl.read_text().splitlines()]
    assert [(line["job_id"], line["frame_id"]) for line in lines] == [(f.job_id, f.frame_id) for f in report.frames]
    assert lines[1]["miou"] == pytest.approx(report.frames[1].miou)
    assert lines[1]["iou"]["car"] == 0.0 and lines[1]["iou"]["unicorn"] is None
    worst = list(csv.DictReader(files.worst_csv.open()))
    assert [(r["job_id"], r["frame_id"]) for r in worst] == [(ds.frames[2].job_id, ds.frames[2].frame_id)]
    summary = json.loads(files.summary_json.read_text())
    assert summary["frames_evaluated"] == 3 and summary["frames_missing"] == 1
    assert summary["miou"] == pytest.approx(report.miou)
    assert [c["name"] for c in summary["classes"]] == list(classes)
    assert summary["worst"][0]["frame_id"] == ds.frames[2].frame_id
    missing = list(csv.DictReader(files.missing_csv.open()))
    assert missing == [{"job_id": ds.frames[3].job_id, "frame_id": ds.frames[3].frame_id}]
    assert files.confusion_png is None if not HAVE_PILLOW else files.confusion_png.is_file()


def test_predictions_are_matched_to_classes_by_name(ds, made, tmp_path):
    """Predictions over another class order plus a class the dataset lacks give the same per-class numbers."""
    reordered = (*reversed(ds.classes), "unicorn")
    writer = PredictionWriter(tmp_path / "other", classes=reordered, ignore_index=-1)
    to_other = np.array([reordered.index(name) for name in ds.classes])
    for i, (_, predicted) in made.items():
        other = to_other[predicted]
        other[:5] = reordered.index("unicorn")
        other[5:8] = -1  # abstained
        writer.write(ds.frames[i].job_id, ds.frames[i].frame_id, other)
    report = evaluate(ds, tmp_path / "other", progress=False)
    assert report.classes == (*ds.classes, "unicorn")
    c = len(ds.classes)
    expected = np.zeros((c + 1, c + 1), dtype=np.int64)
    unpredicted = np.zeros(c + 1, dtype=np.int64)
    for labels, predicted in made.values():
        p = predicted.copy()
        p[:5] = c
        kept = labels != ds.ignore_index
        abstained = np.zeros(len(p), dtype=bool)
        abstained[5:8] = True
        np.add.at(expected, (labels[kept & ~abstained], p[kept & ~abstained]), 1)
        np.add.at(unpredicted, labels[kept & abstained], 1)
    assert report.confusion_matrix.tolist() == expected.tolist()
    assert report.metrics.unpredicted.tolist() == unpredicted.tolist()
    assert report.iou[c] == 0.0


def test_nothing_evaluated(ds, tmp_path):
    PredictionWriter(tmp_path / "empty", classes=ds.classes)
    report = evaluate(ds, tmp_path / "empty", progress=False)
    assert report.frames == () and len(report.missing) == len(ds) and report.worst() == []
    assert str(report) == f"0 frames evaluated, {len(ds)} without a prediction: mIoU -, accuracy -"
    summary = report.summary()
    assert summary["miou"] is None and summary["frames_missing"] == len(ds)


def test_point_count_mismatch_names_the_frame(ds, made, tmp_path):
    ref = ds.frames[1]
    PredictionWriter(tmp_path / "preds", classes=ds.classes).write(ref.job_id, ref.frame_id, np.zeros(7, np.int64))
    with pytest.raises(PlaymentFormatError, match=rf"job {ref.job_id}, frame {ref.frame_id}: the prediction has 7"):
        evaluate(ds, tmp_path / "preds", progress=False)


def test_datasets_that_move_points_are_refused(server, project, tmp_path):
    for options in ({"transform": lambda s: s}, {"sweeps": 2}, {"on_error": "skip"}):
        ds = PlaymentSegmentationDataset(
            server.project_id, client=fast_client(server), cache_dir=str(tmp_path), progress=False, **options
        )
        with pytest.raises(ConfigError, match="evaluate needs"):
            evaluate(ds, tmp_path / "nowhere", progress=False)


# ------------------------------------------------------------------------------------------- the picture


@needs_pillow
def test_confusion_picture_colours(tmp_path):
    from PIL import Image

    confusion = np.array([[10, 0, 0], [0, 5, 5], [0, 0, 0]])
    layout = render_confusion_matrix(confusion, ["car", "road", "vegetation"], tmp_path / "c.png")
    image = Image.open(tmp_path / "c.png").convert("RGB")
    assert image.size == layout.size

    def colour_of(row, column):
        left, top, _, _ = layout.cell_box(row, column)
        return image.getpixel((left + 2, top + 2))  # a corner: the share is printed in the middle

    scale_left, scale_top, scale_right, scale_bottom = layout.scale
    top_of_scale = image.getpixel(((scale_left + scale_right) // 2, scale_top))
    bottom_of_scale = image.getpixel(((scale_left + scale_right) // 2, scale_bottom - 1))
    assert colour_of(0, 0) == top_of_scale == scale_colour(1.0)  # a perfect class: the scale's max colour
    assert colour_of(0, 1) == bottom_of_scale == scale_colour(0.0)
    assert colour_of(1, 1) == colour_of(1, 2) == scale_colour(0.5)
    assert colour_of(2, 0) == colour_of(2, 2) == NO_DATA_COLOUR  # no labelled point: no share
    assert scale_colour(1.0) != scale_colour(0.0)
    # Class names are drawn left of each row and under each column.
    pixels = np.asarray(image)
    for k in range(3):
        left, top, right, bottom = layout.cell_box(k, 0)
        assert (pixels[top:bottom, : left - 4].min(axis=2) < 100).any(), f"no name left of row {k}"
        left, top, right, bottom = layout.cell_box(2, k)
        assert (pixels[bottom + 4 :, left:right].min(axis=2) < 100).any(), f"no name under column {k}"


def test_picture_without_pillow_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ConfigError, match=r"pip install playment-torch\[viz\]"):
        render_confusion_matrix(np.eye(2), ["a", "b"], tmp_path / "c.png")


# ------------------------------------------------------------------------------------------- the command


def _argv(server, tmp_path, *extra):
    return [
        "evaluate",
        "--project",
        server.project_id,
        "--base-url",
        server.url,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--predictions",
        str(tmp_path / "preds"),
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]


def test_cli_missing_frames_exit_1_unless_allowed(server, ds, made, tmp_path, capsys):
    assert main([*_argv(server, tmp_path, "--worst", "2"), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "3 frames evaluated, 1 without a prediction" in captured.out
    assert "worst 2 frames by mIoU:" in captured.out
    worst_lines = captured.out.split("worst 2 frames by mIoU:")[1].splitlines()[2:4]
    assert worst_lines[0].split()[0] == "0.00" and worst_lines[0].endswith(f"{ds.frames[2].frame_id}")
    assert f"no prediction: job {ds.frames[3].job_id}, frame {ds.frames[3].frame_id}" in captured.out
    assert captured.err.strip().splitlines() == [
        "playment-torch: error: 1 of 4 frames have no prediction (listed above); pass --allow-missing to accept that"
    ]
    assert (tmp_path / "out" / "frames.csv").is_file(), "the files are written before the exit code"

    assert main([*_argv(server, tmp_path), "--allow-missing", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "car" in out and str(tmp_path / "out" / "frames.csv") in out
    assert (str(tmp_path / "out" / "confusion.png") in out) == HAVE_PILLOW


def test_cli_without_pillow_skips_only_the_picture(server, ds, made, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert main([*_argv(server, tmp_path), "--allow-missing", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "confusion.png skipped: it needs Pillow (pip install playment-torch[viz])" in captured.err
    assert (tmp_path / "out" / "frames.csv").is_file() and not (tmp_path / "out" / "confusion.png").exists()


def test_cli_subprocess_writes_everything(server, ds, made, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(WORKTREE), "PLAYMENT_API_KEY": server.api_key}
    argv = _argv(server, tmp_path, "--allow-missing", "--quiet", "--playment-results", str(tmp_path / "playment"))
    done = subprocess.run(
        [sys.executable, "-m", "playment_torch.cli", *argv], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "3 frames evaluated, 1 without a prediction" in done.stdout
    assert "wrote 2 Playment results (3 masks)" in done.stdout
    for name in ("frames.jsonl", "frames.csv", "worst.csv", "summary.json", "missing.csv"):
        assert (tmp_path / "out" / name).is_file(), name
    assert (tmp_path / "out" / "confusion.png").is_file() == HAVE_PILLOW
    assert server.api_key not in done.stdout + done.stderr
