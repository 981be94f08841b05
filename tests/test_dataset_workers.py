"""The dataset across processes and threads: pickling, DataLoader workers, DistributedSampler ranks, threads.

Every test checks values against the synthetic ground truth (or against the single-process run), and counts
downloads in the fake server's request log: each point cloud and mask must be fetched exactly once however
many workers, ranks or threads ask for it, and never again once cached.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import pickle
import pickletools
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp
from conftest import FAST_RETRY, fast_client
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from playment_torch.client import PlaymentClient
from playment_torch.collate import Batch, collate_points
from playment_torch.dataset import PlaymentSegmentationDataset
from playment_torch.index import FrameIndex
from playment_torch.models import FrameRef
from playment_torch.testing.server import FakePlaymentServer, RequestRecord
from playment_torch.testing.synthetic import CLASSES, SyntheticJob, add_synthetic_project, index_results

POINTS = 10_000
FIELDS = ("x", "y", "z", "intensity")
IGNORE = -100


# ----------------------------------------------------------------------------------------------- helpers


def make_dataset(server: FakePlaymentServer, cache_dir: Path, **options: Any) -> PlaymentSegmentationDataset:
    options.setdefault("client", fast_client(server))
    return PlaymentSegmentationDataset(
        server.project_id, cache_dir=str(cache_dir), progress=False, num_threads=4, **options
    )


def expected_sample(jobs: list[SyntheticJob], ref: FrameRef, classes: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """Ground-truth ``(points, labels)`` of one dataset item, straight from the synthetic generator."""
    job = next(j for j in jobs if j.job_id == ref.job_id)
    frame = next(f for f in job.frames if f.frame_id == ref.frame_id)
    points = np.column_stack([frame.points[name] for name in FIELDS]).astype(np.float32)
    table = np.array([classes.index(name) for name in CLASSES] + [IGNORE], dtype=np.int64)
    return points, table[frame.class_index]  # class_index -1 picks the trailing IGNORE


def file_downloads(requests: list[RequestRecord], files: set[str]) -> collections.Counter[str]:
    """Attachment exchanges per URL of ``files`` (each download starts with exactly one)."""
    return collections.Counter(
        r.query["url"] for r in requests if r.route == "attachments" and r.query.get("url") in files
    )


def storage_gets(requests: list[RequestRecord], files: set[str]) -> int:
    """Successful signed-URL fetches of ``files``.

    A signed path is ``/signed/<16 hex>-<file name>``; result objects are named by a random hex string, so
    the frame files' names (``0.pcd``, ``0.json``, ...) pick out point clouds and masks.
    """
    names = {url.rsplit("/", 1)[-1] for url in files}
    return sum(
        1 for r in requests if r.route == "storage" and r.status == 200 and r.path.rsplit("/", 1)[-1][17:] in names
    )


def frame_files(jobs: list[SyntheticJob]) -> set[str]:
    """Every point cloud and mask URL of ``jobs`` (camera images are never downloaded)."""
    return {url for job in jobs for url in job.files if url.endswith((".pcd", ".json"))}


def assert_batches_equal(got: list[Batch], want: list[Batch]) -> None:
    assert len(got) == len(want)
    for b, (g, w) in enumerate(zip(got, want, strict=True)):
        for name in ("points", "labels", "offsets", "batch_index", "poses", "intrinsics"):
            assert torch.equal(getattr(g, name), getattr(w, name)), f"batch {b}: {name} differs"


@pytest.fixture
def project(server: FakePlaymentServer) -> list[SyntheticJob]:
    # 3 jobs x 4 frames: 12 items, an even number so DistributedSampler needs no padding.
    return add_synthetic_project(server, n_jobs=3, frames_per_job=4, points_per_frame=POINTS, seed=11)


# ----------------------------------------------------------------------------------------------- pickling


def _globals_in(blob: bytes) -> set[str]:
    """Every ``module.name`` a pickle refers to (what unpickling will import and call)."""
    found: set[str] = set()
    strings: list[str] = []
    for op, arg, _ in pickletools.genops(blob):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(str(arg))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.add(f"{strings[-2]}.{strings[-1]}")
        elif op.name == "GLOBAL":
            found.add(str(arg).replace(" ", "."))
    return found


def _samples_in_child(blob: bytes, count: int, queue: Any) -> None:
    """Spawned child: unpickle the dataset and send back its first ``count`` samples as numpy arrays."""
    ds = pickle.loads(blob)
    queue.put([tuple(t.numpy() for t in ds[i]) for i in range(count)])


def test_dataset_pickles_without_sessions_or_handles_and_loads_in_a_spawned_child(server, project, tmp_path):
    ds = make_dataset(server, tmp_path)
    first = [ds[i] for i in range(len(ds))]  # serve items: the session and the cache handle are now open
    assert ds.client._session is not None
    assert ds.cache._handle is not None

    blob = pickle.dumps(ds)
    referenced = _globals_in(blob)
    forbidden = ("requests.", "urllib3.", "socket.", "sqlite3.", "diskcache.", "_thread.", "threading.", "_io.")
    assert not [name for name in referenced if name.startswith(forbidden)], referenced
    # The live objects stayed behind in this process and are still usable here.
    assert ds.client._session is not None and ds.cache._handle is not None

    copy = pickle.loads(blob)
    assert copy.client._session is None and copy.cache._handle is None
    assert len(copy) == len(ds) and copy.classes == ds.classes
    server.clear_requests()
    for i, want in enumerate(first):
        got = copy[i]
        for name, a, b in zip(want._fields, got, want, strict=True):
            assert torch.equal(a, b), f"item {i}: {name} differs after unpickling"
    assert server.requests == []  # warm cache: the copy reopened it and found everything

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_samples_in_child, args=(blob, 4, queue))
    child.start()
    try:
        from_child = queue.get(timeout=60)
    finally:
        child.join(60)
    assert child.exitcode == 0
    for i, arrays in enumerate(from_child):
        for name, array, tensor in zip(first[i]._fields, arrays, first[i], strict=True):
            np.testing.assert_array_equal(array, tensor.numpy(), err_msg=f"child item {i}: {name}")
    points, labels = expected_sample(project, ds.frames[0], ds.classes)
    np.testing.assert_array_equal(from_child[0][0], points)
    np.testing.assert_array_equal(from_child[0][1], labels)


def test_pickle_of_a_10000_frame_dataset_is_its_arrays_and_small(server, project, tmp_path):
    ds = make_dataset(server, tmp_path)
    ds[0]  # open the session and the cache handle first, as a training script would
    cameras = ds.frames[0].cameras
    assert len(cameras) == 2
    # 200 jobs x 50 frames, 30 label keys per frame (a busy street: stuff classes plus instances).
    results = index_results(server.project_id, n_jobs=200, frames_per_job=50, keys_per_frame=30, cameras=cameras)
    index = FrameIndex.build(server.project_id, results, ds.class_map)
    assert len(index) == 10_000
    ds._index = index  # no public setter: the dataset would resolve 200 jobs from the server otherwise

    blob = pickle.dumps(ds)
    size = len(blob)
    print(f"\npickled 10,000-frame dataset: {size / 2**20:.2f} MiB; index arrays {index.nbytes / 2**20:.2f} MiB")
    for name, value in sorted(vars(index).items()):
        if hasattr(value, "nbytes"):
            print(f"  {name:16s} {value.nbytes / 2**20:6.2f} MiB")
    # The pickle is the index's flat arrays plus per-job records (track ids, cameras) and a constant: no
    # per-frame Python objects, no sessions.
    assert size < index.nbytes + 2048 * len(index.jobs) + 64 * 1024
    # Absolute bound for this shape (measured: 3.2 MiB): three 7-float poses a frame (1.6 MiB), two URLs whose
    # folders are stored once (about 40 B each), ids and offsets; the label tables are shared by the frames of a
    # job whose keys mean the same (here all of them), so they are a few kilobytes.
    assert size < 4 * 2**20

    copy = pickle.loads(blob)
    assert len(copy) == 10_000
    for i in (0, 1, 4_999, 9_999):
        job = results[i // 50][0]
        assert copy.frames[i] == job.frames[i % 50]


# ----------------------------------------------------------------------------------------------- DataLoader


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_yield_what_the_main_process_yields_and_cache_for_the_next_epoch(
    server, project, tmp_path, context
):
    reference_ds = make_dataset(server, tmp_path / "reference")
    reference = list(DataLoader(reference_ds, batch_size=2, collate_fn=collate_points, num_workers=0))
    assert len(reference) == 6
    # The single-process run is itself right: its first batch holds items 0 and 1 as generated.
    for b in range(2):
        points, labels = expected_sample(project, reference_ds.frames[b], reference_ds.classes)
        start, stop = reference[0].offsets[b], reference[0].offsets[b + 1]
        np.testing.assert_array_equal(reference[0].points[start:stop].numpy(), points)
        np.testing.assert_array_equal(reference[0].labels[start:stop].numpy(), labels)

    ds = make_dataset(server, tmp_path / "workers")  # a cold cache of its own
    loader = DataLoader(
        ds,
        batch_size=2,
        collate_fn=collate_points,
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context=context,
    )
    server.clear_requests()
    first = list(loader)
    files = frame_files(project)
    downloads = file_downloads(server.requests, files)
    assert set(downloads) == files
    assert set(downloads.values()) == {1}, "a file was downloaded by both workers"
    assert storage_gets(server.requests, files) == len(files) == 24

    server.clear_requests()
    second = list(loader)
    assert server.requests == []  # epoch 2: every array comes from the disk cache
    assert_batches_equal(first, reference)
    assert_batches_equal(second, reference)


# ----------------------------------------------------------------------------------------------- ranks


def _rank_main(rank: int, world: int, store: str, url: str, key: str, project_id: str, cache: str, out: str) -> None:
    """One DDP rank: build the dataset, prefetch everything (racing the other rank), then load its shard."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        client = PlaymentClient(key, base_url=url, retry=FAST_RETRY)
        ds = PlaymentSegmentationDataset(project_id, client=client, cache_dir=cache, progress=False, num_threads=4)
        dist.barrier()  # both ranks start prefetching together, so every key is contended
        report = ds.prefetch(num_threads=4, progress=False)
        dist.barrier()
        sampler: DistributedSampler[int] = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=5)
        sampler.set_epoch(1)
        indices = list(sampler)
        arrays: dict[str, np.ndarray] = {}
        for i in indices:
            sample = ds[i]
            arrays[f"points_{i}"] = sample.points.numpy()
            arrays[f"labels_{i}"] = sample.labels.numpy()
        np.savez(Path(out) / f"rank{rank}.npz", **arrays)  # type: ignore[arg-type]
        frames = [(ds.frames[i].job_id, ds.frames[i].frame_id) for i in indices]
        summary = {"indices": indices, "frames": frames, "misses": ds.stats().misses, "failures": report.failures}
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(summary))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_shard_disjointly_and_share_one_cache(server, project, tmp_path):
    cache = tmp_path / "cache"  # cold: neither rank has built anything yet
    server.latency = 0.01  # widen the window in which both ranks want the same file
    tmp.spawn(
        _rank_main,
        args=(2, str(tmp_path / "store"), server.url, server.api_key, server.project_id, str(cache), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    summaries = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    shards = [set(s["indices"]) for s in summaries]
    assert all(s["failures"] == [] for s in summaries)
    assert len(summaries[0]["indices"]) == len(summaries[1]["indices"]) == 6
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == set(range(12))

    # Each point cloud and mask crossed the network once in total, whichever rank won the race for it.
    files = frame_files(project)
    downloads = file_downloads(server.requests, files)
    assert set(downloads) == files
    assert set(downloads.values()) == {1}, {u: n for u, n in downloads.items() if n != 1}
    assert storage_gets(server.requests, files) == len(files) == 24
    assert sum(s["misses"] for s in summaries) == 24

    # And each rank got the right values for its frames.
    classes = tuple(sorted(CLASSES))
    for rank, summary in enumerate(summaries):
        with np.load(tmp_path / f"rank{rank}.npz") as arrays:
            for i, (job_id, frame_id) in zip(summary["indices"], summary["frames"], strict=True):
                ref = FrameRef(server.project_id, job_id, frame_id, 0, "", "", "")
                points, labels = expected_sample(project, ref, classes)
                np.testing.assert_array_equal(arrays[f"points_{i}"], points)
                np.testing.assert_array_equal(arrays[f"labels_{i}"], labels)


# ----------------------------------------------------------------------------------------------- threads


def test_threads_on_the_same_frames_download_each_file_once(server, project, tmp_path):
    ds = make_dataset(server, tmp_path)
    server.latency = 0.05  # every request is slow: all 8 threads are waiting on the same keys at once
    server.clear_requests()
    items = (0, 1, 2)
    start = threading.Barrier(8)
    results: dict[tuple[int, int], Any] = {}
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            start.wait()
            for step in range(len(items)):
                i = items[(thread + step) % len(items)]
                results[thread, i] = ds[i]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for worker in threads:
        worker.start()
    for worker in threads:
        worker.join(60)
    assert errors == []
    files = frame_files(project)
    downloads = file_downloads(server.requests, files)
    wanted = {url for i in items for url in (ds.frames[i].pointcloud_url, ds.frames[i].mask_url)}
    assert set(downloads) == wanted and set(downloads.values()) == {1}
    assert storage_gets(server.requests, wanted) == 6
    assert ds.stats().misses == 6
    for i in items:
        points, labels = expected_sample(project, ds.frames[i], ds.classes)
        for thread in range(8):
            sample = results[thread, i]
            np.testing.assert_array_equal(sample.points.numpy(), points)
            np.testing.assert_array_equal(sample.labels.numpy(), labels)
