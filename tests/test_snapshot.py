"""Snapshots: a JSON lock file that pins a dataset's frames, results and label recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import fast_client

from playment_torch.dataset import PlaymentSegmentationDataset
from playment_torch.errors import CacheError, ConfigError, PlaymentError
from playment_torch.formats.masks import encode_mask
from playment_torch.testing.server import FakePlaymentServer
from playment_torch.testing.synthetic import SyntheticJob, add_synthetic_project


def make_dataset(server: FakePlaymentServer, cache_dir: Path, **options: Any) -> PlaymentSegmentationDataset:
    options.setdefault("client", fast_client(server))
    options.setdefault("progress", False)
    return PlaymentSegmentationDataset(server.project_id, cache_dir=str(cache_dir), **options)


def from_snapshot(
    server: FakePlaymentServer, path: Path, cache_dir: Path, **options: Any
) -> PlaymentSegmentationDataset:
    options.setdefault("client", fast_client(server))
    options.setdefault("progress", False)
    return PlaymentSegmentationDataset.from_snapshot(path, cache_dir=str(cache_dir), **options)


def relabel(server: FakePlaymentServer, job: SyntheticJob) -> str:
    """Every point of the job becomes the first annotation's class, with new mask files and a new result."""
    result = job.result
    first = result["annotation_data"]["annotations"][0]
    files = {}
    for mask in result["annotation_data"]["masks"]:
        url = mask["label_url"].replace(".json", "-relabelled.json")
        mask["label_url"] = url
        files[url] = encode_mask(np.full(len(job.frames[int(mask["frame_id"])].points), first["label_key"]))
    server.replace_result(job.job_id, result, files=files)
    return str(first["label"])


@pytest.fixture
def jobs(server: FakePlaymentServer) -> list[SyntheticJob]:
    return add_synthetic_project(server, n_jobs=2, frames_per_job=2, points_per_frame=10_000, seed=31)


def samples(ds: PlaymentSegmentationDataset) -> list[Any]:
    return [ds[i] for i in range(len(ds))]


def assert_same(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for name, u, v in zip(x._fields, x, y, strict=True):
            assert torch.equal(u, v), name


def test_snapshot_file_records_results_frames_and_recipe(server, jobs, tmp_path):
    ds = make_dataset(server, tmp_path / "cache", classes={"car": 0, "road": 1, "pole": 0}, ignore_index=-1)
    written = ds.snapshot(tmp_path / "snap.json")
    document = json.loads((tmp_path / "snap.json").read_text())
    assert document["format"] == "playment-torch-snapshot" and document["version"] == 1
    assert document["project_id"] == server.project_id
    assert [j["job_id"] for j in document["jobs"]] == sorted(j.job_id for j in jobs)
    for pinned, job in zip(document["jobs"], ds.index.jobs, strict=True):
        assert pinned["digest"] == job.digest and len(pinned["digest"]) == 16
        assert pinned["result_url"].startswith("https://playment-data-uploads") and "?" not in pinned["result_url"]
    assert document["frames"] == [[f.job_id, f.frame_id, f.sensor_id] for f in ds.frames]
    assert document["classes"] == {"car": 0, "road": 1, "pole": 0} and document["ignore_index"] == -1
    assert document["point_fields"] == ["x", "y", "z", "intensity"]
    assert len(written.frames) == 4 and not (tmp_path / "snap.json.partial").exists()
    assert written.summary() == f"snapshot of 4 frames of 2 jobs, 2 classes, project {server.project_id}"


def test_from_snapshot_gives_identical_samples_from_the_cache_without_the_network(server, jobs, tmp_path):
    ds = make_dataset(server, tmp_path, classes=["road", "car"], point_fields=("x", "y", "z"))
    ds.snapshot(tmp_path / "snap.json")
    before = samples(ds)
    server.clear_requests()
    again = from_snapshot(server, tmp_path / "snap.json", tmp_path)
    assert again.classes == ("road", "car") and again.point_fields == ("x", "y", "z")
    assert_same(samples(again), before)
    assert server.requests == [], "pinned and cached: no listing, no job, no result, no frame"
    with pytest.raises(ConfigError, match="classes: fixed by the snapshot"):
        from_snapshot(server, tmp_path / "snap.json", tmp_path, classes=["car"])


def test_snapshot_of_a_subset_gives_that_subset(server, jobs, tmp_path):
    ds = make_dataset(server, tmp_path).subset([0, 3])  # e.g. the frames that loaded: ds.subset(report.loaded)
    ds.snapshot(tmp_path / "snap.json")
    again = from_snapshot(server, tmp_path / "snap.json", tmp_path)
    assert [(f.job_id, f.frame_id) for f in again.frames] == [(f.job_id, f.frame_id) for f in ds.frames]
    assert_same(samples(again), samples(ds))


def test_relabelled_job_still_gives_the_pinned_labels_from_the_cache(server, jobs, tmp_path):
    ds = make_dataset(server, tmp_path)
    ds.snapshot(tmp_path / "snap.json")
    before = samples(ds)
    relabel(server, jobs[0])
    fresh = make_dataset(server, tmp_path / "other")  # the server now has other labels
    assert not all(torch.equal(a.labels, b.labels) for a, b in zip(samples(fresh), before, strict=True))
    server.clear_requests()
    pinned = from_snapshot(server, tmp_path / "snap.json", tmp_path)
    assert_same(samples(pinned), before)
    assert server.requests == []


def test_relabelled_job_without_the_pinned_version_cached_is_an_error_naming_it(server, jobs, tmp_path):
    ds = make_dataset(server, tmp_path / "first")
    ds.snapshot(tmp_path / "snap.json")
    relabel(server, jobs[0])
    with pytest.raises(
        PlaymentError, match=rf"changed on the server .* not cached: {jobs[0].job_id}; pass follow"
    ) as info:
        from_snapshot(server, tmp_path / "snap.json", tmp_path / "empty")
    assert jobs[1].job_id not in str(info.value)
    with pytest.raises(CacheError, match=f"pinned result of job {sorted(j.job_id for j in jobs)[0]} is not cached"):
        from_snapshot(server, tmp_path / "snap.json", tmp_path / "empty2", refresh="never")


def test_unchanged_results_are_fetched_from_the_server_into_an_empty_cache(server, jobs, tmp_path):
    ds = make_dataset(server, tmp_path / "first")
    ds.snapshot(tmp_path / "snap.json")
    again = from_snapshot(server, tmp_path / "snap.json", tmp_path / "empty")
    assert_same(samples(again), samples(ds))


def test_follow_changes_takes_the_new_result_with_a_warning(server, jobs, tmp_path):
    ds = make_dataset(server, tmp_path / "first")
    ds.snapshot(tmp_path / "snap.json")
    label = relabel(server, jobs[0])
    with pytest.warns(RuntimeWarning, match=rf"following the current result of 1 jobs .*: {jobs[0].job_id}"):
        followed = from_snapshot(server, tmp_path / "snap.json", tmp_path / "empty", follow_changes=True)
    assert [(f.job_id, f.frame_id) for f in followed.frames] == [(f.job_id, f.frame_id) for f in ds.frames]
    for i, frame in enumerate(followed.frames):
        labels = followed[i].labels
        if frame.job_id == jobs[0].job_id:
            assert bool((labels == followed.classes.index(label)).all())
        else:
            assert torch.equal(labels, ds[i].labels)
