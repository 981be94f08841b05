"""The one value the dataset yields and the transforms consume: :class:`Sample`.

It lives in its own module so that ``dataset.py``, ``transforms.py`` and ``collate.py`` can all share it
without importing each other.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Sample"]


class Sample(NamedTuple):
    """One frame of a point cloud segmentation job.

    Attributes:
        points: float32 ``(N, C)``, columns in the dataset's ``point_fields`` order (0..2 are x, y, z).
        labels: int64 ``(N,)``, a contiguous class index per point, or ``ignore_index`` for unlabeled points.
        poses: float64 ``(1 + K, 4, 4)``; ``[0]`` is the ego pose, ``[1 + k]`` the pose of camera ``k``, all
            expressed in the point cloud's frame (each maps sensor coordinates to point cloud coordinates).
        intrinsics: float64 ``(K, 3, 3)`` camera matrices, one per camera in ``sensor_meta`` order
            (K may be 0).
    """

    points: torch.Tensor
    labels: torch.Tensor
    poses: torch.Tensor
    intrinsics: torch.Tensor
