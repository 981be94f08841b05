"""The cold path and the warm floor (issue "cold path at the speed of the network"), side by side in one run.

Run from the repository root::

    python benchmarks/bench_cold.py [--frames 48] [--points 120000] [--repeat 5]

The fake Playment server runs in **another process** (``playment-torch serve``), so its CPU is not counted as the
client's; the synthetic frames are 120k-point binary PCDs (``x y z intensity ring``) with JSON masks, as users
have them. Every row alternates the two sides round by round, in shuffled order, and reports medians.

Rows:

1. bytes written to the cache per frame ÷ bytes downloaded per frame: a cold ``prefetch``, then one read of every
   frame (which writes its labels record). Target ≤ 1.0.
2. client CPU per frame in ``prefetch(num_threads=16)`` (``time.process_time`` of this process, all threads,
   plus the CPU of its worker processes, from ``getrusage(RUSAGE_CHILDREN)`` once they are reaped) ÷ a naive
   sequential loop (one ``requests`` session: attachments redirect, signed GET, ``read_pcd`` / ``read_mask``),
   both at zero latency. Target ≤ 1.5. Printed beside it: the CPU of each frame's first ``ds[i]`` afterwards
   (two file reads, the label gather and the labels record's write), what the first epoch pays once.
3. cold ``prefetch(num_threads=32)`` wall time vs the naive loop with 50 ms added to every response (the naive
   loop runs on 8 frames and is extrapolated per frame). Target ≥ 15× faster. ``prefetch`` uses its default of
   one worker process per core (2 here).
4. warm ``ds[i]`` per item ÷ ``np.load`` + ``torch.from_numpy`` of the same arrays as ``.npy`` files. Target ≤ 1.0.
5. warm ``ds[i]`` ÷ a plain ``open`` + ``readinto`` of the same bytes our records hold (points and labels record)
   into fresh arrays. Target ≤ 1.3. Printed beside it: the same reads plus widening the labels to int64, as the
   ``Sample`` contract has them: the floor of any loader that stores labels compactly.
6. a freshly forked worker's first pass over the warm frames ÷ its second pass. Target ≤ 1.2. Printed beside
   it: the first pass's median item ÷ steady and its first item alone (where a fork's one-off cost lands: the
   child's first buffers are the parent's freed heap pages, copied on write), and the same ratio for
   ``np.load`` of the ``.npy`` files: what a fresh process pays anyway.

After the rows, where one cold frame's client CPU goes, stage by stage (sequential, medians): the attachments
redirect and the signed GET of each file, decoding, and the cache writes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playment_torch._store import LABELS  # noqa: E402
from playment_torch.client import PlaymentClient  # noqa: E402
from playment_torch.dataset import PlaymentSegmentationDataset  # noqa: E402
from playment_torch.formats.masks import read_mask  # noqa: E402
from playment_torch.formats.pcd import read_pcd  # noqa: E402


class Server:
    """``playment-torch serve`` in a child process."""

    def __init__(self, frames: int, points: int, latency: float) -> None:
        jobs = max(1, frames // 8)
        argv = [sys.executable, "-m", "playment_torch.cli", "serve", "--json", "--seed", "7"]
        argv += ["--jobs", str(jobs), "--frames", str(frames // jobs), "--points", str(points)]
        argv += ["--latency", str(latency)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        assert self.process.stdout is not None
        self.details: dict[str, Any] = json.loads(self.process.stdout.readline())

    def client(self) -> PlaymentClient:
        return PlaymentClient(self.details["api_key"], base_url=self.details["url"])

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def dataset(server: Server, cache: Path, **options: Any) -> PlaymentSegmentationDataset:
    return PlaymentSegmentationDataset(
        server.details["project_id"], client=server.client(), cache_dir=str(cache), progress=False, **options
    )


def cold_prefetch(server: Server, work: Path, threads: int) -> dict[str, float]:
    """One cold prefetch from a cache that has the job results only (resolution is not timed)."""
    cache = work / f"cold-{time.monotonic_ns()}"
    ds = dataset(server, cache)
    written_before = _bytes_written(cache)
    cpu, wall = _cpu_with_children(), time.perf_counter()
    report = ds.prefetch(num_threads=threads, progress=False)
    cpu, wall = _cpu_with_children() - cpu, time.perf_counter() - wall
    assert not report.failures, report.failures[:2]
    # The first read of each frame writes its labels record (prefetch leaves it to the class map that reads):
    # counted in the bytes a frame costs the disk, and its CPU shown beside row 2.
    first_read = time.process_time()
    for i in range(len(ds)):
        ds[i]
    first_read = time.process_time() - first_read
    written = _bytes_written(cache) - written_before
    ds.cache.close()
    shutil.rmtree(cache, ignore_errors=True)
    frames = len(ds)
    return {
        "cpu_per_frame": cpu / frames,
        "wall": wall,
        "written_per_frame": written / frames,
        "first_read_cpu_per_frame": first_read / frames,
        "downloaded_per_frame": report.bytes_downloaded / frames,
        "frames": frames,
    }


def _cpu_with_children() -> float:
    """CPU seconds of this process (all threads) and of its reaped children (prefetch's worker processes)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _bytes_written(cache: Path) -> int:
    """Bytes of the array store's value files: the records (header + payload) prefetch wrote. Worker processes
    write too, so this counts the disk rather than one handle's statistics."""
    return sum(p.stat().st_size for p in cache.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*.val"))


def naive_loop(server: Server, work: Path, limit: int | None = None) -> dict[str, float]:
    """Sequential attachments redirect + signed GET + decode: what a user would write without us."""
    import requests

    ds = dataset(server, work / "naive-index")
    frames = ds.frames[: limit or len(ds)]
    session = requests.Session()
    key, url = server.details["api_key"], server.details["url"]
    cpu, wall = time.process_time(), time.perf_counter()
    for frame in frames:
        for target, decode in ((frame.pointcloud_url, read_pcd), (frame.mask_url, read_mask)):
            redirect = session.get(
                url + "/v1/attachments", params={"url": target}, headers={"x-api-key": key}, allow_redirects=False
            )
            response = session.get(redirect.headers["Location"])
            response.raise_for_status()
            decode(response.content)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu_per_frame": cpu / len(frames), "wall_per_frame": wall / len(frames)}


def warm_rows(server: Server, work: Path, repeat: int) -> dict[str, float]:
    """Rows 4 and 5: warm ds[i] against np.load and readinto of the same bytes (interleaved, shuffled)."""
    cache = work / "warm"
    ds = dataset(server, cache)
    ds.prefetch(num_threads=16, progress=False)
    for i in range(len(ds)):
        ds[i]  # the first reads write the labels records (prefetch leaves them to a read)
    time.sleep(2.5)  # files older than 2 s are trusted after their first verified read (see cache.py)
    npy, raw = work / "npy", work / "raw"
    npy.mkdir(exist_ok=True)
    raw.mkdir(exist_ok=True)
    store = ds._store
    sizes = []
    for i in range(len(ds)):
        sample = ds[i]
        np.save(npy / f"{i}-points.npy", sample.points.numpy())
        np.save(npy / f"{i}-labels.npy", sample.labels.numpy())
        points = store.points(i)
        labels = store._cached(i, LABELS)  # the labels record as stored: class indices, compact
        assert labels is not None
        (raw / f"{i}-points.bin").write_bytes(points.tobytes())
        (raw / f"{i}-labels.bin").write_bytes(labels.tobytes())
        sizes.append((points.shape, labels.dtype, labels.size))

    def ours() -> None:
        for i in range(len(ds)):
            ds[i]

    def load() -> None:
        for i in range(len(ds)):
            torch.from_numpy(np.load(npy / f"{i}-points.npy"))
            torch.from_numpy(np.load(npy / f"{i}-labels.npy"))

    def read(i: int, shape: tuple[int, ...], dtype: Any, count: int) -> np.ndarray:
        points = np.empty(shape, dtype=np.float32)
        with open(raw / f"{i}-points.bin", "rb", buffering=0) as f:
            f.readinto(points.data)  # type: ignore[attr-defined]
        labels = np.empty(count, dtype=dtype)
        with open(raw / f"{i}-labels.bin", "rb", buffering=0) as f:
            f.readinto(labels.data)  # type: ignore[attr-defined]
        return labels

    def readinto() -> None:
        for i, (shape, dtype, count) in enumerate(sizes):
            read(i, shape, dtype, count)

    def widened() -> None:
        for i, (shape, dtype, count) in enumerate(sizes):
            read(i, shape, dtype, count).astype(np.int64)

    sides = {"ours": ours, "np.load": load, "readinto": readinto, "readinto+widen": widened}
    for side in sides.values():
        side()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeat * 10):
        order = list(sides)
        random.shuffle(order)
        for name in order:
            started = time.perf_counter()
            sides[name]()
            times[name].append((time.perf_counter() - started) / len(ds))
    medians = {name: statistics.median(values) for name, values in times.items()}
    fresh = fresh_worker(ds, npy, repeat)
    ds.cache.close()
    return {**medians, **fresh}


def _worker(read: Any, items: int, queue: Any) -> None:
    passes = []
    for _ in range(2):
        times = []
        for i in range(items):
            started = time.perf_counter()
            read(i)
            times.append(time.perf_counter() - started)
        passes.append(times)
    # Mean item of each pass, the first pass's median item, and its first item alone.
    queue.put((sum(passes[0]) / items, sum(passes[1]) / items, statistics.median(passes[0]), passes[0][0]))


def fresh_worker(ds: PlaymentSegmentationDataset, npy: Path, repeat: int) -> dict[str, float]:
    """Row 6: a forked child's first pass over the warm frames against its second pass (medians over forks),
    for ``ds[i]`` and, as the reference of what a fresh process pays anyway, for ``np.load``."""
    context = multiprocessing.get_context("fork")

    def load(i: int) -> None:
        torch.from_numpy(np.load(npy / f"{i}-points.npy"))
        torch.from_numpy(np.load(npy / f"{i}-labels.npy"))

    readers = {"fork": ds.__getitem__, "fork_npy": load}
    passes: dict[str, tuple[list[float], ...]] = {name: ([], [], [], []) for name in readers}
    for _ in range(repeat):
        order = list(readers)
        random.shuffle(order)
        for name in order:
            queue = context.Queue()
            child = context.Process(target=_worker, args=(readers[name], len(ds), queue))
            child.start()
            for collected, value in zip(passes[name], queue.get(timeout=300), strict=True):
                collected.append(value)
            child.join(60)
    out = {}
    for name, (firsts, seconds, medians, first_items) in passes.items():
        out[f"{name}_first"] = statistics.median(firsts)
        out[f"{name}_steady"] = statistics.median(seconds)
        out[f"{name}_first_median"] = statistics.median(medians)
        out[f"{name}_first_item"] = statistics.median(first_items)
    return out


def stage_breakdown(server: Server, work: Path) -> dict[str, float]:
    """Client CPU of one cold frame, stage by stage (sequential; medians over the frames), in milliseconds."""
    from playment_torch._store import compact_keys, select_fields
    from playment_torch.cache import ArrayCache

    ds = dataset(server, work / "stages-index")
    client = server.client()
    cache = ArrayCache(work / "stages")
    index = ds.index
    stages: dict[str, list[float]] = {}

    def timed(name: str, step: Any) -> Any:
        started = time.process_time()
        value = step()
        stages.setdefault(name, []).append(time.process_time() - started)
        return value

    for i in range(len(ds)):
        for kind, url in (("point cloud", index.pointcloud_urls[i]), ("mask", index.mask_urls[i])):
            signed = timed(f"{kind}: attachments redirect", lambda url=url: client._sign(url))
            body = timed(f"{kind}: signed GET", lambda s=signed: client._fetch(s, signed=True, in_place=True))
            if kind == "mask":
                array = timed("mask: decode", lambda b=body: compact_keys(read_mask(b)))
            else:
                array = timed(
                    "point cloud: decode", lambda b=body: select_fields(read_pcd(b).data, ds.point_fields, "")
                )
            timed(f"{kind}: cache write", lambda a=array, k=f"{kind}{i}": cache.put_array(k, a))
    cache.close()
    return {name: 1e3 * statistics.median(values) for name, values in stages.items()}


Row = tuple[str, str, float, str]


def measure(frames: int, points: int, repeat: int) -> tuple[list[Row], dict[str, float]]:
    """Every row of this benchmark, and the stage breakdown (``bench_dataset.py`` prints them too).

    Args:
        frames: Frames of the synthetic project.
        points: Points per frame.
        repeat: Rounds per row.

    Returns:
        ``(rows, stages)``: ``(name, measured, ratio, target)`` per row; milliseconds per stage.
    """
    work = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    fast = Server(frames, points, 0.0)
    slow = Server(frames, points, 0.05)
    try:
        cold: list[dict[str, float]] = []
        naive: list[dict[str, float]] = []
        for _ in range(repeat):
            runs = [lambda: cold.append(cold_prefetch(fast, work, 16)), lambda: naive.append(naive_loop(fast, work))]
            random.shuffle(runs)
            for run in runs:
                run()
        slow_ours, slow_naive = [], []
        for _ in range(max(1, repeat // 2)):
            slow_ours.append(cold_prefetch(slow, work, 32)["wall"])
            slow_naive.append(naive_loop(slow, work, limit=8)["wall_per_frame"])
        warm = warm_rows(fast, work, repeat)
        stages = stage_breakdown(fast, work)
    finally:
        fast.close()
        slow.close()
        shutil.rmtree(work, ignore_errors=True)

    median = statistics.median
    count = cold[0]["frames"]
    written = median(r["written_per_frame"] for r in cold)
    downloaded = median(r["downloaded_per_frame"] for r in cold)
    ours_cpu, naive_cpu = median(r["cpu_per_frame"] for r in cold), median(r["cpu_per_frame"] for r in naive)
    first_cpu = median(r["first_read_cpu_per_frame"] for r in cold)
    slow_wall, naive_wall = median(slow_ours), median(slow_naive) * count
    rows = [
        ("1 bytes written / downloaded per frame", f"{written / 1e6:.2f} MB / {downloaded / 1e6:.2f} MB",
         written / downloaded, "<= 1.0"),
        ("2 client CPU per frame, prefetch / naive", f"{1e3 * ours_cpu:.1f} ms / {1e3 * naive_cpu:.1f} ms",
         ours_cpu / naive_cpu, "<= 1.5"),
        ("  (then the first ds[i] of a frame, labels written)", f"{1e3 * first_cpu:.2f} ms", first_cpu / naive_cpu,
         ""),
        ("3 cold, +50 ms/request: naive / prefetch(32)", f"{naive_wall:.1f} s / {slow_wall:.2f} s",
         naive_wall / slow_wall, ">= 15"),
        ("4 warm ds[i] / np.load", f"{1e3 * warm['ours']:.3f} ms / {1e3 * warm['np.load']:.3f} ms",
         warm["ours"] / warm["np.load"], "<= 1.0"),
        ("5 warm ds[i] / readinto", f"{1e3 * warm['ours']:.3f} ms / {1e3 * warm['readinto']:.3f} ms",
         warm["ours"] / warm["readinto"], "<= 1.3"),
        ("  (readinto + labels widened to int64 / readinto)",
         f"{1e3 * warm['readinto+widen']:.3f} ms / {1e3 * warm['readinto']:.3f} ms",
         warm["readinto+widen"] / warm["readinto"], ""),
        ("6 fresh worker first pass / steady",
         f"{1e3 * warm['fork_first']:.3f} ms / {1e3 * warm['fork_steady']:.3f} ms",
         warm["fork_first"] / warm["fork_steady"], "<= 1.2"),
        ("  (its median item / steady; its first item)",
         f"{1e3 * warm['fork_first_median']:.3f} ms / {1e3 * warm['fork_steady']:.3f} ms; "
         f"{1e3 * warm['fork_first_item']:.1f} ms", warm["fork_first_median"] / warm["fork_steady"], ""),
        ("  (np.load in a fresh worker, first / steady; first item)",
         f"{1e3 * warm['fork_npy_first']:.3f} ms / {1e3 * warm['fork_npy_steady']:.3f} ms; "
         f"{1e3 * warm['fork_npy_first_item']:.1f} ms", warm["fork_npy_first"] / warm["fork_npy_steady"], ""),
    ]  # fmt: skip
    return rows, stages


def print_rows(rows: list[Row], stages: dict[str, float]) -> None:
    """The rows as a markdown table, then the stage breakdown."""
    print(f"| {'row':<56} | {'measured':<34} | ratio | target |")
    print(f"|{'-' * 58}|{'-' * 36}|-------|--------|")
    for name, measured, ratio, target in rows:
        print(f"| {name:<56} | {measured:<34} | {ratio:5.2f} | {target:<6} |")
    print()
    print("client CPU of one cold frame, by stage (sequential, medians):")
    print("| stage | ms |")
    print("|---|---|")
    for name, ms in stages.items():
        print(f"| {name} | {ms:.2f} |")
    print(f"| total | {sum(stages.values()):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--points", type=int, default=120_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows, stages = measure(args.frames, args.points, args.repeat)
    print(f"{args.frames} frames of {args.points} points, server in another process, medians of {args.repeat} rounds")
    print_rows(rows, stages)


if __name__ == "__main__":
    main()
