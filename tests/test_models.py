"""Parsing Playment's JSON into typed models: both result formats and every gap the documentation leaves open.

Each table row is a small edit of a valid result (``mutate``) and what the parse must then say (``check``, or
the pieces of the error message: job, frame and JSON path).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from playment_torch.errors import PlaymentFormatError
from playment_torch.models import BatchPage, FrameRef, Job, JobResult, LabelEntry, Pose, Project

JOB = "job-42"
PROJECT = "proj-1"
STORAGE = "https://playment-data-uploads.s3.ap-south-1.amazonaws.com/p"
LIDAR_ID = "lidar-1"
CAM_ID = "cam-1"
S2 = math.sqrt(0.5)

# The "Point Cloud Segmentation" result object of the seed page ("Get job results"), verbatim: API documentation.
SEED_RESULT: dict[str, Any] = json.loads(
    """
{
  "annotation_data": {
    "annotations": [
      {"_id": "14e4bd90-6bdc-4571-87e1-adf41908b0ed", "_isStationary": false, "attributes": {},
       "class_id": "24aaea97-002d-41f1-9632-ce36b829445a", "color": "rgb(71, 153, 193)", "frame_id": "0",
       "grouping_config": null, "label": "Vehicle", "label_key": 1, "sensor_id": "", "text": "Vehicle",
       "track_id": "bce3dd47-0938-4fd7-963b-47e459fda54e", "type": "segmentation3d"}
    ],
    "frames": [{"_id": "0"}],
    "groups": null,
    "masks": [
      {"_id": "8feec956-0d5c-4d3c-b8be-b03d1c8f23a9", "frame_id": "0", "label_url": "https://xyz.s3.com/123.txt",
       "sensor_id": "18158562", "type": "segmentation3d", "url": ""}
    ],
    "sensors": [{"sensor_id": "18158562", "sensor_type": "CAMERA"}],
    "tracks": [
      {"_id": "bce3dd47-0938-4fd7-963b-47e459fda54e", "attributes": null, "color": "rgb(71, 153, 193)",
       "grouping_config": null, "label": "", "label_id": null, "state": "", "type": ""}
    ]
  },
  "sensor_data": {
    "frames": [
      {
        "ego_pose": {"heading": {"w": 0.979, "x": 0, "y": -0.02, "z": 0.202},
                     "position": {"x": -40, "y": -8, "z": -1}},
        "frame_id": "0",
        "sensors": [
          {"data_url": "https://xyz.s3.com/123", "original_url": "https://xyz.s3.com/123.jpg",
           "sensor_id": "front_center_rgb",
           "sensor_pose": {"heading": {"w": 0.98, "x": 0, "y": -0.05, "z": 0.189},
                           "position": {"x": -40, "y": -8, "z": -1}}}
        ]
      }
    ],
    "sensor_meta": [
      {"camera_model": "brown_conrady", "id": "18158562",
       "intrinsics": {"cx": 950, "cy": 500, "fx": 1000, "fy": 1050, "k1": 0.31, "k2": -0.024, "k3": 0.0017,
                      "k4": 0, "p1": -0.000466, "p2": 0.0002909, "scale_factor": 0, "skew": 0},
       "modality": "camera", "name": "front_center_rgb", "primary_view": false, "state": "editable"},
      {"id": "18158562", "modality": "lidar", "name": "front_lidar", "primary_view": true, "state": "editable"}
    ]
  }
}
"""
)


def current_result() -> dict[str, Any]:
    """A valid two-frame result: a lidar and a camera, key 0 a real class, per-instance and per-frame keys."""
    return {
        "annotation_data": {
            "annotations": [
                {"_id": "a0", "label": "Road", "class_id": "c-road", "label_key": 0, "frame_id": "0"},
                {"_id": "a1", "label": "Car", "class_id": "c-car", "label_key": 1, "track_id": "t1", "frame_id": "0"},
                {"_id": "a2", "label": "Car", "class_id": "c-car", "label_key": 2, "track_id": "t2", "frame_id": "0"},
                # Key 1 is another class in frame 1: keys resolve per frame.
                {
                    "_id": "a3",
                    "label": "Person",
                    "class_id": "c-ped",
                    "label_key": 1,
                    "track_id": "t3",
                    "frame_id": "1",
                },
            ],
            "frames": [{"_id": "0"}, {"_id": "1"}],
            "masks": [
                {"_id": "m0", "frame_id": "0", "sensor_id": LIDAR_ID, "label_url": f"{STORAGE}/m0.json", "url": ""},
                {"_id": "m1", "frame_id": "1", "sensor_id": LIDAR_ID, "label_url": f"{STORAGE}/m1.json", "url": ""},
            ],
        },
        "sensor_data": {
            "frames": [
                {
                    "frame_id": "0",
                    "ego_pose": {"heading": {"w": S2, "x": 0, "y": 0, "z": S2}, "position": {"x": 10, "y": 20, "z": 1}},
                    "sensors": [
                        {"sensor_id": LIDAR_ID, "data_url": f"{STORAGE}/0.pcd"},
                        {
                            "sensor_id": CAM_ID,
                            "data_url": f"{STORAGE}/0.jpg",
                            "sensor_pose": {
                                "heading": {"w": 1, "x": 0, "y": 0, "z": 0},
                                "position": {"x": 1, "y": 2, "z": 3},
                            },
                        },
                    ],
                },
                {"frame_id": "1", "ego_pose": {}, "sensors": [{"sensor_id": LIDAR_ID, "data_url": f"{STORAGE}/1.pcd"}]},
            ],
            "sensor_meta": [
                {"id": LIDAR_ID, "name": "top_lidar", "modality": "lidar", "primary_view": True},
                {
                    "id": CAM_ID,
                    "name": "front_cam",
                    "modality": "camera",
                    "camera_model": "brown_conrady",
                    "intrinsics": {
                        "fx": 1000,
                        "fy": 1050,
                        "cx": 950,
                        "cy": 500,
                        "k1": 0.1,
                        "k2": -0.02,
                        "p1": 0.001,
                        "p2": 0.002,
                        "skew": 0.5,
                        "scale_factor": 2,
                    },
                },
            ],
        },
    }


def legacy_result() -> dict[str, Any]:
    return {
        "legend": [
            {"id": "cls-car", "text": "MINIVAN # 1", "color": "#f00", "label_key": 1, "value": 1},
            {"id": "cls-car", "text": "MINIVAN # 2", "color": "#0f0", "label_key": 2, "value": 2},
            {"id": "cls-ground", "text": "Ground", "color": "#00f", "label_key": 0, "value": 0},
        ],
        "url": f"{STORAGE}/legacy.pcd",
    }


def parse(payload: Any) -> JobResult:
    return JobResult.from_api(payload, project_id=PROJECT, job_id=JOB)


def keys_of(frame: FrameRef) -> dict[int, str]:
    return {entry.label_key: entry.label for entry in frame.labels}


def frames_by_id(result: JobResult) -> dict[str, FrameRef]:
    return {frame.frame_id: frame for frame in result.frames}


def close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, abs_tol=1e-12) for x, y in zip(a, b, strict=True))


def sd(result: dict[str, Any]) -> dict[str, Any]:
    return result["sensor_data"]


def ad(result: dict[str, Any]) -> dict[str, Any]:
    return result["annotation_data"]


def camera_meta(result: dict[str, Any]) -> dict[str, Any]:
    return sd(result)["sensor_meta"][1]


# ------------------------------------------------------------------------------------------- the base cases


def test_current_format_every_value() -> None:
    result = parse(current_result())
    assert result.format == "current"
    assert (result.project_id, result.job_id, result.skipped_frames) == (PROJECT, JOB, ())
    assert [f.frame_id for f in result.frames] == ["0", "1"]
    f0, f1 = result.frames
    assert (f0.pointcloud_url, f0.mask_url, f0.sensor_id, f0.frame_index) == (
        f"{STORAGE}/0.pcd",
        f"{STORAGE}/m0.json",
        LIDAR_ID,
        0,
    )
    assert (f1.pointcloud_url, f1.mask_url, f1.frame_index, f1.legacy) == (
        f"{STORAGE}/1.pcd",
        f"{STORAGE}/m1.json",
        1,
        False,
    )
    # Key 0 is a real class; keys 1 and 2 are two instances of one class; key 1 means Person in frame 1.
    assert keys_of(f0) == {0: "Road", 1: "Car", 2: "Car"}
    assert keys_of(f1) == {1: "Person"}
    assert [(e.label_key, e.track_id, e.class_id) for e in f0.labels] == [
        (0, "", "c-road"),
        (1, "t1", "c-car"),
        (2, "t2", "c-car"),
    ]
    assert result.label_names == ("Car", "Person", "Road")
    assert len(result.labels) == 4
    assert f0.ego_pose == Pose((S2, 0, 0, S2), (10, 20, 1))
    assert f1.ego_pose == Pose.identity()  # ego_pose {} is the identity
    (camera,) = result.cameras
    assert (camera.sensor_id, camera.name, camera.model) == (CAM_ID, "front_cam", "brown_conrady")
    assert (camera.fx, camera.fy, camera.cx, camera.cy, camera.skew, camera.scale_factor) == (
        1000,
        1050,
        950,
        500,
        0.5,
        2,
    )
    assert camera.radial == (0.1, -0.02, 0.0, 0.0, 0.0, 0.0)
    assert camera.tangential == (0.001, 0.002)
    assert f0.cameras == (camera,)
    assert f0.camera_poses == (Pose((1, 0, 0, 0), (1, 2, 3)),)
    assert f1.camera_poses == (None,)  # the camera has no pose in frame 1
    assert list(result) == [f0, f1] and len(result) == 2


def test_legacy_format_every_value() -> None:
    result = parse(legacy_result())
    assert result.format == "legacy"
    (frame,) = result.frames
    assert frame.legacy and frame.frame_id == "0" and frame.sensor_id == ""
    # The legacy mask PCD (x y z label_key) is also the point cloud.
    assert frame.pointcloud_url == frame.mask_url == f"{STORAGE}/legacy.pcd"
    assert keys_of(frame) == {0: "Ground", 1: "MINIVAN # 1", 2: "MINIVAN # 2"}
    assert {e.label_key: e.class_id for e in frame.labels} == {0: "cls-ground", 1: "cls-car", 2: "cls-car"}
    assert frame.ego_pose == Pose.identity() and result.cameras == () and result.skipped_frames == ()


def test_seed_sample_camera_and_lidar_share_an_id() -> None:
    # The seed's frame names its only sensor by the camera's *name*; its lidar never appears in the frame.
    result = parse(copy.deepcopy(SEED_RESULT))
    assert result.frames == ()
    assert result.skipped_frames == (("0", "no lidar point cloud"),)
    (camera,) = result.cameras
    assert (camera.sensor_id, camera.name, camera.model) == ("18158562", "front_center_rgb", "brown_conrady")
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == (1000, 1050, 950, 500)
    assert camera.radial == (0.31, -0.024, 0.0017, 0.0, 0.0, 0.0)
    assert camera.tangential == (-0.000466, 0.0002909)
    assert camera.scale_factor == 1.0  # 0 means "not downscaled"
    assert result.labels == (
        LabelEntry(1, "Vehicle", "24aaea97-002d-41f1-9632-ce36b829445a", "bce3dd47-0938-4fd7-963b-47e459fda54e", "0"),
    )


def test_seed_sample_with_its_lidar_named_in_the_frame() -> None:
    seed = copy.deepcopy(SEED_RESULT)
    sd(seed)["frames"][0]["sensors"].append({"sensor_id": "front_lidar", "data_url": "https://xyz.s3.com/0.pcd"})
    (frame,) = parse(seed).frames
    # Matched by name; the mask's sensor_id is the id the lidar shares with the camera.
    assert (frame.sensor_id, frame.pointcloud_url, frame.mask_url) == (
        "18158562",
        "https://xyz.s3.com/0.pcd",
        "https://xyz.s3.com/123.txt",
    )
    assert keys_of(frame) == {1: "Vehicle"}
    assert frame.ego_pose == Pose((0.979, 0, -0.02, 0.202), (-40, -8, -1))
    assert frame.camera_poses == (Pose((0.98, 0, -0.05, 0.189), (-40, -8, -1)),)


# ------------------------------------------------------------------------------------------- valid variants


def _set(path: list[str | int], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(result: dict[str, Any]) -> None:
        node: Any = result
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _delete(path: list[str | int]) -> Callable[[dict[str, Any]], None]:
    def mutate(result: dict[str, Any]) -> None:
        node: Any = result
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


def _intrinsics(**values: Any) -> Callable[[dict[str, Any]], None]:
    return _set(["sensor_data", "sensor_meta", 1, "intrinsics"], values)


def _single_frame(result: dict[str, Any]) -> None:
    # Older single-frame jobs: `sensors` and `ego_pose` directly under sensor_data, no `frames`.
    frame = sd(result).pop("frames")[0]
    sd(result)["sensors"] = frame["sensors"]
    sd(result)["ego_pose"] = frame["ego_pose"]
    ad(result)["frames"] = [{"_id": "0"}]
    ad(result)["masks"] = ad(result)["masks"][:1]


def _single_frame_without_pose(result: dict[str, Any]) -> None:
    _single_frame(result)
    del sd(result)["ego_pose"]


def _two_lidars(result: dict[str, Any]) -> None:
    sd(result)["sensor_meta"].append({"id": "lidar-2", "name": "rear_lidar", "modality": "lidar"})
    sd(result)["frames"][0]["sensors"].insert(0, {"sensor_id": "lidar-2", "data_url": f"{STORAGE}/rear0.pcd"})
    ad(result)["masks"].append({"frame_id": "0", "sensor_id": "lidar-2", "label_url": f"{STORAGE}/rear-m0.json"})


def _no_sensor_meta(result: dict[str, Any]) -> None:
    del sd(result)["sensor_meta"]
    for frame in sd(result)["frames"]:
        frame["sensors"] = [s for s in frame["sensors"] if s["sensor_id"] == LIDAR_ID]


def _global_annotation(result: dict[str, Any]) -> None:
    ad(result)["annotations"].append({"label": "Pole", "label_key": 7})  # no frame_id: every frame


def _label_fallbacks(result: dict[str, Any]) -> None:
    annotations = ad(result)["annotations"]
    annotations[1] = {"text": "Car (text)", "label_key": 1, "frame_id": "0"}
    annotations[2] = {"class_id": "c-car", "label_key": 2, "frame_id": "0"}


def _keyless_annotation(result: dict[str, Any]) -> None:
    ad(result)["annotations"].append({"label": "Cuboid", "label_key": None, "frame_id": "0"})


def _numeric_ids(result: dict[str, Any]) -> None:
    sd(result)["frames"][0]["frame_id"] = 0
    ad(result)["masks"][0]["frame_id"] = 0
    ad(result)["annotations"][0]["label_key"] = "0"
    ad(result)["annotations"][1]["label_key"] = 1.0


def _mask_in_url(result: dict[str, Any]) -> None:
    ad(result)["masks"][1] = {"frame_id": "1", "sensor_id": LIDAR_ID, "label_url": "", "url": f"{STORAGE}/m1.pcd"}


VALID: list[tuple[str, Callable[[dict[str, Any]], None], Callable[[JobResult], bool]]] = [
    (
        "ego_pose missing is identity",
        _delete(["sensor_data", "frames", 0, "ego_pose"]),
        lambda r: r.frames[0].ego_pose == Pose.identity(),
    ),
    (
        "ego_pose null is identity",
        _set(["sensor_data", "frames", 0, "ego_pose"], None),
        lambda r: r.frames[0].ego_pose == Pose.identity(),
    ),
    (
        "heading {} keeps position",
        _set(["sensor_data", "frames", 0, "ego_pose", "heading"], {}),
        lambda r: r.frames[0].ego_pose == Pose((1, 0, 0, 0), (10, 20, 1)),
    ),
    (
        "position missing is origin",
        _delete(["sensor_data", "frames", 0, "ego_pose", "position"]),
        lambda r: r.frames[0].ego_pose == Pose((S2, 0, 0, S2), (0, 0, 0)),
    ),
    (
        "non-unit quaternion is normalised",
        _set(["sensor_data", "frames", 0, "ego_pose", "heading"], {"w": 2, "x": 0, "y": 0, "z": 2}),
        lambda r: close(r.frames[0].ego_pose.rotation, (S2, 0, 0, S2)),
    ),
    (
        "sensor referenced by name",
        _set(["sensor_data", "frames", 0, "sensors", 0, "sensor_id"], "top_lidar"),
        lambda r: (r.frames[0].sensor_id, r.frames[0].mask_url) == (LIDAR_ID, f"{STORAGE}/m0.json"),
    ),
    (
        "camera referenced by name",
        _set(["sensor_data", "frames", 0, "sensors", 1, "sensor_id"], "front_cam"),
        lambda r: r.frames[0].camera_poses == (Pose((1, 0, 0, 0), (1, 2, 3)),),
    ),
    (
        "sensor_meta ids shared, frame names them",
        lambda r: (
            sd(r)["sensor_meta"][1].update(id=LIDAR_ID)
            or sd(r)["frames"][0]["sensors"][1].update(sensor_id="front_cam")
            or sd(r)["frames"][0]["sensors"][0].update(sensor_id="top_lidar")
            or sd(r)["frames"][1]["sensors"][0].update(sensor_id="top_lidar")
        ),
        lambda r: (
            (r.frames[0].sensor_id, r.cameras[0].sensor_id, r.frames[0].camera_poses[0] is not None)
            == (LIDAR_ID, LIDAR_ID, True)
        ),
    ),
    (
        "unknown sensor is ignored",
        lambda r: sd(r)["frames"][0]["sensors"].append({"sensor_id": "radar", "data_url": "x"}),
        lambda r: r.frames[0].pointcloud_url == f"{STORAGE}/0.pcd",
    ),
    (
        "mis-cased intrinsics keys",
        _intrinsics(FX=800, fY=810, Cx=400, cY=300, K1=0.5, P2=0.01),
        lambda r: (
            (
                r.cameras[0].fx,
                r.cameras[0].fy,
                r.cameras[0].cx,
                r.cameras[0].cy,
                r.cameras[0].radial[0],
                r.cameras[0].tangential,
            )
            == (800, 810, 400, 300, 0.5, (0.0, 0.01))
        ),
    ),
    (
        "missing coefficients are 0",
        _intrinsics(fx=800, fy=810, cx=400, cy=300),
        lambda r: (
            r.cameras[0].radial == (0.0,) * 6
            and r.cameras[0].tangential == (0.0, 0.0)
            and r.cameras[0].skew == 0.0
            and r.cameras[0].scale_factor == 1.0
        ),
    ),
    (
        "null coefficients are 0",
        _intrinsics(fx=800, fy=810, cx=400, cy=300, k1=None, p1=None, skew=None),
        lambda r: r.cameras[0].radial[0] == 0.0 and r.cameras[0].tangential == (0.0, 0.0) and r.cameras[0].skew == 0,
    ),
    (
        "numbers as strings",
        _intrinsics(fx="800", fy="810.5", cx="400", cy="300", k2="-0.25"),
        lambda r: (r.cameras[0].fy, r.cameras[0].radial[1]) == (810.5, -0.25),
    ),
    (
        "brown_conrady k1..k6",
        _intrinsics(fx=1, fy=1, cx=0, cy=0, k1=1, k2=2, k3=3, k4=4, k5=5, k6=6),
        lambda r: r.cameras[0].radial == (1, 2, 3, 4, 5, 6),
    ),
    (
        "camera_model missing",
        _delete(["sensor_data", "sensor_meta", 1, "camera_model"]),
        lambda r: r.cameras[0].model == "brown_conrady" and r.cameras[0].tangential == (0.001, 0.002),
    ),
    (
        "camera_model null",
        _set(["sensor_data", "sensor_meta", 1, "camera_model"], None),
        lambda r: r.cameras[0].model == "brown_conrady",
    ),
    (
        "camera_model empty",
        _set(["sensor_data", "sensor_meta", 1, "camera_model"], ""),
        lambda r: r.cameras[0].model == "brown_conrady",
    ),
    (
        "camera_model upper case",
        _set(["sensor_data", "sensor_meta", 1, "camera_model"], "Brown_Conrady"),
        lambda r: r.cameras[0].model == "brown_conrady",
    ),
    (
        "fisheye",
        lambda r: camera_meta(r).update(
            camera_model="fisheye",
            intrinsics={
                "fx": 500,
                "fy": 500,
                "cx": 640,
                "cy": 360,
                "k1": 0.1,
                "k2": 0.2,
                "k3": 0.3,
                "k4": 0.4,
                "skew": 2,
                "p1": 0.5,
            },
        ),
        lambda r: (
            (r.cameras[0].model, r.cameras[0].radial, r.cameras[0].tangential, r.cameras[0].skew)
            == ("fisheye", (0.1, 0.2, 0.3, 0.4), (0.0, 0.0), 2.0)
        ),
    ),
    (
        "scale_factor 0 is 1",
        _intrinsics(fx=1, fy=1, cx=0, cy=0, scale_factor=0),
        lambda r: r.cameras[0].scale_factor == 1.0,
    ),
    ("scale_factor missing is 1", _intrinsics(fx=1, fy=1, cx=0, cy=0), lambda r: r.cameras[0].scale_factor == 1.0),
    (
        "scale_factor kept",
        _intrinsics(fx=1, fy=1, cx=0, cy=0, scale_factor=0.5),
        lambda r: r.cameras[0].scale_factor == 0.5,
    ),
    (
        "missing mask skips the frame",
        lambda r: ad(r)["masks"].pop(1),
        lambda r: [f.frame_id for f in r.frames] == ["0"] and r.skipped_frames == (("1", "no mask"),),
    ),
    (
        "masks null skips every frame",
        _set(["annotation_data", "masks"], None),
        lambda r: r.frames == () and r.skipped_frames == (("0", "no mask"), ("1", "no mask")),
    ),
    (
        "frame without lidar is skipped",
        _set(["sensor_data", "frames", 1, "sensors"], []),
        lambda r: [f.frame_id for f in r.frames] == ["0"] and r.skipped_frames == (("1", "no lidar point cloud"),),
    ),
    (
        "annotation_data missing",
        _delete(["annotation_data"]),
        lambda r: r.frames == () and r.labels == () and len(r.skipped_frames) == 2,
    ),
    (
        "annotation without frame_id labels every frame",
        _global_annotation,
        lambda r: keys_of(r.frames[0])[7] == "Pole" and keys_of(r.frames[1]) == {1: "Person", 7: "Pole"},
    ),
    (
        "label falls back to text, then class_id",
        _label_fallbacks,
        lambda r: keys_of(r.frames[0]) == {0: "Road", 1: "Car (text)", 2: "c-car"},
    ),
    (
        "annotation without label_key is not a mask label",
        _keyless_annotation,
        lambda r: keys_of(r.frames[0]) == {0: "Road", 1: "Car", 2: "Car"},
    ),
    (
        "numeric ids and keys",
        _numeric_ids,
        lambda r: r.frames[0].frame_id == "0" and keys_of(r.frames[0]) == {0: "Road", 1: "Car", 2: "Car"},
    ),
    (
        "negative and large label keys",
        lambda r: (
            ad(r)["annotations"].append({"label": "Big", "label_key": 2**40, "frame_id": "1"})
            or ad(r)["annotations"].append({"label": "Neg", "label_key": -3, "frame_id": "1"})
        ),
        lambda r: keys_of(r.frames[1]) == {-3: "Neg", 1: "Person", 2**40: "Big"},
    ),
    ("mask in 'url' when label_url is empty", _mask_in_url, lambda r: r.frames[1].mask_url == f"{STORAGE}/m1.pcd"),
    (
        "mask of the lidar picked among lidars",
        _two_lidars,
        lambda r: (
            (r.frames[0].sensor_id, r.frames[0].pointcloud_url, r.frames[0].mask_url)
            == ("lidar-2", f"{STORAGE}/rear0.pcd", f"{STORAGE}/rear-m0.json")
        ),
    ),
    (
        "no sensor_meta: the PCD is the lidar",
        _no_sensor_meta,
        lambda r: (
            [(f.sensor_id, f.pointcloud_url) for f in r.frames]
            == [(LIDAR_ID, f"{STORAGE}/0.pcd"), (LIDAR_ID, f"{STORAGE}/1.pcd")]
            and r.cameras == ()
        ),
    ),
    (
        "single-frame layout",
        _single_frame,
        lambda r: (
            [(f.frame_id, f.pointcloud_url, f.mask_url) for f in r.frames]
            == [("0", f"{STORAGE}/0.pcd", f"{STORAGE}/m0.json")]
            and r.frames[0].ego_pose == Pose((S2, 0, 0, S2), (10, 20, 1))
            and r.frames[0].camera_poses == (Pose((1, 0, 0, 0), (1, 2, 3)),)
            and keys_of(r.frames[0]) == {0: "Road", 1: "Car", 2: "Car"}
        ),
    ),
    (
        "single-frame layout without ego_pose",
        _single_frame_without_pose,
        lambda r: r.frames[0].ego_pose == Pose.identity(),
    ),
    (
        "modality case-insensitive",
        lambda r: sd(r)["sensor_meta"][0].update(modality="LiDAR"),
        lambda r: len(r.frames) == 2,
    ),
]


@pytest.mark.parametrize(("mutate", "check"), [row[1:] for row in VALID], ids=[row[0] for row in VALID])
def test_valid_variants(mutate: Callable[[dict[str, Any]], None], check: Callable[[JobResult], bool]) -> None:
    payload = current_result()
    mutate(payload)
    result = parse(payload)
    assert check(result), result


LEGACY_VALID: list[tuple[str, Callable[[dict[str, Any]], None], Callable[[JobResult], bool]]] = [
    (
        "label from id when text is missing",
        lambda r: r["legend"][2].pop("text"),
        lambda r: keys_of(r.frames[0])[0] == "cls-ground",
    ),
    (
        "no url: no frame, listed as skipped",
        lambda r: r.pop("url"),
        lambda r: r.frames == () and r.skipped_frames == (("0", "no mask"),) and len(r.labels) == 3,
    ),
    ("label_key as string", _set(["legend", 0, "label_key"], "5"), lambda r: 5 in keys_of(r.frames[0])),
    ("empty legend", _set(["legend"], []), lambda r: r.frames[0].labels == ()),
]


@pytest.mark.parametrize(("mutate", "check"), [row[1:] for row in LEGACY_VALID], ids=[row[0] for row in LEGACY_VALID])
def test_legacy_variants(mutate: Callable[[dict[str, Any]], None], check: Callable[[JobResult], bool]) -> None:
    payload = legacy_result()
    mutate(payload)
    result = parse(payload)
    assert result.format == "legacy"
    assert check(result), result


# ------------------------------------------------------------------------------------------- malformed


def _ambiguous_id(result: dict[str, Any]) -> None:
    # Like the seed: a camera and a lidar share an id, and the frame names the sensor by that id.
    camera_meta(result)["id"] = LIDAR_ID


def _ambiguous_name(result: dict[str, Any]) -> None:
    sd(result)["sensor_meta"].append({"id": "lidar-9", "name": "top_lidar", "modality": "lidar"})
    sd(result)["frames"][1]["sensors"][0]["sensor_id"] = "top_lidar"


MALFORMED: list[tuple[str, Callable[[dict[str, Any]], None], tuple[str, ...]]] = [
    (
        "sensor_data not an object",
        _set(["sensor_data"], []),
        (f"job {JOB}: sensor_data: expected an object, got list",),
    ),
    ("sensor_data missing", _delete(["sensor_data"]), (f"job {JOB}: <root>: missing required key 'sensor_data'",)),
    (
        "frames not an array",
        _set(["sensor_data", "frames"], {"0": {}}),
        (f"job {JOB}: sensor_data.frames: expected an array",),
    ),
    (
        "frame not an object",
        _set(["sensor_data", "frames", 1], "frame"),
        (f"job {JOB}", "sensor_data.frames[1]: expected an object"),
    ),
    (
        "sensors not an array",
        _set(["sensor_data", "frames", 1, "sensors"], {"x": 1}),
        (f"job {JOB}, frame 1: sensor_data.frames[1].sensors: expected an array, got dict",),
    ),
    (
        "ambiguous sensor id",
        _ambiguous_id,
        (f"job {JOB}, frame 0: sensor_data.frames[0].sensors[0]:", "'lidar-1' is ambiguous", "front_cam, top_lidar"),
    ),
    (
        "ambiguous sensor name",
        _ambiguous_name,
        (f"job {JOB}, frame 1: sensor_data.frames[1].sensors[0]:", "'top_lidar' is ambiguous"),
    ),
    (
        "heading without w",
        _delete(["sensor_data", "frames", 0, "ego_pose", "heading", "w"]),
        (f"job {JOB}, frame 0: sensor_data.frames[0].ego_pose.heading: missing required key 'w'",),
    ),
    (
        "zero quaternion",
        _set(["sensor_data", "frames", 0, "ego_pose", "heading"], {"w": 0, "x": 0, "y": 0, "z": 0}),
        (f"job {JOB}, frame 0: sensor_data.frames[0].ego_pose.heading:", "zero quaternion"),
    ),
    (
        "non-finite position",
        _set(["sensor_data", "frames", 0, "ego_pose", "position", "y"], "nan"),
        (f"job {JOB}, frame 0: sensor_data.frames[0].ego_pose.position.y: expected a finite number",),
    ),
    (
        "heading a string",
        _set(["sensor_data", "frames", 0, "ego_pose", "heading", "z"], "north"),
        (f"job {JOB}, frame 0: sensor_data.frames[0].ego_pose.heading.z: expected a number, got 'north'",),
    ),
    (
        "ego_pose not an object",
        _set(["sensor_data", "frames", 1, "ego_pose"], [1, 0, 0, 0]),
        (f"job {JOB}, frame 1: sensor_data.frames[1].ego_pose: expected an object",),
    ),
    (
        "camera pose heading a list",
        _set(["sensor_data", "frames", 0, "sensors", 1, "sensor_pose", "heading"], [1, 0]),
        (f"job {JOB}, frame 0: sensor_data.frames[0].sensors[1].sensor_pose.heading: expected an object",),
    ),
    (
        "malformed pose in a skipped frame",
        lambda r: (
            ad(r)["masks"].pop(1)
            and _set(["sensor_data", "frames", 1, "ego_pose"], {"heading": {"w": "x", "x": 0, "y": 0, "z": 0}})(r)
        ),
        (f"job {JOB}, frame 1: sensor_data.frames[1].ego_pose.heading.w",),
    ),
    (
        "camera without fx",
        _intrinsics(fy=1, cx=0, cy=0),
        (f"job {JOB}: sensor_data.sensor_meta[1].intrinsics: camera 'front_cam' has no 'fx'",),
    ),
    (
        "camera without intrinsics",
        _delete(["sensor_data", "sensor_meta", 1, "intrinsics"]),
        (f"job {JOB}: sensor_data.sensor_meta[1].intrinsics:", "has no 'fx'"),
    ),
    (
        "focal length 0",
        _intrinsics(fx=0, fy=1, cx=0, cy=0),
        (f"job {JOB}: sensor_data.sensor_meta[1].intrinsics:", "focal lengths must be positive"),
    ),
    (
        "coefficient not a number",
        _intrinsics(fx=1, fy=1, cx=0, cy=0, k3=[1]),
        (f"job {JOB}: sensor_data.sensor_meta[1].intrinsics.k3: expected a finite number",),
    ),
    (
        "mis-cased coefficient not a number",
        _intrinsics(fx=1, fy=1, cx=0, cY="middle"),
        (f"job {JOB}: sensor_data.sensor_meta[1].intrinsics.cY: expected a number, got 'middle'",),
    ),
    (
        "unknown camera model",
        _set(["sensor_data", "sensor_meta", 1, "camera_model"], "pinhole"),
        (f"job {JOB}: sensor_data.sensor_meta[1].camera_model: unknown camera model 'pinhole'",),
    ),
    (
        "intrinsics not an object",
        _set(["sensor_data", "sensor_meta", 1, "intrinsics"], [1000, 1000]),
        (f"job {JOB}: sensor_data.sensor_meta[1].intrinsics: expected an object",),
    ),
    (
        "sensor_meta not an array",
        _set(["sensor_data", "sensor_meta"], {"id": "x"}),
        (f"job {JOB}: sensor_data.sensor_meta: expected an array",),
    ),
    (
        "label_key not an integer",
        _set(["annotation_data", "annotations", 1, "label_key"], "one"),
        (f"job {JOB}, frame 0: annotation_data.annotations[1].label_key: expected an integer, got 'one'",),
    ),
    (
        "label_key fractional",
        _set(["annotation_data", "annotations", 3, "label_key"], 1.5),
        (f"job {JOB}, frame 1: annotation_data.annotations[3].label_key: expected an integer, got 1.5",),
    ),
    (
        "label_key boolean",
        _set(["annotation_data", "annotations", 0, "label_key"], True),
        (f"job {JOB}, frame 0: annotation_data.annotations[0].label_key: expected an integer, got True",),
    ),
    (
        "label_key beyond int64",
        _set(["annotation_data", "annotations", 0, "label_key"], 2**63),
        (f"job {JOB}, frame 0: annotation_data.annotations[0].label_key:", "64-bit"),
    ),
    (
        "annotation without a name",
        _set(["annotation_data", "annotations", 2], {"label_key": 2, "frame_id": "0"}),
        (f"job {JOB}, frame 0: annotation_data.annotations[2]: annotation has neither 'label', 'text' nor 'class_id'",),
    ),
    (
        "one key, two classes in a frame",
        lambda r: ad(r)["annotations"].append({"label": "Truck", "label_key": 1, "frame_id": "0"}),
        (f"job {JOB}, frame 0: sensor_data.frames[0]: label key 1 names two classes in frame '0': 'Car' and 'Truck'",),
    ),
    (
        "annotations not an array",
        _set(["annotation_data", "annotations"], {"a": 1}),
        (f"job {JOB}: annotation_data.annotations: expected an array",),
    ),
    (
        "annotation_data not an object",
        _set(["annotation_data"], "none"),
        (f"job {JOB}: annotation_data: expected an object",),
    ),
    (
        "frame_id an object",
        _set(["sensor_data", "frames", 0, "frame_id"], {"id": 0}),
        (f"job {JOB}: sensor_data.frames[0].frame_id: expected a string, got dict",),
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), [row[1:] for row in MALFORMED], ids=[row[0] for row in MALFORMED])
def test_malformed_results_name_job_frame_and_path(
    mutate: Callable[[dict[str, Any]], None], expected: tuple[str, ...]
) -> None:
    payload = current_result()
    mutate(payload)
    with pytest.raises(PlaymentFormatError) as info:
        parse(payload)
    for piece in expected:
        assert piece in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({}, f"job {JOB}: <root>: unknown result format"),
        ({"annotations": []}, f"job {JOB}: <root>: unknown result format"),
        ([], f"job {JOB}: <root>: expected an object, got list"),
        (None, f"job {JOB}: <root>: expected an object, got NoneType"),
        (
            {"legend": [{"id": "c", "text": "Car"}], "url": "u"},
            f"job {JOB}: legend[0]: missing required key 'label_key'",
        ),
        (
            {"legend": [{"label_key": 1, "color": "#fff"}], "url": "u"},
            f"job {JOB}: legend[0]: legend entry has neither",
        ),
        ({"legend": {"id": "c"}, "url": "u"}, f"job {JOB}: legend: expected an array, got dict"),
        ({"legend": [], "url": 5.5}, f"job {JOB}: url: expected a string, got float"),
        (
            {"legend": [{"text": "Car", "label_key": "k"}], "url": "u"},
            f"job {JOB}: legend[0].label_key: expected an integer",
        ),
    ],
)
def test_malformed_payloads(payload: Any, expected: str) -> None:
    with pytest.raises(PlaymentFormatError) as info:
        parse(payload)
    assert expected in str(info.value)


# ------------------------------------------------------------------------------------------- fuzzing


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += _paths(child, (*prefix, index))
    return out


_BASE = current_result()
_PATHS = [p for p in _paths(_BASE) if p]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(_PATHS), value=json_values)
def test_any_edit_parses_or_raises_format_error(path: tuple[Any, ...], value: Any) -> None:
    payload = copy.deepcopy(_BASE)
    _set(list(path), value)(payload)
    try:
        result = parse(payload)
    except PlaymentFormatError as exc:
        assert f"job {JOB}" in str(exc)
        return
    for frame in result.frames:
        assert all(-(2**63) <= e.label_key < 2**63 for e in frame.labels)
        assert frame.pointcloud_url and frame.mask_url


# ------------------------------------------------------------------------------------------- other models


def test_project_details_with_envelope() -> None:
    payload = {
        "data": {
            "name": "Lidar seg",
            "base": "pointcloud_segmentation",
            "batches": [
                {
                    "id": "b1",
                    "name": "First",
                    "description": "d",
                    "is_default": True,
                    "total_jobs": 3,
                    "completed_jobs": "2",
                    "total_frames": 30,
                    "completed_frames": None,
                    "status": "in_progress",
                },
                {"id": "b2", "name": "Second"},
            ],
        },
        "success": True,
    }
    project = Project.from_api(payload, project_id=PROJECT)
    assert (project.project_id, project.name) == (PROJECT, "Lidar seg")
    first, second = project.batches
    assert (first.id, first.name, first.description, first.is_default) == ("b1", "First", "d", True)
    assert (first.total_jobs, first.completed_jobs, first.total_frames, first.completed_frames) == (3, 2, 30, None)
    assert (second.id, second.name, second.is_default, second.total_jobs, second.status) == (
        "b2",
        "Second",
        False,
        None,
        "",
    )
    # An unwrapped payload means the same.
    assert Project.from_api(payload["data"], project_id=PROJECT) == project


def test_batch_page_and_job() -> None:
    page = BatchPage.from_api(
        {
            "data": {
                "jobs": [{"id": "j1", "reference_id": "r1", "status": "completed"}, {"id": 7}],
                "next_page_token": "abc",
            },
            "success": True,
        },
        project_id=PROJECT,
        batch_id="b1",
    )
    assert [(j.job_id, j.reference_id, j.status, j.batch_id, j.is_completed) for j in page.jobs] == [
        ("j1", "r1", "completed", "b1", True),
        ("7", "", "", "b1", False),
    ]
    assert page.next_page_token == "abc"
    assert (
        BatchPage.from_api({"data": {"jobs": []}, "success": True}, project_id=PROJECT, batch_id="b1").next_page_token
        == ""
    )

    job = Job.from_api(
        {
            "data": {
                "project_id": PROJECT,
                "job_id": "j1",
                "batch_id": "b1",
                "status": "completed",
                "reference_id": "001",
                "work_flow_id": "wf",
                "priority_weight": 5,
                "tag": "wf",
                "result": f"{STORAGE}/r.json",
            },
            "success": True,
        },
        project_id=PROJECT,
        job_id="j1",
    )
    assert job == Job(PROJECT, "j1", "completed", f"{STORAGE}/r.json", "b1", "001", "wf", 5.0, "wf")
    assert job.is_completed
    pending = Job.from_api(
        {"data": {"status": "labelling", "result": ""}, "success": True}, project_id=PROJECT, job_id="j2"
    )
    assert (pending.job_id, pending.project_id, pending.is_completed, pending.result_url) == ("j2", PROJECT, False, "")


@pytest.mark.parametrize(
    ("parse_it", "expected"),
    [
        (
            lambda: Project.from_api({"data": None, "success": True}, project_id="p9"),
            "project p9: <root>: missing required key 'data'",
        ),
        (
            lambda: Project.from_api({"data": {"batches": [{"name": "x"}]}, "success": True}, project_id="p9"),
            "project p9: data.batches[0]: missing required key 'id'",
        ),
        (
            lambda: Project.from_api(
                {"data": {"batches": [{"id": "b", "total_jobs": "many"}]}, "success": True}, project_id="p9"
            ),
            "project p9: data.batches[0].total_jobs: expected an integer",
        ),
        (
            lambda: BatchPage.from_api(
                {"data": {"jobs": [{"status": "x"}]}, "success": True}, project_id="p9", batch_id="b9"
            ),
            "project p9, batch b9: data.jobs[0]: missing required key 'id'",
        ),
        (
            lambda: BatchPage.from_api({"data": {"jobs": "none"}, "success": True}, project_id="p9", batch_id="b9"),
            "project p9, batch b9: data.jobs: expected an array",
        ),
        (
            lambda: Job.from_api({"data": {"result": "u"}, "success": True}, project_id="p9", job_id="j9"),
            "job j9: data: missing required key 'status'",
        ),
        (
            lambda: Job.from_api(
                {"data": {"status": "completed", "priority_weight": "high"}, "success": True},
                project_id="p9",
                job_id="j9",
            ),
            "job j9: data.priority_weight: expected a number",
        ),
        (lambda: Job.from_api("oops", project_id="p9", job_id="j9"), "job j9: <root>: expected an object"),
    ],
)
def test_malformed_api_payloads(parse_it: Callable[[], Any], expected: str) -> None:
    with pytest.raises(PlaymentFormatError) as info:
        parse_it()
    assert expected in str(info.value)


_annotation = st.fixed_dictionaries(
    {
        "label_key": st.integers(-(2**63), 2**63 - 1),
        "label": st.text(min_size=1, max_size=8),
    },
    optional={
        "class_id": st.one_of(st.none(), st.text(max_size=8)),
        "track_id": st.one_of(st.none(), st.text(max_size=8)),
        "frame_id": st.one_of(st.none(), st.text(max_size=3)),
        "text": st.text(max_size=8),
    },
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_annotation, max_size=20))
def test_fast_annotation_path_equals_the_validating_path(annotations: list[dict]) -> None:
    from playment_torch.models import _label_entries, _Node

    fast = _label_entries(_Node(annotations, "annotation_data.annotations", "job j"))
    # An annotation without a key is skipped, and sends the whole list through the validating path.
    slow = _label_entries(_Node([*annotations, {"label_key": None}], "annotation_data.annotations", "job j"))
    assert fast == slow
