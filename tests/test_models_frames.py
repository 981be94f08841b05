"""Frame identity in job results, hostile JSON, and a parse cost that does not grow with the job.

A frame must never get another frame's mask or labels (issue 10, item 1): each case below builds a result
that used to parse into a wrong pairing, and checks what the parse says now against the ground truth the
test itself wrote. The fuzz tests feed ``from_api`` JSON-like values no API should send (deep nesting, huge
integers, NaN, NUL bytes) and accept only a parse or a ``PlaymentFormatError`` (issue 10, item 12).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_models import _paths  # every JSON path of a payload, the one definition

from playment_torch.errors import PlaymentFormatError
from playment_torch.models import BatchPage, Job, JobResult, Project

JOB = "job-7"
PROJECT = "proj-1"
STORE = "https://store.example/p"


def parse(payload: Any) -> JobResult:
    return JobResult.from_api(payload, project_id=PROJECT, job_id=JOB)


def result(
    frames: list[str | None],
    masks: list[dict[str, Any]] | None = None,
    annotations: list[dict[str, Any]] | None = None,
    *,
    extra_meta: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A current-format result with one lidar; frame ``None`` has no frame_id; a mask per frame by default."""
    sensor_frames = []
    for index, frame_id in enumerate(frames):
        frame: dict[str, Any] = {"sensors": [{"sensor_id": "lidar", "data_url": f"{STORE}/{index}.pcd"}]}
        if frame_id is not None:
            frame["frame_id"] = frame_id
        sensor_frames.append(frame)
    if masks is None:
        masks = [
            {"frame_id": f, "sensor_id": "lidar", "label_url": f"{STORE}/m{i}.json"} for i, f in enumerate(frames) if f
        ]
    return {
        "annotation_data": {"annotations": annotations or [], "masks": masks},
        "sensor_data": {
            "frames": sensor_frames,
            "sensor_meta": [
                {"id": "lidar", "name": "top", "modality": "lidar", "primary_view": True},
                *(extra_meta or []),
            ],
        },
    }


# ------------------------------------------------------------------------------------------- frame identity


def test_two_frames_with_one_id_are_an_error_naming_both() -> None:
    # Before: the second frame "a" silently got the first frame's mask (m0) and labels.
    payload = result(["a", "b", "a"])
    with pytest.raises(PlaymentFormatError) as info:
        parse(payload)
    message = str(info.value)
    for piece in (f"job {JOB}", "frame id 'a' is used twice", "sensor_data.frames[0]", "sensor_data.frames[2]"):
        assert piece in message


def test_a_position_id_colliding_with_a_named_frame_is_an_error() -> None:
    # Frame 1 has no id, so its id is its position "1", which frame 0 already uses.
    with pytest.raises(PlaymentFormatError, match=r"frame id '1' is used twice"):
        parse(result(["1", None]))


def test_mask_without_frame_id_in_a_multi_frame_job_is_an_error() -> None:
    # Before: the one mask was applied to both frames (equal-sized organized clouds passed the size check).
    payload = result(["0", "1"], masks=[{"sensor_id": "lidar", "label_url": f"{STORE}/only.json"}])
    with pytest.raises(PlaymentFormatError) as info:
        parse(payload)
    assert f"job {JOB}: annotation_data.masks[0]: mask has no frame_id in a job of 2 frames" in str(info.value)


def test_mask_without_frame_id_in_a_single_frame_job_is_that_frames() -> None:
    parsed = parse(result(["0"], masks=[{"sensor_id": "lidar", "label_url": f"{STORE}/only.json"}]))
    assert [(f.frame_id, f.pointcloud_url, f.mask_url) for f in parsed.frames] == [
        ("0", f"{STORE}/0.pcd", f"{STORE}/only.json")
    ]


def test_masks_and_annotations_naming_no_frame_are_listed_not_ignored() -> None:
    masks = [
        {"frame_id": "0", "sensor_id": "lidar", "label_url": f"{STORE}/m0.json"},
        {"frame_id": "9", "sensor_id": "lidar", "label_url": f"{STORE}/m9.json"},
    ]
    annotations = [
        {"label": "Car", "label_key": 1, "frame_id": "0"},
        {"label": "Car", "label_key": 1, "frame_id": "frame-0"},
    ]
    parsed = parse(result(["0", "1"], masks=masks, annotations=annotations))
    assert [(f.frame_id, f.mask_url) for f in parsed.frames] == [("0", f"{STORE}/m0.json")]
    assert {entry.label_key: entry.label for entry in parsed.frames[0].labels} == {1: "Car"}
    assert parsed.skipped_frames == (
        ("1", "no mask"),
        ("9", "named by annotation_data but not a frame of sensor_data"),
        ("frame-0", "named by annotation_data but not a frame of sensor_data"),
    )


def test_the_only_frame_takes_the_id_its_masks_and_annotations_use() -> None:
    # The frame names itself nowhere: its id used to be its position "0", so annotations naming "f-7" labelled
    # nothing and every point of the frame came out unlabeled.
    masks = [{"frame_id": "f-7", "sensor_id": "lidar", "label_url": f"{STORE}/m.json"}]
    annotations = [{"label": "Car", "label_key": 3, "frame_id": "f-7"}, {"label": "Road", "label_key": 0}]
    parsed = parse(result([None], masks=masks, annotations=annotations))
    (frame,) = parsed.frames
    assert (frame.frame_id, frame.mask_url) == ("f-7", f"{STORE}/m.json")
    assert {entry.label_key: entry.label for entry in frame.labels} == {0: "Road", 3: "Car"}
    assert parsed.skipped_frames == ()


def test_a_mask_of_another_lidar_is_never_taken() -> None:
    # Frame 0 has only the top lidar's cloud; its only mask labels the rear lidar. Before: the top lidar's
    # points got the rear lidar's mask.
    rear = {"id": "rear", "name": "rear_lidar", "modality": "lidar"}
    masks = [
        {"frame_id": "0", "sensor_id": "rear", "label_url": f"{STORE}/rear-m0.json"},
        {"frame_id": "1", "sensor_id": "lidar", "label_url": f"{STORE}/m1.json"},
    ]
    parsed = parse(result(["0", "1"], masks=masks, extra_meta=[rear]))
    assert [(f.frame_id, f.mask_url) for f in parsed.frames] == [("1", f"{STORE}/m1.json")]
    assert parsed.skipped_frames == (("0", "no mask for lidar 'lidar' (the frame's masks label sensor 'rear')"),)


def test_a_mask_naming_the_lidar_by_name_is_its_mask() -> None:
    masks = [
        {"frame_id": "0", "sensor_id": "", "label_url": f"{STORE}/unnamed.json"},
        {"frame_id": "0", "sensor_id": "top", "label_url": f"{STORE}/top.json"},
    ]
    parsed = parse(result(["0"], masks=masks))
    assert parsed.frames[0].mask_url == f"{STORE}/top.json"


def test_two_different_unattributed_masks_for_one_frame_are_an_error() -> None:
    masks = [
        {"frame_id": "0", "label_url": f"{STORE}/a.json"},
        {"frame_id": "0", "label_url": f"{STORE}/b.json"},
    ]
    with pytest.raises(PlaymentFormatError) as info:
        parse(result(["0", "1"], masks=masks))
    message = str(info.value)
    assert f"job {JOB}, frame 0" in message and "annotation_data.masks[0], annotation_data.masks[1]" in message


def test_ids_with_nul_bytes_keep_cameras_apart() -> None:
    # Camera poses used to be keyed by name + NUL + id: these two cameras shared a key and one pose.
    cameras = [
        {"id": "c", "name": "a\x00b", "modality": "camera", "intrinsics": {"fx": 1, "fy": 1, "cx": 0, "cy": 0}},
        {"id": "b\x00c", "name": "a", "modality": "camera", "intrinsics": {"fx": 1, "fy": 1, "cx": 0, "cy": 0}},
    ]
    payload = result(["0\x00"], extra_meta=cameras)
    payload["sensor_data"]["frames"][0]["sensors"] += [
        {"sensor_id": "c", "sensor_pose": {"position": {"x": 1, "y": 0, "z": 0}}},
        {"sensor_id": "b\x00c", "sensor_pose": {"position": {"x": 2, "y": 0, "z": 0}}},
    ]
    (frame,) = parse(payload).frames
    assert frame.frame_id == "0\x00"
    assert [pose.translation if pose else None for pose in frame.camera_poses] == [(1.0, 0.0, 0.0), (2.0, 0.0, 0.0)]


# ------------------------------------------------------------------------------------------- hostile JSON


def _deep(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


HOSTILE = [
    _deep(sys.getrecursionlimit() * 3),
    10**5000,
    -(10**400),
    2**64,
    float("nan"),
    float("inf"),
    "\x00",
    "a\x00b",
    "9" * 5000,
    "1e999",
    [[[[[]]]]],
    {"\x00": None},
    True,
]


def _hostile(index: int) -> Any:
    return HOSTILE[index]


# Drawn by index: hypothesis describes a strategy by repr-ing its elements, and the deep one has no repr.
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=6)
    | st.integers(0, len(HOSTILE) - 1).map(_hostile)
)
json_like = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)




def _base() -> dict[str, Any]:
    payload = result(["0", "1"], annotations=[{"label": "Car", "label_key": 1, "frame_id": "0", "track_id": "t"}])
    payload["sensor_data"]["sensor_meta"].append(
        {"id": "cam", "name": "front", "modality": "camera", "intrinsics": {"fx": 1, "fy": 1, "cx": 0, "cy": 0}}
    )
    payload["sensor_data"]["frames"][0]["ego_pose"] = {
        "heading": {"w": 1, "x": 0, "y": 0, "z": 0},
        "position": {"x": 1, "y": 2, "z": 3},
    }
    payload["sensor_data"]["frames"][0]["sensors"].append({"sensor_id": "cam", "sensor_pose": {}})
    return payload


BASE = _base()
PATHS = [p for p in _paths(BASE) if p]
LEGACY = {"legend": [{"id": "c", "text": "Car", "label_key": 1}], "url": f"{STORE}/l.pcd"}
LEGACY_PATHS = [p for p in _paths(LEGACY) if p]


def _put(payload: Any, path: tuple[Any, ...], value: Any) -> None:
    node = payload
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def only_format_errors(parse_it: Callable[[], Any]) -> None:
    try:
        parse_it()
    except PlaymentFormatError as exc:
        assert str(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=json_like)
def test_hostile_value_anywhere_in_a_result(path: tuple[Any, ...], value: Any) -> None:
    payload = copy.deepcopy(BASE)
    _put(payload, path, value)
    only_format_errors(lambda: parse(payload))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(LEGACY_PATHS), value=json_like)
def test_hostile_value_anywhere_in_a_legacy_result(path: tuple[Any, ...], value: Any) -> None:
    payload = copy.deepcopy(LEGACY)
    _put(payload, path, value)
    only_format_errors(lambda: parse(payload))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=json_like, wrap=st.booleans())
def test_hostile_payloads_of_every_model(payload: Any, wrap: bool) -> None:
    if wrap:
        payload = {"data": payload, "success": True}
    only_format_errors(lambda: parse(payload))
    only_format_errors(lambda: Job.from_api(payload, project_id=PROJECT, job_id=JOB))
    only_format_errors(lambda: Project.from_api(payload, project_id=PROJECT))
    only_format_errors(lambda: BatchPage.from_api(payload, project_id=PROJECT, batch_id="b"))


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize(
    "path",
    [
        ("sensor_data", "frames", 0, "frame_id"),
        ("sensor_data", "frames", 0, "ego_pose", "position", "x"),
        ("sensor_data", "frames", 0, "ego_pose", "heading", "w"),
        ("sensor_data", "sensor_meta", 1, "intrinsics", "fx"),
        ("sensor_data", "sensor_meta", 1, "intrinsics", "k1"),
        ("annotation_data", "annotations", 0, "label_key"),
        ("annotation_data", "annotations", 0, "label"),
        ("annotation_data", "masks", 0, "label_url"),
        ("sensor_data", "sensor_meta"),
    ],
)
def test_each_hostile_value_at_each_kind_of_field(path: tuple[Any, ...], value: Any) -> None:
    payload = copy.deepcopy(BASE)
    _put(payload, path, value)
    only_format_errors(lambda: parse(payload))


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: type(v).__name__)
def test_each_hostile_value_in_api_answers(value: Any) -> None:
    only_format_errors(lambda: Job.from_api({"data": {"status": value}}, project_id=PROJECT, job_id=JOB))
    only_format_errors(
        lambda: Job.from_api({"status": "completed", "priority_weight": value}, project_id=PROJECT, job_id=JOB)
    )
    only_format_errors(lambda: Project.from_api({"data": {"batches": [{"id": value}]}}, project_id=PROJECT))
    only_format_errors(lambda: Project.from_api({"batches": [{"id": "b", "total_jobs": value}]}, project_id=PROJECT))


def test_huge_integer_errors_say_its_size_not_its_digits() -> None:
    payload = copy.deepcopy(BASE)
    payload["annotation_data"]["annotations"][0]["label_key"] = 10**5000
    with pytest.raises(PlaymentFormatError, match=r"label_key: expected an integer|an integer of 16610 bits"):
        parse(payload)
    payload = copy.deepcopy(BASE)
    payload["sensor_data"]["frames"][0]["ego_pose"]["position"]["x"] = 10**5000
    with pytest.raises(PlaymentFormatError, match=r"position\.x: expected a finite number, got an integer of"):
        parse(payload)


# ------------------------------------------------------------------------------------------- cost per frame


def job_json(n_frames: int, keys_per_frame: int = 40) -> dict[str, Any]:
    """A job of ``n_frames`` frames, each with its own ``keys_per_frame`` annotations (as Playment gives them)."""
    annotations = [
        {"label": f"class-{k % 7}", "label_key": k, "frame_id": str(f), "track_id": f"t{k}", "class_id": f"c{k % 7}"}
        for f in range(n_frames)
        for k in range(keys_per_frame)
    ]
    return result([str(f) for f in range(n_frames)], annotations=annotations)


def per_frame_seconds(n_frames: int) -> float:
    """Best CPU time per frame of parsing one job (CPU time: other processes on a shared machine do not count)."""
    payload = job_json(n_frames)
    best = math.inf
    for _ in range(max(3, 2000 // n_frames)):
        start = time.process_time()
        parsed = parse(payload)
        best = min(best, (time.process_time() - start) / n_frames)
    assert len(parsed.frames) == n_frames and len(parsed.frames[-1].labels) == 40
    return best


def test_parse_cost_per_frame_does_not_grow_with_frames_per_job() -> None:
    # Before: every frame scanned every annotation of its job (O(F^2)): 217 -> 920 us per frame at 10 -> 500.
    small, large = per_frame_seconds(10), per_frame_seconds(500)
    assert large < 3 * small, f"{small * 1e6:.0f} us per frame at 10 frames, {large * 1e6:.0f} us at 500"
