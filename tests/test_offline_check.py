"""The offline frame check in bulk: ``ArrayCache.contains_many`` and ``cache_report`` agree with ``key in cache``."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
from conftest import fast_client
from large_results import add_large_jobs

from playment_torch._catalog import cache_report
from playment_torch.cache import ArrayCache
from playment_torch.dataset import PlaymentSegmentationDataset
from playment_torch.testing.synthetic import add_synthetic_project


def per_key(cache: ArrayCache, keys: list[str]) -> list[bool]:
    return [key in cache for key in keys]


def filled(tmp_path: Path) -> tuple[ArrayCache, list[str]]:
    """A cache with array entries (small ones in SQLite, large ones in files), JSON entries, and damaged rows."""
    cache = ArrayCache(tmp_path / "cache")
    keys = []
    for n in range(1200):  # more than one IN batch
        key = f"points|p|job|{n}|lidar|https://host/{n}.pcd"
        keys.append(key)
        if n % 3 == 0:
            cache.put_array(key, np.arange(n % 50, dtype=np.int64))
    cache.put_array("big", np.zeros(100_000, dtype=np.float32))  # a value file
    cache.put_json("json-only", {"a": 1})  # in the metadata store
    cache.put_array("meta-array", np.ones(3), metadata=True)
    # Damaged rows: the value file of one entry deleted, another's bytes overwritten. Existence checks do not
    # read values, so both are present for ``in`` and must be for the bulk check too.
    cache.put_array("file-gone", np.zeros(100_000, dtype=np.float32))
    cache.put_array("file-garbled", np.zeros(100_000, dtype=np.float32))
    files = sorted(Path(cache.directory).glob("*/*/*.val"), key=os.path.getmtime)
    files[-2].unlink()
    files[-1].write_bytes(b"garbage")
    keys += ["big", "json-only", "meta-array", "file-gone", "file-garbled", "never-written", "", "a|b%7C"]
    return cache, keys


def test_contains_many_agrees_with_contains_on_present_missing_and_damaged_rows(tmp_path):
    cache, keys = filled(tmp_path)
    expected = per_key(cache, keys)
    got = cache.contains_many(keys)
    assert got.dtype == bool and got.tolist() == expected
    assert sum(expected) == 400 + 5, "the fixture has both kinds"
    # A few keys of a larger table are looked up (IN queries) rather than scanned; repeats and order are kept.
    mixed = ["never-written", "big", "big", keys[0], keys[1], "file-gone", "json-only"]
    assert cache.contains_many(mixed).tolist() == per_key(cache, mixed)
    assert cache.contains_many([]).tolist() == []


def test_contains_many_on_a_cache_never_written(tmp_path):
    cache = ArrayCache(tmp_path / "nothing-yet")
    assert cache.contains_many(["a", "b"]).tolist() == [False, False]


def test_contains_many_falls_back_to_recovery_on_a_damaged_database(tmp_path):
    cache, keys = filled(tmp_path)
    cache.close()
    (Path(cache.directory) / "cache.db").write_bytes(b"this is not a database" * 100)
    damaged = ArrayCache(cache.directory)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = damaged.contains_many(keys)
    # The array store was moved aside (its entries are gone); the metadata store is untouched.
    assert any("is damaged" in str(w.message) for w in caught)
    assert got.tolist() == per_key(damaged, keys)
    assert got[keys.index("json-only")] and not got[keys.index("big")]


def test_cache_report_matches_the_per_key_check(server, tmp_path):
    add_synthetic_project(server, n_jobs=2, frames_per_job=4, points_per_frame=10_000, seed=21)
    ds = PlaymentSegmentationDataset(
        server.project_id, client=fast_client(server), cache_dir=str(tmp_path), progress=False
    )
    for i in (0, 1, 2, 4, 6):
        ds[i]
    cache = ArrayCache(tmp_path)
    cache.delete(ds._store.keys(6)[1])  # points without the mask
    report = ds.cache_report()
    expected = [all(key in cache for key in ds._store.keys(i)) for i in range(len(ds))]
    assert report.cached.tolist() == expected == [True, True, True, False, True, False, False, False]
    assert [(j.frames, j.cached) for j in report.jobs] == [(4, 3), (4, 1)]


def test_cache_report_of_frames_with_any_number_of_keys(tmp_path):
    from playment_torch._catalog import FrameCacheReport
    from playment_torch.index import FrameIndex

    cache = ArrayCache(tmp_path)
    cache.put_array("a", np.zeros(1))
    cache.put_array("b", np.zeros(1))
    index = FrameIndex()
    index.frame_job = np.zeros(4, dtype=np.int32)
    index.jobs = []
    keys = {0: ["a", "b"], 1: [], 2: ["a", "x"], 3: ["b"]}
    report = cache_report(index, cache, keys.__getitem__)
    assert isinstance(report, FrameCacheReport)
    assert report.cached.tolist() == [True, True, False, True]


def test_offline_construction_checks_thousands_of_frames_in_bulk(server, tmp_path):
    # 60 jobs x 50 frames, every frame's two records present: a few IN queries per thousand keys, not 6,000
    # queries.
    add_large_jobs(server, 60, frames=50, keys=3)
    ds = PlaymentSegmentationDataset(
        server.project_id, client=fast_client(server), cache_dir=str(tmp_path), progress=False
    )
    cache = ArrayCache(tmp_path)
    keys = [key for i in range(len(ds)) for key in ds._store.keys(i)]
    assert cache.contains_many(keys).sum() == 0
    for key in keys:
        cache.put_array(key, np.zeros(1, dtype=np.int8))
    started = time.perf_counter()
    present = cache.contains_many(keys)
    bulk_seconds = time.perf_counter() - started
    assert present.all() and len(keys) == 6_000
    assert bulk_seconds < 1.0
    offline = PlaymentSegmentationDataset(server.project_id, cache_dir=str(tmp_path), refresh="never", progress=False)
    assert offline.offline_report is not None and offline.offline_report.missing == 0
