"""End-to-end tests of PlaymentSegmentationDataset against the fake server, checking values."""

from __future__ import annotations

import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fast_client

from playment_torch.dataset import PlaymentSegmentationDataset
from playment_torch.errors import (
    CacheError,
    ConfigError,
    FrameError,
    PlaymentError,
    PlaymentFormatError,
)
from playment_torch.formats.masks import encode_mask
from playment_torch.formats.pcd import encode_pcd
from playment_torch.testing.server import FakePlaymentServer
from playment_torch.testing.synthetic import CLASSES, SyntheticFrame, SyntheticJob, add_synthetic_project

POINTS = 10_000


def make_dataset(server: FakePlaymentServer, cache_dir: Path, **options: object) -> PlaymentSegmentationDataset:
    options.setdefault("client", fast_client(server))
    options.setdefault("progress", False)
    return PlaymentSegmentationDataset(server.project_id, cache_dir=str(cache_dir), **options)  # type: ignore[arg-type]


def ground_truth(jobs: list[SyntheticJob], job_id: str, frame_id: str) -> tuple[SyntheticJob, SyntheticFrame]:
    job = next(j for j in jobs if j.job_id == job_id)
    return job, next(f for f in job.frames if f.frame_id == frame_id)


def expected_labels(frame: SyntheticFrame, classes: tuple[str, ...] | dict[str, int], ignore: int = -100) -> np.ndarray:
    lookup = classes if isinstance(classes, dict) else {name: i for i, name in enumerate(classes)}
    table = np.array([lookup.get(name, ignore) for name in CLASSES] + [ignore], dtype=np.int64)
    return table[frame.class_index]  # class_index -1 picks the trailing ignore entry


@pytest.fixture
def project(server: FakePlaymentServer) -> list[SyntheticJob]:
    return add_synthetic_project(
        server, n_jobs=3, frames_per_job=3, points_per_frame=POINTS, pending_jobs=1, legacy_jobs=1, seed=3
    )


def test_samples_equal_the_synthetic_ground_truth(server, project, tmp_path):
    with pytest.warns(RuntimeWarning, match=r"1 of 5 jobs are not completed .*\(pending\)"):
        ds = make_dataset(server, tmp_path, point_fields=("x", "y", "z", "intensity"))
    completed = [j for j in project if j.status == "completed"]
    assert len(ds) == sum(len(j.frames) for j in completed)
    assert ds.classes == tuple(sorted(CLASSES))
    # Deterministic order: by job id, then frame order.
    keys = [(f.job_id, f.frame_index) for f in ds.frames]
    assert keys == sorted(keys)
    for i in range(len(ds)):
        ref = ds.frames[i]
        job, frame = ground_truth(project, ref.job_id, ref.frame_id)
        if job.legacy:
            continue  # no intensity field: see test_missing_point_field_names_the_frame_and_its_fields
        sample = ds[i]
        expected_points = np.stack([frame.points[f] for f in ("x", "y", "z", "intensity")], axis=1)
        assert sample.points.dtype == torch.float32 and sample.labels.dtype == torch.int64
        np.testing.assert_array_equal(sample.points.numpy(), expected_points)
        np.testing.assert_array_equal(sample.labels.numpy(), expected_labels(frame, ds.classes))
        assert sample.poses.dtype == torch.float64 and sample.poses.shape == (3, 4, 4)
        np.testing.assert_allclose(sample.poses[0].numpy(), frame.ego_pose, atol=1e-12)
        np.testing.assert_allclose(sample.poses[1:].numpy(), frame.camera_poses, atol=1e-9)
        expected_k = [
            [
                [c["intrinsics"]["fx"], 0, c["intrinsics"]["cx"]],
                [0, c["intrinsics"]["fy"], c["intrinsics"]["cy"]],
                [0, 0, 1],
            ]
            for c in job.cameras
        ]
        np.testing.assert_array_equal(sample.intrinsics.numpy(), np.array(expected_k, dtype=np.float64))
        assert [c.name for c in ds.cameras(i)] == [c["name"] for c in job.cameras]
        assert [c.model for c in ds.cameras(i)] == ["brown_conrady", "fisheye"]


def test_legacy_job_reads_points_and_labels_from_its_mask_pcd(server, project, tmp_path):
    with pytest.warns(RuntimeWarning):
        ds = make_dataset(server, tmp_path, point_fields=("x", "y", "z"))
    (position,) = [i for i, f in enumerate(ds.frames) if f.legacy]
    job, frame = ground_truth(project, ds.frames[position].job_id, "0")
    server.clear_requests()
    sample = ds[position]
    np.testing.assert_array_equal(sample.points.numpy(), np.stack([frame.points[f] for f in "xyz"], axis=1))
    np.testing.assert_array_equal(sample.labels.numpy(), expected_labels(frame, ds.classes))
    assert sample.poses.shape == (1, 4, 4) and sample.intrinsics.shape == (0, 3, 3)
    # One download serves both the points and the mask of a legacy frame.
    assert [r.route for r in server.requests] == ["attachments", "storage"]
    assert server.requests[0].query["url"] == job.result["url"]


def test_missing_point_field_names_the_frame_and_its_fields(server, project, tmp_path):
    with pytest.warns(RuntimeWarning):
        ds = make_dataset(server, tmp_path, point_fields=("x", "y", "z", "intensity"))
    (position,) = [i for i, f in enumerate(ds.frames) if f.legacy]
    job_id = ds.frames[position].job_id
    with pytest.raises(
        PlaymentFormatError, match=rf"job {job_id}, frame 0: .*no field 'intensity'.*x, y, z, label_key"
    ):
        ds[position]


def test_second_pass_makes_zero_requests_and_never_refresh_works_offline(project, tmp_path):
    with FakePlaymentServer() as server:
        add_synthetic_project(server, n_jobs=2, frames_per_job=2, points_per_frame=POINTS, seed=5)
        ds = make_dataset(server, tmp_path)
        first = [ds[i] for i in range(len(ds))]
        server.clear_requests()
        second = [ds[i] for i in range(len(ds))]
        assert server.requests == []
        stats = ds.stats()
        # First pass: point cloud and mask downloaded (2 misses a frame); second: both records read from disk.
        assert stats.misses == 2 * len(ds) and stats.hits == 2 * len(ds) and stats.bytes_downloaded > 0
    # The server is gone: a new dataset on the same cache with refresh="never" needs no key and no network.
    offline = PlaymentSegmentationDataset(ds.project_id, cache_dir=str(tmp_path), refresh="never", progress=False)
    assert len(offline) == len(ds)
    for a, b, c in zip(first, second, (offline[i] for i in range(len(offline))), strict=True):
        for x, y, z in zip(a, b, c, strict=True):
            assert torch.equal(x, y) and torch.equal(x, z)


def test_never_refresh_lists_what_is_not_cached(server, tmp_path):
    add_synthetic_project(server, n_jobs=2, frames_per_job=1, points_per_frame=POINTS)
    with pytest.raises(CacheError, match=r"refresh='never'.*not cached.*project details"):
        PlaymentSegmentationDataset(server.project_id, cache_dir=str(tmp_path), refresh="never")
    ds = make_dataset(server, tmp_path)  # resolves and caches the results, but downloads no frame
    # Construction says up front which frames are missing (it used to build and fail at ds[0]).
    missing = rf"refresh='never' but 2 of 2 frames are not cached: job {ds.frames[0].job_id}"
    with pytest.raises(CacheError, match=missing):
        PlaymentSegmentationDataset(server.project_id, cache_dir=str(tmp_path), refresh="never")


def _entry_files(cache_dir: Path) -> list[Path]:
    return [p for p in cache_dir.rglob("*.val")]


@pytest.mark.parametrize("damage", ["overwrite", "truncate", "delete"])
def test_damaged_cache_entries_are_dropped_and_fetched_again(server, tmp_path, damage):
    add_synthetic_project(server, n_jobs=1, frames_per_job=2, points_per_frame=POINTS, seed=7)
    ds = make_dataset(server, tmp_path)
    good = [ds[i] for i in range(len(ds))]
    files = _entry_files(tmp_path)
    # Point clouds are files; small masks (10k one-byte keys) may live inside the database.
    assert len(files) >= len(ds), "point clouds are stored as files"
    for path in files:
        if damage == "overwrite":
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
        elif damage == "truncate":
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
        else:
            path.unlink()
    server.clear_requests()
    fresh = make_dataset(server, tmp_path)
    again = [fresh[i] for i in range(len(fresh))]
    for a, b in zip(good, again, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
    assert any(r.route == "storage" for r in server.requests), "damaged entries were downloaded again"


def test_damaged_cache_database_is_rebuilt_with_one_warning(server, tmp_path):
    add_synthetic_project(server, n_jobs=1, frames_per_job=2, points_per_frame=POINTS, seed=8)
    ds = make_dataset(server, tmp_path)
    good = [ds[i] for i in range(len(ds))]
    ds.cache.close()
    (tmp_path / "cache.db").write_bytes(b"this is not a database" * 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh = make_dataset(server, tmp_path)
        again = [fresh[i] for i in range(len(fresh))]
    rebuilt = [w for w in caught if "cache" in str(w.message).lower() and "corrupt" in str(w.message).lower()]
    assert len(rebuilt) == 1, [str(w.message) for w in caught]
    for a, b in zip(good, again, strict=True):
        assert torch.equal(a.points, b.points) and torch.equal(a.labels, b.labels)
    with sqlite3.connect(tmp_path / "cache.db") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_relabelled_job_with_refresh_always_downloads_only_the_new_masks(server, tmp_path):
    (job,) = add_synthetic_project(server, n_jobs=1, frames_per_job=2, points_per_frame=POINTS, seed=9)
    ds = make_dataset(server, tmp_path)
    before = [ds[i].labels.clone() for i in range(len(ds))]
    # Relabel: every point of frame 0 becomes the first annotation's class, with new mask files.
    result = job.result
    masks = result["annotation_data"]["masks"]
    files = {}
    first = result["annotation_data"]["annotations"][0]
    for mask in masks:
        url = mask["label_url"].replace(".json", "-relabelled.json")
        mask["label_url"] = url
        files[url] = encode_mask(np.full(len(job.frames[int(mask["frame_id"])].points), first["label_key"]))
    server.replace_result(job.job_id, result, files=files)

    server.clear_requests()
    cached = make_dataset(server, tmp_path)  # if_missing: the cached result is still used
    assert all(torch.equal(cached[i].labels, before[i]) for i in range(len(cached)))
    assert not any(r.route == "storage" for r in server.requests)

    server.clear_requests()
    fresh = make_dataset(server, tmp_path, refresh="always")
    after = [fresh[i].labels for i in range(len(fresh))]
    expected = fresh.classes.index(first["label"])
    assert all(bool((labels == expected).all()) for labels in after)
    downloaded = [r.query.get("url", "") for r in server.requests if r.route == "attachments"]
    assert sum("relabelled" in url for url in downloaded) == len(fresh)
    assert not any(url.endswith(".pcd") for url in downloaded), "unchanged point clouds are not downloaded again"
    # The labels records (derived from the masks) are the new result's, not the first one's.
    old_keys = {ds._store.labels_key(i) for i in range(len(ds))}
    assert old_keys.isdisjoint(fresh._store.labels_key(i) for i in range(len(fresh)))


def test_class_list_and_dict_with_shared_indices(server, tmp_path):
    (job,) = add_synthetic_project(server, n_jobs=1, frames_per_job=1, points_per_frame=POINTS, seed=11)
    frame = job.frames[0]
    ordered = make_dataset(server, tmp_path, classes=["road", "car", "pedestrian"])
    assert ordered.classes == ("road", "car", "pedestrian")
    np.testing.assert_array_equal(ordered[0].labels.numpy(), expected_labels(frame, ("road", "car", "pedestrian")))
    mapping = {"car": 0, "pedestrian": 0, "road": 1, "sidewalk": 1, "vegetation": -100}
    merged = make_dataset(server, tmp_path, classes=mapping, ignore_index=-100)
    assert merged.classes == ("car", "road")
    np.testing.assert_array_equal(merged[0].labels.numpy(), expected_labels(frame, mapping))
    shifted = make_dataset(server, tmp_path, classes=["car"], ignore_index=255)
    np.testing.assert_array_equal(shifted[0].labels.numpy(), expected_labels(frame, ("car",), ignore=255))


def test_key_zero_as_a_real_class_and_unlabeled_points(server, tmp_path):
    (job,) = add_synthetic_project(
        server, n_jobs=1, frames_per_job=2, points_per_frame=POINTS, key0_is_class=True, unlabeled_fraction=0.05
    )
    ds = make_dataset(server, tmp_path)
    assert 0 in {entry.label_key for entry in ds.frames[0].labels}
    for i in range(len(ds)):
        frame = job.frames[i]
        labels = ds[i].labels.numpy()
        np.testing.assert_array_equal(labels, expected_labels(frame, ds.classes))
        assert 0.02 < float((labels == -100).mean()) < 0.1


def test_instances_follow_track_ids_across_frames(server, tmp_path):
    (job,) = add_synthetic_project(server, n_jobs=1, frames_per_job=3, points_per_frame=POINTS, seed=12)
    ds = make_dataset(server, tmp_path)
    tracks = ds.index.job_of(0).tracks
    for i in range(len(ds)):
        frame = job.frames[i]
        instances = ds.instances(i).numpy()
        expected = np.array([tracks.index(t) if t in tracks else -2 for t in frame.track_ids] + [-1])[frame.instance]
        assert not (expected == -2).any(), "every track with points has an annotation"
        np.testing.assert_array_equal(instances, expected)


def test_batch_and_project_wide_resolution_agree(server, tmp_path):
    add_synthetic_project(server, n_jobs=4, frames_per_job=1, points_per_frame=POINTS, batches=2, seed=13)
    everything = make_dataset(server, tmp_path)
    project = fast_client(server).get_project(server.project_id)
    by_batch = make_dataset(server, tmp_path / "b", batch_ids=[b.id for b in project.batches])
    by_job = make_dataset(server, tmp_path / "j", job_ids=[f.job_id for f in everything.frames])
    frames = [(f.job_id, f.frame_id) for f in everything.frames]
    assert (
        frames == [(f.job_id, f.frame_id) for f in by_batch.frames] == [(f.job_id, f.frame_id) for f in by_job.frames]
    )
    one = make_dataset(server, tmp_path / "one", batch_ids=[project.batches[0].id])
    assert 0 < len(one) < len(everything)


def test_malformed_result_raises_or_is_skipped(server, tmp_path):
    jobs = add_synthetic_project(server, n_jobs=2, frames_per_job=1, points_per_frame=POINTS, seed=14)
    broken = jobs[0].result
    broken["sensor_data"]["frames"][0]["ego_pose"]["heading"]["w"] = "north"
    server.replace_result(jobs[0].job_id, broken)
    with pytest.raises(PlaymentFormatError, match=rf"job {jobs[0].job_id}, frame 0: .*heading\.w"):
        make_dataset(server, tmp_path)
    with pytest.warns(RuntimeWarning, match=rf"skipping job {jobs[0].job_id}"):
        ds = make_dataset(server, tmp_path / "skip", on_error="skip")
    assert [f.job_id for f in ds.frames] == [jobs[1].job_id]


def test_short_mask_raises_with_both_counts_or_is_skipped(server, tmp_path):
    jobs = add_synthetic_project(server, n_jobs=1, frames_per_job=2, points_per_frame=POINTS, seed=15)
    result = jobs[0].result
    mask = result["annotation_data"]["masks"][0]
    points = len(jobs[0].frames[0].points)
    server.put_file(mask["label_url"], encode_mask(np.zeros(points - 7, dtype=np.int64)))
    ds = make_dataset(server, tmp_path)
    with pytest.raises(
        PlaymentFormatError, match=rf"job {jobs[0].job_id}, frame 0: .*{points - 7} label keys.*{points} points"
    ):
        ds[0]
    skipping = make_dataset(server, tmp_path, on_error="skip")
    with pytest.warns(RuntimeWarning, match=rf"job {jobs[0].job_id}, frame 0 failed, so item 0 has every label"):
        sample = skipping[0]
    # Item 0 is still frame 0: its own points, every label ignored; never another frame.
    frame = jobs[0].frames[0]
    expected_xyz = np.stack([frame.points[f] for f in "xyz"], axis=1)
    assert np.array_equal(sample.points[:, :3].numpy(), expected_xyz)
    assert bool((sample.labels == skipping.ignore_index).all()) and len(sample.labels) == points
    assert not torch.equal(skipping[1].points[:, :3], sample.points[: len(skipping[1].points), :3])
    assert skipping.stats().failed_frames == 1


def test_server_failing_mid_epoch_names_the_frame_and_caches_nothing(server, tmp_path):
    jobs = add_synthetic_project(server, n_jobs=1, frames_per_job=2, points_per_frame=POINTS, seed=16)
    ds = make_dataset(server, tmp_path)
    ds[0]
    server.add_fault("storage", status=500, times=None)
    with pytest.raises(FrameError, match=rf"job {jobs[0].job_id}, frame 1: .*HTTP 500") as caught:
        ds[1]
    assert isinstance(caught.value.__cause__, PlaymentError)
    assert "signature" not in str(caught.value) and server.api_key not in str(caught.value)
    server.clear_faults()
    assert torch.equal(ds[1].points, make_dataset(server, tmp_path / "clean")[1].points)


def test_prefetch_reports_failures_and_never_changes_the_dataset(server, tmp_path):
    jobs = add_synthetic_project(server, n_jobs=2, frames_per_job=2, points_per_frame=POINTS, seed=17)
    bad_frame = jobs[1].result["sensor_data"]["frames"][1]["sensors"][0]["data_url"].rsplit("/", 1)[-1]
    server.add_fault("storage", status=404, times=None, match=f"{jobs[1].job_id}/{bad_frame}")
    ds = make_dataset(server, tmp_path, on_error="skip")
    identities = [(f.job_id, f.frame_id) for f in ds.frames]
    report = ds.prefetch(num_threads=4, progress=False)
    assert report.frames == 4 and len(report.failures) == 1 and report.downloaded == 3
    assert report.failures[0][:2] == (jobs[1].job_id, "1")
    assert not report.failures[0][2].startswith("job "), "the reason does not repeat the job and frame"
    assert report.failures_by_job() == {jobs[1].job_id: [("1", report.failures[0][2])]}
    assert report.bytes_downloaded == ds.stats().bytes_downloaded > 0
    # The dataset holds the same frames (workers may already hold copies); narrowing is a new dataset.
    assert [(f.job_id, f.frame_id) for f in ds.frames] == identities
    failed = identities.index((jobs[1].job_id, "1"))
    assert report.failed == [failed] and report.loaded == [i for i in range(4) if i != failed]
    narrowed = ds.subset(report.loaded)
    assert [(f.job_id, f.frame_id) for f in narrowed.frames] == [identities[i] for i in report.loaded]
    again = narrowed.prefetch(num_threads=4, progress=False)
    assert (again.frames, again.downloaded, again.bytes_downloaded, again.failures) == (3, 0, 0, [])
    strict = make_dataset(server, tmp_path / "strict")
    with pytest.raises(PlaymentError, match=rf"1 of 4 frames failed; first: job {jobs[1].job_id}, frame 1: "):
        strict.prefetch(num_threads=4, progress=False)


def _xyz(frame: SyntheticFrame) -> np.ndarray:
    return np.stack([frame.points[f] for f in "xyz"], axis=1).astype(np.float64)


def _to(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def test_sweeps_in_a_shared_world_frame_land_static_objects_within_a_centimetre(server, tmp_path):
    (job,) = add_synthetic_project(
        server, n_jobs=1, frames_per_job=4, points_per_frame=20_000, coordinates="world", seed=18
    )
    ds = make_dataset(server, tmp_path, point_fields=("x", "y", "z"), frame="ego", sweeps=3)
    sample = ds[3]
    sweep = sample.points[:, 3].numpy()
    assert set(np.unique(sweep)) == {0.0, 1.0, 2.0}
    assert bool((sample.labels[sweep > 0] == -100).all()), "only the key frame is labelled"
    np.testing.assert_allclose(sample.poses[0].numpy(), np.eye(4), atol=1e-9)
    key = job.frames[3]
    to_world = key.ego_pose
    xyz = sample.points[:, :3].numpy().astype(np.float64)
    static = {CLASSES.index(name) for name in ("building", "pole", "road", "sidewalk", "terrain", "vegetation")}
    for back in (0, 1, 2):
        frame = job.frames[3 - back]
        world = _to(to_world, xyz[sweep == back])
        keep = np.isin(frame.class_index, list(static))
        # Every static point of every sweep is where the world says it is, to well under a centimetre.
        assert np.abs(world[keep] - _xyz(frame)[keep]).max() < 0.01
    # The ego moved between sweeps, so sweeps really were moved into the key frame's ego coordinates.
    assert np.linalg.norm(job.frames[1].ego_pose[:3, 3] - key.ego_pose[:3, 3]) > 1.0
    first = ds[0]
    assert set(np.unique(first.points[:, 3].numpy())) == {0.0}, "frames at the start of a job use what exists"
    labelled = make_dataset(server, tmp_path, point_fields=("x", "y", "z"), sweeps=2, label_sweeps=True)
    np.testing.assert_array_equal(
        labelled[1].labels.numpy(),
        np.concatenate([expected_labels(job.frames[1], ds.classes), expected_labels(job.frames[0], ds.classes)]),
    )


def _pose_json(matrix: np.ndarray) -> dict[str, dict[str, float]]:
    rotation, t = matrix[:3, :3], matrix[:3, 3]
    w = np.sqrt(max(0.0, 1 + np.trace(rotation))) / 2
    heading = {
        "w": w,
        "x": (rotation[2, 1] - rotation[1, 2]) / (4 * w),
        "y": (rotation[0, 2] - rotation[2, 0]) / (4 * w),
        "z": (rotation[1, 0] - rotation[0, 1]) / (4 * w),
    }
    return {"heading": heading, "position": {"x": t[0], "y": t[1], "z": t[2]}}


def test_sweeps_with_ego_pose_reference_move_lidar_frame_clouds(server, tmp_path):
    (job,) = add_synthetic_project(server, n_jobs=1, frames_per_job=3, points_per_frame=10_000, seed=19)
    # Clouds in each frame's lidar frame, with world poses for the ego and the cameras: a common export convention.
    result = job.result
    for frame_json, frame in zip(result["sensor_data"]["frames"], job.frames, strict=True):
        frame_json["ego_pose"] = _pose_json(frame.world_pose)
        cameras = [s for s in frame_json["sensors"] if not s["data_url"].endswith(".pcd")]
        for sensor, camera_pose in zip(cameras, frame.camera_poses, strict=True):
            sensor["sensor_pose"] = _pose_json(frame.world_pose @ camera_pose)
    server.replace_result(job.job_id, result)
    ds = make_dataset(server, tmp_path, point_fields=("x", "y", "z"), sweeps=3, sweep_reference="ego_pose")
    sample = ds[2]
    sweep = sample.points[:, 3].numpy()
    xyz = sample.points[:, :3].numpy().astype(np.float64)
    key_world = job.frames[2].world_pose
    for back in (1, 2):
        frame = job.frames[2 - back]
        expected = _to(np.linalg.inv(key_world) @ frame.world_pose, _xyz(frame))
        np.testing.assert_allclose(xyz[sweep == back], expected, atol=2e-4)
    # Poses come out in the cloud's own (ego) frame, as the Sample contract says; frame="ego" changes nothing.
    np.testing.assert_allclose(sample.poses[0].numpy(), np.eye(4), atol=1e-9)
    np.testing.assert_allclose(sample.poses[1:].numpy(), job.frames[2].camera_poses, atol=1e-6)
    ego = make_dataset(
        server, tmp_path, point_fields=("x", "y", "z"), sweeps=3, sweep_reference="ego_pose", frame="ego"
    )
    assert torch.equal(ego[2].points, sample.points) and torch.equal(ego[2].poses, sample.poses)


def test_bad_options_are_config_errors(tmp_path):
    for options in (
        {"refresh": "sometimes"},
        {"on_error": "ignore"},
        {"frame": "map"},
        {"sweeps": 0},
        {"point_fields": "xyz"},
    ):
        with pytest.raises(ConfigError):
            PlaymentSegmentationDataset("p", cache_dir=str(tmp_path), **options)  # type: ignore[arg-type]


def _mask_keys(job: SyntheticJob, frame: SyntheticFrame) -> np.ndarray:
    """The label key of each point of a synthetic frame (what its hosted mask holds)."""
    keys = np.full(len(frame.points), job.unlabeled_key, dtype=np.int64)
    labelled = frame.instance >= 0
    keys[labelled] = job.label_keys[frame.instance[labelled]]
    return keys


def test_a_key_means_what_that_frames_annotation_says(server, tmp_path):
    (job,) = add_synthetic_project(server, n_jobs=1, frames_per_job=2, points_per_frame=POINTS, seed=40)
    result = job.result
    annotations = result["annotation_data"]["annotations"]
    # A car that frame 1 relabels as a pole: its key must mean "car" in frame 0 and "pole" in frame 1.
    car = next(a for a in annotations if a["label"] == "car" and a["frame_id"] == "1")
    assert any(a["label_key"] == car["label_key"] and a["frame_id"] == "0" for a in annotations)
    car["label"] = car["text"] = "pole"
    server.replace_result(job.job_id, result)
    ds = make_dataset(server, tmp_path)
    for position, frame in enumerate(job.frames):
        on_key = _mask_keys(job, frame) == car["label_key"]
        assert on_key.any()
        expected = "pole" if position == 1 else "car"
        assert bool((ds[position].labels.numpy()[on_key] == ds.classes.index(expected)).all())


def test_relabelling_in_place_is_seen_with_refresh_always(server, tmp_path):
    jobs = add_synthetic_project(server, n_jobs=1, legacy_jobs=1, frames_per_job=1, points_per_frame=POINTS, seed=41)
    ds = make_dataset(server, tmp_path, point_fields=("x", "y", "z"))
    before = [ds[i].labels.clone() for i in range(len(ds))]
    # Relabel both jobs by rewriting their mask files at the SAME URLs (no new URL to key on).
    for job in jobs:
        result = job.result
        if job.legacy:
            keys = sorted(entry["label_key"] for entry in result["legend"])
            points = job.frames[0].points
            relabelled = np.zeros(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("label_key", "<i4")])
            for name in "xyz":
                relabelled[name] = points[name]
            relabelled["label_key"] = keys[0]
            server.put_file(result["url"], encode_pcd(relabelled, encoding="ascii"))
            result["legend"][0]["color"] = "relabelled"  # the result object changes too
        else:
            (mask,) = result["annotation_data"]["masks"]
            keys = [a["label_key"] for a in result["annotation_data"]["annotations"]]
            server.put_file(mask["label_url"], encode_mask(np.full(len(job.frames[0].points), keys[0])))
            result["annotation_data"]["annotations"][0]["color"] = "relabelled"
        server.replace_result(job.job_id, result)
    stale = make_dataset(server, tmp_path, point_fields=("x", "y", "z"))
    assert all(torch.equal(stale[i].labels, before[i]) for i in range(len(stale))), "if_missing keeps the cache"
    fresh = make_dataset(server, tmp_path, point_fields=("x", "y", "z"), refresh="always")
    for i in range(len(fresh)):
        labels = fresh[i].labels
        assert len(torch.unique(labels)) == 1 and not torch.equal(labels, before[i])


def test_if_missing_lists_batches_again_and_sees_new_jobs(server, tmp_path):
    add_synthetic_project(server, n_jobs=2, frames_per_job=1, points_per_frame=POINTS, seed=42)
    assert len(make_dataset(server, tmp_path)) == 2
    add_synthetic_project(server, n_jobs=1, frames_per_job=1, points_per_frame=POINTS, seed=43)
    server.clear_requests()
    grown = make_dataset(server, tmp_path)
    assert len(grown) == 3
    fetched = [r.path for r in server.requests if r.route == "job"]
    assert len(fetched) == 1, "only the new job is asked for; completed ones come from the cache"


def test_frame_ego_without_sweeps(server, tmp_path):
    (job,) = add_synthetic_project(server, n_jobs=1, frames_per_job=2, points_per_frame=POINTS, coordinates="world")
    native = make_dataset(server, tmp_path, point_fields=("x", "y", "z", "intensity"))
    ego = make_dataset(server, tmp_path, point_fields=("x", "y", "z", "intensity"), frame="ego")
    for i, frame in enumerate(job.frames):
        a, b = native[i], ego[i]
        world = _xyz(frame)
        np.testing.assert_allclose(a.points[:, :3].numpy(), world, atol=1e-6)
        to_ego = np.linalg.inv(frame.ego_pose)
        np.testing.assert_allclose(b.points[:, :3].numpy(), _to(to_ego, world), atol=2e-3)
        assert torch.equal(a.points[:, 3], b.points[:, 3]), "other columns are carried along"
        np.testing.assert_allclose(b.poses.numpy(), to_ego @ a.poses.numpy(), atol=1e-9)
        np.testing.assert_allclose(b.poses[0].numpy(), np.eye(4), atol=1e-9)
        assert torch.equal(a.labels, b.labels)


@pytest.mark.parametrize(
    "options", [{"frame": "ego"}, {"sweeps": 2}, {"sweep_reference": "ego_pose"}], ids=["ego", "sweeps", "ego_pose"]
)
def test_moving_points_needs_xyz_first(tmp_path, options):
    with pytest.raises(ConfigError, match="must start with x, y, z"):
        PlaymentSegmentationDataset("p", cache_dir=str(tmp_path), point_fields=("intensity", "x", "y", "z"), **options)  # type: ignore[arg-type]


def test_skip_gives_each_failing_item_a_placeholder_of_its_own_frame(server, tmp_path):
    add_synthetic_project(server, n_jobs=1, frames_per_job=12, points_per_frame=POINTS, seed=44)
    ds = make_dataset(server, tmp_path, on_error="skip")
    server.add_fault("storage", status=500, times=None)
    server.clear_requests()
    with pytest.warns(RuntimeWarning, match=rf"{ds.frames[3].job_id}, frame 3 failed, so item 3 has no points"):
        sample = ds[3]
    assert sample.points.shape == (0, 4) and sample.labels.shape == (0,)
    assert torch.equal(sample.poses, torch.from_numpy(ds.index.poses(3))), "poses are frame 3's own"
    # Only frame 3 was asked for: no substitute frames were tried.
    asked = {r.query.get("url", "") for r in server.requests if r.route == "attachments"}
    assert asked == {ds.frames[3].pointcloud_url}, "the point cloud failed, so its mask was not asked for either"
    assert ds.stats().failed_frames == 1


def test_empty_cloud_gives_empty_arrays_whatever_the_field_layout(server, tmp_path):
    (job,) = add_synthetic_project(server, n_jobs=1, frames_per_job=1, points_per_frame=POINTS, seed=45)
    sensor = job.result["sensor_data"]["frames"][0]["sensors"]
    lidar = next(s for s in sensor if s["data_url"].endswith(".pcd"))
    empty = np.zeros(0, dtype=[("ring", "<u2"), ("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    server.put_file(lidar["data_url"], encode_pcd(empty, encoding="binary"))
    mask = job.result["annotation_data"]["masks"][0]
    server.put_file(mask["label_url"], encode_mask(np.zeros(0, dtype=np.int64)))
    sample = make_dataset(server, tmp_path)[0]
    assert sample.points.shape == (0, 4) and sample.points.dtype == torch.float32
    assert sample.labels.shape == (0,) and sample.labels.dtype == torch.int64


def test_non_finite_points_are_kept_counted_and_reported_once(server, tmp_path):
    (job,) = add_synthetic_project(server, n_jobs=1, frames_per_job=1, points_per_frame=POINTS, seed=46)
    lidar = next(s for s in job.result["sensor_data"]["frames"][0]["sensors"] if s["data_url"].endswith(".pcd"))
    data = job.frames[0].points.copy()
    data["x"][:5] = np.nan
    data["z"][5:7] = np.inf
    server.put_file(lidar["data_url"], encode_pcd(data, encoding="binary"))
    ds = make_dataset(server, tmp_path)
    with pytest.warns(RuntimeWarning, match=r"frame 0: 7 of \d+ points have non-finite coordinates \(kept"):
        sample = ds[0]
    assert len(sample.points) == len(data) and int((~torch.isfinite(sample.points[:, :3])).any(dim=1).sum()) == 7
    assert ds.stats().nonfinite_points == 7
