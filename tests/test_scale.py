"""Construction at scale: no parsed result survives its job, and a warm start reads the index, not the results.

The sizes here are small enough for CI; ``benchmarks/bench_scale.py`` measures 2,000 jobs x 50 frames.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from conftest import fast_client
from large_results import add_large_jobs, large_result, result_template

from playment_torch.dataset import PlaymentSegmentationDataset
from playment_torch.models import FrameRef, JobResult, LabelEntry
from playment_torch.testing.server import FakePlaymentServer

FRAMES, KEYS = 50, 83  # a real job's shape: ~1.35 MiB of result JSON


def make_dataset(server: FakePlaymentServer, cache_dir: Path, **options: Any) -> PlaymentSegmentationDataset:
    options.setdefault("client", fast_client(server))
    options.setdefault("progress", False)
    return PlaymentSegmentationDataset(server.project_id, cache_dir=str(cache_dir), **options)


def alive(kind: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is kind)


@pytest.fixture
def project(server: FakePlaymentServer) -> list[str]:
    return add_large_jobs(server, 6, frames=FRAMES, keys=KEYS, batches=2)


def test_cold_construction_keeps_no_parsed_result_and_peaks_near_one_job(server, project, tmp_path):
    template = result_template(FRAMES, KEYS)
    body = template.encode()
    # Other tests of the session may keep parsed objects alive (fixtures, caches): count what this one adds.
    alive_before = {kind: alive(kind) for kind in (JobResult, FrameRef, LabelEntry)}
    tracemalloc.start()
    try:
        JobResult.from_api(json.loads(body), project_id=server.project_id, job_id="one")
        _, one_job = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        ds = make_dataset(server, tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ds) == 6 * FRAMES
    # Building job by job: the peak is about one job's parse, not six (keeping them costs ~6x).
    print(f"peak {peak / 2**20:.1f} MiB, one job {one_job / 2**20:.1f} MiB")
    # (The cache's file table is a memory-mapped file, not Python memory: it costs nothing here.)
    assert peak < 3 * one_job + 4 * 2**20, (peak / 2**20, one_job / 2**20)
    assert {kind: alive(kind) for kind in alive_before} == alive_before, "no parsed result outlives construction"
    assert ds.index.nbytes < 4 * 2**20


def test_warm_construction_reads_small_records_and_the_index_only(server, project, tmp_path):
    cold = make_dataset(server, tmp_path)
    warm = make_dataset(server, tmp_path)
    assert len(warm) == len(cold)
    stats = warm.cache.stats
    # A job costs two small records (its JSON, its result digest); the result files (1.35 MiB each) stay unread.
    result_bytes = len(large_result(result_template(FRAMES, KEYS), project[0]).__repr__())
    assert stats.bytes_read < 2 * warm.index.nbytes + 4096 * len(project), stats
    assert stats.bytes_read < result_bytes, "a warm start read a result file"
    assert warm.index.nbytes == cold.index.nbytes
    for i in (0, 77, len(cold) - 1):
        assert warm.frames[i] == cold.frames[i]
