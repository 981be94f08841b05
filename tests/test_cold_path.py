"""The cold path writes and holds each frame once; the warm path reads through the shared file table."""

from __future__ import annotations

import os
import pickle
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import fast_client

from playment_torch.cache import ArrayCache
from playment_torch.dataset import PlaymentSegmentationDataset
from playment_torch.errors import DownloadError
from playment_torch.testing.server import PLAYMENT_STORAGE, FakePlaymentServer
from playment_torch.testing.synthetic import add_synthetic_project

BODY = np.random.default_rng(5).integers(0, 256, 6_000_000, dtype=np.uint8).tobytes()


@pytest.fixture
def hosted(server: FakePlaymentServer) -> str:
    return server.put_file(f"{PLAYMENT_STORAGE}/blobs/cloud.bin", BODY)


def _peak_of(download: object) -> tuple[bytes, int]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        body = download()  # type: ignore[operator]
        return body, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_in_place_download_is_the_same_bytes_at_about_one_copy_of_peak_memory(server, hosted) -> None:
    client = fast_client(server)
    joined, joined_peak = _peak_of(lambda: client.download(hosted))
    filled, filled_peak = _peak_of(lambda: client.download(hosted, in_place=True))
    assert isinstance(joined, bytes) and isinstance(filled, bytearray)
    assert filled == joined == BODY
    # Joining holds the chunks and their join (2x); filling in place holds the body and about two 1 MiB reads
    # (the one being copied and the transport's buffer), whatever the body's size.
    assert joined_peak > 1.9 * len(BODY)
    assert filled_peak < len(BODY) + 2.5 * 2**20, filled_peak / len(BODY)


def test_in_place_download_still_refuses_a_truncated_body(server, hosted) -> None:
    server.add_fault("storage", truncate=True, times=None)
    with pytest.raises(DownloadError, match="body interrupted after 3000000 bytes"):
        fast_client(server).download(hosted, in_place=True)


def _warm_dataset(server: FakePlaymentServer, tmp_path: Path) -> PlaymentSegmentationDataset:
    # 40k points: each mask (40 kB) is a value file too; values under 32 kB live inside SQLite.
    add_synthetic_project(server, n_jobs=2, frames_per_job=3, points_per_frame=40_000, seed=11)
    ds = PlaymentSegmentationDataset(
        server.project_id, client=fast_client(server), cache_dir=str(tmp_path / "c"), progress=False
    )
    ds.prefetch(num_threads=2, progress=False)
    return ds


def test_a_fresh_process_reads_warm_frames_without_sqlite(server, tmp_path, monkeypatch) -> None:
    ds = _warm_dataset(server, tmp_path)
    expected = [ds[i] for i in range(len(ds))]  # the first reads record each value file in the table
    fresh = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker gets: no memo, no handle
    lookups: list[str] = []
    real = ArrayCache._read_entry
    monkeypatch.setattr(
        ArrayCache, "_read_entry", lambda self, store, key: lookups.append(key) or real(self, store, key)
    )
    for i, sample in enumerate(expected):
        got = fresh[i]
        np.testing.assert_array_equal(got.points.numpy(), sample.points.numpy())
        np.testing.assert_array_equal(got.labels.numpy(), sample.labels.numpy())
    assert lookups == [], "every record was found through the shared file table"
    assert fresh.stats().hits >= 2 * len(ds)


def test_a_fresh_process_trusts_what_another_checked_only_for_a_settled_file(server, tmp_path, monkeypatch) -> None:
    import playment_torch.cache as cache_module

    ds = _warm_dataset(server, tmp_path)
    for path in (tmp_path / "c").glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*.val"):
        old = time.time() - 60
        os.utime(path, (old, old))
    for i in range(len(ds)):
        ds[i]  # checked in full once, and remembered in the shared table
    sums: list[int] = []
    real = cache_module._payload_sums
    monkeypatch.setattr(cache_module, "_payload_sums", lambda words: sums.append(1) or real(words))
    fresh = pickle.loads(pickle.dumps(ds))
    for i in range(len(fresh)):
        fresh[i]
    assert sums == [], "another process checked these file versions in full"
    # A rewritten file is a new version: checked again, and damage is found.
    (victim,) = [p for p in (tmp_path / "c").glob("*/*/*.val") if p.stat().st_size > 50_000][:1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x10
    victim.write_bytes(bytes(data))
    for i in range(len(fresh)):
        fresh[i]
    assert sums, "the rewritten file was checked"
    assert fresh.cache.stats.corrupt == 1
