"""The catalog: refresh policy, raw API JSON in the cache, the cached index, sharing across processes, offline."""

from __future__ import annotations

import json
import multiprocessing
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import FAST_RETRY, fast_client
from large_results import add_large_jobs

from playment_torch._catalog import Catalog, Refresh, cache_report
from playment_torch.cache import ArrayCache, cache_key
from playment_torch.client import PlaymentClient
from playment_torch.dataset import PlaymentSegmentationDataset
from playment_torch.errors import AuthenticationError, CacheError, ConfigError
from playment_torch.testing.server import FakePlaymentServer
from playment_torch.testing.synthetic import add_synthetic_project


def make_dataset(server: FakePlaymentServer, cache_dir: Path, **options: Any) -> PlaymentSegmentationDataset:
    options.setdefault("client", fast_client(server))
    options.setdefault("progress", False)
    return PlaymentSegmentationDataset(server.project_id, cache_dir=str(cache_dir), **options)


def routes(server: FakePlaymentServer) -> Counter[str]:
    return Counter(r.route for r in server.requests)


# ----------------------------------------------------------------------------------------------- the policy


@pytest.mark.parametrize(
    ("policy", "completed", "pending", "old_listing", "fresh_listing", "result"),
    [
        # policy       completed job  pending job  old listing  listing fetched since start  cached result
        ("if_missing", True, False, False, True, True),
        ("always", False, False, False, True, False),
        ("never", True, True, True, True, True),
    ],
)
def test_refresh_policy_decides_what_cached_records_stand_for(
    policy, completed, pending, old_listing, fresh_listing, result
):
    refresh = Refresh.parse(policy)
    started = 1000.0
    old = {"fetched_at": 10.0, "payload": {"data": {"status": "completed"}, "success": True}}
    waiting = {"fetched_at": 10.0, "payload": {"data": {"status": "pending"}, "success": True}}
    fresh = {"fetched_at": 1000.5, "payload": {}}
    assert refresh.reuses_job(old, started) is completed
    assert refresh.reuses_job(waiting, started) is pending
    assert refresh.reuses_listing(old, started) is old_listing
    assert refresh.reuses_listing(fresh, started) is fresh_listing
    assert refresh.reuses_result({"fetched_at": 10.0, "digest": "d"}, started) is result
    # Whatever the policy, a record another process fetched while this construction waited is reused.
    assert refresh.reuses_job({**waiting, "fetched_at": 1001.0}, started)
    assert refresh.online is (policy != "never")


def test_refresh_policy_names_are_checked():
    assert Refresh.parse(Refresh.ALWAYS) is Refresh.ALWAYS
    with pytest.raises(ConfigError, match="refresh must be one of 'if_missing', 'always', 'never'; got 'sometimes'"):
        Refresh.parse("sometimes")


# ----------------------------------------------------------------------------------------------- the cache


def test_raw_api_json_and_result_bytes_are_cached_as_the_server_sent_them(server, tmp_path):
    (job_id,) = add_large_jobs(server, 1, frames=3, keys=5)
    make_dataset(server, tmp_path)
    cache = ArrayCache(tmp_path)
    record = cache.get_json(cache_key("catalog-job@1", project_id=server.project_id, job_id=job_id))
    # The envelope too: what the API answered, not JSON rebuilt from parsed models.
    assert record["payload"]["success"] is True and record["payload"]["data"]["job_id"] == job_id
    result_url = record["payload"]["data"]["result"]
    served = next(
        r for r in server.requests if r.route == "attachments" and r.query.get("url") == result_url
    )  # the result was downloaded through the attachments API
    assert served.status == 302
    result_key = cache_key("catalog-result@1", project_id=server.project_id, job_id=job_id, url=result_url)
    body = cache.get_array(result_key, metadata=True)  # metadata: a size limit never evicts it
    hosted = fast_client(server).download(result_url, private=True)
    assert body is not None and body.tobytes() == hosted
    digest = cache.get_json(cache_key("catalog-digest@1", project_id=server.project_id, job_id=job_id, url=result_url))
    assert digest["bytes"] == len(hosted) and len(digest["digest"]) == 16


def test_warm_construction_is_the_listing_plus_the_cached_index(server, tmp_path):
    job_ids = add_large_jobs(server, 6, frames=4, keys=7, batches=2)
    cold = make_dataset(server, tmp_path)
    assert [f.job_id for f in cold.frames] == [j for j in job_ids for _ in range(4)]
    # Drop every cached result file: a warm construction must not need them (it reads the index).
    cache = ArrayCache(tmp_path)
    keys = cache.keys()
    dropped = [k for k in keys if k.startswith("catalog-result@")]
    assert len(dropped) == 6
    for key in dropped:
        cache.delete(key)
    server.clear_requests()
    warm = make_dataset(server, tmp_path)
    assert routes(server) == Counter({"project": 1, "batch": 2})  # listings only: no job, no result
    assert len(warm) == len(cold) == 24
    for i in (0, 5, 23):
        assert warm.frames[i] == cold.frames[i]
        np.testing.assert_array_equal(warm.index.poses(i), cold.index.poses(i))
    # Another class map reuses the same cached index: classes are applied after reading it.
    server.clear_requests()
    other = make_dataset(server, tmp_path, classes=["road", "car"], ignore_index=-1)
    assert routes(server) == Counter({"project": 1, "batch": 2})
    mask = np.arange(0, 9, dtype=np.int64)
    labels = other.index.classes_of(0, mask, -1)
    keys = {e.label_key: e.label for e in other.frames[0].labels}
    expected = [{"road": 0, "car": 1}.get(keys.get(int(k), ""), -1) for k in mask]
    np.testing.assert_array_equal(labels, expected)


def test_always_asks_for_every_listing_job_and_result_again_and_sees_a_relabel(server, tmp_path):
    job_ids = add_large_jobs(server, 3, frames=2, keys=3)
    first = make_dataset(server, tmp_path)
    relabelled = json.loads(fast_client(server).download(first.index.jobs[0].result_url, private=True))
    for annotation in relabelled["annotation_data"]["annotations"]:
        annotation["label"] = annotation["text"] = "relabelled"
    server.replace_result(job_ids[0], relabelled)
    server.clear_requests()
    assert "relabelled" not in make_dataset(server, tmp_path).classes, "if_missing: a completed job is final"
    assert routes(server) == Counter({"project": 1, "batch": 1})
    server.clear_requests()
    again = make_dataset(server, tmp_path, refresh="always")
    counted = routes(server)
    assert (counted["project"], counted["batch"], counted["job"], counted["attachments"]) == (1, 1, 3, 3)
    assert "relabelled" in again.classes and {e.label for e in again.frames[0].labels} == {"relabelled"}
    assert again.index.jobs[0].digest != first.index.jobs[0].digest
    assert [j.digest for j in again.index.jobs[1:]] == [j.digest for j in first.index.jobs[1:]]


# ----------------------------------------------------------------------------------------------- processes


def _construct(url: str, key: str, project_id: str, cache: str, barrier: Any, out: str) -> None:
    client = PlaymentClient(key, base_url=url, retry=FAST_RETRY)
    barrier.wait()  # both processes start resolving together, so every fetch is contended
    ds = PlaymentSegmentationDataset(project_id, client=client, cache_dir=cache, progress=False, num_threads=4)
    Path(out).write_text(json.dumps([[f.job_id, f.frame_id] for f in ds.frames]))


def test_two_processes_constructing_at_once_share_every_fetch(server, tmp_path):
    job_ids = add_large_jobs(server, 30, frames=3, keys=5, batches=2)
    server.page_size = 5  # 3 pages per batch
    server.latency = 0.02  # widen the window in which both processes want the same thing
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    children = [
        context.Process(
            target=_construct,
            args=(server.url, server.api_key, server.project_id, str(tmp_path / "cache"), barrier, tmp_path / f"{n}"),
        )
        for n in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
        assert child.exitcode == 0
    frames = [json.loads((tmp_path / f"{n}").read_text()) for n in range(2)]
    assert frames[0] == frames[1] and len(frames[0]) == 90
    counted = routes(server)
    assert counted["job"] == len(job_ids) == 30, "each job asked once"
    assert counted["project"] == 1
    assert counted["batch"] == 6, "each batch page listed once"
    results = Counter(r.query["url"] for r in server.requests if r.route == "attachments")
    assert len(results) == 30 and set(results.values()) == {1}, "each result downloaded once"


# ----------------------------------------------------------------------------------------------- offline


@pytest.fixture
def partly_cached(server, tmp_path):
    """Two jobs of 4 frames; frames 0-2 of the first job and frame 0 of the second are cached."""
    add_synthetic_project(server, n_jobs=2, frames_per_job=4, points_per_frame=10_000, seed=21)
    ds = make_dataset(server, tmp_path)
    for i in (0, 1, 2, 4):
        ds[i]
    return ds


def test_never_says_up_front_which_frames_are_missing(partly_cached, tmp_path):
    ds = partly_cached
    first, second = ds.frames[0].job_id, ds.frames[4].job_id
    with pytest.raises(CacheError) as info:
        PlaymentSegmentationDataset(ds.project_id, cache_dir=str(tmp_path), refresh="never", progress=False)
    assert str(info.value).startswith(
        f"refresh='never' but 4 of 8 frames are not cached: job {first} (1 of 4), job {second} (3 of 4)"
    )
    report = ds.cache_report()
    assert [(j.job_id, j.frames, j.cached, j.missing) for j in report.jobs] == [(first, 4, 3, 1), (second, 4, 1, 3)]
    assert report.cached.tolist() == [True, True, True, False, True, False, False, False]


def test_offline_subset_keeps_exactly_the_cached_frames_with_one_warning(partly_cached, tmp_path):
    ds = partly_cached
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        offline = PlaymentSegmentationDataset(
            ds.project_id, cache_dir=str(tmp_path), refresh="never", offline_subset=True, progress=False
        )
    assert len(caught) == 1
    assert str(caught[0].message).startswith("offline_subset=True: keeping the 4 cached frames; 4 of 8 frames are not")
    report = offline.offline_report
    assert report is not None and [(j.frames, j.cached) for j in report.jobs] == [(4, 3), (4, 1)]
    assert [(j.frames, j.cached) for j in offline.cache_report().jobs] == [(3, 3), (1, 1)]
    assert [(f.job_id, f.frame_id) for f in offline.frames] == [
        (ds.frames[i].job_id, ds.frames[i].frame_id) for i in (0, 1, 2, 4)
    ]
    for j, i in enumerate((0, 1, 2, 4)):
        assert torch.equal(offline[j].points, ds[i].points) and torch.equal(offline[j].labels, ds[i].labels)


def test_cache_report_needs_both_records_of_a_frame(partly_cached, tmp_path):
    ds = partly_cached
    cache = ArrayCache(tmp_path)
    points_key, mask_key = ds._store.keys(0)
    assert points_key in cache and mask_key in cache and ds.cache_report().cached[0]
    cache.delete(mask_key)
    assert not ds.cache_report().cached[0], "points without the mask are not a frame"


def test_dead_server_falls_back_to_the_cache_at_once_with_one_warning(tmp_path):
    with FakePlaymentServer() as server:
        add_large_jobs(server, 3, frames=2, keys=3)
        ds = make_dataset(server, tmp_path)
        client = fast_client(server)
    # The server is gone: its port refuses connections.
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        offline = PlaymentSegmentationDataset(ds.project_id, client=client, cache_dir=str(tmp_path), progress=False)
    assert time.perf_counter() - started < 5.0
    host = client.base_url.split("//")[1]
    messages = [str(w.message) for w in caught]
    assert messages[0].startswith(f"the API host {host} is unreachable (ConnectionRefusedError): using the cached")
    assert [f.job_id for f in offline.frames] == [f.job_id for f in ds.frames]


def test_dead_server_with_an_uncached_job_names_the_host_and_the_job(tmp_path):
    with FakePlaymentServer() as server:
        (first,) = add_large_jobs(server, 1, frames=2, keys=3)
        make_dataset(server, tmp_path)
        (second,) = add_large_jobs(server, 1, frames=2, keys=3, seed=1)  # never resolved while the server lived
        client = fast_client(server)
    with pytest.warns(RuntimeWarning, match="unreachable"), pytest.raises(CacheError) as info:
        PlaymentSegmentationDataset(
            server.project_id, job_ids=[first, second], client=client, cache_dir=str(tmp_path), progress=False
        )
    assert f"is unreachable (ConnectionRefusedError) but 1 items are not cached: job {second}" in str(info.value)


def test_auth_errors_are_not_a_reason_to_fall_back(server, tmp_path):
    add_large_jobs(server, 1, frames=2, keys=3)
    make_dataset(server, tmp_path)
    wrong = PlaymentClient("not-the-key", base_url=server.url, retry=FAST_RETRY)
    with pytest.raises(AuthenticationError):
        make_dataset(server, tmp_path, client=wrong)


def test_catalog_names_failed_and_pending_jobs_for_the_dataset(server, tmp_path):
    good, broken = add_large_jobs(server, 2, frames=2, keys=3)
    waiting = server.add_job(None, status="pending")
    result = json.loads(
        fast_client(server).download(fast_client(server).get_job(server.project_id, broken).result_url, private=True)
    )
    result["sensor_data"]["frames"][0]["ego_pose"]["heading"]["w"] = "north"
    server.replace_result(broken, result)
    catalog = Catalog(
        server.project_id, cache=ArrayCache(tmp_path), client=lambda: fast_client(server), on_error="skip"
    )
    with pytest.warns(RuntimeWarning) as caught:
        index = catalog.open(None, None)
    assert [job.job_id for job in index.jobs] == [good]
    assert list(catalog.failed_jobs) == [broken] and "heading.w" in catalog.failed_jobs[broken]
    assert not catalog.failed_jobs[broken].startswith(f"job {broken}")
    assert catalog.pending_jobs == {waiting: "pending"}
    assert len(caught) == 2
    # The frame store says which records make a frame cached.
    report = cache_report(index, ArrayCache(tmp_path), lambda p: [index.frame_ids[p], "nothing"])
    assert report.missing == 2
    ArrayCache(tmp_path).put_array("0", np.zeros(1))
    assert cache_report(index, ArrayCache(tmp_path), lambda p: [index.frame_ids[p]]).cached.tolist() == [True, False]
