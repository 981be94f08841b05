"""Tests for playment_torch.metrics.SegmentationMetrics."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from playment_torch.errors import ConfigError, PlaymentFormatError
from playment_torch.metrics import SegmentationMetrics

IGNORE = -100


def reference(pred: list[int], target: list[int], c: int, ignore: int) -> tuple[list, list, float, float]:
    """Slow, obvious computation: a confusion matrix filled point by point, IoU class by class."""
    confusion = [[0] * c for _ in range(c)]
    for p, t in zip(pred, target, strict=True):
        if t != ignore:
            confusion[t][p] += 1
    iou = []
    for k in range(c):
        tp = confusion[k][k]
        fp = sum(confusion[t][k] for t in range(c)) - tp
        fn = sum(confusion[k]) - tp
        iou.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
    present = [v for v in iou if not math.isnan(v)]
    miou = sum(present) / len(present) if present else math.nan
    total = sum(map(sum, confusion))
    accuracy = sum(confusion[k][k] for k in range(c)) / total if total else math.nan
    return confusion, iou, miou, accuracy


def assert_same_floats(actual: list[float], expected: list[float]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert (math.isnan(a) and math.isnan(e)) or a == pytest.approx(e, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(0, 300), st.integers(1, 4), st.integers(0, 2**31))
def test_matches_reference_on_random_data(c, n, batches, seed):
    g = torch.Generator().manual_seed(seed)
    metrics = SegmentationMetrics(c)
    preds, targets = [], []
    for _ in range(batches):
        target = torch.randint(0, c + 1, (n,), generator=g)
        target[target == c] = IGNORE  # roughly 1 in (c + 1) points unlabeled
        # Predictions skewed towards low classes so some classes are often absent from both.
        pred = torch.minimum(torch.randint(0, c, (n,), generator=g), torch.randint(0, c, (n,), generator=g))
        metrics.update(pred, target)
        preds += pred.tolist()
        targets += target.tolist()
    confusion, iou, miou, accuracy = reference(preds, targets, c, IGNORE)
    assert metrics.confusion_matrix.tolist() == confusion
    assert metrics.confusion_matrix.dtype == torch.int64
    assert metrics.iou().dtype == torch.float64
    assert_same_floats(metrics.iou().tolist(), iou)
    assert_same_floats([metrics.miou(), metrics.accuracy()], [miou, accuracy])


def test_hand_worked_example():
    metrics = SegmentationMetrics(4, class_names=["road", "car", "vegetation", "pole"])
    metrics.update(torch.tensor([0, 0, 1, 2, 2, 1, 3]), torch.tensor([0, 1, 1, 2, IGNORE, 0, IGNORE]))
    assert metrics.confusion_matrix.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    # road: TP 1, FP 1 (a car point), FN 1 -> 1/3; car likewise; vegetation 1/1; pole never seen -> NaN.
    iou = metrics.iou().tolist()
    assert iou[:3] == pytest.approx([1 / 3, 1 / 3, 1.0]) and math.isnan(iou[3])
    assert metrics.miou() == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)  # pole is left out of the mean
    assert metrics.accuracy() == pytest.approx(3 / 5)  # the two ignored points count nowhere
    table = metrics.table().splitlines()
    assert table[0].split() == ["class", "IoU", "%", "points"]
    assert table[1].split() == ["road", "33.33", "2"]
    assert table[3].split() == ["vegetation", "100.00", "1"]
    assert table[4].split() == ["pole", "-", "0"]
    assert table[5].split() == ["mIoU", "55.56"]
    assert table[6].split() == ["accuracy", "60.00"]


def test_class_only_predicted_counts_as_zero_iou():
    metrics = SegmentationMetrics(3)
    metrics.update(torch.tensor([0, 0, 2]), torch.tensor([0, 0, 0]))
    iou = metrics.iou().tolist()
    assert iou[0] == pytest.approx(2 / 3) and math.isnan(iou[1]) and iou[2] == 0.0
    assert metrics.miou() == pytest.approx((2 / 3 + 0.0) / 2)
    assert "class 1" in metrics.table()  # default names


@pytest.mark.parametrize("ignore_index", [-100, 255, 0, -1])
def test_ignore_index(ignore_index):
    metrics = SegmentationMetrics(3, ignore_index=ignore_index)
    target = torch.tensor([1, 2, ignore_index, ignore_index, 1])
    # Predictions on ignored points are not checked or counted, even when out of range.
    pred = torch.tensor([1, 1, 7, -5, 2])
    metrics.update(pred, target)
    confusion, iou, miou, accuracy = reference([1, 1, 0, 0, 2], target.tolist(), 3, ignore_index)
    assert metrics.confusion_matrix.tolist() == confusion
    assert metrics.accuracy() == accuracy == pytest.approx(1 / 3)
    assert_same_floats(metrics.iou().tolist(), iou)
    assert metrics.miou() == pytest.approx(miou)


def test_logits_input_matches_indices():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 50, generator=g)  # (B, C, N)
    target = torch.randint(0, 5, (2, 50), generator=g)
    from_indices = SegmentationMetrics(5)
    from_indices.update(logits.argmax(dim=1), target)
    from_bcn = SegmentationMetrics(5)
    from_bcn.update(logits, target)
    from_nc = SegmentationMetrics(5)
    for b in range(2):
        from_nc.update(logits[b].T.contiguous(), target[b])  # (N, C) per sample
    assert from_bcn.confusion_matrix.tolist() == from_indices.confusion_matrix.tolist()
    assert from_nc.confusion_matrix.tolist() == from_indices.confusion_matrix.tolist()
    assert int(from_nc.confusion_matrix.sum()) == 100


def test_hand_worked_logits():
    metrics = SegmentationMetrics(3)
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.1, -1.0], [-5.0, -6.0, -4.0]])  # argmax 0, 1, 2
    metrics.update(logits, torch.tensor([0, 2, 2]))
    assert metrics.confusion_matrix.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 1]]


def test_multiple_updates_accumulate_and_reset_clears():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randint(0, 6, (1000,), generator=g), torch.randint(0, 6, (1000,), generator=g)
    once = SegmentationMetrics(6)
    once.update(pred, target)
    chunked = SegmentationMetrics(6)
    for start in range(0, 1000, 137):
        chunked.update(pred[start : start + 137], target[start : start + 137])
    assert torch.equal(once.confusion_matrix, chunked.confusion_matrix)
    assert chunked.miou() == once.miou() and chunked.accuracy() == once.accuracy()
    chunked.reset()
    assert int(chunked.confusion_matrix.sum()) == 0
    assert math.isnan(chunked.miou()) and math.isnan(chunked.accuracy())
    assert all(math.isnan(v) for v in chunked.iou().tolist())
    # confusion_matrix is a copy: changing it does not change the metrics.
    matrix = once.confusion_matrix
    matrix.zero_()
    assert int(once.confusion_matrix.sum()) == 1000


def test_merge_equals_single_evaluator():
    g = torch.Generator().manual_seed(2)
    pred, target = torch.randint(0, 4, (400,), generator=g), torch.randint(0, 4, (400,), generator=g)
    whole, first, second = SegmentationMetrics(4), SegmentationMetrics(4), SegmentationMetrics(4)
    whole.update(pred, target)
    first.update(pred[:150], target[:150])
    second.update(pred[150:], target[150:])
    first.merge(second)
    assert torch.equal(first.confusion_matrix, whole.confusion_matrix)
    with pytest.raises(ConfigError, match="merge"):
        first.merge(SegmentationMetrics(5))


@pytest.mark.parametrize(
    ("pred_dtype", "target_dtype"), [(torch.int32, torch.int64), (torch.uint8, torch.int16), (torch.int64, torch.uint8)]
)
def test_integer_dtypes(pred_dtype, target_dtype):
    metrics = SegmentationMetrics(3, ignore_index=255 if target_dtype == torch.uint8 else -100)
    metrics.update(torch.tensor([0, 1, 2], dtype=pred_dtype), torch.tensor([0, 1, 1], dtype=target_dtype))
    assert metrics.confusion_matrix.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (torch.tensor([0, 1]), torch.tensor([0, 3]), r"target class 3 is outside \[0, 3\)"),
        (torch.tensor([0, 1]), torch.tensor([-1, 0]), "target class -1"),
        (torch.tensor([0, 4]), torch.tensor([0, 1]), "predicted class 4"),
        (torch.tensor([0, 1, 2]), torch.tensor([0, 1]), "do not match"),
        (torch.zeros(2, 4), torch.tensor([0, 1]), "4 classes"),
        (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), "integer class indices"),
        (torch.tensor([0, 1]), torch.tensor([0.0, 1.0]), "integer class indices"),
    ],
)
def test_bad_inputs(pred, target, match):
    metrics = SegmentationMetrics(3)
    with pytest.raises(PlaymentFormatError, match=match):
        metrics.update(pred, target)
    assert int(metrics.confusion_matrix.sum()) == 0  # a refused batch leaves no partial counts
    assert isinstance(PlaymentFormatError("x"), ValueError)


@pytest.mark.parametrize(
    "kwargs", [{"num_classes": 0}, {"num_classes": 2.0}, {"num_classes": 3, "class_names": ["a", "b"]}]
)
def test_bad_configuration(kwargs):
    with pytest.raises(ConfigError):
        SegmentationMetrics(**kwargs)
