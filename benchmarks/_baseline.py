"""The baseline the dataset benchmark compares with: the same arrays as plain ``.npy`` files on local disk.

This is what a team gets by exporting everything once and reading it back with ``np.load`` and
``torch.from_numpy``: no HTTP, no parsing, no cache bookkeeping, no integrity checks. A dataset that caches
decoded arrays should cost about as much per item once warm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["NpyFrames", "export_npy"]


def export_npy(dataset: torch.utils.data.Dataset, directory: Path) -> int:
    """Write every item's ``points`` ``(N, C)`` float32 and ``labels`` ``(N,)`` int64 as ``.npy`` files.

    Args:
        dataset: Yields samples whose first two fields are ``points`` and ``labels`` tensors.
        directory: Where to write ``<i>_points.npy`` and ``<i>_labels.npy`` (created if needed).

    Returns:
        The number of items written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    count = len(dataset)  # type: ignore[arg-type]
    for i in range(count):
        sample = dataset[i]
        np.save(directory / f"{i}_points.npy", sample[0].numpy())
        np.save(directory / f"{i}_labels.npy", sample[1].numpy())
    return count


class NpyFrames(torch.utils.data.Dataset):
    """Items ``(points, labels, poses, intrinsics)`` read from :func:`export_npy` files.

    Poses and intrinsics are the same small constant tensors for every item (an identity ego pose, no
    cameras): they are kept in memory so the baseline pays only for the two arrays, and they let the same
    ``collate_points`` batch both datasets.

    Args:
        directory: The folder :func:`export_npy` wrote.
        count: Number of items.
    """

    def __init__(self, directory: Path, count: int) -> None:
        self.directory = Path(directory)
        self.count = count
        self._poses = torch.eye(4, dtype=torch.float64)[None]
        self._intrinsics = torch.zeros((0, 3, 3), dtype=torch.float64)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        points = torch.from_numpy(np.load(self.directory / f"{i}_points.npy"))
        labels = torch.from_numpy(np.load(self.directory / f"{i}_labels.npy"))
        return points, labels, self._poses, self._intrinsics
