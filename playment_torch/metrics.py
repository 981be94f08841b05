"""Semantic segmentation metrics over many batches: confusion matrix, per-class IoU, mIoU, accuracy.

Counts accumulate in a ``(C, C)`` int64 confusion matrix on the CPU (rows are targets, columns predictions), so
results are exact whatever the number of points, and several evaluators (one per worker or rank) can be summed
with :meth:`SegmentationMetrics.merge` before reading the scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from playment_torch.errors import ConfigError, PlaymentFormatError

__all__ = ["SegmentationMetrics"]


class SegmentationMetrics:
    """Accumulates predictions against targets and reports IoU per class, mIoU and overall accuracy.

    Points whose target is ``ignore_index`` are left out entirely (their prediction is not counted anywhere).

    Args:
        num_classes: Number of classes ``C``; targets and predictions are indices in ``[0, C)``.
        ignore_index: Target value of points to leave out.
        class_names: ``C`` names for :meth:`table`; ``"class <i>"`` when omitted.
        count_unpredicted: Accept predictions equal to ``ignore_index`` (a model that abstains) and count each
            as a miss: a false negative of its target's class and an error for accuracy, but no class's false
            positive. Without it such a prediction is an error.

    Raises:
        ConfigError: ``num_classes < 1``, ``class_names`` does not have ``num_classes`` entries, or
            ``count_unpredicted`` with an ``ignore_index`` that is a class index.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = -100,
        class_names: Sequence[str] | None = None,
        *,
        count_unpredicted: bool = False,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"SegmentationMetrics: num_classes must be a positive int, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"SegmentationMetrics: {len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = int(ignore_index)
        self.class_names = (
            tuple(class_names) if class_names is not None else tuple(f"class {i}" for i in range(num_classes))
        )
        self.count_unpredicted = bool(count_unpredicted)
        if self.count_unpredicted and 0 <= self.ignore_index < num_classes:
            raise ConfigError(
                f"count_unpredicted needs an ignore_index outside [0, {num_classes}): {ignore_index} is a class"
            )
        self._confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64)
        # Points predicted as ignore_index, by target class (only with count_unpredicted).
        self._unpredicted = torch.zeros(num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._confusion.zero_()
        self._unpredicted.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of predictions.

        Args:
            pred: Class indices with the same shape as ``target`` (integer dtype), or scores/logits with one
                extra dimension at position 1 (``(N, C)`` for ``(N,)`` targets, ``(B, C, N)`` for ``(B, N)``),
                reduced by argmax over dim 1. Any device.
            target: Target class indices or ``ignore_index``, integer dtype. Any device.

        Raises:
            PlaymentFormatError: Shapes do not match, logits do not have ``C`` classes, indices are not integers,
                or a kept target or its prediction lies outside ``[0, C)``.
        """
        c = self.num_classes
        if target.is_floating_point() or target.is_complex():
            raise PlaymentFormatError(f"targets must be integer class indices, got dtype {target.dtype}")
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != c:
                raise PlaymentFormatError(f"logits have {pred.shape[1]} classes on dim 1, expected {c}")
            pred = pred.argmax(dim=1)
        elif pred.is_floating_point() or pred.is_complex():
            raise PlaymentFormatError(
                f"predictions shaped like the targets must be integer class indices, got dtype {pred.dtype}"
            )
        if pred.shape != target.shape:
            raise PlaymentFormatError(f"predictions {tuple(pred.shape)} do not match targets {tuple(target.shape)}")
        target = target.reshape(-1)
        pred = pred.reshape(-1).to(target.device)
        kept = target != self.ignore_index
        target, pred = target[kept].long(), pred[kept].long()
        bad_target = (target < 0) | (target >= c)
        if bool(bad_target.any()):
            value = int(target[bad_target][0])
            raise PlaymentFormatError(
                f"target class {value} is outside [0, {c}) and is not ignore_index {self.ignore_index}"
            )
        if self.count_unpredicted:
            abstained = pred == self.ignore_index
            if bool(abstained.any()):
                self._unpredicted += torch.bincount(target[abstained], minlength=c).cpu()
                target, pred = target[~abstained], pred[~abstained]
        bad_pred = (pred < 0) | (pred >= c)
        if bool(bad_pred.any()):
            raise PlaymentFormatError(f"predicted class {int(pred[bad_pred][0])} is outside [0, {c})")
        # One bincount over target * C + pred fills the whole matrix: no loop over points or classes.
        counts = torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)
        self._confusion += counts.cpu()

    def update_counts(self, confusion: Any, unpredicted: Any = None) -> None:
        """Add counts computed elsewhere (for instance with numpy, which is faster for one frame at a time).

        Args:
            confusion: ``(C, C)`` non-negative integer counts, rows targets and columns predictions (a tensor or
                anything numpy takes).
            unpredicted: ``(C,)`` counts of points predicted as ``ignore_index`` by target class; only with
                ``count_unpredicted``.

        Raises:
            PlaymentFormatError: wrong shapes, negative or non-integer counts, or unpredicted points without
                ``count_unpredicted``.
        """
        c = self.num_classes
        counts = torch.as_tensor(confusion)
        if counts.shape != (c, c) or counts.is_floating_point() or counts.is_complex() or bool((counts < 0).any()):
            raise PlaymentFormatError(f"confusion counts must be ({c}, {c}) non-negative integers, got {counts.shape}")
        missed = torch.zeros(c, dtype=torch.int64) if unpredicted is None else torch.as_tensor(unpredicted)
        if missed.shape != (c,) or missed.is_floating_point() or missed.is_complex() or bool((missed < 0).any()):
            raise PlaymentFormatError(f"unpredicted counts must be ({c},) non-negative integers, got {missed.shape}")
        if bool(missed.any()) and not self.count_unpredicted:
            raise PlaymentFormatError("unpredicted points need SegmentationMetrics(..., count_unpredicted=True)")
        self._confusion += counts.to(torch.int64).cpu()
        self._unpredicted += missed.to(torch.int64).cpu()

    def merge(self, other: SegmentationMetrics) -> None:
        """Add another evaluator's counts to this one (for instance one per DataLoader worker or rank).

        Args:
            other: An evaluator with the same ``num_classes``.

        Raises:
            ConfigError: ``other`` counts a different number of classes.
        """
        if other.num_classes != self.num_classes:
            raise ConfigError(f"cannot merge {other.num_classes}-class metrics into {self.num_classes}-class ones")
        self._confusion += other._confusion
        self._unpredicted += other._unpredicted

    @property
    def confusion_matrix(self) -> torch.Tensor:
        """A copy of the ``(C, C)`` int64 confusion matrix: rows are targets, columns predictions."""
        return self._confusion.clone()

    @property
    def unpredicted(self) -> torch.Tensor:
        """A copy of the ``(C,)`` int64 count of points predicted as ``ignore_index``, by target class."""
        return self._unpredicted.clone()

    def support(self) -> torch.Tensor:
        """Target points per class, ``(C,)`` int64 (unpredicted points included)."""
        return self._confusion.sum(dim=1) + self._unpredicted

    def iou(self) -> torch.Tensor:
        """Intersection over union per class.

        Returns:
            ``(C,)`` float64: ``TP / (TP + FP + FN)``, NaN for classes that appear in neither the targets nor the
            predictions seen so far. Unpredicted points count in ``FN``.
        """
        confusion = self._confusion.to(torch.float64)
        tp = confusion.diagonal()
        union = confusion.sum(dim=0) + confusion.sum(dim=1) - tp + self._unpredicted.to(torch.float64)
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))

    def miou(self) -> float:
        """Mean IoU over the classes present in the targets or the predictions.

        A class absent from both has no defined IoU and is left out of the mean rather than counted as 0 or 1;
        a class that is predicted but never in the targets counts (with IoU 0).

        Returns:
            The mean, or NaN before any (non-ignored) point was seen.
        """
        iou = self.iou()
        present = ~torch.isnan(iou)
        return float(iou[present].mean()) if bool(present.any()) else math.nan

    def accuracy(self) -> float:
        """Overall accuracy: the share of non-ignored points whose prediction equals the target.

        Returns:
            The accuracy, or NaN before any (non-ignored) point was seen.
        """
        total = int(self._confusion.sum()) + int(self._unpredicted.sum())
        return int(self._confusion.trace()) / total if total else math.nan

    def table(self) -> str:
        """Format per-class IoU, support, mIoU and accuracy as a plain-text table.

        Returns:
            One line per class (name, IoU in percent or ``-`` when undefined, number of target points), then
            ``mIoU`` and ``accuracy`` lines.
        """
        iou = self.iou().tolist()
        support = self.support().tolist()
        width = max(len("accuracy"), *(len(name) for name in self.class_names))
        lines = [f"{'class':<{width}}  {'IoU %':>7}  {'points':>12}"]
        for name, value, count in zip(self.class_names, iou, support, strict=True):
            lines.append(f"{name:<{width}}  {_percent(value)}  {count:>12}")
        lines.append(f"{'mIoU':<{width}}  {_percent(self.miou())}")
        lines.append(f"{'accuracy':<{width}}  {_percent(self.accuracy())}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"SegmentationMetrics(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"points={int(self._confusion.sum()) + int(self._unpredicted.sum())})"
        )


def _percent(value: float) -> str:
    return f"{'-':>7}" if math.isnan(value) else f"{100.0 * value:>7.2f}"
