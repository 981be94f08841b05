"""Point cloud augmentations: composable, seeded callables ``Sample -> Sample``.

Every transform keeps ``points`` and ``labels`` aligned row for row. Columns 0..2 of ``points`` are x, y, z;
other columns (intensity, ring, ...) are carried along untouched.

The geometric transforms change the point cloud's frame of reference, so they also update ``poses`` (the ego
and camera poses, expressed in that frame) to keep projection consistent:

* :class:`RandomRotationZ` and :class:`RandomFlip` apply a 4x4 matrix ``A`` to the points and left-multiply
  every pose: ``poses' = A @ poses``. Projecting the new points with the new poses gives the same pixels as
  before. After a single-axis flip the poses' 3x3 blocks are reflections (determinant -1): they still invert
  by transposition (:func:`playment_torch.geometry.invert_transform`), but are not proper rotations.
* :class:`RandomScale` multiplies coordinates by ``s`` and scales the poses' translations by ``s`` (rotations
  are unchanged), so sensors stay at the same place relative to the points.

``intrinsics`` never change. Crops and downsampling leave poses alone.

Randomness: each random transform takes ``generator`` (a ``torch.Generator`` you own) or ``seed`` (the
transform makes its own generator), not both. With neither, torch's global RNG is used, which ``DataLoader``
reseeds per worker and per epoch. With ``seed``, a transform created in the main process draws the same
sequence on every run; inside a ``DataLoader`` worker its generator is reseeded from ``seed`` and the worker's
own seed, so workers do not repeat each other's augmentations (set the loader's ``generator`` to make that
reproducible as well). A ``generator`` you pass is used as is, and is copied into each worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch

from playment_torch.errors import ConfigError
from playment_torch.sample import Sample

__all__ = [
    "BoxCrop",
    "Compose",
    "Jitter",
    "RandomFlip",
    "RandomRotationZ",
    "RandomScale",
    "RangeCrop",
    "VoxelDownsample",
]

Transform = Callable[[Sample], Sample]

_MASK64 = (1 << 64) - 1


class _Seeded:
    """Holds a transform's source of randomness (see the module docstring)."""

    def __init__(self, generator: torch.Generator | None, seed: int | None) -> None:
        if generator is not None and seed is not None:
            raise ConfigError(f"{type(self).__name__}: pass generator or seed, not both")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"{type(self).__name__}: seed must be an int, got {seed!r}")
        self._generator = generator
        self._seed = seed
        self._own: torch.Generator | None = None
        self._own_key: int | None = None

    def _rng(self) -> torch.Generator | None:
        if self._generator is not None:
            return self._generator
        if self._seed is None:
            return None  # torch's global RNG: DataLoader already seeds it per worker and epoch
        info = torch.utils.data.get_worker_info()
        key = None if info is None else int(info.seed)
        if self._own is None or self._own_key != key:
            seed = self._seed if key is None else _mix(self._seed, key)
            self._own = torch.Generator().manual_seed(seed & ((1 << 63) - 1))
            self._own_key = key
        return self._own

    def _uniform(self, low: float, high: float, size: int = 1) -> torch.Tensor:
        return torch.rand(size, generator=self._rng(), dtype=torch.float64) * (high - low) + low

    def __getstate__(self) -> dict[str, object]:
        # The private generator is rebuilt from the seed on first use in the receiving process.
        state = dict(self.__dict__)
        state["_own"] = None
        state["_own_key"] = None
        return state


def _mix(seed: int, key: int) -> int:
    # splitmix64 finaliser over both values: nearby (seed, worker seed) pairs give unrelated generator seeds.
    z = (seed * 0x9E3779B97F4A7C15 + key + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _apply_linear(sample: Sample, matrix: torch.Tensor) -> Sample:
    """Apply a 4x4 float64 linear map (no translation) to xyz and left-multiply it onto every pose."""
    points = sample.points.clone()
    xyz = points[:, :3].to(torch.float64) @ matrix[:3, :3].T.to(points.device)
    points[:, :3] = xyz.to(points.dtype)
    poses = sample.poses
    if poses.numel():
        poses = matrix.to(device=poses.device, dtype=poses.dtype) @ poses
    return sample._replace(points=points, poses=poses)


def _select(sample: Sample, keep: torch.Tensor) -> Sample:
    return sample._replace(points=sample.points[keep], labels=sample.labels[keep])


class Compose:
    """Apply transforms one after another, in the order given.

    Args:
        transforms: Callables ``Sample -> Sample``.
    """

    def __init__(self, transforms: Iterable[Transform]) -> None:
        self.transforms = tuple(transforms)
        for t in self.transforms:
            if not callable(t):
                raise ConfigError(f"Compose: {t!r} is not callable")

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])" if inner else "Compose([])"


class RandomRotationZ(_Seeded):
    """Rotate the cloud about the z axis by an angle drawn uniformly from ``[-max_angle, max_angle]``.

    Poses are rotated with it (``poses' = Rz @ poses``).

    Args:
        max_angle: Largest rotation, radians (``pi``: any heading).
        generator: Source of randomness you own.
        seed: Seed for a private generator.
    """

    def __init__(
        self, max_angle: float = math.pi, *, generator: torch.Generator | None = None, seed: int | None = None
    ) -> None:
        super().__init__(generator, seed)
        if not (math.isfinite(max_angle) and max_angle >= 0):
            raise ConfigError(f"RandomRotationZ: max_angle must be finite and >= 0, got {max_angle}")
        self.max_angle = float(max_angle)

    def __call__(self, sample: Sample) -> Sample:
        angle = float(self._uniform(-self.max_angle, self.max_angle))
        c, s = math.cos(angle), math.sin(angle)
        matrix = torch.tensor(
            [[c, -s, 0.0, 0.0], [s, c, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
            dtype=torch.float64,
        )
        return _apply_linear(sample, matrix)

    def __repr__(self) -> str:
        return f"RandomRotationZ(max_angle={self.max_angle})"


class RandomScale(_Seeded):
    """Scale coordinates by one factor drawn uniformly from ``[low, high]``.

    Pose translations are scaled by the same factor; pose rotations are unchanged.

    Args:
        low: Smallest factor (> 0).
        high: Largest factor (>= low).
        generator: Source of randomness you own.
        seed: Seed for a private generator.
    """

    def __init__(
        self,
        low: float = 0.95,
        high: float = 1.05,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(generator, seed)
        if not (0 < low <= high < math.inf):
            raise ConfigError(f"RandomScale: need 0 < low <= high, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)

    def __call__(self, sample: Sample) -> Sample:
        factor = float(self._uniform(self.low, self.high))
        points = sample.points.clone()
        points[:, :3] = (points[:, :3].to(torch.float64) * factor).to(points.dtype)
        poses = sample.poses.clone()
        poses[..., :3, 3] *= factor
        return sample._replace(points=points, poses=poses)

    def __repr__(self) -> str:
        return f"RandomScale(low={self.low}, high={self.high})"


class RandomFlip(_Seeded):
    """Mirror the cloud: negate x with probability ``p_x`` and, independently, y with probability ``p_y``.

    Poses are mirrored with it (``poses' = diag(sx, sy, 1, 1) @ poses``).

    Args:
        p_x: Probability of negating x (mirroring across the y-z plane).
        p_y: Probability of negating y (mirroring across the x-z plane).
        generator: Source of randomness you own.
        seed: Seed for a private generator.
    """

    def __init__(
        self,
        p_x: float = 0.5,
        p_y: float = 0.5,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(generator, seed)
        if not (0 <= p_x <= 1 and 0 <= p_y <= 1):
            raise ConfigError(f"RandomFlip: probabilities must be in [0, 1], got p_x={p_x}, p_y={p_y}")
        self.p_x, self.p_y = float(p_x), float(p_y)

    def __call__(self, sample: Sample) -> Sample:
        draws = self._uniform(0.0, 1.0, size=2)
        sx = -1.0 if float(draws[0]) < self.p_x else 1.0
        sy = -1.0 if float(draws[1]) < self.p_y else 1.0
        if sx == 1.0 and sy == 1.0:
            return sample
        return _apply_linear(sample, torch.diag(torch.tensor([sx, sy, 1.0, 1.0], dtype=torch.float64)))

    def __repr__(self) -> str:
        return f"RandomFlip(p_x={self.p_x}, p_y={self.p_y})"


class Jitter(_Seeded):
    """Add independent Gaussian noise to every coordinate, clipped to ``[-clip, clip]``.

    Args:
        sigma: Standard deviation of the noise, in the cloud's units (metres).
        clip: Largest absolute offset; ``None`` for no clipping.
        generator: Source of randomness you own.
        seed: Seed for a private generator.
    """

    def __init__(
        self,
        sigma: float = 0.01,
        clip: float | None = 0.05,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(generator, seed)
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ConfigError(f"Jitter: sigma must be finite and >= 0, got {sigma}")
        if clip is not None and not clip > 0:
            raise ConfigError(f"Jitter: clip must be > 0 or None, got {clip}")
        self.sigma = float(sigma)
        self.clip = None if clip is None else float(clip)

    def __call__(self, sample: Sample) -> Sample:
        points = sample.points.clone()
        # Drawn on the CPU so a seed gives the same noise whatever device the points live on; float32 draws
        # are several times cheaper than float64 and centimetre noise needs no more precision.
        noise = torch.randn((points.shape[0], 3), generator=self._rng(), dtype=torch.float32).mul_(self.sigma)
        if self.clip is not None:
            noise = noise.clamp_(-self.clip, self.clip)
        points[:, :3] += noise.to(device=points.device, dtype=points.dtype)
        return sample._replace(points=points)

    def __repr__(self) -> str:
        return f"Jitter(sigma={self.sigma}, clip={self.clip})"


class RangeCrop:
    """Keep the points whose horizontal (xy) range is in ``[min_range, max_range)``.

    Range is measured in the horizontal plane, as LiDAR range usually is, so tall objects are not cut at a
    height-dependent distance. With ``center="ego"`` (the default) it is measured from the ego vehicle, in the
    ego's own xy plane: the points are taken into the ego frame with ``poses[0]``, which matters when clouds
    are stored in world coordinates. With ``center="origin"`` it is the xy norm in the point cloud's frame.
    A sample with no poses falls back to the origin.

    Args:
        max_range: Exclusive upper bound, in the cloud's units.
        min_range: Inclusive lower bound (use it to drop returns from the ego vehicle itself).
        center: ``"ego"`` or ``"origin"``.
    """

    def __init__(self, max_range: float, min_range: float = 0.0, *, center: Literal["ego", "origin"] = "ego") -> None:
        if not (0 <= min_range < max_range):
            raise ConfigError(f"RangeCrop: need 0 <= min_range < max_range, got {min_range}, {max_range}")
        if center not in ("ego", "origin"):
            raise ConfigError(f"RangeCrop: center must be 'ego' or 'origin', got {center!r}")
        self.max_range, self.min_range, self.center = float(max_range), float(min_range), center

    def __call__(self, sample: Sample) -> Sample:
        xyz = sample.points[:, :3].to(torch.float64)
        if self.center == "ego" and sample.poses.shape[0] > 0:
            ego = sample.poses[0].to(device=xyz.device, dtype=torch.float64)
            # Rows of R^T (p - t) are the points in the ego frame; only its first two columns are needed.
            xy = (xyz - ego[:3, 3]) @ ego[:3, :2]
        else:
            xy = xyz[:, :2]
        distance = torch.linalg.vector_norm(xy, dim=1)
        return _select(sample, (distance >= self.min_range) & (distance < self.max_range))

    def __repr__(self) -> str:
        return f"RangeCrop(max_range={self.max_range}, min_range={self.min_range}, center={self.center!r})"


class BoxCrop:
    """Keep the points inside an axis-aligned box of the point cloud's frame, bounds included.

    Args:
        low: ``(x, y, z)`` lower corner.
        high: ``(x, y, z)`` upper corner, each ``>=`` the matching ``low``.
    """

    def __init__(self, low: Sequence[float], high: Sequence[float]) -> None:
        if len(low) != 3 or len(high) != 3 or any(lo > hi for lo, hi in zip(low, high, strict=True)):
            raise ConfigError(f"BoxCrop: need 3-value low <= high, got low={low!r}, high={high!r}")
        self.low = tuple(float(v) for v in low)
        self.high = tuple(float(v) for v in high)

    def __call__(self, sample: Sample) -> Sample:
        xyz = sample.points[:, :3].to(torch.float64)
        low = torch.tensor(self.low, dtype=torch.float64, device=xyz.device)
        high = torch.tensor(self.high, dtype=torch.float64, device=xyz.device)
        return _select(sample, ((xyz >= low) & (xyz <= high)).all(dim=1))

    def __repr__(self) -> str:
        return f"BoxCrop(low={self.low}, high={self.high})"


class VoxelDownsample:
    """Keep one point per occupied voxel of a regular grid.

    Voxel ``(i, j, k) = floor(xyz / voxel_size)`` (grid anchored at the frame's origin, float64 arithmetic).
    The kept point is the first one (lowest index) of its voxel, with all its columns, and kept points stay in
    their original order. Its label is that point's own label with ``label_mode="first"``; with
    ``"majority"`` it is the most frequent label in the voxel, ignoring ``ignore_index`` unless every point of
    the voxel is ignored, ties going to the smallest class index. Points with a non-finite coordinate belong
    to no voxel and are dropped.

    Args:
        voxel_size: Edge of a voxel (> 0), in the cloud's units.
        label_mode: ``"first"`` or ``"majority"``.
        ignore_index: The label of unlabeled points.
    """

    def __init__(
        self,
        voxel_size: float,
        label_mode: Literal["first", "majority"] = "first",
        ignore_index: int = -100,
    ) -> None:
        if not (math.isfinite(voxel_size) and voxel_size > 0):
            raise ConfigError(f"VoxelDownsample: voxel_size must be > 0, got {voxel_size}")
        if label_mode not in ("first", "majority"):
            raise ConfigError(f"VoxelDownsample: label_mode must be 'first' or 'majority', got {label_mode!r}")
        self.voxel_size, self.label_mode, self.ignore_index = float(voxel_size), label_mode, int(ignore_index)

    def __call__(self, sample: Sample) -> Sample:
        finite = torch.isfinite(sample.points[:, :3]).all(dim=1)
        if not bool(finite.all()):
            sample = _select(sample, finite)  # a NaN or infinite point belongs to no voxel
        n = sample.points.shape[0]
        if n == 0:
            return sample
        device = sample.points.device
        voxel = _voxel_ids(sample.points[:, :3], self.voxel_size)
        n_voxels = int(voxel.max()) + 1
        first = torch.full((n_voxels,), n, dtype=torch.int64, device=device)
        first.scatter_reduce_(0, voxel, torch.arange(n, device=device), reduce="amin")
        keep = torch.sort(first).values
        out = _select(sample, keep)
        if self.label_mode == "majority":
            out = out._replace(labels=self._majority(voxel, sample.labels)[voxel[keep]])
        return out

    def _majority(self, voxel: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the majority label of each voxel, ``(n_voxels,)``."""
        values, label_id = torch.unique(labels, return_inverse=True)  # values sorted ascending
        n_labels = values.numel()
        pairs, counts = torch.unique(voxel * n_labels + label_id, return_counts=True)
        pair_voxel, pair_label = pairs // n_labels, pairs % n_labels
        # Ignored labels score below any real label, so they win only in voxels with nothing else.
        score = torch.where(values[pair_label] == self.ignore_index, -1, counts)
        # Order pairs by (voxel, score descending, label ascending): each voxel's first pair is its winner.
        # `pairs` is already sorted by (voxel, label); two stable sorts add the score key in between.
        order = torch.sort(-score, stable=True).indices
        order = order[torch.sort(pair_voxel[order], stable=True).indices]
        sorted_voxel = pair_voxel[order]
        starts = torch.ones_like(sorted_voxel, dtype=torch.bool)
        starts[1:] = sorted_voxel[1:] != sorted_voxel[:-1]
        # Every voxel id in [0, V) is occupied, so the group starts are exactly one per voxel, in order.
        return values[pair_label[order[starts]]]

    def __repr__(self) -> str:
        return (
            f"VoxelDownsample(voxel_size={self.voxel_size}, label_mode={self.label_mode!r}, "
            f"ignore_index={self.ignore_index})"
        )


def _voxel_ids(xyz: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """Return a dense voxel id in ``[0, V)`` for every point (V occupied voxels)."""
    cells = torch.floor(xyz.to(torch.float64) / voxel_size).to(torch.int64)
    cells = cells - cells.min(dim=0).values
    extent = cells.max(dim=0).values + 1
    # One int64 key per cell when the grid fits in 62 bits (always, for real scenes); else unique on rows.
    if math.prod(int(e) for e in extent) < (1 << 62):
        key = (cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]
        return torch.unique(key, return_inverse=True)[1]
    return torch.unique(cells, dim=0, return_inverse=True)[1]
