"""Tests for playment_torch.geometry: quaternions, poses, cameras, projection (checked against OpenCV)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from playment_torch.errors import PlaymentFormatError
from playment_torch.geometry import (
    Camera,
    Pose,
    ego_to_native,
    invert_transform,
    matrix_to_quaternion,
    native_to_ego,
    project_points,
    quaternion_to_matrix,
    transform_points,
)

S2 = math.sqrt(0.5)

unit = st.floats(-1.0, 1.0, allow_nan=False)
quaternions = st.tuples(unit, unit, unit, unit).filter(lambda q: np.linalg.norm(q) > 0.1)
positions = st.tuples(*(st.floats(-100.0, 100.0, allow_nan=False),) * 3)
poses = st.builds(lambda q, t: Pose.from_quaternion(*q, position=t), quaternions, positions)


def random_pose(rng: np.random.Generator) -> Pose:
    return Pose.from_quaternion(*rng.normal(size=4), position=rng.uniform(-20, 20, size=3))


# ------------------------------------------------------------------------------------------ quaternions


@pytest.mark.parametrize(
    ("quaternion", "vector", "expected"),
    [
        ((S2, 0, 0, S2), (1, 0, 0), (0, 1, 0)),  # 90 degrees about z
        ((S2, 0, 0, S2), (0, 1, 0), (-1, 0, 0)),
        ((S2, S2, 0, 0), (0, 1, 0), (0, 0, 1)),  # 90 degrees about x
        ((S2, 0, S2, 0), (0, 0, 1), (1, 0, 0)),  # 90 degrees about y
        ((0, 0, 1, 0), (1, 0, 0), (-1, 0, 0)),  # 180 degrees about y
        ((1, 0, 0, 0), (1, 2, 3), (1, 2, 3)),  # identity
        ((2, 0, 0, 2), (1, 0, 0), (0, 1, 0)),  # non-unit: normalised first
        ((-S2, 0, 0, -S2), (1, 0, 0), (0, 1, 0)),  # -q is the same rotation
    ],
)
def test_quaternion_to_matrix_hand_worked(quaternion, vector, expected):
    np.testing.assert_allclose(quaternion_to_matrix(*quaternion) @ vector, expected, atol=1e-15)


@pytest.mark.parametrize(
    "quaternion",
    [(0, 0, 0, 0), (0.0, -0.0, 0.0, 0.0), (math.nan, 0, 0, 1), (math.inf, 0, 0, 0), (1, 0, -math.inf, 0)],
)
def test_zero_or_non_finite_quaternion_is_refused(quaternion):
    expected = "zero quaternion" if all(np.isfinite(quaternion)) else "non-finite quaternion"
    with pytest.raises(PlaymentFormatError, match=f"^{expected} cannot describe a rotation"):
        quaternion_to_matrix(*quaternion)
    with pytest.raises(PlaymentFormatError, match=f"^{expected} cannot describe a rotation"):
        Pose.from_quaternion(*quaternion)


def test_non_unit_quaternion_is_normalised():
    pose = Pose.from_quaternion(2.0, 0.0, 0.0, 2.0, position=(1, 2, 3))
    np.testing.assert_allclose(pose.rotation, (S2, 0.0, 0.0, S2), rtol=0, atol=1e-15)
    assert pose.translation == (1.0, 2.0, 3.0)
    # Negative w is canonicalised to w >= 0 (same rotation); when w == 0 the first non-zero is positive.
    np.testing.assert_allclose(Pose.from_quaternion(-3.0, 0.0, 0.0, -3.0).rotation, (S2, 0, 0, S2), atol=1e-15)
    assert Pose.from_quaternion(0.0, 0.0, -2.0, 0.0).rotation == (0.0, 0.0, 1.0, 0.0)
    assert Pose.from_quaternion(0.0, 0.0, 0.0, -1.0) == Pose.from_quaternion(0.0, 0.0, 0.0, 1.0)
    np.testing.assert_allclose(quaternion_to_matrix(5, 1, -2, 3), quaternion_to_matrix(*(np.array([5, 1, -2, 3]) / 4)))


@settings(max_examples=200, deadline=None)
@given(quaternions)
def test_quaternion_matrix_round_trip(q):
    r = quaternion_to_matrix(*q)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-12)
    expected = np.asarray(q) / np.linalg.norm(q)
    if expected[0] < 0:
        expected = -expected
    back = matrix_to_quaternion(r)
    assert back[0] >= 0.0
    if abs(expected[0]) < 1e-9:  # w == 0: q and -q both have w >= 0; compare rotations instead
        np.testing.assert_allclose(quaternion_to_matrix(*back), r, atol=1e-9)
    else:
        np.testing.assert_allclose(back, expected, atol=1e-9)
    np.testing.assert_allclose(quaternion_to_matrix(*back), r, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(quaternions, positions)
def test_pose_rebuilt_from_its_stored_values_is_equal(q, t):
    # Indexes store a pose's (already normalised) quaternion and rebuild the pose from it: bit-exact equality.
    pose = Pose.from_quaternion(*q, position=t)
    assert Pose(pose.rotation, pose.translation) == pose
    assert Pose.from_quaternion(*pose.rotation, position=pose.translation) == pose
    assert abs(np.linalg.norm(pose.rotation) - 1.0) < 1e-15


@pytest.mark.parametrize(
    ("axis", "angle"),
    [((1, 0, 0), math.pi), ((0, 1, 0), math.pi), ((0, 0, 1), math.pi), ((1, 1, 0), 3.0), ((0, 1, 1), 3.1),
     ((1, 0, 1), -3.1), ((1, 2, 3), 0.0), ((1, 2, 3), 1e-9), ((3, -2, 1), 2.5)],
)  # fmt: skip
def test_matrix_to_quaternion_every_branch(axis, angle):
    # Rotations near 180 degrees make the trace negative and exercise each of Shepperd's branches.
    a = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    r, _ = cv2.Rodrigues(a * angle)
    w, x, y, z = matrix_to_quaternion(r)
    expected = np.array([math.cos(angle / 2), *(a * math.sin(angle / 2))])
    if expected[0] < 0:
        expected = -expected
    np.testing.assert_allclose((w, x, y, z), expected, atol=1e-12)


@pytest.mark.parametrize("bad", [np.eye(4), np.full((3, 3), np.nan), np.eye(3)[:2]])
def test_matrix_to_quaternion_refuses_bad_shapes(bad):
    with pytest.raises(PlaymentFormatError, match="3x3"):
        matrix_to_quaternion(bad)


# ----------------------------------------------------------------------------------------------- poses


@settings(max_examples=100, deadline=None)
@given(poses)
def test_pose_compose_inverse_is_identity(pose):
    np.testing.assert_allclose(pose.compose(pose.inverse()).matrix(), np.eye(4), atol=1e-9)
    np.testing.assert_allclose(pose.inverse().compose(pose).matrix(), np.eye(4), atol=1e-9)
    np.testing.assert_allclose(pose.inverse().matrix(), np.linalg.inv(pose.matrix()), atol=1e-9)
    np.testing.assert_allclose(invert_transform(pose.matrix()), pose.inverse().matrix(), atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(poses, poses)
def test_pose_compose_is_matrix_product(a, b):
    np.testing.assert_allclose(a.compose(b).matrix(), a.matrix() @ b.matrix(), atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(poses)
def test_pose_matrix_round_trip(pose):
    back = Pose.from_matrix(pose.matrix())
    np.testing.assert_allclose(back.matrix(), pose.matrix(), atol=1e-12)
    if pose.rotation[0] > 1e-6:  # away from w == 0 the canonical quaternion is a continuous function of R
        np.testing.assert_allclose(back.rotation, pose.rotation, atol=1e-9)
    np.testing.assert_allclose(back.translation, pose.translation, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(poses, st.integers(0, 2**32 - 1))
def test_ego_native_round_trip(pose, seed):
    points = np.random.default_rng(seed).uniform(-50, 50, size=(64, 3))
    ego = pose.matrix()
    native = ego_to_native(points, ego)
    np.testing.assert_allclose(native, points @ ego[:3, :3].T + ego[:3, 3], atol=1e-9)
    np.testing.assert_allclose(native, pose.apply(points), atol=0)
    np.testing.assert_allclose(native_to_ego(native, ego), points, atol=1e-9)


def test_pose_semantics_hand_worked():
    # A sensor at (10, 0, 0) facing +y (yawed 90 degrees): its forward axis (1, 0, 0) points along +y.
    pose = Pose.from_quaternion(S2, 0, 0, S2, position=(10, 0, 0))
    np.testing.assert_allclose(pose.apply(np.array([[1.0, 0, 0], [0, 0, 0]])), [[10, 1, 0], [10, 0, 0]], atol=1e-15)
    np.testing.assert_allclose(pose.inverse().apply(np.array([[10.0, 1, 0]])), [[1, 0, 0]], atol=1e-15)
    assert Pose.identity().matrix().tolist() == np.eye(4).tolist()


@pytest.mark.parametrize(
    ("matrix", "match"),
    [
        (np.eye(3), "4x4"),
        (np.diag([2.0, 2.0, 2.0, 1.0]), "rotation"),  # scaling is not rigid
        (np.diag([-1.0, 1.0, 1.0, 1.0]), "rotation"),  # reflection: determinant -1
        (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=float), "bottom row"),
        (np.full((4, 4), np.nan), "finite"),
    ],
)
def test_pose_from_matrix_refuses_non_rigid(matrix, match):
    with pytest.raises(PlaymentFormatError, match=match):
        Pose.from_matrix(matrix)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_transform_points_dtypes_and_values(dtype):
    pose = Pose.from_quaternion(S2, 0, 0, S2, position=(1, 2, 3))
    points = np.array([[1, 0, 0], [0, 1, 0], [2, 2, 2]], dtype=dtype)
    out = transform_points(pose.matrix(), points)
    assert out.dtype == (np.float32 if dtype == np.float32 else np.float64)
    np.testing.assert_allclose(out, [[1, 3, 3], [0, 2, 3], [-1, 4, 5]], atol=1e-6)


def test_transform_points_float32_uses_float64_arithmetic():
    # Large world coordinates: float32 arithmetic would lose centimetres that float64 keeps until the cast.
    pose = Pose.from_quaternion(0.3, 0.1, -0.2, 0.9, position=(412345.25, 5412345.5, 87.0))
    points = np.random.default_rng(0).uniform(-50, 50, size=(100, 3)).astype(np.float32)
    expected = (points.astype(np.float64) @ pose.matrix()[:3, :3].T + pose.matrix()[:3, 3]).astype(np.float32)
    np.testing.assert_array_equal(transform_points(pose.matrix(), points), expected)


@pytest.mark.parametrize("points", [np.zeros((3,)), np.zeros((4, 2)), np.zeros((2, 3, 1))])
def test_transform_points_refuses_bad_shapes(points):
    with pytest.raises(PlaymentFormatError, match=r"\(N, 3\)"):
        transform_points(np.eye(4), points)


# --------------------------------------------------------------------------------------------- cameras


def test_camera_matrix_distortion_and_padding():
    cam = Camera(
        "s1", "front", "brown_conrady", 500, 510, 320, 240, skew=1.5, radial=(0.1, -0.2, 0.03, 0.004),
        tangential=(0.001, -0.002),
    )  # fmt: skip
    np.testing.assert_array_equal(cam.matrix(), [[500, 1.5, 320], [0, 510, 240], [0, 0, 1]])
    assert cam.radial == (0.1, -0.2, 0.03, 0.004, 0.0, 0.0)
    np.testing.assert_array_equal(cam.distortion(), [0.1, -0.2, 0.001, -0.002, 0.03, 0.004, 0.0, 0.0])
    fish = Camera("s2", "left", "fisheye", 300, 300, 640, 360, radial=(0.1, 0.01))
    assert fish.radial == (0.1, 0.01, 0.0, 0.0)
    np.testing.assert_array_equal(fish.distortion(), [0.1, 0.01, 0.0, 0.0])
    assert fish.scale_factor == 1.0 and fish.width is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": "pinhole"}, "unknown camera model"),
        ({"model": "fisheye", "radial": (0.1,) * 5}, "at most 4"),
        ({"radial": (0.1,) * 7}, "at most 6"),
        ({"model": "fisheye", "tangential": (0.01, 0.0)}, "no tangential"),
        ({"tangential": (0.01,)}, r"\(p1, p2\)"),
        ({"fx": 0.0}, "positive"),
        ({"fy": -3.0}, "positive"),
        ({"cx": math.nan}, "finite"),
        ({"width": 0}, "width"),
        ({"height": 2.5}, "height"),
        ({"scale_factor": 0.0}, "scale_factor"),
        ({"radial": ("a",)}, "numbers"),
    ],
)
def test_camera_validation(kwargs, match):
    args = {
        "sensor_id": "cam7",
        "name": "n",
        "model": "brown_conrady",
        "fx": 1.0,
        "fy": 1.0,
        "cx": 0.0,
        "cy": 0.0,
    }
    with pytest.raises(PlaymentFormatError, match=match) as info:
        Camera(**{**args, **kwargs})
    assert "cam7" in str(info.value) or "model" in match


# ------------------------------------------------------------------------------------------ projection


def random_camera(rng: np.random.Generator, model: str, skew: bool) -> Camera:
    fx = rng.uniform(200, 2000)
    common = {
        "sensor_id": "c", "name": "c", "model": model, "fx": fx, "fy": fx * rng.uniform(0.9, 1.1),
        "cx": rng.uniform(100, 1000), "cy": rng.uniform(100, 800),
        "skew": rng.uniform(-5, 5) if skew else 0.0,
    }  # fmt: skip
    if model == "fisheye":
        return Camera(**common, radial=tuple(rng.uniform(-0.05, 0.05, size=4)))
    return Camera(
        **common,
        radial=tuple(rng.uniform(-0.3, 0.3, size=3)) + tuple(rng.uniform(-0.05, 0.05, size=3)),
        tangential=tuple(rng.uniform(-0.01, 0.01, size=2)),
    )


def points_in_front(rng: np.random.Generator, pose: Pose, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Points in front of the camera (z in [0.5, 80], up to ~60 degrees off axis), in cloud and cam frames."""
    z = rng.uniform(0.5, 80.0, size=n)
    cam = np.stack([rng.uniform(-1.2, 1.2, n) * z, rng.uniform(-1.0, 1.0, n) * z, z], axis=1)
    cam[0] = (0.0, 0.0, 3.0)  # exactly on the optical axis: fisheye's r == 0 special case
    return pose.apply(cam), cam


def opencv_extrinsics(pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    world_to_cam = invert_transform(pose.matrix())
    rvec, _ = cv2.Rodrigues(world_to_cam[:3, :3])
    return rvec, world_to_cam[:3, 3].copy()


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("model", ["brown_conrady", "fisheye"])
def test_projection_matches_opencv(seed, model):
    rng = np.random.default_rng([seed, model == "fisheye"])
    pose = random_pose(rng)
    cloud, _ = points_in_front(rng, pose)
    camera = random_camera(rng, model, skew=True)
    uv, valid = project_points(cloud, camera, pose)
    assert valid.all() and uv.dtype == np.float64 and uv.shape == (len(cloud), 2)
    rvec, tvec = opencv_extrinsics(pose)
    if model == "fisheye":
        alpha = camera.skew / camera.fx
        k = camera.matrix()
        k[0, 1] = 0.0  # OpenCV's fisheye takes skew through alpha only
        ref, _ = cv2.fisheye.projectPoints(cloud[:, None, :], rvec, tvec, k, camera.distortion(), alpha=alpha)
        ref = ref[:, 0]
    else:
        # cv2.projectPoints ignores K[0, 1]: project to distorted normalised coordinates, then apply K here.
        norm, _ = cv2.projectPoints(cloud, rvec, tvec, np.eye(3), camera.distortion())
        ref = np.c_[norm[:, 0], np.ones(len(cloud))] @ camera.matrix().T
        ref = ref[:, :2]
        # And without skew, straight against OpenCV's own K handling.
        flat = Camera(**{**camera.__dict__, "skew": 0.0})
        direct, _ = cv2.projectPoints(cloud, rvec, tvec, flat.matrix(), flat.distortion())
        np.testing.assert_allclose(project_points(cloud, flat, pose.matrix())[0], direct[:, 0], rtol=1e-6)
    np.testing.assert_allclose(uv, ref, rtol=1e-6)


@pytest.mark.parametrize("model", ["brown_conrady", "fisheye"])
def test_projection_hand_worked(model):
    camera = Camera("c", "c", model, 100.0, 200.0, 50.0, 40.0)  # no distortion: plain pinhole
    cloud = np.array([[0.0, 0.0, 5.0], [1.0, 0.0, 1.0], [0.0, -1.0, 2.0]])
    uv, valid = project_points(cloud, camera, Pose.identity())
    expected_pinhole = [[50.0, 40.0], [150.0, 40.0], [50.0, -60.0]]
    if model == "fisheye":  # equidistant: radius fx * atan(r) instead of fx * r
        expected_pinhole[1] = [50.0 + 100.0 * math.atan(1.0), 40.0]
        expected_pinhole[2] = [50.0, 40.0 - 200.0 * math.atan(0.5)]
    np.testing.assert_allclose(uv, expected_pinhole, atol=1e-12)
    assert valid.all()


def test_projection_through_a_pose():
    # Camera 10 m along +x of the cloud, looking back along the cloud's -x towards the origin, with the
    # image's y axis along the cloud's -z (down). The rotation's columns are cam x, y, z in the cloud's frame:
    # cam x = cloud +y, cam y = cloud -z, cam z (optical axis) = cloud -x.
    rotation = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = (10.0, 0.0, 0.0)
    camera = Camera("c", "c", "brown_conrady", 100.0, 100.0, 320.0, 240.0)
    cloud = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [20.0, 0.0, 0.0]])
    uv, valid = project_points(cloud, camera, Pose.from_matrix(matrix))
    np.testing.assert_allclose(uv[:3], [[320, 240], [330, 240], [320, 230]], atol=1e-12)
    assert valid.tolist() == [True, True, True, False]  # the last point is behind the camera


def test_projection_validity_rules():
    camera = Camera("c", "c", "brown_conrady", 100.0, 100.0, 50.0, 50.0, width=100, height=80)
    cloud = np.array(
        [
            [0.0, 0.0, 1.0],  # centre: valid
            [0.0, 0.0, 0.0],  # on the camera plane: invalid, NaN
            [0.0, 0.0, -2.0],  # behind: invalid, NaN
            [0.49, 0.0, 1.0],  # u = 99: valid
            [0.5, 0.0, 1.0],  # u = 100: outside [0, width)
            [-0.5, 0.0, 1.0],  # u = 0: valid
            [0.0, 0.29, 1.0],  # v = 79: valid
            [0.0, 0.3, 1.0],  # v = 80: outside [0, height)
            [0.0, -0.51, 1.0],  # v = -1: outside
            [0.0, 0.0, 1e-7],  # closer than the 1e-6 depth threshold: invalid
        ]
    )
    uv, valid = project_points(cloud, camera, np.eye(4))
    assert valid.tolist() == [True, False, False, True, False, True, True, False, False, False]
    assert np.isnan(uv[[1, 2, 9]]).all()
    np.testing.assert_allclose(uv[4], [100.0, 50.0])  # out of bounds but still reported
    # Without a known image size only the depth rule applies.
    unbounded = Camera("c", "c", "brown_conrady", 100.0, 100.0, 50.0, 50.0)
    expected = [True, False, False] + [True] * 6 + [False]
    assert project_points(cloud, unbounded, np.eye(4))[1].tolist() == expected


def test_projection_float32_points_and_empty_input():
    rng = np.random.default_rng(5)
    pose = random_pose(rng)
    cloud, _ = points_in_front(rng, pose, n=50)
    camera = random_camera(rng, "brown_conrady", skew=False)
    uv64, _ = project_points(cloud, camera, pose)
    uv32, valid = project_points(cloud.astype(np.float32), camera, pose)
    assert uv32.dtype == np.float64 and valid.all()
    np.testing.assert_allclose(uv32, uv64, rtol=1e-4)
    uv, valid = project_points(np.zeros((0, 3)), camera, pose)
    assert uv.shape == (0, 2) and valid.shape == (0,)
    with pytest.raises(PlaymentFormatError, match="camera pose"):
        project_points(cloud, camera, np.eye(3))
