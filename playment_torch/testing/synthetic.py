"""Synthetic LiDAR segmentation jobs: a spinning multi-beam lidar driving down a procedural street.

The scene is built in a *road frame* (x along the road, y to the left, z up, the road surface at z = 0): a road
with two driving lanes and two parking strips, raised sidewalks, terrain, buildings (boxes), trees (trunk box +
crown ellipsoid) and bushes (ellipsoids), poles, parked and moving cars (body + cabin boxes) and walking
pedestrians (body ellipsoid + head sphere). Every beam of every azimuth column is ray-cast analytically (ray vs
plane, box, ellipsoid; nearest hit wins; rays that hit nothing within ``max_range`` are dropped), so the points
lie exactly on real surfaces and a small network can learn the classes from local shape, height and intensity.

Frames: the ego vehicle drives along the road (with a gentle lateral wobble, so its heading changes), static
objects stay fixed in the world, moving objects move, and each object keeps its ``track_id``. The lidar frame
*is* the ego frame (x forward, y left, z up, origin at the lidar), so with ``coordinates="lidar"`` the ego pose
is the identity; with ``coordinates="world"`` points and poses are in a world frame whose origin is kilometres
away and rotated relative to the road (like a map frame). Cameras use the OpenCV convention (x right, y down,
z forward) and are rigidly mounted on the ego.

Everything is numpy and deterministic by ``seed``.

Choices where the brief was silent (also in the README):

* Point counts are exact: the lidar fires enough columns to get at least ``points_per_frame`` returns, then
  drops random returns (as real sensors do) down to exactly ``points_per_frame``. Points are in firing order
  (azimuth column by column, beams bottom to top); ``ring`` 0 is the lowest beam.
* ``intensity`` is a reflectivity in [0, 1]: per class, varied per object, with multiplicative noise.
* Coordinates are rounded to 0.1 mm (lidar frame) or 1 mm (world frame) and intensities to 1e-6, so every
  value has at most 7 significant digits and survives ASCII PCD exactly: points are identical whatever the
  encoding.
* Unlabeled points are a random ``unlabeled_fraction`` of the points: ``class_index`` and ``instance`` -1.
  Their mask key is ``unlabeled_key``: 0 by default, or 65535 when ``key0_is_class`` (key 0 is then the road).
* Label keys are per instance and stable across a job's frames: instances that appear in the job, in instance
  order, get consecutive keys from 1 (from 0 with ``key0_is_class``). Road, sidewalk and terrain are one
  instance each.
* ``frames[].sensors[].sensor_id`` names sensors by their ``name`` (as the seed page does) unless
  ``sensor_ref="id"``; masks and annotations name the lidar by its ``id``.
* Legacy jobs have one frame; their PCD (``x y z label_key``, ASCII unless an encoding is given) is both the
  point cloud and the mask, so their :attr:`SyntheticFrame.points` has only ``x y z``.
* :func:`make_job` only builds a job (``server`` is needed for ``hosting="direct"`` URLs);
  :func:`add_synthetic_project` builds jobs and adds them to a server.
"""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from playment_torch.errors import ConfigError
from playment_torch.formats.masks import encode_mask
from playment_torch.formats.pcd import encode_pcd
from playment_torch.geometry import Camera, Pose
from playment_torch.models import FrameRef, JobResult, LabelEntry
from playment_torch.testing.server import PLAYMENT_STORAGE

if TYPE_CHECKING:
    from playment_torch.testing.server import FakePlaymentServer

__all__ = [
    "CLASSES",
    "POINT_DTYPE",
    "SyntheticFrame",
    "SyntheticJob",
    "add_synthetic_project",
    "generate_frames",
    "index_results",
    "make_job",
]

CLASSES: tuple[str, ...] = ("road", "sidewalk", "building", "vegetation", "pole", "car", "pedestrian", "terrain")
ROAD, SIDEWALK, BUILDING, VEGETATION, POLE, CAR, PEDESTRIAN, TERRAIN = range(len(CLASSES))

#: The per-point fields of a synthetic point cloud.
POINT_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"), ("ring", "<u2")])
_LEGACY_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("label_key", "<i4")])

_CLASS_IDS = tuple(str(uuid.uuid5(uuid.NAMESPACE_URL, f"playment_torch/synthetic/{name}")) for name in CLASSES)
_COLORS = (
    "rgb(128, 64, 128)",
    "rgb(244, 35, 232)",
    "rgb(70, 70, 70)",
    "rgb(107, 142, 35)",
    "rgb(153, 153, 153)",
    "rgb(0, 0, 142)",
    "rgb(220, 20, 60)",
    "rgb(152, 251, 152)",
)
# Mean reflectivity per class: distinct enough that intensity helps, overlapping enough that shape matters.
_REFLECTIVITY = np.array([0.12, 0.22, 0.35, 0.45, 0.55, 0.65, 0.3, 0.28])
_BIG_UNLABELED_KEY = 65535

# Street layout in the road frame (metres).
_LANE = 1.75  # driving lanes at y = -1.75 (ego direction, +x) and +1.75 (oncoming)
_ROAD_HALF = 5.5  # parking strips are 3.5 < |y| < 5.5
_SIDEWALK_OUT = 8.5
_SIDEWALK_TOP = 0.15
_TERRAIN_TOP = 0.25
_TERRAIN_OUT = 400.0
_SENSOR_HEIGHT = 1.8
_SCENE_HALF_LENGTH = 600.0

_BOX, _ELLIPSOID = 0, 1
_T_EPS = 1e-6

# A 32x20 JPEG (sky over road; made once with Pillow, which synthetic does not need at run time): camera
# entries need a data_url whose bytes decode, so that camera overlays can be tested; pictures resize it to the
# camera's calibrated size.
_PLACEHOLDER_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAUDBAQEAwUEBAQFBQUGBwwIBwcHBw8LCwkMEQ8SEhEPERETFhwXExQaFRERGCEYGh0dHx8fExci"
    "JCIeJBweHx7/2wBDAQUFBQcGBw4ICA4eFBEUHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh7/wAAR"
    "CAAUACADASIAAhEBAxEB/8QAFgABAQEAAAAAAAAAAAAAAAAAAAcE/8QAHhAAAQEJAAAAAAAAAAAAAAAAABMBAgMGFlFVpNL/xAAVAQEBAAAA"
    "AAAAAAAAAAAAAAAABf/EABYRAQEBAAAAAAAAAAAAAAAAAAACFP/aAAwDAQACEQMRAD8ArKDQg0jlbTjl9aFyK2nHL60Lkq7ZTsVLGg0INI5W"
    "045fWhcitpxy+tC5G2TFTKk5YJOWAJqiJOWCTlgAP//Z"
)


# ----------------------------------------------------------------------------------------------- public data


@dataclass
class SyntheticFrame:
    """One lidar frame with its ground truth.

    Attributes:
        frame_id: The frame's id in the job ("0", "1", ...).
        points: Structured array (N,) of :data:`POINT_DTYPE` (legacy jobs: ``x y z`` only), exactly the
            hosted PCD's fields and values.
        class_index: int64 (N,), index into :data:`CLASSES`, -1 for points left unlabeled.
        instance: int64 (N,), index into :attr:`track_ids`, -1 for points left unlabeled.
        track_ids: Instance -> track id (the same tuple for every frame of a scene).
        ego_pose: (4, 4) ego (= lidar) pose in the point cloud's frame (the identity in lidar coordinates).
        camera_poses: (K, 4, 4) camera poses (OpenCV camera frame) in the point cloud's frame.
        world_pose: (4, 4) ego pose in the world frame, whatever the point cloud's frame.
        time: Seconds since the first frame.
    """

    frame_id: str
    points: np.ndarray
    class_index: np.ndarray
    instance: np.ndarray
    track_ids: tuple[str, ...]
    ego_pose: np.ndarray
    camera_poses: np.ndarray
    world_pose: np.ndarray = field(default_factory=lambda: np.eye(4))
    time: float = 0.0


@dataclass
class SyntheticJob:
    """A job ready for :meth:`FakePlaymentServer.add_job`: ``server.add_job(job.result, job_id=job.job_id,
    files=job.files)``.

    Attributes:
        job_id: The job's id.
        frames: Ground truth per frame, in the result's frame order.
        cameras: The cameras' ``sensor_meta`` entries, in ``sensor_meta`` order.
        result: The Playment result object (current or legacy format).
        files: URL -> bytes of every file the result references (point clouds, masks, camera images).
        legacy: Whether the result uses the legacy ``{legend, url}`` format.
        label_keys: Instance -> label key in this job (-1 for instances the job never shows).
        unlabeled_key: The mask key of unlabeled points.
        status: The status :func:`add_synthetic_project` gave the job.
        batch_id: The batch :func:`add_synthetic_project` put the job in (``None``: the default batch).
    """

    job_id: str
    frames: list[SyntheticFrame]
    cameras: list[dict[str, Any]]
    result: dict[str, Any]
    files: dict[str, bytes]
    legacy: bool
    label_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    unlabeled_key: int = 0
    status: str = "completed"
    batch_id: str | None = None


# ----------------------------------------------------------------------------------------------- geometry


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _transform(rotation: np.ndarray, translation: Sequence[float]) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = translation
    return matrix


def _quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """(w, x, y, z) of a rotation matrix, w >= 0 (Shepperd's method: stable for every rotation)."""
    m = rotation
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = (0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s)
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = ((m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s)
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = ((m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = ((m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s)
    sign = -1.0 if q[0] < 0 else 1.0
    norm = math.sqrt(sum(v * v for v in q))
    w, x, y, z = (sign * v / norm for v in q)
    return w, x, y, z


def _pose_json(matrix: np.ndarray) -> dict[str, dict[str, float]]:
    w, x, y, z = _quaternion(matrix[:3, :3])
    px, py, pz = (float(v) for v in matrix[:3, 3])
    return {"heading": {"w": w, "x": x, "y": y, "z": z}, "position": {"x": px, "y": py, "z": pz}}


_Rays = tuple[np.ndarray, np.ndarray, np.ndarray]


def _hit_box(origin: np.ndarray, dirs: _Rays, half: np.ndarray) -> np.ndarray:
    """Distance along each ray to an axis-aligned box centred at 0 (slab method); inf where it misses.

    ``dirs`` holds the x, y and z components as separate arrays: element-wise ufuncs on them are several
    times faster than reductions over the last axis of an (n, 3) array.
    """
    near = far = None
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for axis in range(3):
            inv = 1.0 / dirs[axis]
            t1 = (-half[axis] - origin[axis]) * inv
            t2 = (half[axis] - origin[axis]) * inv
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            near = lo if near is None else np.maximum(near, lo)
            far = hi if far is None else np.minimum(far, hi)
    assert near is not None and far is not None
    return np.where((far >= near) & (near > _T_EPS), near, np.inf)


def _hit_ellipsoid(origin: np.ndarray, dirs: _Rays, semi: np.ndarray) -> np.ndarray:
    """Distance along each ray to an axis-aligned ellipsoid centred at 0; inf where it misses."""
    o = origin / semi
    dx, dy, dz = dirs[0] / semi[0], dirs[1] / semi[1], dirs[2] / semi[2]
    a = dx * dx + dy * dy + dz * dz
    b = 2.0 * (dx * o[0] + dy * o[1] + dz * o[2])
    c = float(o @ o) - 1.0
    disc = b * b - 4.0 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
    return np.where((disc >= 0) & (t > _T_EPS), t, np.inf)


def _hit_ground(origin: np.ndarray, dirs: _Rays) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit on the ground (road z=0, sidewalk top, terrain top, and the two vertical curb faces).

    The ground is a height field of three levels across y, the same all along x, so it is solved in closed
    form for every ray rather than as boxes. Returns (distance, instance: 0 road, 1 sidewalk, 2 terrain).
    """
    oy, oz = float(origin[1]), float(origin[2])
    dx, dy, dz = dirs
    best = np.full(dx.shape, np.inf)
    owner = np.full(dx.shape, -1, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        down = dz < 0
        for height, instance, y_lo, y_hi in (
            (0.0, 0, 0.0, _ROAD_HALF),
            (_SIDEWALK_TOP, 1, _ROAD_HALF, _SIDEWALK_OUT),
            (_TERRAIN_TOP, 2, _SIDEWALK_OUT, _TERRAIN_OUT),
        ):
            t = (height - oz) / dz
            y = np.abs(oy + t * dy)
            ok = down & (y >= y_lo) & (y < y_hi) & (t > _T_EPS) & (t < best)
            best[ok] = t[ok]
            owner[ok] = instance
        side = np.where(dy >= 0, 1.0, -1.0)
        for edge, z_lo, z_hi, instance in (
            (_ROAD_HALF, 0.0, _SIDEWALK_TOP, 1),
            (_SIDEWALK_OUT, _SIDEWALK_TOP, _TERRAIN_TOP, 2),
        ):
            t = (side * edge - oy) / dy
            z = oz + t * dz
            ok = (z >= z_lo) & (z <= z_hi) & (t > _T_EPS) & (t < best)
            best[ok] = t[ok]
            owner[ok] = instance
    return best, owner


@dataclass(frozen=True)
class _Part:
    shape: int
    center: np.ndarray  # in the object's frame
    half: np.ndarray  # box half extents or ellipsoid semi-axes


@dataclass(frozen=True)
class _Object:
    class_index: int
    track_id: str
    parts: tuple[_Part, ...]
    position: np.ndarray  # road frame, at t = 0
    yaw: float
    velocity: np.ndarray  # road frame, m/s (xy)
    reflectivity: float
    radius: float  # bounding sphere around ``position`` (inf: always tested)

    @property
    def moving(self) -> bool:
        return bool(np.any(self.velocity != 0))

    def center_at(self, t: float) -> np.ndarray:
        return self.position + np.array([self.velocity[0] * t, self.velocity[1] * t, 0.0])


def _object(
    class_index: int,
    track_id: str,
    parts: Sequence[tuple[int, Sequence[float], Sequence[float]]],
    position: Sequence[float],
    *,
    yaw: float = 0.0,
    velocity: Sequence[float] = (0.0, 0.0),
    reflectivity: float,
    unbounded: bool = False,
) -> _Object:
    built = tuple(_Part(shape, np.asarray(c, float), np.asarray(h, float)) for shape, c, h in parts)
    radius = math.inf if unbounded else max(float(np.linalg.norm(p.center) + np.linalg.norm(p.half)) for p in built)
    return _Object(
        class_index=class_index,
        track_id=track_id,
        parts=built,
        position=np.asarray(position, float),
        yaw=yaw,
        velocity=np.asarray(velocity, float),
        reflectivity=reflectivity,
        radius=radius,
    )


@dataclass(frozen=True)
class _Scene:
    """Objects in the road frame, the ego trajectory, and where the road lies in the world."""

    objects: tuple[_Object, ...]
    world_from_road: np.ndarray
    ego_speed: float
    wobble: tuple[float, float, float]  # amplitude, angular frequency, phase of the lateral wobble

    @property
    def track_ids(self) -> tuple[str, ...]:
        return tuple(o.track_id for o in self.objects)

    def road_from_ego(self, t: float) -> np.ndarray:
        amplitude, omega, phase = self.wobble
        x = self.ego_speed * t
        y = -_LANE + amplitude * math.sin(omega * t + phase)
        heading = math.atan2(amplitude * omega * math.cos(omega * t + phase), self.ego_speed)
        return _transform(_rot_z(heading), (x, y, _SENSOR_HEIGHT))

    def surface_distance(self, instance: int, points_road: np.ndarray, t: float) -> np.ndarray:
        """Distance (approximately, exact on the surface) of road-frame points to an object's surface."""
        obj = self.objects[instance]
        if instance == 0:
            return np.abs(points_road[:, 2])
        local = (points_road - obj.center_at(t)) @ _rot_z(obj.yaw)  # rotate by -yaw
        best = np.full(len(points_road), np.inf)
        for part in obj.parts:
            p = local - part.center
            if part.shape == _BOX:
                distance = np.abs(np.max(np.abs(p) - part.half, axis=1))
            else:
                distance = np.abs(np.linalg.norm(p / part.half, axis=1) - 1.0) * part.half.min()
            best = np.minimum(best, distance)
        return best


def _track_id(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _build_scene(seed: int, length: float) -> _Scene:
    """The street: deterministic in ``seed``, long enough for the ego to drive ``length`` metres."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5CE4E]))
    objects: list[_Object] = []

    def refl(class_index: int) -> float:
        return float(np.clip(_REFLECTIVITY[class_index] * rng.uniform(0.85, 1.15), 0.02, 0.98))

    # Stuff, one instance each: the ground is cast in closed form (_hit_ground); the boxes of sidewalks and
    # terrain describe the same surfaces for surface_distance().
    objects.append(_object(ROAD, _track_id(rng), (), (0, 0, 0), reflectivity=refl(ROAD), unbounded=True))
    sidewalk_half = (_SCENE_HALF_LENGTH, (_SIDEWALK_OUT - _ROAD_HALF) / 2, (0.5 + _SIDEWALK_TOP) / 2)
    sidewalk_y = (_SIDEWALK_OUT + _ROAD_HALF) / 2
    sidewalk_z = (_SIDEWALK_TOP - 0.5) / 2
    objects.append(
        _object(
            SIDEWALK,
            _track_id(rng),
            [(_BOX, (0, side * sidewalk_y, sidewalk_z), sidewalk_half) for side in (-1, 1)],
            (0, 0, 0),
            reflectivity=refl(SIDEWALK),
            unbounded=True,
        )
    )
    terrain_half = (_SCENE_HALF_LENGTH, (_TERRAIN_OUT - _SIDEWALK_OUT) / 2, (0.5 + _TERRAIN_TOP) / 2)
    terrain_y = (_TERRAIN_OUT + _SIDEWALK_OUT) / 2
    objects.append(
        _object(
            TERRAIN,
            _track_id(rng),
            [(_BOX, (0, side * terrain_y, (_TERRAIN_TOP - 0.5) / 2), terrain_half) for side in (-1, 1)],
            (0, 0, 0),
            reflectivity=refl(TERRAIN),
            unbounded=True,
        )
    )

    x_lo, x_hi = -110.0, length + 110.0
    for side in (-1, 1):
        # Buildings: a row of blocks with gaps, set back behind the terrain strip.
        x = x_lo + rng.uniform(0, 10)
        while x < x_hi:
            width, depth, height = rng.uniform(8, 24), rng.uniform(8, 16), rng.uniform(5, 22)
            setback = rng.uniform(14, 19)
            if rng.random() < 0.85:
                objects.append(
                    _object(
                        BUILDING,
                        _track_id(rng),
                        [(_BOX, (0, 0, height / 2), (width / 2, depth / 2, height / 2))],
                        (x + width / 2, side * (setback + depth / 2), 0.0),
                        yaw=float(rng.normal(0, 0.04)),
                        reflectivity=refl(BUILDING),
                    )
                )
            x += width + rng.uniform(1.5, 9)
        # Trees and bushes on the terrain strip between sidewalk and buildings.
        x = x_lo + rng.uniform(0, 6)
        while x < x_hi:
            y = side * rng.uniform(_SIDEWALK_OUT + 1.5, 12.5)
            if rng.random() < 0.6:
                trunk_height = rng.uniform(1.8, 3.2)
                crown = (rng.uniform(1.2, 2.4), rng.uniform(1.2, 2.4), rng.uniform(1.0, 2.0))
                parts = [
                    (_BOX, (0, 0, trunk_height / 2), (0.15, 0.15, trunk_height / 2)),
                    (_ELLIPSOID, (0, 0, trunk_height + crown[2] * 0.8), crown),
                ]
            else:
                bush = (rng.uniform(0.5, 1.4), rng.uniform(0.5, 1.4), rng.uniform(0.4, 0.9))
                parts = [(_ELLIPSOID, (0, 0, _TERRAIN_TOP + bush[2] * 0.5), bush)]
            objects.append(
                _object(
                    VEGETATION,
                    _track_id(rng),
                    parts,
                    (x, y, 0.0),
                    yaw=float(rng.uniform(0, math.pi)),
                    reflectivity=refl(VEGETATION),
                )
            )
            x += rng.uniform(5, 14)
        # Poles near the curb.
        x = x_lo + rng.uniform(0, 10)
        while x < x_hi:
            height = rng.uniform(4, 8)
            thickness = rng.uniform(0.06, 0.12)
            objects.append(
                _object(
                    POLE,
                    _track_id(rng),
                    [(_BOX, (0, 0, height / 2), (thickness, thickness, height / 2))],
                    (x, side * 5.9, _SIDEWALK_TOP),
                    reflectivity=refl(POLE),
                )
            )
            x += rng.uniform(12, 30)
        # Parked cars in the parking strip.
        x = x_lo + rng.uniform(0, 8)
        while x < x_hi:
            car_length = rng.uniform(3.9, 4.9)
            if rng.random() < 0.65:
                objects.append(_car(rng, (x, side * 4.5), car_length, 0.0, refl(CAR)))
            x += car_length + rng.uniform(1.0, 6.0)
        # Pedestrians walking along the sidewalk.
        x = x_lo + 60 + rng.uniform(0, 10)
        while x < x_hi - 40:
            objects.append(
                _object(
                    PEDESTRIAN,
                    _track_id(rng),
                    [
                        (_ELLIPSOID, (0, 0, 0.85), (0.28, 0.22, 0.72)),
                        (_ELLIPSOID, (0, 0, 1.68), (0.11, 0.11, 0.13)),
                    ],
                    (x, side * rng.uniform(6.5, 8.0), _SIDEWALK_TOP),
                    velocity=(rng.choice((-1.0, 1.0)) * rng.uniform(0.9, 1.7), 0.0),
                    reflectivity=refl(PEDESTRIAN),
                )
            )
            x += rng.uniform(5, 22)
    # Moving cars: oncoming traffic, and a few cars ahead of the ego driving away from it.
    ego_speed = float(rng.uniform(6.0, 9.0))
    x = rng.uniform(5, 30)
    while x < x_hi + 150:
        speed = rng.uniform(7, 13)
        objects.append(_car(rng, (x, _LANE), rng.uniform(3.9, 4.9), -speed, refl(CAR)))
        x += rng.uniform(18, 45)
    x = 18.0 + rng.uniform(0, 10)
    for _ in range(int(rng.integers(1, 4))):
        objects.append(_car(rng, (x, -_LANE), rng.uniform(3.9, 4.9), ego_speed + rng.uniform(0.5, 3.0), refl(CAR)))
        x += rng.uniform(14, 30)

    yaw = float(rng.uniform(-math.pi, math.pi))
    offset = (float(rng.uniform(1000, 9000)), float(rng.uniform(-9000, -1000)), float(rng.uniform(5, 80)))
    return _Scene(
        objects=tuple(objects),
        world_from_road=_transform(_rot_z(yaw), offset),
        ego_speed=ego_speed,
        wobble=(float(rng.uniform(0.15, 0.4)), float(rng.uniform(0.3, 0.7)), float(rng.uniform(0, 2 * math.pi))),
    )


def _car(rng: np.random.Generator, xy: tuple[float, float], length: float, speed: float, refl: float) -> _Object:
    width = rng.uniform(1.7, 1.95)
    height = rng.uniform(1.35, 1.7)
    body_bottom, body_top = 0.3, 0.3 + (height - 0.3) * 0.55
    cabin_length = length * rng.uniform(0.5, 0.6)
    parts = [
        (_BOX, (0, 0, (body_bottom + body_top) / 2), (length / 2, width / 2, (body_top - body_bottom) / 2)),
        (
            _BOX,
            (-length * 0.05, 0, (body_top + height) / 2),
            (cabin_length / 2, width / 2 - 0.08, (height - body_top) / 2),
        ),
    ]
    parked = speed == 0.0
    return _object(
        CAR,
        _track_id(rng),
        parts,
        (xy[0], xy[1], 0.0),
        yaw=float(rng.normal(0, 0.04)) if parked else (math.pi if speed < 0 else 0.0),
        velocity=(speed, 0.0),
        reflectivity=refl,
    )


# ----------------------------------------------------------------------------------------------- ray casting


def _beam_elevations(beams: int, vertical_fov: tuple[float, float]) -> np.ndarray:
    low, high = (math.radians(v) for v in vertical_fov)
    return np.linspace(low, high, beams)


def _directions(elevations: np.ndarray, columns: int) -> np.ndarray:
    """Unit ray directions in the lidar frame, shape (beams, columns, 3); column k points at azimuth
    -pi + (k + 0.5) * 2 pi / columns."""
    azimuth = -math.pi + (np.arange(columns) + 0.5) * (2 * math.pi / columns)
    ce = np.cos(elevations)[:, None]
    se = np.broadcast_to(np.sin(elevations)[:, None], (len(elevations), columns))
    return np.stack([ce * np.cos(azimuth)[None, :], ce * np.sin(azimuth)[None, :], se], axis=-1)


def _cast(
    scene: _Scene,
    t: float,
    road_from_ego: np.ndarray,
    elevations: np.ndarray,
    dirs_lidar: np.ndarray,
    max_range: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of every ray: (distance (B, A) with inf for misses, object index (B, A) with -1)."""
    beams, columns, _ = dirs_lidar.shape
    rotation = road_from_ego[:3, :3]
    origin = road_from_ego[:3, 3]
    ego_yaw = math.atan2(rotation[1, 0], rotation[0, 0])
    dirs = dirs_lidar @ rotation.T  # road frame
    dx, dy, dz = (np.ascontiguousarray(dirs[..., k]) for k in range(3))
    best, owner = _hit_ground(origin, (dx, dy, dz))
    best[best > max_range] = max_range
    owner[best >= max_range] = -1

    step = 2 * math.pi / columns
    beam_step = float(elevations[1] - elevations[0]) if beams > 1 else 0.1
    for index, obj in enumerate(scene.objects):
        if math.isinf(obj.radius):
            continue  # the ground, solved above
        center = obj.center_at(t)
        rel = center - origin
        rho = math.hypot(rel[0], rel[1])
        if rho - obj.radius > max_range:
            continue
        # Cull by the angular extent of the bounding sphere: only rays that can hit it are tested.
        cols: slice | np.ndarray = slice(None)
        b_lo, b_hi = 0, beams
        if rho > obj.radius:
            half = math.asin(obj.radius / rho)
            centre_column = (math.atan2(rel[1], rel[0]) - ego_yaw + math.pi) / step - 0.5
            lo = math.floor(centre_column - half / step) - 1
            hi = math.ceil(centre_column + half / step) + 2
            width = hi - lo  # columns lo .. hi - 1, possibly wrapping around
            if width < columns:
                lo %= columns
                hi = lo + width
                cols = slice(lo, hi) if hi <= columns else np.arange(lo, hi) % columns
            distance = math.sqrt(rho * rho + rel[2] * rel[2])
            elevation = math.atan2(rel[2], rho)
            spread = math.asin(min(1.0, obj.radius / distance)) + beam_step
            b_lo = int(np.searchsorted(elevations, elevation - spread, "left"))
            b_hi = int(np.searchsorted(elevations, elevation + spread, "right"))
            if b_hi <= b_lo:
                continue
        rows = slice(b_lo, b_hi)
        sx, sy, sz = dx[rows, cols], dy[rows, cols], dz[rows, cols]
        c, s = math.cos(obj.yaw), math.sin(obj.yaw)
        # Into the object's frame: rotate by -yaw.
        local = (c * sx + s * sy, -s * sx + c * sy, sz)
        offset = origin - center
        local_origin = np.array([c * offset[0] + s * offset[1], -s * offset[0] + c * offset[1], offset[2]])
        t_obj = None
        for part in obj.parts:
            hit = _hit_box if part.shape == _BOX else _hit_ellipsoid
            t_part = hit(local_origin - part.center, local, part.half)
            t_obj = t_part if t_obj is None else np.minimum(t_obj, t_part)
        if t_obj is None:
            continue
        current = best[rows, cols]
        closer = t_obj < current
        if not closer.any():
            continue
        if isinstance(cols, slice):
            # Basic slicing gives views: update in place.
            current[closer] = t_obj[closer]
            owner[rows, cols][closer] = index
        else:
            r, k = np.nonzero(closer)
            best[b_lo + r, cols[k]] = t_obj[closer]
            owner[b_lo + r, cols[k]] = index
    best[owner < 0] = np.inf
    return best, owner


# ----------------------------------------------------------------------------------------------- cameras


def _camera_rigs(count: int) -> list[tuple[dict[str, Any], np.ndarray]]:
    """(sensor_meta entry, ego_from_camera) for up to two cameras: a front pinhole and a left fisheye."""
    # Columns are the camera's x (right), y (down), z (forward) axes in the ego frame (x fwd, y left, z up).
    front = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]) @ _rot_x(math.radians(-3.0))
    left = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]) @ _rot_x(math.radians(-8.0))
    rigs = [
        (
            {
                "id": "18158562",
                "name": "front_center_rgb",
                "modality": "camera",
                "camera_model": "brown_conrady",
                "intrinsics": {
                    "fx": 1266.4,
                    "fy": 1266.4,
                    "cx": 816.3,
                    "cy": 491.5,
                    "k1": -0.3284,
                    "k2": 0.1287,
                    "k3": -0.0241,
                    "k4": 0.0,
                    "p1": 0.00052,
                    "p2": -0.00031,
                    "skew": 0.0,
                    "scale_factor": 1.0,
                },
                "primary_view": False,
                "state": "editable",
            },
            _transform(front @ _rot_y(math.radians(0.5)), (1.6, 0.0, -0.35)),
        ),
        (
            {
                "id": "18158563",
                "name": "left_fisheye",
                "modality": "camera",
                "camera_model": "fisheye",
                "intrinsics": {
                    "fx": 352.6,
                    "fy": 352.1,
                    "cx": 640.8,
                    "cy": 482.3,
                    "k1": 0.0532,
                    "k2": -0.0117,
                    "k3": 0.0021,
                    "k4": -0.00034,
                    "p1": 0.0,
                    "p2": 0.0,
                    "skew": 0.0,
                    "scale_factor": 1.0,
                },
                "primary_view": False,
                "state": "editable",
            },
            _transform(left, (0.4, 0.9, -0.6)),
        ),
    ]
    return rigs[:count]


_LIDAR_META = {"id": "18158570", "name": "lidar_top", "modality": "lidar", "primary_view": True, "state": "editable"}


# ----------------------------------------------------------------------------------------------- frames


def _check(name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def generate_frames(
    *,
    seed: int,
    n_frames: int = 5,
    beams: int = 32,
    points_per_frame: int = 30_000,
    coordinates: str = "lidar",
    unlabeled_fraction: float = 0.0,
    frame_interval: float = 0.5,
    max_range: float = 80.0,
    range_noise: float = 0.0,
    vertical_fov: tuple[float, float] = (-25.0, 15.0),
    cameras: int = 2,
) -> list[SyntheticFrame]:
    """Simulate a spinning lidar driving down a synthetic street.

    Args:
        seed: Everything (scene, trajectory, dropouts, noise, unlabeled points) is a function of it.
        n_frames: Number of frames (at least 1).
        beams: Lidar beams (rings), 16 to 128.
        points_per_frame: Exact number of points per frame, 10 000 to 250 000.
        coordinates: ``"lidar"`` (points in the lidar = ego frame; ego pose identity) or ``"world"``.
        unlabeled_fraction: Fraction of points left unlabeled (``class_index`` and ``instance`` -1).
        frame_interval: Seconds between frames.
        max_range: Returns farther than this (metres) are dropped.
        range_noise: Standard deviation (metres) of Gaussian range noise; 0 keeps points exactly on surfaces.
        vertical_fov: Lowest and highest beam elevation, degrees.
        cameras: Number of cameras (0, 1 or 2) whose poses are reported.

    Returns:
        The frames, in time order.

    Raises:
        ConfigError: an argument is out of range.
    """
    _, frames = _generate(
        seed=seed,
        n_frames=n_frames,
        beams=beams,
        points_per_frame=points_per_frame,
        coordinates=coordinates,
        unlabeled_fraction=unlabeled_fraction,
        frame_interval=frame_interval,
        max_range=max_range,
        range_noise=range_noise,
        vertical_fov=vertical_fov,
        cameras=cameras,
    )
    return frames


def _scene_length(n_frames: int, frame_interval: float) -> float:
    # At least 300 m whatever the frame count, so a seed gives the same street for every job length
    # (the ego drives at most 10 m/s).
    return max(300.0, 10.0 * frame_interval * (n_frames - 1) + 1.0)


def _generate(
    *,
    seed: int,
    n_frames: int,
    beams: int,
    points_per_frame: int,
    coordinates: str,
    unlabeled_fraction: float,
    frame_interval: float,
    max_range: float,
    range_noise: float,
    vertical_fov: tuple[float, float],
    cameras: int,
) -> tuple[_Scene, list[SyntheticFrame]]:
    _check("coordinates", coordinates, ("lidar", "world"))
    if n_frames < 1:
        raise ConfigError(f"n_frames must be at least 1, got {n_frames}")
    if not 16 <= beams <= 128:
        raise ConfigError(f"beams must be between 16 and 128, got {beams}")
    if not 10_000 <= points_per_frame <= 250_000:
        raise ConfigError(f"points_per_frame must be between 10000 and 250000, got {points_per_frame}")
    if not 0.0 <= unlabeled_fraction < 1.0:
        raise ConfigError(f"unlabeled_fraction must be in [0, 1), got {unlabeled_fraction}")
    if not 0 <= cameras <= 2:
        raise ConfigError(f"cameras must be 0, 1 or 2, got {cameras}")
    if not vertical_fov[0] < vertical_fov[1] < 60 or vertical_fov[0] <= -89:
        raise ConfigError(f"vertical_fov must be (low, high) degrees with -89 < low < high < 60, got {vertical_fov}")
    if frame_interval < 0 or max_range <= 1 or range_noise < 0:
        raise ConfigError("frame_interval and range_noise must not be negative, and max_range must exceed 1 m")

    scene = _build_scene(seed, length=_scene_length(n_frames, frame_interval))
    elevations = _beam_elevations(beams, vertical_fov)
    rigs = [ego_from_camera for _, ego_from_camera in _camera_rigs(cameras)]
    track_ids = scene.track_ids
    class_of = np.array([o.class_index for o in scene.objects], dtype=np.int64)
    reflectivity = np.array([o.reflectivity for o in scene.objects])

    frames: list[SyntheticFrame] = []
    hit_fraction = 0.0
    columns = 0
    for index in range(n_frames):
        t = index * frame_interval
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1, index]))
        road_from_ego = scene.road_from_ego(t)
        if hit_fraction == 0.0:
            probe, _ = _cast(scene, t, road_from_ego, elevations, _directions(elevations, 360), max_range)
            hit_fraction = max(0.05, float(np.isfinite(probe).mean()))
            columns = 0
        wanted = math.ceil(points_per_frame * 1.06 / (beams * hit_fraction))
        columns = max(columns, wanted, 64)
        while True:
            dirs_lidar = _directions(elevations, columns)
            distance, owner = _cast(scene, t, road_from_ego, elevations, dirs_lidar, max_range)
            # Firing order: column by column (azimuth), bottom beam to top beam within a column.
            distance, owner, dirs_flat = distance.T.reshape(-1), owner.T.reshape(-1), dirs_lidar.transpose(1, 0, 2)
            hits = np.flatnonzero(np.isfinite(distance))
            hit_fraction = len(hits) / distance.size
            if len(hits) >= points_per_frame:
                break
            columns = math.ceil(columns * points_per_frame * 1.08 / max(1, len(hits)))
        keep = np.sort(rng.choice(hits, size=points_per_frame, replace=False))
        ring = (keep % beams).astype(np.uint16)
        dirs = dirs_flat.reshape(-1, 3)[keep]
        ranges = distance[keep]
        if range_noise > 0:
            ranges = np.maximum(ranges + rng.normal(0.0, range_noise, len(ranges)), 0.5)
        lidar_points = dirs * ranges[:, None]
        instance = owner[keep]
        class_index = class_of[instance]
        intensity = reflectivity[instance] * rng.lognormal(0.0, 0.12, len(instance)) * (1.0 - 0.002 * ranges)
        world_from_ego = scene.world_from_road @ road_from_ego
        if coordinates == "world":
            xyz = lidar_points @ world_from_ego[:3, :3].T + world_from_ego[:3, 3]
            frame_from_ego = world_from_ego
        else:
            xyz = lidar_points
            frame_from_ego = np.eye(4)
        # Values with at most 7 significant digits survive every encoding, ASCII included (float32 printed
        # with %.7g or more), so a frame's points equal the decoded PCD whatever the encoding: 0.1 mm in the
        # lidar frame (|v| < 100), 1 mm in the world frame (|v| < 10 000).
        xyz = np.round(xyz, 4 if coordinates == "lidar" else 3)
        points = np.empty(points_per_frame, dtype=POINT_DTYPE)
        points["x"], points["y"], points["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
        points["intensity"] = np.round(np.clip(intensity, 0.0, 1.0), 6)
        points["ring"] = ring
        if unlabeled_fraction > 0:
            hidden = rng.choice(points_per_frame, size=round(unlabeled_fraction * points_per_frame), replace=False)
            class_index = class_index.copy()
            instance = instance.copy()
            class_index[hidden] = -1
            instance[hidden] = -1
        frames.append(
            SyntheticFrame(
                frame_id=str(index),
                points=points,
                class_index=class_index,
                instance=instance,
                track_ids=track_ids,
                ego_pose=frame_from_ego,
                camera_poses=np.array([frame_from_ego @ rig for rig in rigs]).reshape(len(rigs), 4, 4),
                world_pose=world_from_ego,
                time=t,
            )
        )
    return scene, frames


# ----------------------------------------------------------------------------------------------- jobs


def _host(hosting: str, path: str, server: FakePlaymentServer | None) -> str:
    if hosting == "playment":
        return f"{PLAYMENT_STORAGE}/{path}"
    if hosting == "s3":
        return f"s3://synthetic-bucket/{path}"
    assert server is not None
    return server.direct_url(path)


def make_job(
    *,
    seed: int,
    n_frames: int | None = None,
    beams: int = 32,
    points_per_frame: int = 30_000,
    encoding: str | None = None,
    result_format: str = "current",
    key0_is_class: bool = False,
    unlabeled_fraction: float = 0.02,
    unlabeled_key: int | None = None,
    hosting: str = "playment",
    server: FakePlaymentServer | None = None,
    job_id: str | None = None,
    coordinates: str = "lidar",
    cameras: int = 2,
    sensor_ref: str = "name",
    revision: int = 0,
    frame_interval: float = 0.5,
    range_noise: float = 0.0,
) -> SyntheticJob:
    """Build a synthetic point cloud segmentation job: ground truth, result object and hosted files.

    Add it to a server with ``server.add_job(job.result, job_id=job.job_id, files=job.files)`` (or use
    :func:`add_synthetic_project`).

    Args:
        seed: Determines the scene, the job id and the labels.
        n_frames: Frames in the job; 5 by default (1 for legacy, which has exactly one frame).
        beams: Lidar beams, 16 to 128.
        points_per_frame: Exact points per frame, 10 000 to 250 000.
        encoding: PCD encoding of the point clouds (``binary``, ``ascii``, ``binary_compressed``); ``binary``
            by default, ``ascii`` for legacy jobs.
        result_format: ``"current"`` (``annotation_data`` + ``sensor_data``) or ``"legacy"`` (``legend`` + ``url``).
        key0_is_class: Give key 0 to a real class (the road); unlabeled points then get key 65535.
        unlabeled_fraction: Fraction of points no annotation labels.
        unlabeled_key: The key of unlabeled points (default 0, or 65535 with ``key0_is_class``).
        hosting: Where point clouds and images live: ``"playment"`` (Playment's S3, via attachments),
            ``"direct"`` (``server.direct_url``, needs a started ``server``) or ``"s3"`` (``s3://synthetic-bucket``).
            Results and masks are always Playment-hosted.
        server: The server, for ``hosting="direct"``.
        job_id: The job's id; derived from ``seed`` by default.
        coordinates: ``"lidar"`` or ``"world"`` (see :func:`generate_frames`).
        cameras: 0, 1 or 2 cameras.
        sensor_ref: How frame sensor entries name their sensor: ``"name"`` (like the seed page) or ``"id"``.
        revision: A relabelling round: changes which points are unlabeled and the mask URLs, not the points.
        frame_interval: Seconds between frames.
        range_noise: Range noise in metres (0: points exactly on surfaces).

    Returns:
        The job.

    Raises:
        ConfigError: an argument is out of range or inconsistent.
    """
    _check("result_format", result_format, ("current", "legacy"))
    _check("hosting", hosting, ("playment", "direct", "s3"))
    _check("sensor_ref", sensor_ref, ("name", "id"))
    legacy = result_format == "legacy"
    if n_frames is None:
        n_frames = 1 if legacy else 5
    if legacy and n_frames != 1:
        raise ConfigError(f"legacy results have exactly one frame, got n_frames={n_frames}")
    if encoding is None:
        encoding = "ascii" if legacy else "binary"
    _check("encoding", encoding, ("ascii", "binary", "binary_compressed"))
    if hosting == "direct" and server is None:
        raise ConfigError('hosting="direct" needs the server whose direct_url() hosts the files')
    if unlabeled_key is None:
        unlabeled_key = _BIG_UNLABELED_KEY if key0_is_class else 0
    if not 0.0 <= unlabeled_fraction < 1.0:
        raise ConfigError(f"unlabeled_fraction must be in [0, 1), got {unlabeled_fraction}")
    if key0_is_class and unlabeled_key == 0:
        raise ConfigError("with key0_is_class, key 0 is a class and cannot mark unlabeled points")

    scene, frames = _generate(
        seed=seed,
        n_frames=n_frames,
        beams=beams,
        points_per_frame=points_per_frame,
        coordinates=coordinates,
        unlabeled_fraction=0.0,
        frame_interval=frame_interval,
        max_range=80.0,
        range_noise=range_noise,
        vertical_fov=(-25.0, 15.0),
        cameras=cameras,
    )
    class_of = [obj.class_index for obj in scene.objects]
    moving = [obj.moving for obj in scene.objects]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2, revision]))
    if job_id is None:
        job_id = str(uuid.UUID(bytes=np.random.default_rng(np.random.SeedSequence([seed, 3])).bytes(16), version=4))
    # Leave points unlabeled per revision: a relabelled job keeps its point clouds, not its masks.
    for frame in frames:
        count = round(unlabeled_fraction * len(frame.points))
        if count:
            hidden = rng.choice(len(frame.points), size=count, replace=False)
            frame.class_index[hidden] = -1
            frame.instance[hidden] = -1

    objects = len(frames[0].track_ids)
    present = np.zeros(objects, dtype=bool)
    for frame in frames:
        present[frame.instance[frame.instance >= 0]] = True
    label_keys = np.full(objects, -1, dtype=np.int64)
    first_key = 0 if key0_is_class else 1
    label_keys[present] = np.arange(first_key, first_key + int(present.sum()))
    if unlabeled_key in set(label_keys[present].tolist()):
        raise ConfigError(f"unlabeled_key {unlabeled_key} collides with an instance's label key")

    def mask_keys(frame: SyntheticFrame) -> np.ndarray:
        return np.where(frame.instance >= 0, label_keys[np.maximum(frame.instance, 0)], unlabeled_key)

    files: dict[str, bytes] = {}
    if legacy:
        frame = frames[0]
        cloud = np.empty(len(frame.points), dtype=_LEGACY_DTYPE)
        for name in ("x", "y", "z"):
            cloud[name] = frame.points[name]
        cloud["label_key"] = mask_keys(frame)
        url = f"{PLAYMENT_STORAGE}/{job_id}/r{revision}/{frame.frame_id}.pcd"
        files[url] = encode_pcd(cloud, encoding=encoding)
        frame.points = np.ascontiguousarray(frame.points[["x", "y", "z"]]).astype(
            np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
        )
        legend = [
            {
                "id": _CLASS_IDS[int(class_index)],
                "text": CLASSES[int(class_index)],
                "color": _COLORS[int(class_index)],
                "label_key": int(label_keys[instance]),
                "value": int(label_keys[instance]),
            }
            for instance in np.flatnonzero(present)
            for class_index in [class_of[instance]]
        ]
        return SyntheticJob(
            job_id=job_id,
            frames=frames,
            cameras=[],
            result={"legend": legend, "url": url},
            files=files,
            legacy=True,
            label_keys=label_keys,
            unlabeled_key=unlabeled_key,
        )

    rigs = _camera_rigs(cameras)
    camera_meta = [meta for meta, _ in rigs]
    annotations: list[dict[str, Any]] = []
    masks: list[dict[str, Any]] = []
    sensor_frames: list[dict[str, Any]] = []
    lidar_id = _LIDAR_META["id"]

    def reference(meta: dict[str, Any]) -> str:
        return str(meta["name"] if sensor_ref == "name" else meta["id"])

    for frame in frames:
        pcd_url = _host(hosting, f"{job_id}/{frame.frame_id}.pcd", server)
        files[pcd_url] = encode_pcd(frame.points, encoding=encoding)
        mask_url = f"{PLAYMENT_STORAGE}/{job_id}/masks/r{revision}/{frame.frame_id}.json"
        files[mask_url] = encode_mask(mask_keys(frame))
        masks.append(
            {
                "_id": _uuid(rng),
                "frame_id": frame.frame_id,
                "label_url": mask_url,
                "sensor_id": lidar_id,
                "type": "segmentation3d",
                "url": "",
            }
        )
        labelled = np.unique(frame.instance[frame.instance >= 0])
        for instance in labelled:
            class_index = class_of[instance]
            annotations.append(
                {
                    "_id": _uuid(rng),
                    "_isStationary": not moving[instance],
                    "attributes": {},
                    "class_id": _CLASS_IDS[class_index],
                    "color": _COLORS[class_index],
                    "frame_id": frame.frame_id,
                    "grouping_config": None,
                    "label": CLASSES[class_index],
                    "label_key": int(label_keys[instance]),
                    "sensor_id": lidar_id,
                    "text": CLASSES[class_index],
                    "track_id": frame.track_ids[instance],
                    "type": "segmentation3d",
                }
            )
        sensors = [
            {
                "sensor_id": reference(_LIDAR_META),
                "data_url": pcd_url,
                "original_url": pcd_url,
                "sensor_pose": _pose_json(frame.ego_pose),
            }
        ]
        for meta, pose in zip(camera_meta, frame.camera_poses, strict=True):
            image_url = _host(hosting, f"{job_id}/{frame.frame_id}_{meta['name']}.jpg", server)
            files[image_url] = _PLACEHOLDER_JPEG
            sensors.append(
                {
                    "sensor_id": reference(meta),
                    "data_url": image_url,
                    "original_url": image_url,
                    "sensor_pose": _pose_json(pose),
                }
            )
        sensor_frames.append({"ego_pose": _pose_json(frame.ego_pose), "frame_id": frame.frame_id, "sensors": sensors})

    tracks = []
    for instance in np.flatnonzero(present):
        class_index = class_of[instance]
        tracks.append(
            {
                "_id": frames[0].track_ids[instance],
                "attributes": None,
                "color": _COLORS[class_index],
                "grouping_config": None,
                "label": CLASSES[class_index],
                "label_id": _CLASS_IDS[class_index],
                "state": "",
                "type": "segmentation3d",
            }
        )
    result = {
        "annotation_data": {
            "annotations": annotations,
            "frames": [{"_id": frame.frame_id} for frame in frames],
            "groups": None,
            "masks": masks,
            "sensors": [{"sensor_id": lidar_id, "sensor_type": "LIDAR"}]
            + [{"sensor_id": meta["id"], "sensor_type": "CAMERA"} for meta in camera_meta],
            "tracks": tracks,
        },
        "sensor_data": {
            "frames": sensor_frames,
            "sensor_meta": [*camera_meta, dict(_LIDAR_META)],
        },
    }
    return SyntheticJob(
        job_id=job_id,
        frames=frames,
        cameras=camera_meta,
        result=result,
        files=files,
        legacy=False,
        label_keys=label_keys,
        unlabeled_key=unlabeled_key,
    )


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def add_synthetic_project(
    server: FakePlaymentServer,
    *,
    n_jobs: int = 4,
    frames_per_job: int = 5,
    points_per_frame: int = 30_000,
    seed: int = 0,
    encoding: str = "binary",
    batches: int = 1,
    legacy_jobs: int = 0,
    pending_jobs: int = 0,
    beams: int = 32,
    hosting: str = "playment",
    key0_is_class: bool = False,
    unlabeled_fraction: float = 0.02,
    coordinates: str = "lidar",
    cameras: int = 2,
) -> list[SyntheticJob]:
    """Fill a fake server's project with synthetic jobs.

    Adds ``n_jobs`` completed current-format jobs, then ``legacy_jobs`` completed legacy jobs, then
    ``pending_jobs`` current-format jobs with status ``"pending"`` (their result is stored but hidden). Job
    ``i`` uses seed ``(seed, i)``. With ``batches == 1`` every job goes to the default batch; otherwise
    ``batches`` named batches are created and jobs are dealt to them in turn.

    Args:
        server: The server to fill (must be started for ``hosting="direct"``).
        n_jobs: Completed current-format jobs.
        frames_per_job: Frames per current-format job.
        points_per_frame: Points per frame.
        seed: Base seed.
        encoding: PCD encoding of current-format point clouds (legacy ones are ASCII).
        batches: Number of batches.
        legacy_jobs: Completed legacy-format (single-frame) jobs.
        pending_jobs: Jobs whose status is ``"pending"``.
        beams: Lidar beams.
        hosting: ``"playment"``, ``"direct"`` or ``"s3"`` (see :func:`make_job`).
        key0_is_class: See :func:`make_job`.
        unlabeled_fraction: See :func:`make_job`.
        coordinates: ``"lidar"`` or ``"world"``.
        cameras: 0, 1 or 2.

    Returns:
        The jobs, in the order they were added, with ``status`` and ``batch_id`` set.

    Raises:
        ConfigError: an argument is out of range.
    """
    if min(n_jobs, legacy_jobs, pending_jobs) < 0 or batches < 1:
        raise ConfigError("job counts must not be negative and batches must be at least 1")
    batch_ids: list[str | None] = [None]
    if batches > 1:
        batch_ids = [server.add_batch(f"synthetic batch {i}") for i in range(batches)]
    plan = (
        [("current", "completed")] * n_jobs
        + [("legacy", "completed")] * legacy_jobs
        + [("current", "pending")] * pending_jobs
    )
    jobs = []
    for index, (result_format, status) in enumerate(plan):
        legacy = result_format == "legacy"
        job_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        job = make_job(
            seed=job_seed,
            n_frames=1 if legacy else frames_per_job,
            beams=beams,
            points_per_frame=points_per_frame,
            encoding=None if legacy else encoding,
            result_format=result_format,
            key0_is_class=key0_is_class,
            unlabeled_fraction=unlabeled_fraction,
            hosting=hosting,
            server=server,
            coordinates=coordinates,
            cameras=cameras,
        )
        job.status = status
        job.batch_id = batch_ids[index % len(batch_ids)]
        server.add_job(
            job.result,
            job_id=job.job_id,
            batch_id=job.batch_id,
            status=status,
            files=job.files,
            reference_id=f"synthetic-{index:04d}",
        )
        jobs.append(job)
    return jobs


def index_results(
    project_id: str,
    *,
    n_jobs: int,
    frames_per_job: int,
    keys_per_frame: int,
    cameras: Sequence[Camera] | None = None,
    seed: int = 0,
) -> list[tuple[JobResult, str]]:
    """Parsed job results with no files behind them, for index-scale tests and benchmarks.

    Shaped like real Playment jobs: UUID job and track ids, URLs on Playment's storage, ``keys_per_frame``
    per-instance label keys in every frame, an ego driving along x, and one pose per camera.

    Args:
        project_id: The project.
        n_jobs: Jobs.
        frames_per_job: Frames per job.
        keys_per_frame: Label keys (instances) per frame, cycling through :data:`CLASSES`.
        cameras: The jobs' cameras (default: two ``brown_conrady`` cameras).
        seed: Seed of the ids.

    Returns:
        ``(result, digest)`` per job, as :meth:`playment_torch.index.FrameIndex.build` takes them.
    """
    rng = np.random.default_rng(seed)

    def new_id() -> str:
        return str(uuid.UUID(bytes=rng.bytes(16), version=4))

    if cameras is None:
        cameras = tuple(
            Camera(new_id(), name, "brown_conrady", 1200.0, 1200.0, 960.0, 600.0, radial=(-0.1, 0.01))
            for name in ("front", "rear")
        )
    cameras = tuple(cameras)
    results = []
    for _ in range(n_jobs):
        job_id = new_id()
        tracks = [new_id() for _ in range(keys_per_frame)]
        classes = [CLASSES[k % len(CLASSES)] for k in range(keys_per_frame)]
        refs = []
        for f in range(frames_per_job):
            frame_id = str(f)  # Playment numbers frames within a job ("0", "1", ...)
            refs.append(
                FrameRef(
                    project_id=project_id,
                    job_id=job_id,
                    frame_id=frame_id,
                    frame_index=f,
                    sensor_id="lidar",
                    pointcloud_url=f"{PLAYMENT_STORAGE}/{project_id}/{job_id}/lidar/{f:06d}.pcd",
                    mask_url=f"{PLAYMENT_STORAGE}/{project_id}/{job_id}/masks/{new_id()}.json",
                    labels=tuple(
                        LabelEntry(k + 1, classes[k], f"class-{classes[k]}", tracks[k], frame_id)
                        for k in range(keys_per_frame)
                    ),
                    ego_pose=Pose((1.0, 0.0, 0.0, 0.0), (0.5 * f, 0.0, 0.0)),
                    camera_poses=(Pose((0.5, -0.5, 0.5, -0.5), (0.5 * f + 1.5, 0.1, 1.6)),) * len(cameras),
                    cameras=cameras,
                )
            )
        labels = tuple(label for ref in refs for label in ref.labels)
        results.append((JobResult(project_id, job_id, "current", tuple(refs), cameras, labels), rng.bytes(8).hex()))
    return results
