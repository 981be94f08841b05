"""Rigid transforms, quaternions, camera models and projection, in numpy float64.

Conventions used throughout:

* Quaternions are Hamilton quaternions written ``(w, x, y, z)``, scalar first, as Playment's ``heading``
  objects are.
* A *pose* maps coordinates in a sensor's (or the ego vehicle's) own frame to the point cloud's frame: it is
  the sensor's position and heading expressed in the point cloud's frame. ``pose.apply(p_sensor) == p_cloud``.
* 4x4 matrices are homogeneous rigid transforms ``[[R, t], [0, 0, 0, 1]]`` acting on column vectors, so
  ``A @ B`` applies ``B`` first.
* Camera frames follow OpenCV: x to the right of the image, y down, z forward along the optical axis.

Nothing here imports torch: the dataset's numpy layers and the CLI use it without paying for torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from playment_torch.errors import PlaymentFormatError

__all__ = [
    "CAMERA_MODELS",
    "Camera",
    "Pose",
    "ego_to_native",
    "invert_transform",
    "matrix_to_quaternion",
    "native_to_ego",
    "project_points",
    "quaternion_to_matrix",
    "transform_points",
]

#: Camera models :class:`Camera` understands, with the number of radial coefficients each carries.
CAMERA_MODELS: dict[str, int] = {"brown_conrady": 6, "fisheye": 4}

# Points at or behind this depth (metres along the optical axis) are not projected: dividing by a depth this
# close to zero produces coordinates that are meaningless even when finite.
_MIN_DEPTH = 1e-6

# cv2.fisheye.projectPoints treats radii below this as the optical axis itself (theta_d / r -> 1); matching it
# keeps our output identical to OpenCV's at the image centre.
_FISHEYE_MIN_RADIUS = 1e-8

# A quaternion whose norm is this close to 1 is already normalised (a few ulps: what one division leaves).
_UNIT_TOLERANCE = 8 * float(np.finfo(np.float64).eps)

# How far a "rotation" block may be from orthonormal before a matrix is refused as a rigid transform.
_RIGID_TOLERANCE = 1e-6

FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------------------------- quaternions


def _normalised_quaternion(w: float, x: float, y: float, z: float) -> tuple[float, float, float, float]:
    q = np.array([w, x, y, z], dtype=np.float64)
    if not np.all(np.isfinite(q)):
        raise PlaymentFormatError(
            f"non-finite quaternion cannot describe a rotation: got (w, x, y, z) = ({w}, {x}, {y}, {z})"
        )
    norm = float(np.linalg.norm(q))
    if norm == 0.0:
        raise PlaymentFormatError(
            f"zero quaternion cannot describe a rotation: got (w, x, y, z) = ({w}, {x}, {y}, {z})"
        )
    # Leave quaternions that are unit to rounding untouched: dividing by a norm of 1 +- 1 ulp would change
    # their last bits, and poses rebuilt from stored (already normalised) values must compare equal.
    if abs(norm - 1.0) > _UNIT_TOLERANCE:
        q /= norm
    return float(q[0]), float(q[1]), float(q[2]), float(q[3])


def _canonical_quaternion(w: float, x: float, y: float, z: float) -> tuple[float, float, float, float]:
    # q and -q are the same rotation. Pick the one whose first non-zero component (w, then x, y, z) is
    # positive so that every rotation has exactly one stored quaternion and equal poses compare equal.
    for value in (w, x, y, z):
        if value != 0.0:
            if value < 0.0:
                return -w, -x, -y, -z
            break
    return w, x, y, z


def quaternion_to_matrix(w: float, x: float, y: float, z: float) -> FloatArray:
    """Return the 3x3 rotation matrix of a Hamilton quaternion ``(w, x, y, z)``.

    The quaternion is normalised first, so ``(2, 0, 0, 0)`` is the identity like ``(1, 0, 0, 0)``.

    Args:
        w: Scalar part.
        x: First vector component.
        y: Second vector component.
        z: Third vector component.

    Returns:
        A ``(3, 3)`` float64 rotation matrix ``R`` such that ``R @ v`` rotates the column vector ``v``.

    Raises:
        PlaymentFormatError: The quaternion is zero ("zero quaternion cannot describe a rotation") or has a
            non-finite component.
    """
    w, x, y, z = _normalised_quaternion(w, x, y, z)
    return np.array(
        [
            [1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y)],
            [2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x)],
            [2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y)],
        ],
        dtype=np.float64,
    )


def matrix_to_quaternion(rotation: npt.ArrayLike) -> tuple[float, float, float, float]:
    """Return the unit quaternion ``(w, x, y, z)`` of a 3x3 rotation matrix, with ``w >= 0``.

    ``q`` and ``-q`` are the same rotation; choosing ``w >= 0`` (and, for 180-degree turns where ``w == 0``,
    the first non-zero of ``x, y, z`` positive) makes the answer unique, so round trips and equality checks
    are meaningful.

    Args:
        rotation: A ``(3, 3)`` rotation matrix (orthonormal, determinant +1).

    Returns:
        ``(w, x, y, z)``, normalised, ``w >= 0``.

    Raises:
        PlaymentFormatError: ``rotation`` is not a finite 3x3 matrix.
    """
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape != (3, 3) or not np.all(np.isfinite(r)):
        raise PlaymentFormatError(f"a rotation must be a finite 3x3 matrix, got shape {r.shape}")
    # Shepperd's method: branch on the largest of the four |q_i| candidates so the square root and division
    # are always taken on a number far from zero; the naive w-first formula loses precision near 180 degrees.
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    if trace > 0.0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = (0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s)
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * math.sqrt(max(1.0 + r[0, 0] - r[1, 1] - r[2, 2], 0.0))
        q = ((r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s)
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * math.sqrt(max(1.0 - r[0, 0] + r[1, 1] - r[2, 2], 0.0))
        q = ((r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s)
    else:
        s = 2.0 * math.sqrt(max(1.0 - r[0, 0] - r[1, 1] + r[2, 2], 0.0))
        q = ((r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s)
    return _canonical_quaternion(*_normalised_quaternion(*(float(v) for v in q)))


# -------------------------------------------------------------------------------------- 4x4 transforms


def _as_transform(matrix: npt.ArrayLike, what: str = "transform") -> FloatArray:
    t = np.asarray(matrix, dtype=np.float64)
    if t.shape != (4, 4):
        raise PlaymentFormatError(f"a {what} must be a 4x4 matrix, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise PlaymentFormatError(f"a {what} must be finite, got {t.tolist()}")
    return t


def _as_points(points: npt.ArrayLike) -> np.ndarray:
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 3:
        raise PlaymentFormatError(f"points must have shape (N, 3), got {p.shape}")
    return p


def invert_transform(matrix: npt.ArrayLike) -> FloatArray:
    """Invert a rigid 4x4 transform exactly: ``[[R^T, -R^T t], [0, 0, 0, 1]]``.

    Uses the transpose rather than a general matrix inverse, which is both exact for rotations and cheaper.
    The rotation block is assumed orthogonal (a reflection, as left by a flip augmentation, inverts
    correctly too).

    Args:
        matrix: A ``(4, 4)`` rigid transform.

    Returns:
        Its ``(4, 4)`` float64 inverse.

    Raises:
        PlaymentFormatError: ``matrix`` is not a finite 4x4 array.
    """
    t = _as_transform(matrix)
    rotation_t = t[:3, :3].T
    out = np.eye(4, dtype=np.float64)
    out[:3, :3] = rotation_t
    out[:3, 3] = -rotation_t @ t[:3, 3]
    return out


def transform_points(matrix: npt.ArrayLike, points: npt.ArrayLike) -> np.ndarray:
    """Apply a 4x4 transform to ``(N, 3)`` points: ``p' = R p + t`` for every row.

    The arithmetic is float64 whatever the input; the result is float32 for float32 input (point clouds are
    stored that way) and float64 otherwise.

    Args:
        matrix: A ``(4, 4)`` transform.
        points: ``(N, 3)`` points, one per row.

    Returns:
        The transformed ``(N, 3)`` points.

    Raises:
        PlaymentFormatError: The shapes are wrong or ``matrix`` is not finite.
    """
    t = _as_transform(matrix)
    p = _as_points(points)
    out = p.astype(np.float64, copy=False) @ t[:3, :3].T + t[:3, 3]
    return out.astype(np.float32) if p.dtype == np.float32 else out


def ego_to_native(points: npt.ArrayLike, ego_pose_matrix: npt.ArrayLike) -> np.ndarray:
    """Map points from the ego frame to the point cloud's (native) frame.

    Args:
        points: ``(N, 3)`` points in the ego frame.
        ego_pose_matrix: The ``(4, 4)`` ego pose in the point cloud's frame.

    Returns:
        ``(N, 3)`` points in the point cloud's frame (float32 for float32 input, float64 otherwise).

    Raises:
        PlaymentFormatError: The shapes are wrong or the pose is not finite.
    """
    return transform_points(ego_pose_matrix, points)


def native_to_ego(points: npt.ArrayLike, ego_pose_matrix: npt.ArrayLike) -> np.ndarray:
    """Map points from the point cloud's (native) frame to the ego frame (inverse of :func:`ego_to_native`).

    Args:
        points: ``(N, 3)`` points in the point cloud's frame.
        ego_pose_matrix: The ``(4, 4)`` ego pose in the point cloud's frame.

    Returns:
        ``(N, 3)`` points in the ego frame (float32 for float32 input, float64 otherwise).

    Raises:
        PlaymentFormatError: The shapes are wrong or the pose is not finite.
    """
    return transform_points(invert_transform(ego_pose_matrix), points)


# ------------------------------------------------------------------------------------------------- Pose


def _float_tuple(values: Any, what: str, *, finite: bool = True) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise PlaymentFormatError(f"{what} must be a sequence of numbers, got {values!r}") from exc
    if finite and not all(math.isfinite(v) for v in out):
        raise PlaymentFormatError(f"{what} must be finite, got {out!r}")
    return out


@dataclass(frozen=True)
class Pose:
    """A rigid pose: where a sensor sits, and which way it faces, in the point cloud's frame.

    It maps sensor coordinates to point cloud coordinates. The rotation is stored as a unit quaternion with
    ``w >= 0`` (normalised and made canonical on construction, as :func:`matrix_to_quaternion` does).

    Attributes:
        rotation: ``(w, x, y, z)`` unit quaternion.
        translation: ``(x, y, z)`` position of the sensor's origin in the point cloud's frame.
    """

    rotation: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        # Finiteness of the quaternion is checked by _normalised_quaternion, with the message it documents.
        rotation = _float_tuple(self.rotation, "a pose rotation", finite=False)
        translation = _float_tuple(self.translation, "a pose translation")
        if len(rotation) != 4:
            raise PlaymentFormatError(f"a pose rotation is a (w, x, y, z) quaternion, got {rotation!r}")
        if len(translation) != 3:
            raise PlaymentFormatError(f"a pose translation is an (x, y, z) position, got {translation!r}")
        # Frozen dataclass: object.__setattr__ is the sanctioned way to canonicalise fields in __post_init__.
        object.__setattr__(self, "rotation", _canonical_quaternion(*_normalised_quaternion(*rotation)))
        object.__setattr__(self, "translation", translation)

    @classmethod
    def identity(cls) -> Pose:
        """Return the identity pose (sensor frame == point cloud frame).

        Returns:
            ``Pose((1, 0, 0, 0), (0, 0, 0))``.
        """
        return cls()

    @classmethod
    def from_quaternion(
        cls, w: float, x: float, y: float, z: float, position: Sequence[float] = (0.0, 0.0, 0.0)
    ) -> Pose:
        """Build a pose from a heading quaternion and a position, as Playment's JSON gives them.

        Args:
            w: Quaternion scalar part.
            x: Quaternion x.
            y: Quaternion y.
            z: Quaternion z.
            position: ``(x, y, z)`` of the sensor in the point cloud's frame.

        Returns:
            The pose, with its quaternion normalised.

        Raises:
            PlaymentFormatError: The quaternion is zero or non-finite, or ``position`` is not 3 finite
                numbers.
        """
        return cls(rotation=(w, x, y, z), translation=tuple(position))  # type: ignore[arg-type]

    @classmethod
    def from_matrix(cls, matrix: npt.ArrayLike) -> Pose:
        """Build a pose from a 4x4 rigid transform.

        Args:
            matrix: ``[[R, t], [0, 0, 0, 1]]`` with ``R`` a proper rotation.

        Returns:
            The pose.

        Raises:
            PlaymentFormatError: ``matrix`` is not a finite 4x4 rigid transform (bottom row, orthonormal
                rotation block with determinant +1, both to within 1e-6).
        """
        t = _as_transform(matrix, "pose")
        rotation = t[:3, :3]
        if not np.allclose(t[3], (0.0, 0.0, 0.0, 1.0), rtol=0.0, atol=_RIGID_TOLERANCE):
            raise PlaymentFormatError(f"a pose's bottom row must be (0, 0, 0, 1), got {t[3].tolist()}")
        if not np.allclose(rotation @ rotation.T, np.eye(3), rtol=0.0, atol=_RIGID_TOLERANCE) or (
            np.linalg.det(rotation) < 0.0
        ):
            raise PlaymentFormatError(f"a pose's 3x3 block must be a rotation, got {rotation.tolist()}")
        x, y, z = (float(v) for v in t[:3, 3])
        return cls(rotation=matrix_to_quaternion(rotation), translation=(x, y, z))

    def matrix(self) -> FloatArray:
        """Return the pose as a 4x4 float64 homogeneous transform (sensor -> point cloud).

        Returns:
            ``[[R, t], [0, 0, 0, 1]]``.
        """
        out = np.eye(4, dtype=np.float64)
        out[:3, :3] = quaternion_to_matrix(*self.rotation)
        out[:3, 3] = self.translation
        return out

    def inverse(self) -> Pose:
        """Return the inverse pose (point cloud -> sensor).

        Returns:
            The pose whose matrix is ``invert_transform(self.matrix())``.
        """
        w, x, y, z = self.rotation
        rotation_t = quaternion_to_matrix(w, x, y, z).T
        tx, ty, tz = (float(v) for v in -rotation_t @ np.asarray(self.translation))
        return Pose(rotation=(w, -x, -y, -z), translation=(tx, ty, tz))

    def compose(self, other: Pose) -> Pose:
        """Return ``self ∘ other``: apply ``other`` first, then ``self``.

        Its matrix is ``self.matrix() @ other.matrix()``; for instance ``ego_pose.compose(sensor_in_ego)`` is
        the sensor's pose in the point cloud's frame.

        Args:
            other: The pose applied first.

        Returns:
            The composed pose.
        """
        # Hamilton product q1 * q2 composes rotations exactly as R1 @ R2, without a matrix round trip.
        w1, x1, y1, z1 = self.rotation
        w2, x2, y2, z2 = other.rotation
        rotation = (
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        )
        tx, ty, tz = (
            float(v)
            for v in quaternion_to_matrix(*self.rotation) @ np.asarray(other.translation) + np.asarray(self.translation)
        )
        return Pose(rotation=rotation, translation=(tx, ty, tz))

    def apply(self, points: npt.ArrayLike) -> np.ndarray:
        """Map ``(N, 3)`` points from this pose's sensor frame to the point cloud's frame.

        Args:
            points: ``(N, 3)`` points in the sensor frame.

        Returns:
            ``(N, 3)`` points in the point cloud's frame (float32 for float32 input, float64 otherwise).

        Raises:
            PlaymentFormatError: ``points`` is not ``(N, 3)``.
        """
        return transform_points(self.matrix(), points)


# ----------------------------------------------------------------------------------------------- Camera


@dataclass(frozen=True)
class Camera:
    """A pinhole camera's intrinsics and lens distortion.

    ``brown_conrady`` is OpenCV's standard (rational) model, ``fisheye`` OpenCV's equidistant fisheye model.
    Both use the camera matrix ``K = [[fx, skew, cx], [0, fy, cy], [0, 0, 1]]`` in pixels; for the fisheye
    model OpenCV's ``alpha`` is ``skew / fx``.

    Attributes:
        sensor_id: The sensor's id in the job's ``sensor_meta``.
        name: Its human-readable name.
        model: ``"brown_conrady"`` or ``"fisheye"``.
        fx: Focal length along x, pixels.
        fy: Focal length along y, pixels.
        cx: Principal point x, pixels.
        cy: Principal point y, pixels.
        skew: ``K[0, 1]``, pixels.
        radial: brown_conrady ``(k1, ..., k6)`` (``k4..k6`` are the rational model's denominator); fisheye
            ``(k1, ..., k4)``. Shorter sequences are padded with zeros to 6 or 4 values on construction.
        tangential: ``(p1, p2)``; brown_conrady only (a fisheye camera with non-zero values is refused).
        scale_factor: How much the original image was downscaled before labelling. Informational: ``K`` is
            kept exactly as given.
        width: Image width in pixels, if known; projections outside ``[0, width)`` are then invalid.
        height: Image height in pixels, if known; projections outside ``[0, height)`` are then invalid.

    Raises:
        PlaymentFormatError: Unknown model, too many coefficients, non-finite or non-positive focal lengths,
            non-positive image size or scale factor.
    """

    sensor_id: str
    name: str
    model: str
    fx: float
    fy: float
    cx: float
    cy: float
    skew: float = 0.0
    radial: tuple[float, ...] = field(default=())
    tangential: tuple[float, float] = (0.0, 0.0)
    scale_factor: float = 1.0
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        where = f"camera {self.sensor_id!r}"
        if self.model not in CAMERA_MODELS:
            raise PlaymentFormatError(
                f"{where}: unknown camera model {self.model!r}; expected one of {sorted(CAMERA_MODELS)}"
            )
        fx, fy, cx, cy, skew, scale = _float_tuple(
            (self.fx, self.fy, self.cx, self.cy, self.skew, self.scale_factor), f"{where}: intrinsics"
        )
        if fx <= 0.0 or fy <= 0.0:
            raise PlaymentFormatError(f"{where}: focal lengths must be positive, got fx={fx}, fy={fy}")
        if scale <= 0.0:
            raise PlaymentFormatError(f"{where}: scale_factor must be positive, got {scale}")
        n_radial = CAMERA_MODELS[self.model]
        radial = _float_tuple(self.radial, f"{where}: radial distortion")
        if len(radial) > n_radial:
            raise PlaymentFormatError(
                f"{where}: the {self.model} model takes at most {n_radial} radial coefficients, got {len(radial)}"
            )
        tangential = _float_tuple(self.tangential, f"{where}: tangential distortion")
        if len(tangential) != 2:
            raise PlaymentFormatError(f"{where}: tangential distortion is (p1, p2), got {tangential!r}")
        if self.model == "fisheye" and any(tangential):
            raise PlaymentFormatError(
                f"{where}: the fisheye model has no tangential distortion, got (p1, p2) = {tangential!r}"
            )
        for dim in ("width", "height"):
            value = getattr(self, dim)
            if value is not None and (isinstance(value, bool) or int(value) != value or value <= 0):
                raise PlaymentFormatError(f"{where}: image {dim} must be a positive integer, got {value!r}")
            object.__setattr__(self, dim, None if value is None else int(value))
        for name, value in (("fx", fx), ("fy", fy), ("cx", cx), ("cy", cy), ("skew", skew)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "scale_factor", scale)
        object.__setattr__(self, "radial", radial + (0.0,) * (n_radial - len(radial)))
        object.__setattr__(self, "tangential", tangential)

    def matrix(self) -> FloatArray:
        """Return the 3x3 camera matrix.

        Returns:
            ``[[fx, skew, cx], [0, fy, cy], [0, 0, 1]]`` as float64.
        """
        return np.array([[self.fx, self.skew, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64)

    def distortion(self) -> FloatArray:
        """Return the distortion coefficients in the order OpenCV expects for this model.

        Returns:
            brown_conrady: ``(k1, k2, p1, p2, k3, k4, k5, k6)`` for ``cv2.projectPoints``; fisheye:
            ``(k1, k2, k3, k4)`` for ``cv2.fisheye.projectPoints``. float64.
        """
        k = self.radial
        if self.model == "fisheye":
            return np.array(k, dtype=np.float64)
        p1, p2 = self.tangential
        return np.array((k[0], k[1], p1, p2, k[2], k[3], k[4], k[5]), dtype=np.float64)


# ------------------------------------------------------------------------------------------- projection


def project_points(
    points: npt.ArrayLike, camera: Camera, pose: Pose | npt.ArrayLike
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Project points from the point cloud's frame into a camera's image, lens distortion included.

    The camera frame is OpenCV's: x right, y down, z forward along the optical axis. ``brown_conrady`` matches
    ``cv2.projectPoints`` with 8 coefficients (rational radial model plus tangential ``p1, p2``), except that
    ``skew`` is honoured (``u = fx x' + skew y' + cx``; OpenCV ignores ``K[0, 1]``). ``fisheye`` matches
    ``cv2.fisheye.projectPoints`` with ``alpha = skew / fx``.

    A point is valid when it lies in front of the camera (depth ``z > 1e-6``), its projection is finite
    and, when the camera's ``width``/``height`` are known, it lands inside ``[0, width) x [0, height)``.
    Points at or behind the camera plane get NaN coordinates (a perspective projection of them would be
    mirrored and misleading); other invalid points keep their computed coordinates. Distortion polynomials
    are not monotonic far outside the calibrated field of view, so points well outside it can fold back into
    the image: this function does not detect that.

    Args:
        points: ``(N, 3)`` points in the point cloud's frame.
        camera: The camera's intrinsics and distortion.
        pose: The camera's pose in the point cloud's frame, as a :class:`Pose` or a ``(4, 4)`` matrix
            (camera -> point cloud).

    Returns:
        ``(uv, valid)``: ``(N, 2)`` float64 pixel coordinates (column ``u``, row ``v``) and an ``(N,)`` bool
        mask.

    Raises:
        PlaymentFormatError: ``points`` is not ``(N, 3)`` or the pose is not a finite 4x4 matrix.
    """
    pose_matrix = pose.matrix() if isinstance(pose, Pose) else _as_transform(pose, "camera pose")
    p = transform_points(invert_transform(pose_matrix), np.asarray(_as_points(points), dtype=np.float64))
    depth = p[:, 2]
    in_front = depth > _MIN_DEPTH
    # Divide only where the depth is usable; the rest become NaN instead of raising divide-by-zero warnings.
    safe_depth = np.where(in_front, depth, 1.0)
    a = np.where(in_front, p[:, 0] / safe_depth, np.nan)
    b = np.where(in_front, p[:, 1] / safe_depth, np.nan)

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if camera.model == "fisheye":
            k1, k2, k3, k4 = camera.radial
            r = np.hypot(a, b)
            theta = np.arctan(r)
            theta2 = theta * theta
            theta_d = theta * (1.0 + theta2 * (k1 + theta2 * (k2 + theta2 * (k3 + theta2 * k4))))
            big = r > _FISHEYE_MIN_RADIUS
            scale = np.where(big, theta_d / np.where(big, r, 1.0), 1.0)
            xd, yd = a * scale, b * scale
        else:
            k1, k2, k3, k4, k5, k6 = camera.radial
            p1, p2 = camera.tangential
            r2 = a * a + b * b
            radial = (1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1.0 + r2 * (k4 + r2 * (k5 + r2 * k6)))
            ab2 = 2.0 * a * b
            xd = a * radial + p1 * ab2 + p2 * (r2 + 2.0 * a * a)
            yd = b * radial + p1 * (r2 + 2.0 * b * b) + p2 * ab2
        u = camera.fx * xd + camera.skew * yd + camera.cx
        v = camera.fy * yd + camera.cy
    uv = np.stack([u, v], axis=1)

    valid = in_front & np.isfinite(u) & np.isfinite(v)
    if camera.width is not None:
        valid &= (u >= 0.0) & (u < camera.width)
    if camera.height is not None:
        valid &= (v >= 0.0) & (v < camera.height)
    return uv, valid
