"""Batching point clouds of different sizes: concatenate the points, remember where each sample starts.

Padding clouds to a common size wastes memory and compute (frames range from a few thousand to a few hundred
thousand points); the sparse and point-based networks that segment LiDAR take concatenated points plus offsets
or a per-point batch index instead, so :func:`collate_points` provides both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from playment_torch.errors import PlaymentFormatError

__all__ = ["Batch", "collate_points"]

_FIELDS = ("points", "labels", "poses", "intrinsics")


def _map_tensors(value: torch.Tensor | list[torch.Tensor], fn: Any) -> torch.Tensor | list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return fn(value)
    return [fn(item) for item in value]


@dataclass
class Batch:
    """Samples of a batch, their points concatenated.

    Attributes:
        points: ``(N_total, C)``, sample 0's points first, then sample 1's, and so on.
        labels: ``(N_total,)`` int64, aligned with ``points``.
        offsets: ``(B + 1,)`` int64; sample ``b`` owns rows ``offsets[b]:offsets[b + 1]``.
        batch_index: ``(N_total,)`` int64, the sample each point belongs to.
        poses: ``(B, 1 + K, 4, 4)`` when every sample has the same number of cameras, else a list of ``B``
            ``(1 + K_b, 4, 4)`` tensors.
        intrinsics: ``(B, K, 3, 3)`` under the same condition, else a list of ``B`` ``(K_b, 3, 3)`` tensors.
    """

    points: torch.Tensor
    labels: torch.Tensor
    offsets: torch.Tensor
    batch_index: torch.Tensor
    poses: torch.Tensor | list[torch.Tensor]
    intrinsics: torch.Tensor | list[torch.Tensor]

    def __len__(self) -> int:
        """Return the number of samples ``B``."""
        return int(self.offsets.numel()) - 1

    def _apply(self, fn: Any) -> Batch:
        return Batch(
            points=fn(self.points),
            labels=fn(self.labels),
            offsets=fn(self.offsets),
            batch_index=fn(self.batch_index),
            poses=_map_tensors(self.poses, fn),
            intrinsics=_map_tensors(self.intrinsics, fn),
        )

    def to(self, device: torch.device | str | int, non_blocking: bool = False) -> Batch:
        """Return a copy with every tensor on ``device``.

        Args:
            device: Anything :meth:`torch.Tensor.to` accepts as a device.
            non_blocking: Passed on; asynchronous host-to-GPU copies need pinned memory (see
                :meth:`pin_memory`).

        Returns:
            A new ``Batch``; tensors already on ``device`` are shared, not copied.
        """
        return self._apply(lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Return a copy with every tensor in page-locked memory.

        ``DataLoader(pin_memory=True)`` calls this on each batch in its pinning thread.

        Returns:
            A new ``Batch``.
        """
        return self._apply(lambda tensor: tensor.pin_memory())


def _fields(sample: Any, index: int) -> tuple[torch.Tensor, ...]:
    """Return ``sample``'s four fields as tensors, by attribute (``Sample``) or by position (plain tuples)."""
    try:
        if all(hasattr(sample, name) for name in _FIELDS):
            values = tuple(getattr(sample, name) for name in _FIELDS)
        else:
            points, labels, poses, intrinsics = sample
            values = (points, labels, poses, intrinsics)
        return tuple(torch.as_tensor(value) for value in values)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise PlaymentFormatError(
            f"sample {index} is not (points, labels, poses, intrinsics) of tensors: {exc}"
        ) from exc


def _shape_problem(
    points: torch.Tensor, labels: torch.Tensor, poses: torch.Tensor, intrinsics: torch.Tensor
) -> str | None:
    """Say what is wrong with one sample's shapes, or return ``None``."""
    if points.dim() != 2:
        return f"points must be (N, C), got {tuple(points.shape)}"
    if labels.shape != (points.shape[0],):
        return f"labels of shape {tuple(labels.shape)} for {points.shape[0]} points"
    if poses.dim() != 3 or poses.shape[0] < 1 or poses.shape[1:] != (4, 4):
        return f"poses must be (1 + K, 4, 4), got {tuple(poses.shape)}"
    cameras = poses.shape[0] - 1
    if intrinsics.shape != (cameras, 3, 3):
        return f"intrinsics must be (K, 3, 3) with K = {cameras} as in the poses, got {tuple(intrinsics.shape)}"
    return None


def _stack_or_list(tensors: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    if all(tensor.shape == tensors[0].shape for tensor in tensors):
        return torch.stack(tensors)
    return tensors


def collate_points(samples: Sequence[Any]) -> Batch:
    """Collate samples of different sizes into one :class:`Batch`.

    Use it as ``DataLoader(..., collate_fn=collate_points)``.

    Args:
        samples: ``Sample`` tuples, or anything with the four fields ``points`` ``(N, C)``, ``labels``
            ``(N,)``, ``poses`` ``(1 + K, 4, 4)``, ``intrinsics`` ``(K, 3, 3)`` by name or position, as
            tensors or numpy arrays. Samples may have zero points.

    Returns:
        The batch; ``labels`` are int64, the other tensors keep their dtypes.

    Raises:
        PlaymentFormatError: No samples, or a sample whose fields do not fit together (point columns that
            differ between samples, labels not one per point, poses or intrinsics of the wrong shape).
    """
    if len(samples) == 0:
        raise PlaymentFormatError("collate_points needs at least one sample")
    points_list: list[torch.Tensor] = []
    labels_list: list[torch.Tensor] = []
    poses_list: list[torch.Tensor] = []
    intrinsics_list: list[torch.Tensor] = []
    for index, sample in enumerate(samples):
        points, labels, poses, intrinsics = _fields(sample, index)
        problem = _shape_problem(points, labels, poses, intrinsics)
        if problem is None and points_list and points.shape[1] != points_list[0].shape[1]:
            problem = f"{points.shape[1]} point columns where sample 0 has {points_list[0].shape[1]}"
        if problem is not None:
            raise PlaymentFormatError(f"collate_points: sample {index}: {problem}")
        points_list.append(points)
        labels_list.append(labels)
        poses_list.append(poses)
        intrinsics_list.append(intrinsics)

    counts = torch.tensor([points.shape[0] for points in points_list], dtype=torch.int64)
    offsets = torch.zeros(len(points_list) + 1, dtype=torch.int64)
    torch.cumsum(counts, dim=0, out=offsets[1:])
    return Batch(
        points=torch.cat(points_list),
        labels=torch.cat(labels_list).to(torch.int64),
        offsets=offsets,
        batch_index=torch.repeat_interleave(torch.arange(len(points_list), dtype=torch.int64), counts),
        poses=_stack_or_list(poses_list),
        intrinsics=_stack_or_list(intrinsics_list),
    )
