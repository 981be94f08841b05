"""Synthetic LiDAR scenes and jobs: geometry, ground truth and the Playment result object."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from playment_torch.errors import ConfigError
from playment_torch.formats.masks import read_mask
from playment_torch.formats.pcd import read_pcd
from playment_torch.testing import synthetic
from playment_torch.testing.server import PLAYMENT_STORAGE, FakePlaymentServer
from playment_torch.testing.synthetic import (
    CLASSES,
    POINT_DTYPE,
    SyntheticFrame,
    SyntheticJob,
    add_synthetic_project,
    generate_frames,
    make_job,
)

SCENE_DEFAULTS = {
    "n_frames": 3,
    "beams": 32,
    "points_per_frame": 20_000,
    "coordinates": "lidar",
    "unlabeled_fraction": 0.0,
    "frame_interval": 0.5,
    "max_range": 80.0,
    "range_noise": 0.0,
    "vertical_fov": (-25.0, 15.0),
    "cameras": 2,
}


def xyz(points: np.ndarray) -> np.ndarray:
    return np.stack([points[k].astype(np.float64) for k in "xyz"], axis=1)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def quaternion_matrix(w: float, x: float, y: float, z: float) -> np.ndarray:
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def pose_matrix(pose: dict) -> np.ndarray:
    h, p = pose["heading"], pose["position"]
    matrix = np.eye(4)
    matrix[:3, :3] = quaternion_matrix(h["w"], h["x"], h["y"], h["z"])
    matrix[:3, 3] = (p["x"], p["y"], p["z"])
    return matrix


def frame_labels(job: SyntheticJob, frame: SyntheticFrame) -> tuple[np.ndarray, dict[int, dict]]:
    """The frame's decoded mask and its label key -> annotation table, found through the result object."""
    if job.legacy:
        return read_mask(job.files[job.result["url"]]), {e["label_key"]: e for e in job.result["legend"]}
    data = job.result["annotation_data"]
    (mask,) = [m for m in data["masks"] if m["frame_id"] == frame.frame_id]
    table = {a["label_key"]: a for a in data["annotations"] if a["frame_id"] == frame.frame_id}
    return read_mask(job.files[mask["label_url"]]), table


@pytest.fixture(scope="module")
def job() -> SyntheticJob:
    return make_job(seed=11, n_frames=4, points_per_frame=20_000)


@pytest.fixture(scope="module")
def scene_and_frames() -> tuple[synthetic._Scene, list[SyntheticFrame]]:
    return synthetic._generate(seed=4, **SCENE_DEFAULTS)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- frames


def test_determinism_by_seed() -> None:
    first = generate_frames(seed=3, n_frames=2, points_per_frame=10_000, unlabeled_fraction=0.05)
    again = generate_frames(seed=3, n_frames=2, points_per_frame=10_000, unlabeled_fraction=0.05)
    other = generate_frames(seed=4, n_frames=2, points_per_frame=10_000, unlabeled_fraction=0.05)
    for a, b, c in zip(first, again, other, strict=True):
        assert a.points.tobytes() == b.points.tobytes()
        assert np.array_equal(a.class_index, b.class_index) and np.array_equal(a.instance, b.instance)
        assert a.track_ids == b.track_ids
        assert np.array_equal(a.ego_pose, b.ego_pose) and np.array_equal(a.camera_poses, b.camera_poses)
        assert a.points.tobytes() != c.points.tobytes()
        assert a.track_ids != c.track_ids
    # A shorter drive of the same seed is a prefix of a longer one.
    longer = generate_frames(seed=3, n_frames=3, points_per_frame=10_000, unlabeled_fraction=0.05)
    assert all(a.points.tobytes() == b.points.tobytes() for a, b in zip(first, longer[:2], strict=True))
    job_a = make_job(seed=9, n_frames=2, points_per_frame=10_000)
    job_b = make_job(seed=9, n_frames=2, points_per_frame=10_000)
    assert job_a.job_id == job_b.job_id
    assert json.dumps(job_a.result) == json.dumps(job_b.result)
    assert job_a.files == job_b.files


@pytest.mark.parametrize(("beams", "points"), [(16, 10_000), (32, 30_000), (64, 120_000), (128, 250_000)])
def test_point_counts_rings_and_ranges(beams: int, points: int) -> None:
    (frame,) = generate_frames(seed=1, n_frames=1, beams=beams, points_per_frame=points, max_range=80.0)
    assert frame.points.dtype == POINT_DTYPE
    assert len(frame.points) == len(frame.class_index) == len(frame.instance) == points
    assert frame.class_index.dtype == np.int64 and frame.instance.dtype == np.int64
    ring = frame.points["ring"]
    assert ring.max() < beams and len(np.unique(ring)) > beams // 2
    ranges = np.linalg.norm(xyz(frame.points), axis=1)
    assert ranges.max() <= 80.0 + 1e-3 and ranges.min() > 1.0
    # Firing order: azimuth column by column, and within a column the beams go up.
    azimuth = np.arctan2(frame.points["y"], frame.points["x"])
    assert np.all(np.diff(azimuth) > -0.2) or np.count_nonzero(np.diff(azimuth) < -0.2) <= 1
    assert frame.points["intensity"].min() >= 0.0 and frame.points["intensity"].max() <= 1.0


@pytest.mark.parametrize(("beams", "low", "high"), [(16, -15.0, 15.0), (32, -25.0, 15.0), (64, -24.8, 2.0)])
def test_ring_is_the_beam_elevation(beams: int, low: float, high: float) -> None:
    (frame,) = generate_frames(seed=2, n_frames=1, beams=beams, points_per_frame=10_000, vertical_fov=(low, high))
    points = xyz(frame.points)
    elevation = np.degrees(np.arctan2(points[:, 2], np.hypot(points[:, 0], points[:, 1])))
    expected = np.linspace(low, high, beams)[frame.points["ring"]]
    assert np.abs(elevation - expected).max() < 0.01


def test_generation_is_fast() -> None:
    generate_frames(seed=0, n_frames=1, points_per_frame=10_000)  # warm-up
    started = time.perf_counter()
    generate_frames(seed=0, n_frames=5, points_per_frame=30_000)
    five_frames = time.perf_counter() - started
    started = time.perf_counter()
    generate_frames(seed=0, n_frames=1, points_per_frame=120_000, beams=64)
    big_frame = time.perf_counter() - started
    # Typically ~0.08 s and ~0.05 s; the bounds leave room for a busy shared machine.
    assert five_frames < 1.0
    assert big_frame < 0.6


def test_class_distribution_is_sane(scene_and_frames: tuple) -> None:
    _, frames = scene_and_frames
    counts = sum(np.bincount(f.class_index, minlength=len(CLASSES)) for f in frames)
    fractions = counts / counts.sum()
    assert np.all(counts > 0), dict(zip(CLASSES, counts.tolist(), strict=True))
    assert CLASSES.index("road") in np.argsort(fractions)[-2:]  # road and buildings dominate street scans
    assert fractions.max() < 0.6
    for name in ("sidewalk", "building", "vegetation", "car", "terrain"):
        assert fractions[CLASSES.index(name)] > 0.02, name
    # Each class has its own height profile: the road is the lowest surface, buildings reach highest.
    z = np.concatenate([f.points["z"] for f in frames])
    classes = np.concatenate([f.class_index for f in frames])
    median = {name: np.median(z[classes == i]) for i, name in enumerate(CLASSES)}
    assert median["road"] < median["sidewalk"] < median["car"] < median["building"]
    assert np.ptp(z[classes == CLASSES.index("road")]) < 1e-3  # flat: z = -sensor height in lidar frame


def test_instances_have_one_class_and_stable_track_ids(scene_and_frames: tuple) -> None:
    scene, frames = scene_and_frames
    assert all(f.track_ids == frames[0].track_ids for f in frames)
    assert len(set(frames[0].track_ids)) == len(frames[0].track_ids)
    for track_id in frames[0].track_ids:
        assert len(track_id) == 36 and track_id.count("-") == 4
    for frame in frames:
        for instance in np.unique(frame.instance):
            classes = np.unique(frame.class_index[frame.instance == instance])
            assert classes.tolist() == [scene.objects[instance].class_index]
    # Stuff classes are one instance each.
    for name in ("road", "sidewalk", "terrain"):
        owners = {int(i) for f in frames for i in np.unique(f.instance[f.class_index == CLASSES.index(name)])}
        assert len(owners) == 1, name
    # Many objects are seen in several frames under the same instance id.
    seen = [set(np.unique(f.instance).tolist()) for f in frames]
    assert len(seen[0] & seen[1] & seen[2]) > 30


def test_points_lie_on_object_surfaces_and_static_objects_stay_put(scene_and_frames: tuple) -> None:
    scene, frames = scene_and_frames
    road_from_world = np.linalg.inv(scene.world_from_road)
    moved = 0
    for frame in frames:
        assert np.allclose(frame.ego_pose, np.eye(4))  # lidar coordinates: ego = lidar = identity
        # Apply the ego pose (in the world) to get world coordinates, then go to the scene's road frame.
        world = apply(frame.world_pose, xyz(frame.points))
        road = apply(road_from_world, world)
        for instance in np.unique(frame.instance):
            obj = scene.objects[instance]
            inside = frame.instance == instance
            distance = scene.surface_distance(int(instance), road[inside], frame.time)
            assert distance.max() < 0.01, (CLASSES[obj.class_index], distance.max())
            if obj.moving and frame.time > 0:
                # The same object at its first-frame position does not explain the points: it moved.
                at_start = scene.surface_distance(int(instance), road[inside], 0.0)
                moved += int(np.median(at_start) > 0.1)
            else:
                # Static: the geometry is the same in every frame, so the time does not matter.
                assert np.array_equal(obj.center_at(frame.time), obj.center_at(0.0))
    assert moved > 5


def test_lidar_and_world_coordinates_agree() -> None:
    lidar = generate_frames(seed=6, n_frames=3, points_per_frame=10_000, coordinates="lidar")
    world = generate_frames(seed=6, n_frames=3, points_per_frame=10_000, coordinates="world")
    for a, b in zip(lidar, world, strict=True):
        assert np.array_equal(a.class_index, b.class_index) and np.array_equal(a.instance, b.instance)
        assert np.array_equal(b.ego_pose, b.world_pose) and np.allclose(a.world_pose, b.world_pose)
        assert np.abs(b.ego_pose[:3, 3]).max() > 500  # a map frame: coordinates in the thousands
        assert np.abs(apply(b.ego_pose, xyz(a.points)) - xyz(b.points)).max() < 0.01
        assert np.allclose(b.camera_poses, b.ego_pose @ a.camera_poses)
    ego_moves = np.linalg.norm(world[-1].ego_pose[:3, 3] - world[0].ego_pose[:3, 3])
    assert ego_moves > 5
    # Static things stay put in the world while the ego moves: the road is one plane in every frame...
    road = CLASSES.index("road")
    heights = np.concatenate([f.points["z"][f.class_index == road] for f in world])
    assert np.ptp(heights) < 0.01
    # ...and a pole (a thin vertical box) is seen at the same place from every frame.
    pole = CLASSES.index("pole")
    common = set.intersection(*(set(f.instance[f.class_index == pole].tolist()) for f in world))
    assert common
    for instance in common:
        centres = np.array([xyz(f.points)[f.instance == instance, :2].mean(axis=0) for f in world])
        assert np.linalg.norm(centres - centres.mean(axis=0), axis=1).max() < 0.15


def test_cameras_are_rigidly_mounted_opencv_frames() -> None:
    frames = generate_frames(seed=5, n_frames=3, points_per_frame=10_000)
    for frame in frames:
        assert frame.camera_poses.shape == (2, 4, 4)
        for pose in frame.camera_poses:
            rotation = pose[:3, :3]
            assert np.allclose(rotation.T @ rotation, np.eye(3)) and np.isclose(np.linalg.det(rotation), 1.0)
        assert np.array_equal(frame.camera_poses, frames[0].camera_poses)  # fixed on the ego
    front, left = frames[0].camera_poses
    # OpenCV axes: z forward, y down. The front camera looks along +x of the ego, the left one along +y.
    assert front[:3, 2] @ np.array([1.0, 0, 0]) > 0.99 and left[:3, 2] @ np.array([0, 1.0, 0]) > 0.95
    assert front[:3, 1] @ np.array([0, 0, -1.0]) > 0.99
    # Points ahead of the car are in front of the front camera (positive depth in its frame).
    points = xyz(frames[0].points)
    ahead = points[points[:, 0] > 10]
    depth = apply(np.linalg.inv(front), ahead)[:, 2]
    assert depth.min() > 0
    assert generate_frames(seed=5, n_frames=1, points_per_frame=10_000, cameras=0)[0].camera_poses.shape == (0, 4, 4)


# ----------------------------------------------------------------------------------------------- jobs


def test_result_structure(job: SyntheticJob) -> None:
    result = json.loads(json.dumps(job.result))  # plain JSON
    assert set(result) == {"annotation_data", "sensor_data"}
    data = result["annotation_data"]
    assert set(data) == {"annotations", "frames", "groups", "masks", "sensors", "tracks"}
    assert [f["_id"] for f in data["frames"]] == [f.frame_id for f in job.frames] == ["0", "1", "2", "3"]
    lidar_meta = [m for m in result["sensor_data"]["sensor_meta"] if m["modality"] == "lidar"]
    assert len(lidar_meta) == 1 and "intrinsics" not in lidar_meta[0] and lidar_meta[0]["primary_view"] is True
    lidar_id = lidar_meta[0]["id"]
    annotation_keys = {
        "_id",
        "_isStationary",
        "attributes",
        "class_id",
        "color",
        "frame_id",
        "grouping_config",
        "label",
        "label_key",
        "sensor_id",
        "text",
        "track_id",
        "type",
    }
    class_ids = {}
    for annotation in data["annotations"]:
        assert set(annotation) == annotation_keys
        assert annotation["type"] == "segmentation3d" and annotation["sensor_id"] == lidar_id
        assert annotation["label"] == annotation["text"] in CLASSES
        assert annotation["attributes"] == {}
        assert annotation["color"].startswith("rgb(")
        assert class_ids.setdefault(annotation["label"], annotation["class_id"]) == annotation["class_id"]
    assert len(set(class_ids.values())) == len(class_ids) == len(CLASSES)
    assert len({a["_id"] for a in data["annotations"]}) == len(data["annotations"])
    # Per-instance keys: a key is one track, in every frame; a track is one key.
    key_track = {(a["label_key"], a["track_id"]) for a in data["annotations"]}
    assert len({k for k, _ in key_track}) == len({t for _, t in key_track}) == len(key_track)
    assert {t["_id"] for t in data["tracks"]} == {t for _, t in key_track}
    cars = [a for a in data["annotations"] if a["label"] == "car"]
    assert any(a["_isStationary"] for a in cars) and not all(a["_isStationary"] for a in cars)
    assert all(a["_isStationary"] for a in data["annotations"] if a["label"] == "building")
    assert len(data["masks"]) == len(job.frames)
    for mask in data["masks"]:
        assert set(mask) == {"_id", "frame_id", "label_url", "sensor_id", "type", "url"}
        assert mask["url"] == "" and mask["sensor_id"] == lidar_id and mask["type"] == "segmentation3d"
        assert mask["label_url"].startswith(PLAYMENT_STORAGE) and mask["label_url"] in job.files
    assert {s["sensor_type"] for s in data["sensors"]} == {"LIDAR", "CAMERA"}
    for frame, entry in zip(job.frames, result["sensor_data"]["frames"], strict=True):
        assert entry["frame_id"] == frame.frame_id
        assert set(entry["ego_pose"]) == {"heading", "position"}
        assert set(entry["ego_pose"]["heading"]) == {"w", "x", "y", "z"}
        assert np.allclose(pose_matrix(entry["ego_pose"]), frame.ego_pose, atol=1e-9)
        lidar, *cameras = entry["sensors"]
        assert lidar["sensor_id"] == lidar_meta[0]["name"]
        assert lidar["data_url"] in job.files and lidar["data_url"].endswith(".pcd")
        assert len(cameras) == len(job.cameras) == 2
        for camera, meta, pose in zip(cameras, job.cameras, frame.camera_poses, strict=True):
            assert camera["sensor_id"] == meta["name"]
            assert np.allclose(pose_matrix(camera["sensor_pose"]), pose, atol=1e-9)
            assert job.files[camera["data_url"]][:3] == b"\xff\xd8\xff"  # a JPEG
    meta_by_model = {m["camera_model"]: m for m in job.cameras}
    assert set(meta_by_model) == {"brown_conrady", "fisheye"}
    for meta in job.cameras:
        assert meta["modality"] == "camera"
        assert set(meta["intrinsics"]) == {
            "fx",
            "fy",
            "cx",
            "cy",
            "k1",
            "k2",
            "k3",
            "k4",
            "p1",
            "p2",
            "skew",
            "scale_factor",
        }
        assert meta["intrinsics"]["fx"] > 100 and meta["intrinsics"]["cx"] > 100
    pinhole = meta_by_model["brown_conrady"]["intrinsics"]
    assert all(pinhole[k] != 0 for k in ("k1", "k2", "p1", "p2", "k3")) and pinhole["k4"] == 0
    fisheye = meta_by_model["fisheye"]["intrinsics"]
    assert all(fisheye[k] != 0 for k in ("k1", "k2", "k3", "k4"))


def test_hosted_point_clouds_equal_the_frames(job: SyntheticJob) -> None:
    for frame, entry in zip(job.frames, job.result["sensor_data"]["frames"], strict=True):
        cloud = read_pcd(job.files[entry["sensors"][0]["data_url"]])
        assert cloud.header.encoding == "binary"
        assert cloud.data.dtype.names == POINT_DTYPE.names
        for name in POINT_DTYPE.names:
            assert np.array_equal(cloud.data[name], frame.points[name]), name


@pytest.mark.parametrize(
    ("key0_is_class", "encoding", "unlabeled_fraction"),
    [(False, "binary", 0.02), (True, "ascii", 0.05), (True, "binary_compressed", 0.0), (False, "ascii", 0.1)],
)
def test_masks_match_class_index_via_annotations(key0_is_class: bool, encoding: str, unlabeled_fraction: float) -> None:
    job = make_job(
        seed=21,
        n_frames=2,
        points_per_frame=10_000,
        key0_is_class=key0_is_class,
        encoding=encoding,
        unlabeled_fraction=unlabeled_fraction,
        coordinates="world",
    )
    expected_unlabeled = 65535 if key0_is_class else 0
    assert job.unlabeled_key == expected_unlabeled
    for frame, entry in zip(job.frames, job.result["sensor_data"]["frames"], strict=True):
        cloud = read_pcd(job.files[entry["sensors"][0]["data_url"]])
        assert cloud.header.encoding == encoding
        assert all(np.array_equal(cloud.data[n], frame.points[n]) for n in POINT_DTYPE.names)
        keys, table = frame_labels(job, frame)
        assert len(keys) == len(frame.points)
        named = np.isin(keys, list(table))
        assert np.array_equal(~named, frame.class_index == -1)
        assert np.count_nonzero(~named) == round(unlabeled_fraction * len(keys))
        assert np.all(keys[~named] == expected_unlabeled)
        labels = np.array([CLASSES.index(table[k]["label"]) for k in keys[named].tolist()])
        assert np.array_equal(labels, frame.class_index[named])
        tracks = np.array([table[k]["track_id"] for k in keys[named].tolist()])
        assert np.array_equal(tracks, np.array(frame.track_ids)[frame.instance[named]])
        if key0_is_class:
            assert table[0]["label"] == "road" and np.any(keys == 0)
        else:
            assert 0 not in table


def test_legacy_format() -> None:
    job = make_job(seed=13, result_format="legacy", points_per_frame=10_000, unlabeled_fraction=0.03)
    assert job.legacy and len(job.frames) == 1 and job.cameras == []
    assert set(job.result) == {"legend", "url"}
    assert job.result["url"].startswith(PLAYMENT_STORAGE) and set(job.files) == {job.result["url"]}
    for entry in job.result["legend"]:
        assert set(entry) == {"id", "text", "color", "label_key", "value"}
        assert entry["text"] in CLASSES
    cloud = read_pcd(job.files[job.result["url"]])
    assert cloud.header.encoding == "ascii"
    assert cloud.header.fields == ("x", "y", "z", "label_key")
    (frame,) = job.frames
    assert frame.points.dtype.names == ("x", "y", "z")
    assert all(np.array_equal(cloud.data[n], frame.points[n]) for n in "xyz")
    keys, table = frame_labels(job, frame)
    assert np.array_equal(keys, cloud.data["label_key"].astype(np.int64))
    named = np.isin(keys, list(table))
    assert np.array_equal(~named, frame.class_index == -1)
    labels = np.array([CLASSES.index(table[k]["text"]) for k in keys[named].tolist()])
    assert np.array_equal(labels, frame.class_index[named])
    with pytest.raises(ConfigError):
        make_job(seed=13, result_format="legacy", n_frames=2)


@pytest.mark.parametrize(
    ("hosting", "prefix"), [("playment", PLAYMENT_STORAGE + "/"), ("s3", "s3://synthetic-bucket/")]
)
def test_hosting(hosting: str, prefix: str) -> None:
    job = make_job(seed=2, n_frames=1, points_per_frame=10_000, hosting=hosting, cameras=1)
    (entry,) = job.result["sensor_data"]["frames"]
    assert all(sensor["data_url"].startswith(prefix) for sensor in entry["sensors"])
    assert job.result["annotation_data"]["masks"][0]["label_url"].startswith(PLAYMENT_STORAGE)


def test_revision_relabels_without_touching_point_clouds() -> None:
    first = make_job(seed=8, n_frames=1, points_per_frame=10_000, unlabeled_fraction=0.05)
    second = make_job(seed=8, n_frames=1, points_per_frame=10_000, unlabeled_fraction=0.05, revision=1)
    assert first.job_id == second.job_id
    pcd_urls = [u for u in first.files if u.endswith(".pcd")]
    assert pcd_urls and all(first.files[u] == second.files[u] for u in pcd_urls)
    mask_a = first.result["annotation_data"]["masks"][0]["label_url"]
    mask_b = second.result["annotation_data"]["masks"][0]["label_url"]
    assert mask_a != mask_b
    assert not np.array_equal(first.frames[0].class_index, second.frames[0].class_index)


def test_sensor_ref_by_id() -> None:
    job = make_job(seed=2, n_frames=1, points_per_frame=10_000, sensor_ref="id")
    ids = {m["id"] for m in job.result["sensor_data"]["sensor_meta"]}
    assert {s["sensor_id"] for s in job.result["sensor_data"]["frames"][0]["sensors"]} == ids


@pytest.mark.parametrize(
    "kwargs",
    [
        {"beams": 8},
        {"points_per_frame": 500},
        {"coordinates": "map"},
        {"encoding": "xml"},
        {"result_format": "v3"},
        {"hosting": "ftp"},
        {"hosting": "direct"},  # needs a server
        {"cameras": 3},
        {"key0_is_class": True, "unlabeled_key": 0},
        {"unlabeled_fraction": 1.5},
        {"sensor_ref": "both"},
    ],
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        make_job(seed=0, n_frames=1, **kwargs)


# ----------------------------------------------------------------------------------------------- server


@pytest.fixture
def server() -> Iterator[FakePlaymentServer]:
    with FakePlaymentServer(page_size=2) as fake:
        yield fake


def test_add_synthetic_project_end_to_end(server: FakePlaymentServer) -> None:
    jobs = add_synthetic_project(
        server,
        n_jobs=3,
        frames_per_job=2,
        points_per_frame=10_000,
        seed=5,
        batches=2,
        legacy_jobs=1,
        pending_jobs=1,
        encoding="binary_compressed",
    )
    assert [(j.legacy, j.status) for j in jobs] == [(False, "completed")] * 3 + [
        (True, "completed"),
        (False, "pending"),
    ]
    assert len({j.job_id for j in jobs}) == 5
    session = requests.Session()
    session.headers["x-api-key"] = server.api_key
    details = session.get(f"{server.url}/v1/projects/{server.project_id}/details", timeout=10).json()["data"]
    batches = {b["id"]: b for b in details["batches"]}
    assert set(batches) == {j.batch_id for j in jobs} and len(batches) == 2
    assert sum(b["total_jobs"] for b in batches.values()) == 5
    assert sum(b["completed_jobs"] for b in batches.values()) == 4
    for job in jobs:
        data = session.get(f"{server.url}/v1/projects/{server.project_id}/jobs/{job.job_id}", timeout=10).json()
        if job.status != "completed":
            assert data["data"]["result"] == ""
            continue
        result = session.get(f"{server.url}/v1/attachments", params={"url": data["data"]["result"]}, timeout=10).json()
        assert result == json.loads(json.dumps(job.result))
        url = job.result["url"] if job.legacy else job.result["sensor_data"]["frames"][0]["sensors"][0]["data_url"]
        body = session.get(f"{server.url}/v1/attachments", params={"url": url}, timeout=10).content
        cloud = read_pcd(body)
        assert np.array_equal(cloud.data["x"], job.frames[0].points["x"])


def test_direct_hosting_on_the_server(server: FakePlaymentServer) -> None:
    (job,) = add_synthetic_project(
        server, n_jobs=1, frames_per_job=1, points_per_frame=10_000, hosting="direct", cameras=1
    )
    (entry,) = job.result["sensor_data"]["frames"]
    for sensor in entry["sensors"]:
        assert sensor["data_url"].startswith(f"{server.storage_url}/direct/")
        response = requests.get(sensor["data_url"], timeout=10)  # no key, no attachments
        assert response.status_code == 200 and response.content == job.files[sensor["data_url"]]
    assert not server.requests[-1].sent_key


# ----------------------------------------------------------------------------------------------- ray casting


def _brute_force_cast(scene: synthetic._Scene, t: float, road_from_ego: np.ndarray, dirs_lidar: np.ndarray) -> tuple:
    """Every ray against every part of every object, ground included as boxes plus the road plane."""
    dirs = (dirs_lidar @ road_from_ego[:3, :3].T).reshape(-1, 3)
    origin = road_from_ego[:3, 3]
    best = np.full(len(dirs), np.inf)
    owner = np.full(len(dirs), -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_road = -origin[2] / dirs[:, 2]
    road = (dirs[:, 2] < 0) & (np.abs(origin[1] + t_road * dirs[:, 1]) < 5.5)
    best[road], owner[road] = t_road[road], 0
    for index, obj in enumerate(scene.objects):
        c, s = math.cos(obj.yaw), math.sin(obj.yaw)
        back = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]])
        local_dirs = dirs @ back.T
        local_origin = back @ (origin - obj.center_at(t))
        components = (local_dirs[:, 0], local_dirs[:, 1], local_dirs[:, 2])
        for part in obj.parts:
            hit = synthetic._hit_box if part.shape == synthetic._BOX else synthetic._hit_ellipsoid
            distance = hit(local_origin - part.center, components, part.half)
            closer = distance < best
            best[closer], owner[closer] = distance[closer], index
    owner[best > 80.0] = -1
    return best, owner


@pytest.mark.parametrize("seed", [0, 7])
def test_culled_cast_equals_brute_force(seed: int) -> None:
    scene = synthetic._build_scene(seed, length=300.0)
    elevations = synthetic._beam_elevations(16, (-25.0, 15.0))
    dirs = synthetic._directions(elevations, 720)
    for t in (0.0, 1.5):
        pose = scene.road_from_ego(t)
        distance, owner = synthetic._cast(scene, t, pose, elevations, dirs, 80.0)
        expected_distance, expected_owner = _brute_force_cast(scene, t, pose, dirs)
        hit = expected_owner >= 0
        assert np.array_equal(owner.reshape(-1), expected_owner)
        assert np.allclose(distance.reshape(-1)[hit], expected_distance[hit], rtol=0, atol=1e-9)
        assert hit.mean() > 0.5


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    beams=st.integers(16, 128),
    points=st.integers(10_000, 20_000),
    coordinates=st.sampled_from(["lidar", "world"]),
)
def test_any_seed_gives_consistent_frames(seed: int, beams: int, points: int, coordinates: str) -> None:
    options = {
        **SCENE_DEFAULTS,
        "n_frames": 2,
        "beams": beams,
        "points_per_frame": points,
        "coordinates": coordinates,
        "unlabeled_fraction": 0.01,
    }
    scene, frames = synthetic._generate(seed=seed, **options)  # type: ignore[arg-type]
    road_from_world = np.linalg.inv(scene.world_from_road)
    for frame in frames:
        assert len(frame.points) == points
        labelled = frame.instance >= 0
        assert np.count_nonzero(~labelled) == round(0.01 * points)
        assert np.array_equal(frame.class_index[~labelled], np.full(np.count_nonzero(~labelled), -1))
        classes = np.array([o.class_index for o in scene.objects])
        assert np.array_equal(frame.class_index[labelled], classes[frame.instance[labelled]])
        road = apply(road_from_world, apply(frame.world_pose @ np.linalg.inv(frame.ego_pose), xyz(frame.points)))
        for instance in np.unique(frame.instance[labelled])[:40]:
            inside = frame.instance == instance
            assert scene.surface_distance(int(instance), road[inside], frame.time).max() < 0.01
