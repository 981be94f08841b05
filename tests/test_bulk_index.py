"""The bulk result reader indexes every result to the same bytes as the validating parser, or steps aside.

:func:`playment_torch._columns.read_columns` reads the common shape of a result without a Python object per
annotation; on anything unusual it raises ``Unusual`` and the catalog takes the validating parser. These
tests compare :meth:`FrameIndex.to_bytes` of both paths on generated results, on hand-written edge cases and
on randomly damaged results, and check that the catalog's errors are the validating parser's, word for word.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import numpy as np
import pytest
from large_results import result_template

from playment_torch._catalog import Catalog, Refresh
from playment_torch._columns import Unusual, columns_of, read_columns
from playment_torch.cache import ArrayCache
from playment_torch.errors import PlaymentError, PlaymentFormatError
from playment_torch.index import FrameIndex, IndexBuilder
from playment_torch.models import JobResult
from playment_torch.testing.synthetic import make_job

JOB = "job-1"
URL = "https://api.playment.io/results/job-1.json?signature=abc"


def validating(body: bytes) -> bytes | str:
    """The index bytes through the validating parser, or its error message."""
    try:
        payload = json.loads(body)
        builder = IndexBuilder("p")
        builder.add(JobResult.from_api(payload, project_id="p", job_id=JOB), "d", result_url=URL)
        return builder.finish().to_bytes()
    except (PlaymentError, ValueError, RecursionError) as exc:
        return f"{type(exc).__name__}: {exc}"


def bulk(body: bytes) -> bytes | str | None:
    """The index bytes through the bulk reader; ``None`` when it steps aside."""
    try:
        columns = read_columns(body, job_id=JOB)
    except Unusual:
        return None
    builder = IndexBuilder("p")
    builder.add_columns(columns, "d", result_url=URL)
    return builder.finish().to_bytes()


def assert_same(payload: Any, *, fast: bool | None = None) -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    expected = validating(body)
    got = bulk(body)
    if fast is not None:
        assert (got is not None) is fast, "the bulk reader should have " + ("read" if fast else "stepped aside")
    if got is not None:
        assert isinstance(expected, bytes), f"the bulk reader accepted what the validating parser refuses: {expected}"
        assert got == expected


def small_result(frames: int = 3, keys: int = 4) -> dict[str, Any]:
    return json.loads(result_template(frames, keys))  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------------------------- generated


@pytest.mark.parametrize(("frames", "keys"), [(1, 1), (3, 4), (50, 83), (7, 200), (2, 0)])
def test_generated_results_index_identically(frames: int, keys: int) -> None:
    assert_same(small_result(frames, keys), fast=True)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"sensor_ref": "id"},
        {"cameras": 0},
        {"cameras": 1, "key0_is_class": True},
        {"unlabeled_key": 0},
        {"coordinates": "world"},
        {"result_format": "legacy"},
    ],
)
def test_synthetic_jobs_index_identically(options: dict[str, Any]) -> None:
    frames = 1 if options.get("result_format") == "legacy" else 2
    job = make_job(seed=7, n_frames=frames, beams=16, points_per_frame=10_000, **options)
    fast = None if options.get("result_format") == "legacy" else True
    assert_same(job.result, fast=fast)


def test_the_builder_gives_the_same_index_from_columns_of_a_parsed_result() -> None:
    payload = small_result(5, 9)
    results = [(JobResult.from_api(payload, project_id="p", job_id=f"j{n}"), f"d{n}") for n in range(3)]
    built = FrameIndex.build("p", iter(results))
    builder = IndexBuilder("p")
    for result, digest in results:
        builder.add_columns(columns_of(result), digest)
    assert builder.finish().to_bytes() == built.to_bytes()
    assert len(built) == 15


# ----------------------------------------------------------------------------------------------- edge cases


def _edit(path: str, value: Any) -> Any:
    """A result with the value at a dotted path (list indices as numbers) replaced, or deleted (``...``)."""
    payload = small_result()
    *parents, last = path.split(".")
    node: Any = payload
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return payload


EDGES = {
    # Read by the bulk reader.
    "missing ego pose": (_edit("sensor_data.frames.0.ego_pose", ...), True),
    "empty ego pose": (_edit("sensor_data.frames.0.ego_pose", {}), True),
    "null heading": (_edit("sensor_data.frames.1.ego_pose.heading", None), True),
    "integer position": (_edit("sensor_data.frames.1.ego_pose.position", {"x": 3, "y": -2}), True),
    "negative w": (_edit("sensor_data.frames.0.ego_pose.heading", {"w": -1.0, "x": 0.0, "y": 0.0, "z": 0.0}), True),
    "negative x with zero w": (
        _edit("sensor_data.frames.0.ego_pose.heading", {"w": -0.0, "x": -0.6, "y": 0.8, "z": 0.0}),
        True,
    ),
    "non-unit quaternion": (_edit("sensor_data.frames.2.ego_pose.heading", {"w": 2, "x": 1, "y": 0.5, "z": 3}), True),
    "camera pose missing": (_edit("sensor_data.frames.1.sensors.1.sensor_pose", ...), True),
    "null class id": (_edit("annotation_data.annotations.0.class_id", None), True),
    "no track": (_edit("annotation_data.annotations.3.track_id", ...), True),
    "annotation for every frame": (_edit("annotation_data.annotations.0.frame_id", None), True),
    "annotation of an unknown frame": (_edit("annotation_data.annotations.5.frame_id", "ghost"), True),
    "mask of an unknown frame": (_edit("annotation_data.masks.1.frame_id", "ghost"), True),
    "frame without mask": (_edit("annotation_data.masks.2.label_url", ""), True),
    "no masks": (_edit("annotation_data.masks", None), True),
    "no annotations": (_edit("annotation_data.annotations", []), True),
    "no annotation data": (_edit("annotation_data", None), True),
    "frame named by _id": (_edit("sensor_data.frames.0.frame_id", None), True),
    "mask naming another sensor": (_edit("annotation_data.masks.0.sensor_id", "front"), True),
    "lidar without url": (_edit("sensor_data.frames.0.sensors.0.data_url", ""), True),
    "largest key": (_edit("annotation_data.annotations.2.label_key", 2**63 - 1), True),
    "smallest key": (_edit("annotation_data.annotations.2.label_key", -(2**63)), True),
    "no sensor meta": (_edit("sensor_data.sensor_meta", None), True),
    # Left to the validating parser (which accepts some and refuses others).
    "key beyond int64": (_edit("annotation_data.annotations.2.label_key", 2**63), False),
    "float key": (_edit("annotation_data.annotations.2.label_key", 2.0), None),
    "string key": (_edit("annotation_data.annotations.2.label_key", "7"), False),
    "boolean key": (_edit("annotation_data.annotations.2.label_key", True), False),
    "no key": (_edit("annotation_data.annotations.2.label_key", None), False),
    "label only in text": (_edit("annotation_data.annotations.2.label", ""), False),
    "numeric frame id": (_edit("annotation_data.annotations.2.frame_id", 0), False),
    "numeric sensor frame id": (_edit("sensor_data.frames.1.frame_id", 1), False),
    "two classes for one key": (_edit("annotation_data.annotations.1.label_key", 1), False),
    "duplicate frame id": (_edit("sensor_data.frames.1.frame_id", "0"), False),
    "mask without frame id": (_edit("annotation_data.masks.1.frame_id", None), False),
    "zero quaternion": (_edit("sensor_data.frames.0.ego_pose.heading", {"w": 0, "x": 0, "y": 0, "z": 0}), False),
    "empty heading": (_edit("sensor_data.frames.0.ego_pose.heading", {}), False),
    "string coordinate": (_edit("sensor_data.frames.0.ego_pose.position", {"x": "1.5", "y": 0, "z": 0}), False),
    "null coordinate": (_edit("sensor_data.frames.0.ego_pose.position", {"x": None, "y": 0, "z": 0}), False),
    "pose is a list": (_edit("sensor_data.frames.0.ego_pose", [1, 2]), False),
    "annotations not a list": (_edit("annotation_data.annotations", {"a": 1}), False),
    "annotation not an object": (_edit("annotation_data.annotations.4", "car"), False),
    "single-frame layout": (_edit("sensor_data.frames", None), False),
    "no sensor data": (_edit("sensor_data", ...), False),
    "bad camera": (_edit("sensor_data.sensor_meta.0.intrinsics", {"fx": 0, "fy": 1, "cx": 1, "cy": 1}), False),
    "legacy": ({"legend": [{"id": "c", "text": "car", "label_key": 1}], "url": "https://x/a.pcd"}, False),
    "not an object": ([1, 2, 3], False),
}


@pytest.mark.parametrize("name", sorted(EDGES))
def test_edge_cases_index_identically_or_step_aside(name: str) -> None:
    payload, fast = EDGES[name]
    assert_same(payload, fast=fast)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"\xef\xbb\xbf" + json.dumps(small_result()).encode(),  # a UTF-8 BOM, which json.loads accepts
        json.dumps(small_result()).encode("utf-16"),
        json.dumps(small_result()).replace('"x": 0.0', '"x": NaN', 1).encode(),
        json.dumps(small_result()).replace('"x": 0.0', '"x": 1e999', 1).encode(),
        b"[" * 100_000 + b"]" * 100_000,
        # A repeated key: json.loads keeps the last one.
        json.dumps(small_result())[:-1].encode() + b', "sensor_data": {"frames": []}}',
        json.dumps(small_result()).replace('"label_key": 1,', '"label_key": 1, "label_key": 2,', 1).encode(),
    ],
    ids=["empty", "truncated", "bom", "utf16", "nan", "inf", "deep", "repeated-section", "repeated-key"],
)
def test_unusual_bytes_index_identically_or_step_aside(body: bytes) -> None:
    assert_same(body)


HOSTILE = [None, "", "x", "0", 0, -1, 1.5, 2**63, 2**64, True, {}, [], {"w": 0}, [{}], float("1e300")]


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _nodes(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found += _nodes(child, (*path, i))
    return found


def damaged(seed: int) -> dict[str, Any]:
    """A small result with one to three values replaced by hostile ones (and sometimes shared annotations)."""
    rng = random.Random(seed)
    payload = small_result(rng.choice([1, 2, 3]), rng.choice([1, 3]))
    if rng.random() < 0.3:  # shared annotations and repeated keys make the label tables interesting
        annotations = payload["annotation_data"]["annotations"]
        for annotation in rng.sample(annotations, min(2, len(annotations))):
            annotation["frame_id"] = rng.choice([None, "", "0", "ghost"])
            annotation["label_key"] = rng.choice([1, 2, annotation["label_key"]])
    paths = [p for p in _nodes(payload) if p]
    for path in rng.sample(paths, rng.choice([1, 1, 2, 3])):
        node: Any = payload
        try:
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = copy.deepcopy(rng.choice(HOSTILE))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced a parent
    return payload


@pytest.mark.parametrize("seed", range(300))
def test_randomly_damaged_results_index_identically_or_step_aside(seed: int) -> None:
    assert_same(damaged(seed))


def test_random_damage_exercises_both_paths() -> None:
    # Neither path is a no-op: of the damaged results above, many are read in bulk and many are not.
    read = sum(bulk(json.dumps(damaged(seed)).encode()) is not None for seed in range(300))
    assert 60 <= read <= 240, read


# ----------------------------------------------------------------------------------------------- the catalog


def _catalog_with(tmp_path: Any, body: bytes) -> tuple[Catalog, Any]:
    from playment_torch._catalog import ResolvedJob, _digest

    cache = ArrayCache(tmp_path / "cache")
    catalog = Catalog("p", cache=cache, client=lambda: pytest.fail("no network"), refresh=Refresh.NEVER)
    job = ResolvedJob(JOB, URL, _digest(body))
    cache.put_array(catalog._result_key(JOB, URL), np.frombuffer(body, dtype=np.uint8), metadata=True)
    return catalog, job


def test_catalog_indexes_through_the_bulk_reader(tmp_path: Any) -> None:
    body = json.dumps(small_result(4, 6)).encode()
    catalog, job = _catalog_with(tmp_path, body)
    index = catalog.index([job])
    assert len(index) == 4
    expected = validating(body)
    assert isinstance(expected, bytes)
    # Same index but the digest, which the catalog takes from the job.
    reference = FrameIndex.from_bytes(expected)
    assert index.frame_ids[3] == reference.frame_ids[3] == "3"
    assert np.array_equal(index.lut_keys, reference.lut_keys)
    assert index.labels_table == reference.labels_table


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_edit("annotation_data.annotations.1.label_key", 1), "label key 1 names two classes in frame '0'"),
        (_edit("sensor_data.frames.1.frame_id", "0"), "frame id '0' is used twice"),
        (_edit("annotation_data.annotations.2.label_key", 2**63), "does not fit in a signed 64-bit integer"),
        (b"{", "is not JSON"),
    ],
)
def test_catalog_errors_are_the_validating_parsers(tmp_path: Any, payload: Any, message: str) -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    catalog, job = _catalog_with(tmp_path, body)
    with pytest.raises(PlaymentFormatError) as raised:
        catalog.index([job])
    assert message in str(raised.value)
    expected = validating(body)
    assert isinstance(expected, str)
    if not isinstance(payload, bytes):
        assert expected == f"PlaymentFormatError: {raised.value}"


def test_index_archive_as_array_reads_back_in_place() -> None:
    builder = IndexBuilder("p")
    for n in range(3):
        builder.add_columns(read_columns(json.dumps(small_result(4, 5)).encode(), job_id=f"j{n}"), f"d{n}")
    index = builder.finish()
    data = index.to_bytes()
    array = index.to_array()
    assert array.dtype == np.uint8 and array.tobytes() == data
    for source in (data, array, np.frombuffer(bytearray(data), dtype=np.uint8)):
        assert FrameIndex.from_bytes(source).to_bytes() == data
    with pytest.raises(ValueError):
        FrameIndex.from_bytes(data[: len(data) // 2])
