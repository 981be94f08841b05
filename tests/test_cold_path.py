"""The cold path writes and holds each frame once; the warm path reads through the shared file table."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import fast_client
from hypothesis import given, settings
from hypothesis import strategies as st

from playment_torch.cache import ArrayCache
from playment_torch.dataset import PlaymentSegmentationDataset
from playment_torch.errors import DownloadError, NotFoundError
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
    with pytest.raises(DownloadError, match="truncated body: 3000000 of 6000000 bytes"):
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
    [ds[i] for i in range(len(ds))]  # the first reads write the labels records
    expected = [ds[i] for i in range(len(ds))]  # these record each value file in the table
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
    for i in range(len(ds)):
        ds[i]  # writes the labels records
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


# --- prefetch in several processes ------------------------------------------------------------------------------


def _storage_gets(server: FakePlaymentServer) -> Counter[str]:
    return Counter(r.path for r in server.requests if r.route in ("storage", "direct") and r.method == "GET")


def _fresh(server: FakePlaymentServer, cache: Path, **options: object) -> PlaymentSegmentationDataset:
    return PlaymentSegmentationDataset(
        server.project_id, client=fast_client(server), cache_dir=str(cache), progress=False, **options
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="processes need fork (Linux)")
def test_prefetch_in_processes_downloads_each_file_once_and_matches_threads(server, tmp_path) -> None:
    add_synthetic_project(server, n_jobs=3, frames_per_job=4, points_per_frame=10_000, seed=4)
    forked = _fresh(server, tmp_path / "forked")
    results = _storage_gets(server)  # the job results, fetched while constructing
    report = forked.prefetch(num_threads=4, processes=3)
    assert (report.frames, report.downloaded, report.failures) == (12, 12, [])
    gets = _storage_gets(server) - results
    assert len(gets) == 24 and set(gets.values()) == {1}, "every point cloud and mask left the server once"
    # The parent's counters include the workers'; a second prefetch downloads nothing.
    assert forked.stats().misses == 24
    again = forked.prefetch(num_threads=4, processes=3)
    assert again.downloaded == 0 and _storage_gets(server) - results == gets
    threaded = _fresh(server, tmp_path / "threads")
    threads_report = threaded.prefetch(num_threads=4, processes=1)
    assert report.bytes_downloaded == threads_report.bytes_downloaded > 12 * 10_000 * 16
    for i in range(len(forked)):
        a, b = forked[i], threaded[i]
        np.testing.assert_array_equal(a.points.numpy(), b.points.numpy())
        np.testing.assert_array_equal(a.labels.numpy(), b.labels.numpy())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="processes need fork (Linux)")
def test_failures_in_worker_processes_come_back_typed_and_named(server, tmp_path) -> None:
    from playment_torch.errors import FrameError

    add_synthetic_project(server, n_jobs=2, frames_per_job=3, points_per_frame=10_000, seed=6)
    ds = _fresh(server, tmp_path / "c", on_error="skip")
    victim = 4
    server.add_fault("storage", status=404, times=None, match=ds.frames[victim].mask_url.split("/", 3)[-1])
    report = ds.prefetch(num_threads=2, processes=2)
    assert report.failed == [victim] and report.loaded == [0, 1, 2, 3, 5]
    ((job_id, frame_id, reason),) = report.failures
    assert (job_id, frame_id) == (ds.frames[victim].job_id, ds.frames[victim].frame_id)
    assert "not found" in reason
    assert isinstance(report.first_error, FrameError | DownloadError)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="processes need fork (Linux)")
def test_a_worker_process_that_dies_fails_its_frames_and_nothing_hangs(server, tmp_path, monkeypatch) -> None:
    from playment_torch._store import FrameStore

    add_synthetic_project(server, n_jobs=2, frames_per_job=3, points_per_frame=10_000, seed=8)
    ds = _fresh(server, tmp_path / "c", on_error="skip")
    real = FrameStore.ensure_record

    def ensure_record(self: FrameStore, position: int, record: int) -> tuple[bool, int]:
        if position == 1:
            os._exit(3)  # the worker holding frame 1 is killed (as by the OOM killer)
        return real(self, position, record)

    monkeypatch.setattr(FrameStore, "ensure_record", ensure_record)
    started = time.monotonic()
    report = ds.prefetch(num_threads=2, processes=2)
    assert time.monotonic() - started < 60
    # Positions are split 0,2,4 / 1,3,5: the second worker's frames fail, saying why; the first's load.
    assert report.failed == [1, 3, 5]
    assert all("died (exit code 3)" in reason for _, _, reason in report.failures)
    monkeypatch.setattr(FrameStore, "ensure_record", real)
    assert ds.prefetch(num_threads=2, processes=1).failures == []


def _count_connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the host of every TCP connection urllib3 opens from now on."""
    import urllib3.connection

    opened: list[str] = []
    real = urllib3.connection.HTTPConnection._new_conn

    def counting(self: urllib3.connection.HTTPConnection) -> Any:
        opened.append(f"{self.host}:{self.port}")
        return real(self)

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "_new_conn", counting)
    return opened


def test_in_place_downloads_keep_reusing_one_connection(server, hosted, monkeypatch) -> None:
    opened = _count_connections(monkeypatch)
    client = fast_client(server)
    for _ in range(5):
        assert client.download(hosted, in_place=True) == BODY
    # Each body was read to its end below urllib3, and each redirect's short page read: one connection to the
    # API host and one to the storage host served all ten requests.
    assert len(opened) == 2 and len(set(opened)) == 2, opened


def test_a_response_left_unread_drops_its_connection_and_the_next_one_reads_right(server, hosted, monkeypatch) -> None:
    # A body left unread (an error page, a file not read) closes its connection, or the next request would
    # read those bytes as its response; a body read to its end keeps it.
    client = fast_client(server)
    assert client.download(hosted, in_place=True) == BODY
    opened = _count_connections(monkeypatch)
    server.clear_requests()
    for _ in range(2):
        server.add_fault("storage", status=404, times=1)
        with pytest.raises(NotFoundError):
            client.download(hosted, in_place=True)
        assert client.download(hosted, in_place=True) == BODY
    assert [r.status for r in server.requests if r.route == "storage"] == [404, 200, 404, 200], "no retry needed"
    assert len(opened) == 2, "a new storage connection after each unread error page"
    signed = client._sign(hosted)
    with client._send(signed) as response:
        assert response.status_code == 200 and response.raw.length_remaining == len(BODY)  # 6 MB, not read
    assert client.download(hosted, in_place=True) == BODY
    assert len(opened) == 3, "the unread 6 MB body closed its connection; the next download opened another"
    server.clear_requests()
    assert client.download(hosted, in_place=True) == BODY
    assert len(opened) == 3 and [r.status for r in server.requests] == [302, 200], "both connections reused"


def test_read_pcd_without_a_copy_views_the_callers_bytes() -> None:
    from playment_torch.formats.pcd import encode_pcd, read_pcd

    cloud = np.zeros(4, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    cloud["z"] = np.arange(8, 12)
    body = bytearray(encode_pcd(cloud))
    copied, viewed = read_pcd(body).data, read_pcd(body, copy=False).data
    np.testing.assert_array_equal(copied, viewed)
    body[-4:] = np.float32(99.0).tobytes()  # the last point's z, in place
    assert viewed["z"][-1] == 99.0 and copied["z"][-1] == 11.0
    assert not read_pcd(bytes(body), copy=False).data.flags.writeable  # a view of immutable bytes


def test_a_smaller_file_table_never_shrinks_the_shared_file(tmp_path, monkeypatch) -> None:
    """Another process's mapping must stay valid: shrinking the file under it would kill it with SIGBUS."""
    monkeypatch.delenv("PLAYMENT_TORCH_FILE_TABLE_BYTES")  # the default size (conftest sets a small one)
    big = ArrayCache(tmp_path / "c")
    big.put_array("k", np.arange(10_000))
    assert big.get_array("k") is not None
    table = tmp_path / "c" / "files.table"
    size = table.stat().st_size
    small = ArrayCache(tmp_path / "c", checked_table_bytes=1 << 16)
    np.testing.assert_array_equal(small.get_array("k"), np.arange(10_000))
    assert table.stat().st_size == size == 32 << 20
    for i in range(0, 1 << 20, 4096):  # touch every page of the big mapping: still there
        big._files.find(i)


def test_a_frames_point_cloud_and_mask_are_fetched_at_once(server, tmp_path) -> None:
    add_synthetic_project(server, n_jobs=1, frames_per_job=1, points_per_frame=10_000, seed=12)
    ds = _fresh(server, tmp_path / "c")
    server.latency = 0.5  # each of a frame's four requests (two redirects, two GETs) waits this long
    started = time.monotonic()
    report = ds.prefetch(num_threads=2, processes=1)
    elapsed = time.monotonic() - started
    assert report.downloaded == 1 and report.failures == []
    # One after the other the four round trips take 2 s; at once, two (generous bound for a loaded machine).
    assert elapsed < 1.8, elapsed
    np.testing.assert_array_equal(ds[0].labels.numpy(), ds._store.load(0).labels)


def test_a_mask_of_another_length_fails_its_frame_in_prefetch(server, tmp_path) -> None:
    frames = add_synthetic_project(server, n_jobs=1, frames_per_job=2, points_per_frame=10_000, seed=13)[0].frames
    ds = _fresh(server, tmp_path / "c", on_error="skip")
    points = len(frames[1].points)
    server.put_file(ds.frames[1].mask_url, json.dumps([0] * (points - 5)).encode())
    report = ds.prefetch(num_threads=2, processes=1)
    assert report.failed == [1]
    assert f"the mask has {points - 5} label keys but the point cloud has {points} points" in report.failures[0][2]


# --- url_identity's fast path ----------------------------------------------------------------------------------

_URL_PART = st.text(alphabet="aAzZ09._-~!$&'()*+,;=:/%?#@[] \t", max_size=12)


@settings(max_examples=3000, deadline=None)
@given(
    st.sampled_from(["https", "HTTP", "s3", "gs", "x+y", "1a", ""]),
    st.sampled_from(["://", ":/", "//", ":"]),
    _URL_PART,
    st.sampled_from(["", ":80", ":080", ":0", ":65535", ":65536", ":99999", ":", ":x"]),
    _URL_PART,
)
def test_url_identity_fast_path_answers_as_the_parser_does(scheme, separator, host, port, path) -> None:
    import re

    import playment_torch.errors as errors

    url = f"{scheme}{separator}{host}{port}{path}"
    fast = errors.url_identity(url)
    saved = errors._SIMPLE_URL
    errors._SIMPLE_URL = re.compile(r"(?!)")  # matches nothing: every URL takes the parser
    try:
        assert fast == errors.url_identity(url), url
    finally:
        errors._SIMPLE_URL = saved


def test_url_identity_fast_path_is_taken_by_result_urls() -> None:
    import playment_torch.errors as errors

    url = "https://Playment-Data-Uploads.s3.ap-south-1.amazonaws.com/320c35b4/masks/r0/0.json"
    assert errors._SIMPLE_URL.fullmatch(url) is not None
    assert (
        errors.url_identity(url) == "https://playment-data-uploads.s3.ap-south-1.amazonaws.com/320c35b4/masks/r0/0.json"
    )
    assert errors._SIMPLE_URL.fullmatch(url + "?X-Amz-Signature=abc") is None  # signed: the parser drops it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="processes need fork (Linux)")
def test_prefetch_inside_a_daemonic_process_uses_threads(server, tmp_path) -> None:
    """A DataLoader worker is daemonic and may not start processes: prefetch there falls back to threads."""
    import multiprocessing

    add_synthetic_project(server, n_jobs=2, frames_per_job=20, points_per_frame=10_000, seed=14)
    ds = _fresh(server, tmp_path / "c")
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def work() -> None:
        report = ds.prefetch(num_threads=4, processes=2)
        queue.put((report.downloaded, len(report.failures)))

    worker = context.Process(target=work, daemon=True)
    worker.start()
    assert queue.get(timeout=120) == (40, 0)
    worker.join(60)
    assert worker.exitcode == 0


def test_a_full_disk_never_kills_a_reader_through_the_file_table(tmp_path, monkeypatch) -> None:
    """Writing into a mapped page a full file system cannot back is SIGBUS: the table's blocks are reserved."""
    monkeypatch.delenv("PLAYMENT_TORCH_FILE_TABLE_BYTES")  # the default size, in this process and the reader
    from test_cache_adversarial import env_with_worktree, mounted_tmpfs

    with mounted_tmpfs(tmp_path / "disk", "40m") as disk:
        cache = ArrayCache(disk / "cache")
        arrays = {f"k{i}": np.full(20_000, float(i)) for i in range(20)}
        for key, array in arrays.items():
            cache.put_array(key, array)
        cache.close()
        assert (disk / "cache" / "files.table").stat().st_blocks * 512 >= 32 << 20, "allocated, not sparse"
        with contextlib.suppress(OSError), open(disk / "filler", "wb", buffering=0) as filler:
            while True:
                filler.write(b"\0" * 4096)
        reader = subprocess.run(
            [sys.executable, "-c", FULL_DISK_READER, str(disk / "cache"), json.dumps(list(arrays))],
            capture_output=True,
            text=True,
            env=env_with_worktree(),
            timeout=120,
        )
        assert reader.returncode == 0, (reader.returncode, reader.stderr[-500:])
        assert reader.stdout.split() == ["20", "20"], "every value read, twice (the second time through the table)"


FULL_DISK_READER = """
import json, sys
import numpy as np
from playment_torch.cache import ArrayCache
cache = ArrayCache(sys.argv[1])
keys = json.loads(sys.argv[2])
for _ in range(2):
    print(sum(1 for i, key in enumerate(keys) if (a := cache.get_array(key)) is not None and a[0] == float(i)))
"""


# --------------------------------------------------------------------------------------- the labels record


def _truth(jobs: list, ds: PlaymentSegmentationDataset, i: int, names: list[str], ignore: int) -> np.ndarray:
    """Item ``i``'s labels from the synthetic scene itself, under the class list ``names``."""
    from playment_torch.testing.synthetic import CLASSES

    ref = ds.frames[i]
    job = next(j for j in jobs if j.job_id == ref.job_id)
    frame = next(f for f in job.frames if f.frame_id == ref.frame_id)
    table = np.array([names.index(c) if c in names else ignore for c in CLASSES] + [ignore])
    return table[frame.class_index]  # -1 (unlabeled) takes the table's last entry


def test_the_first_read_writes_a_compact_labels_record_and_later_reads_never_map_the_mask(
    server, tmp_path, monkeypatch
) -> None:
    from playment_torch import _store

    jobs = add_synthetic_project(server, n_jobs=2, frames_per_job=2, points_per_frame=40_000, seed=21)
    ds = PlaymentSegmentationDataset(
        server.project_id, client=fast_client(server), cache_dir=str(tmp_path / "c"), progress=False
    )
    ds.prefetch(num_threads=2, progress=False)
    store = ds._store
    assert not any(store.labels_key(i) in ds.cache for i in range(len(ds))), "prefetch leaves labels to a read"
    first = [ds[i].labels.numpy() for i in range(len(ds))]
    for i, labels in enumerate(first):
        np.testing.assert_array_equal(labels, _truth(jobs, ds, i, list(ds.classes), ds.ignore_index))
        stored = ds.cache.get_array(store.labels_key(i))
        assert stored is not None and stored.dtype == np.int8, "ignore_index -100 and 8 classes fit int8"
        np.testing.assert_array_equal(stored, labels)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a warm read mapped a mask")

    monkeypatch.setattr(_store.FrameStore, "mask", refuse)
    monkeypatch.setattr(ds.index, "classes_of", refuse)
    for i, labels in enumerate(first):
        again = ds[i].labels
        assert again.dtype == torch.int64
        np.testing.assert_array_equal(again.numpy(), labels)


@pytest.mark.parametrize(
    ("classes", "ignore_index", "dtype"),
    [
        (["car", "road", "pedestrian"], -1, np.int8),
        (["pedestrian", "car"], 255, np.uint8),
        (["road", "car"], -1000, np.int16),
        (None, 100_000, np.int32),
    ],
)
def test_a_class_map_change_downloads_nothing_and_reads_its_own_labels_record(
    server, tmp_path, classes, ignore_index, dtype
) -> None:
    jobs = add_synthetic_project(server, n_jobs=2, frames_per_job=2, points_per_frame=40_000, seed=22)
    cache_dir = str(tmp_path / "c")
    default = PlaymentSegmentationDataset(server.project_id, client=fast_client(server), cache_dir=cache_dir)
    before = [default[i].labels.numpy() for i in range(len(default))]
    server.clear_requests()
    other = PlaymentSegmentationDataset(
        server.project_id,
        client=fast_client(server),
        cache_dir=cache_dir,
        classes=classes,
        ignore_index=ignore_index,
        allow_unknown_classes=True,
        progress=False,
    )
    names = list(other.classes)
    for _ in range(2):  # the first pass writes the labels records, the second reads them
        for i in range(len(other)):
            np.testing.assert_array_equal(other[i].labels.numpy(), _truth(jobs, other, i, names, ignore_index))
    assert [r.route for r in server.requests if r.route in ("attachments", "storage")] == [], "nothing downloaded"
    for i in range(len(other)):
        assert other._store.labels_key(i) != default._store.labels_key(i)
        stored = other.cache.get_array(other._store.labels_key(i))
        assert stored is not None and stored.dtype == dtype
        # The first class map's records are still there and still right.
        np.testing.assert_array_equal(default[i].labels.numpy(), before[i])


@pytest.mark.parametrize(
    "forged",
    [np.zeros(5, dtype=np.int8), np.zeros(40_000, dtype=np.float32), np.zeros((40_000, 1), dtype=np.int8)],
    ids=["short", "float", "2-d"],
)
def test_a_labels_record_that_is_not_the_frames_is_not_trusted(server, tmp_path, forged) -> None:
    jobs = add_synthetic_project(server, n_jobs=1, frames_per_job=2, points_per_frame=40_000, seed=23)
    ds = PlaymentSegmentationDataset(
        server.project_id, client=fast_client(server), cache_dir=str(tmp_path / "c"), progress=False
    )
    ds.prefetch(num_threads=2, progress=False)
    key = ds._store.labels_key(0)
    ds.cache.put_array(key, forged)
    np.testing.assert_array_equal(ds[0].labels.numpy(), _truth(jobs, ds, 0, list(ds.classes), ds.ignore_index))
    rewritten = ds.cache.get_array(key)
    assert rewritten is not None and rewritten.shape == (40_000,) and rewritten.dtype == np.int8


def test_a_cache_that_refuses_the_labels_record_still_gives_the_labels(server, tmp_path, monkeypatch) -> None:
    from playment_torch.errors import CacheError

    jobs = add_synthetic_project(server, n_jobs=1, frames_per_job=2, points_per_frame=40_000, seed=24)
    ds = PlaymentSegmentationDataset(
        server.project_id, client=fast_client(server), cache_dir=str(tmp_path / "c"), progress=False
    )
    ds.prefetch(num_threads=2, progress=False)
    real = ArrayCache.put_array

    refused: list[str] = []

    def full_for_labels(self: ArrayCache, key: str, value: np.ndarray, **kwargs: object) -> None:
        if key.startswith("labels@"):
            refused.append(key)
            raise CacheError("cache: the disk is full")
        real(self, key, value, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ArrayCache, "put_array", full_for_labels)
    for _ in range(2):
        for i in range(len(ds)):
            np.testing.assert_array_equal(ds[i].labels.numpy(), _truth(jobs, ds, i, list(ds.classes), ds.ignore_index))
    assert not any(ds._store.labels_key(i) in ds.cache for i in range(len(ds)))
    assert refused == [ds._store.labels_key(0)], "asked once, then not again for a while"
    ds._store._labels_refused_until = 0.0  # the pause is over
    monkeypatch.setattr(ArrayCache, "put_array", real)
    ds[1]
    assert ds._store.labels_key(1) in ds.cache


def test_the_file_table_size_comes_from_the_environment(tmp_path, monkeypatch) -> None:
    from playment_torch.errors import ConfigError

    monkeypatch.setenv("PLAYMENT_TORCH_FILE_TABLE_BYTES", str(1 << 20))
    cache = ArrayCache(tmp_path / "a")
    cache.put_array("k", np.arange(10_000))
    assert cache.get_array("k") is not None and (tmp_path / "a" / "files.table").stat().st_size == 1 << 20
    assert ArrayCache(tmp_path / "b", checked_table_bytes=4096).checked_table_bytes == 4096, "an argument wins"
    monkeypatch.delenv("PLAYMENT_TORCH_FILE_TABLE_BYTES")
    assert ArrayCache(tmp_path / "c").checked_table_bytes == 32 << 20
    for bad in ("1e6", "-5", "lots"):
        monkeypatch.setenv("PLAYMENT_TORCH_FILE_TABLE_BYTES", bad)
        with pytest.raises(ConfigError, match="PLAYMENT_TORCH_FILE_TABLE_BYTES must be a whole number of bytes"):
            ArrayCache(tmp_path / "d")
