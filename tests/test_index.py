"""The compact frame index: pose vectors, string tables, subsets."""

from __future__ import annotations

import numpy as np
import pytest

from playment_torch.geometry import Camera, Pose
from playment_torch.index import FrameIndex, IndexBuilder, StringTable, pose_matrices
from playment_torch.labels import ClassMap
from playment_torch.models import FrameRef, JobResult, LabelEntry


def random_pose(rng: np.random.Generator) -> Pose:
    return Pose.from_quaternion(*rng.normal(size=4), position=tuple(rng.normal(scale=100, size=3)))


def test_pose_matrices_equal_pose_matrix_and_keep_unknown_poses_nan():
    rng = np.random.default_rng(0)
    poses = [random_pose(rng) for _ in range(200)]
    vectors = np.array([(*p.rotation, *p.translation) for p in poses])
    np.testing.assert_allclose(pose_matrices(vectors), np.stack([p.matrix() for p in poses]), atol=1e-12)
    vectors[3] = np.nan
    matrices = pose_matrices(vectors)
    assert np.isnan(matrices[3]).all() and not np.isnan(np.delete(matrices, 3, axis=0)).any()


@pytest.mark.parametrize(
    "strings", [[], [""], ["a", "", "ünïcödé", "s3://bucket/key?x=1"], [str(i) * i for i in range(50)]]
)
def test_string_table_round_trip_take_and_concatenate(strings):
    table = StringTable(strings)
    assert list(table) == strings and len(table) == len(strings)
    rows = np.arange(len(strings))[::-2]
    assert list(table.take(rows)) == [strings[i] for i in rows]
    joined = StringTable.concatenate([table, StringTable(["x", "yz"]), table])
    assert list(joined) == [*strings, "x", "yz", *strings]


def frames_of(job_id: str, count: int, cameras: tuple[Camera, ...]) -> JobResult:
    rng = np.random.default_rng(abs(hash(job_id)) % 2**32)
    refs = []
    for f in range(count):
        labels = tuple(
            LabelEntry(k, ("car", "road", "pole")[k % 3], f"class-{k % 3}", f"{job_id}-track-{k}", str(f))
            for k in range(f % 4)
        )
        refs.append(
            FrameRef(
                project_id="p",
                job_id=job_id,
                frame_id=str(f),
                frame_index=f,
                sensor_id="lidar",
                pointcloud_url=f"s3://b/{job_id}/{f}.pcd",
                mask_url=f"s3://b/{job_id}/{f}.json",
                labels=labels,
                ego_pose=random_pose(rng),
                camera_poses=tuple(None if (f + k) % 3 == 0 else random_pose(rng) for k in range(len(cameras))),
                cameras=cameras,
            )
        )
    return JobResult("p", job_id, "current", tuple(refs), cameras, tuple(e for r in refs for e in r.labels))


def test_frame_refs_survive_the_index_and_its_subsets():
    camera = Camera("c1", "front", "brown_conrady", 1000.0, 1000.0, 640.0, 360.0)
    results = [frames_of("job-a", 5, (camera,)), frames_of("job-b", 4, ()), frames_of("job-c", 3, (camera, camera))]
    index = FrameIndex.build("p", [(r, f"digest-{r.job_id}") for r in results], ClassMap(None, available=["car"]))
    refs = [ref for r in results for ref in r.frames]
    assert len(index) == len(refs)
    # Frames whose keys mean the same share a lookup table: here 4 distinct tables (0 to 3 keys) for 12 frames.
    assert len(index.lut_offsets) - 1 == 4

    def same(a: FrameRef, b: FrameRef) -> None:
        assert (a.job_id, a.frame_id, a.frame_index, a.pointcloud_url, a.mask_url) == (
            b.job_id,
            b.frame_id,
            b.frame_index,
            b.pointcloud_url,
            b.mask_url,
        )
        assert [(e.label_key, e.label, e.class_id, e.track_id) for e in a.labels] == [
            (e.label_key, e.label, e.class_id, e.track_id) for e in b.labels
        ]
        np.testing.assert_allclose(a.ego_pose.matrix(), b.ego_pose.matrix(), atol=1e-12)
        assert [p is None for p in a.camera_poses] == [p is None for p in b.camera_poses]

    for i, ref in enumerate(refs):
        same(index.frame_ref(i), ref)
        expected = [ref.ego_pose.matrix()] + [
            np.full((4, 4), np.nan) if p is None else p.matrix() for p in ref.camera_poses
        ]
        np.testing.assert_allclose(index.poses(i), np.stack(expected), atol=1e-12)
    keep = np.array([i % 3 != 1 for i in range(len(refs))])
    subset = index.subset(keep)
    kept = [ref for ref, k in zip(refs, keep, strict=True) if k]
    assert len(subset) == len(kept)
    for i, ref in enumerate(kept):
        same(subset.frame_ref(i), ref)
        np.testing.assert_allclose(subset.poses(i), index.poses(int(np.flatnonzero(keep)[i])), atol=0, equal_nan=True)
        mask = np.array([0, 1, 2, 3, 7], dtype=np.int64)
        np.testing.assert_array_equal(
            subset.classes_of(i, mask, -100), index.classes_of(int(np.flatnonzero(keep)[i]), mask, -100)
        )


def test_index_round_trips_through_bytes_and_takes_any_class_map_afterwards():
    camera = Camera("c1", "front", "fisheye", 900.0, 910.0, 640.0, 360.0, radial=(0.1, 0.01))
    results = [frames_of("job-a", 5, (camera,)), frames_of("job-b", 4, ())]
    built = FrameIndex.build("p", ((r, f"digest-{r.job_id}") for r in results), ClassMap(["pole", "car"]))
    data = built.to_bytes()
    assert b"pickle" not in data[:64]
    loaded = FrameIndex.from_bytes(np.frombuffer(data, dtype=np.uint8))
    assert loaded.label_names == {"car", "road", "pole"}
    loaded.apply_classes(ClassMap(["pole", "car"]))
    assert len(loaded) == len(built) == 9 and loaded.nbytes == built.nbytes
    mask = np.array([0, 1, 2, 3, 9], dtype=np.int64)
    for i in range(len(built)):
        assert loaded.frame_ref(i) == built.frame_ref(i)
        np.testing.assert_array_equal(loaded.poses(i), built.poses(i))
        np.testing.assert_array_equal(loaded.classes_of(i, mask, -100), built.classes_of(i, mask, -100))
    assert loaded.jobs[0].cameras == (camera,) and loaded.jobs[0].digest == "digest-job-a"
    np.testing.assert_array_equal(loaded.jobs[0].intrinsics, built.jobs[0].intrinsics)
    # Another class map on the same cached index: keys 0, 1, 2 are car, road, pole in every frame that has them.
    loaded.apply_classes(ClassMap({"road": 0, "car": 1}, ignore_index=-1))
    frame = 3  # keys 0..2
    np.testing.assert_array_equal(loaded.classes_of(frame, mask, -1), [1, 0, -1, -1, -1])
    with pytest.raises(ValueError, match="index format"):
        FrameIndex.from_bytes(_with_version(data, 1))


def _with_version(data: bytes, version: int) -> bytes:
    import io
    import json

    with np.load(io.BytesIO(data)) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(arrays["meta"].tobytes())
    meta["version"] = version
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def test_builder_keeps_arrays_not_results_and_equals_a_one_shot_build():
    results = [frames_of(f"job-{n}", 3 + n % 3, ()) for n in range(10)]
    builder = IndexBuilder("p")
    for result in results:
        builder.add(result, "d", result_url=f"https://host/{result.job_id}.json?X-Amz-Signature=secret")
    assert len(builder) == sum(len(r.frames) for r in results)
    streamed = builder.finish()
    streamed.apply_classes(ClassMap(None, available=["car", "road", "pole"]))
    whole = FrameIndex.build("p", [(r, "d") for r in results], ClassMap(None, available=["car", "road", "pole"]))
    for name, value in vars(whole).items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(streamed, name), value, err_msg=name)
        elif isinstance(value, StringTable):
            assert list(getattr(streamed, name)) == list(value), name
    # The result URL is kept as an identity, without its signature.
    assert streamed.jobs[0].result_url == "https://host/job-0.json"
