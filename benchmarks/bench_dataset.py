"""``PlaymentSegmentationDataset`` against the baselines it has to beat, side by side in one run.

Run from the repository root::

    python benchmarks/bench_dataset.py [--repeat N] [--sections a b c d] [--profile CASE ...]

Takes about 75 s on the 2-core development machine. ``--profile getitem`` (or ``loader``, ``prefetch``,
``naive``, ``index``, ``million``) prints cProfile tables of that case to stderr.

Cases (each measured in a fresh subprocess, so its peak RSS is its own; the fake servers and the synthetic
data live in this parent process and are not counted):

(a) warm ``ds[i]`` on 120k-point frames (``x y z intensity``; the PCD also has ``ring``) against ``.npy``
    files of the same arrays read with ``np.load`` + ``torch.from_numpy`` (``_baseline.NpyFrames``);
    median per-item time over all passes, the median of alternating runs per side. Target: within 1.5x
    of the baseline. Row (a') repeats our side with glibc's trim and mmap thresholds raised, to show how much
    of the time is page faults on memory freed after every item (a diagnosis, not a competitor).
(b) warm ``DataLoader(batch_size=4, collate_fn=collate_points)`` frames/s with 0 and 2 (forked, persistent)
    workers, same baseline; median of 3N epochs after a warm-up epoch, median of alternating runs. No target
    was set; shown for comparison.
(c) cold ``ds.prefetch(num_threads=32)`` of 200 10k-point frames with 50 ms added to every request
    (``server.latency = 0.05``), against a naive sequential ``requests`` loop (one keep-alive session:
    attachments redirect, GET the signed URL, ``read_pcd``/``read_mask``). The naive loop runs on the first
    20 frames and is extrapolated per frame to 200. The job results are resolved (and cached) beforehand
    without latency, so both sides time only the frame downloads. Target: at least 10x faster.
(d) the per-job overhead of construction on 2,000 *one-frame* jobs (they share one small synthetic result
    and its files, with new job ids): once cold from the fake server, then from the cache with
    ``refresh="never"`` and the server stopped. This is NOT a real project's size (2,000 frames, small
    results): construction of 2,000 jobs x 50 frames with 83 label keys a frame, cold, warm and by two ranks at
    once, is measured by ``benchmarks/bench_scale.py``. Plus the array sizes of a 1,000,000-frame index: a
    10,000-frame index built from synthetic ``FrameRef``s (200 jobs x 50 frames, 30 label keys per frame),
    *tiled* 100 times; this measures bytes only, not building or loading 1M frames (bench_scale.py does).

(e) the rows of ``bench_cold.py`` (bytes written ÷ downloaded, client CPU ÷ a naive loop, cold at 50 ms with
    120k-point frames, warm ``ds[i]`` ÷ ``np.load`` and ÷ ``readinto``, a fresh worker's first pass ÷ steady),
    measured by it with its server in another process, printed after the table.

Peak RSS is ``VmHWM`` of the measuring process (for DataLoader workers: the largest worker's peak, from
``RUSAGE_CHILDREN``; forked workers share the parent's pages, which RSS counts in each).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

LATENCY = 0.05
PREFETCH_FRAMES = 200  # 40 jobs x 5 frames
NAIVE_SUBSET = 20
INDEX_JOBS = 2_000
MILLION = 1_000_000
CHUNK_JOBS, CHUNK_FRAMES, CHUNK_KEYS = 200, 50, 30
# glibc malloc tunables: keep up to 256 MiB of freed heap instead of returning it to the OS after each item.
KEEP_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


# ----------------------------------------------------------------------------------------------- measuring


def rss_mib(field: str = "VmHWM") -> float:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident memory in MiB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@contextmanager
def profiled(enabled: bool, what: str) -> Iterator[None]:
    """Run the block under cProfile when ``enabled`` and print the top functions to stderr."""
    if not enabled:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(30)
        stats.sort_stats("tottime").print_stats(20)
        print(f"===== cProfile: {what} =====\n{out.getvalue()}", file=sys.stderr)


def open_dataset(spec: dict[str, Any], cache: str, **options: Any) -> Any:
    from playment_torch.client import PlaymentClient
    from playment_torch.dataset import PlaymentSegmentationDataset

    client = PlaymentClient(spec["key"], base_url=spec["url"]) if spec.get("url") else None
    return PlaymentSegmentationDataset(spec["project"], client=client, cache_dir=cache, progress=False, **options)


# ----------------------------------------------------------------------------------------------- child cases


def case_getitem(spec: dict[str, Any]) -> dict[str, Any]:
    """(a) Per-item time of a warm dataset (or the .npy baseline): median over ``repeat`` passes."""
    from _baseline import NpyFrames

    if spec["kind"] == "playment":
        ds = open_dataset(spec, spec["cache"], refresh="never")
    else:
        ds = NpyFrames(Path(spec["npy"]), spec["count"])
    n = len(ds)
    for i in range(n):  # warm-up: page cache, lazily opened handles, dtype caches
        ds[i]
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with profiled(spec.get("profile", False), f"getitem {spec['kind']}"):
        for _ in range(spec["repeat"]):
            for i in range(n):
                started = time.perf_counter()
                ds[i]
                times.append(time.perf_counter() - started)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {
        "median_ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "items": len(times),
        "faults_per_item": faults / len(times),
    }


def case_loader(spec: dict[str, Any]) -> dict[str, Any]:
    """(b) Frames/s of a warm DataLoader: median epoch of ``3 * repeat`` after a warm-up epoch."""
    from _baseline import NpyFrames
    from torch.utils.data import DataLoader

    from playment_torch.collate import collate_points

    if spec["kind"] == "playment":
        ds = open_dataset(spec, spec["cache"], refresh="never")
    else:
        ds = NpyFrames(Path(spec["npy"]), spec["count"])
    workers = spec["workers"]
    loader = DataLoader(
        ds, batch_size=4, collate_fn=collate_points, num_workers=workers, persistent_workers=workers > 0
    )
    points = sum(int(batch.points.shape[0]) for batch in loader)  # warm-up epoch (starts the workers)
    epochs = []
    with profiled(spec.get("profile", False), f"loader {spec['kind']} workers={workers}"):
        for _ in range(3 * spec["repeat"]):  # an epoch is only 24 frames: take more of them
            started = time.perf_counter()
            for _batch in loader:
                pass
            epochs.append(time.perf_counter() - started)
    del loader
    gc.collect()  # persistent workers are joined when the loader's iterator goes away
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"fps": len(ds) / statistics.median(epochs), "points_per_epoch": points, "worker_rss_mib": children}


def case_prefetch(spec: dict[str, Any]) -> dict[str, Any]:
    """(c) Cold prefetch time, median of ``repeat``; each run starts from a copy of the JSON-only cache."""
    seconds = []
    downloaded = []
    for run in range(spec["repeat"]):
        cache = Path(spec["work"]) / f"prefetch-{run}"
        shutil.copytree(spec["cache"], cache)
        ds = open_dataset(spec, str(cache))  # every result is cached: construction makes no request
        with profiled(spec.get("profile", False) and run == 0, "prefetch"):
            started = time.perf_counter()
            report = ds.prefetch(num_threads=32, progress=False)
            seconds.append(time.perf_counter() - started)
        assert not report.failures, report.failures[:3]
        downloaded.append(report.bytes_downloaded)
        ds.cache.close()
    return {
        "seconds": statistics.median(seconds),
        "all_seconds": seconds,
        "frames": len(ds),
        "mib": downloaded[0] / 2**20,
    }


def case_naive(spec: dict[str, Any]) -> dict[str, Any]:
    """(c) The naive loop: sequential attachments redirect + GET + decode, on the first ``subset`` frames."""
    import requests

    from playment_torch.formats.masks import read_mask
    from playment_torch.formats.pcd import read_pcd

    # The frame list from the resolved cache (results only: refresh="never" would refuse frames not cached).
    frames = open_dataset(spec, spec["cache"]).frames[: spec["subset"]]
    session = requests.Session()
    started = time.perf_counter()
    with profiled(spec.get("profile", False), "naive loop"):
        for frame in frames:
            for url, decode in ((frame.pointcloud_url, read_pcd), (frame.mask_url, read_mask)):
                redirect = session.get(
                    spec["url"] + "/v1/attachments",
                    params={"url": url},
                    headers={"x-api-key": spec["key"]},
                    allow_redirects=False,
                )
                response = session.get(redirect.headers["Location"])
                response.raise_for_status()
                decode(response.content)
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "frames": len(frames), "per_frame": elapsed / len(frames)}


def case_index(spec: dict[str, Any]) -> dict[str, Any]:
    """(d) Construction time of the 2,000-job dataset: cold (from the server) or warm (cache only)."""
    seconds = []
    with profiled(spec.get("profile", False), f"index {spec['refresh']}"):
        for _ in range(spec["repeat"]):
            started = time.perf_counter()
            ds = open_dataset(spec, spec["cache"], refresh=spec["refresh"], num_threads=16)
            seconds.append(time.perf_counter() - started)
            ds.cache.close()
    return {"first": seconds[0], "best": min(seconds), "frames": len(ds), "jobs": len(ds.index.jobs)}


def synthetic_results(project_id: str, n_jobs: int, frames: int, keys: int) -> tuple[list[Any], Any]:
    """Parsed results shaped like real Playment jobs (see the module docstring), and their class map."""
    from playment_torch.labels import ClassMap
    from playment_torch.testing.synthetic import CLASSES, index_results

    results = index_results(project_id, n_jobs=n_jobs, frames_per_job=frames, keys_per_frame=keys)
    return results, ClassMap(None, available=CLASSES)


def tile_index(chunk: Any, times: int) -> Any:
    """An index of ``times`` copies of ``chunk``'s frames: the arrays a ``times``-fold project would have."""
    from playment_torch.index import FrameIndex, StringTable

    out = FrameIndex()
    out.project_id = chunk.project_id
    out.jobs = chunk.jobs * times  # JobInfo objects are per job, not per frame; shared here
    out.labels_table = chunk.labels_table
    out.frame_job = np.concatenate([chunk.frame_job + k * len(chunk.jobs) for k in range(times)]).astype(np.int32)
    tables = len(chunk.lut_offsets) - 1  # each copy gets tables of its own, as distinct jobs would
    out.frame_table = np.concatenate([chunk.frame_table + k * tables for k in range(times)]).astype(np.int32)
    luts = [n for n in vars(chunk) if n.startswith("lut_") and n != "lut_offsets"]
    for name in ["frame_position", "legacy", "ego_poses", "camera_poses", *luts]:
        setattr(out, name, np.concatenate([getattr(chunk, name)] * times))
    for name in ("frame_ids", "sensor_ids", "pointcloud_urls", "mask_urls"):
        setattr(out, name, StringTable.concatenate([getattr(chunk, name)] * times))
    for name in ("camera_offsets", "lut_offsets"):
        offsets = getattr(chunk, name)
        shifted = [offsets[1:] + k * int(offsets[-1]) for k in range(times)]
        setattr(out, name, np.concatenate([offsets[:1], *shifted]))
    return out


def case_million(spec: dict[str, Any]) -> dict[str, Any]:
    """(d) Memory of a 1,000,000-frame index (a 10,000-frame build, tiled)."""
    from playment_torch.index import FrameIndex

    before = rss_mib("VmRSS")
    results, class_map = synthetic_results("bench-project", CHUNK_JOBS, CHUNK_FRAMES, CHUNK_KEYS)
    with profiled(spec.get("profile", False), "FrameIndex.build, 10,000 frames"):
        started = time.perf_counter()
        chunk = FrameIndex.build("bench-project", results, class_map)
        build = time.perf_counter() - started
    del results
    gc.collect()
    times = MILLION // len(chunk)
    index = tile_index(chunk, times)
    for i in (0, 12_345, MILLION - 1):  # the tiling is faithful: same frames, same label tables
        got, want = index.frame_ref(i), chunk.frame_ref(i % len(chunk))
        assert (got.frame_id, got.pointcloud_url, got.labels) == (want.frame_id, want.pointcloud_url, want.labels)
    del chunk
    gc.collect()
    per_name = {name: value.nbytes for name, value in vars(index).items() if hasattr(value, "nbytes")}
    return {
        "frames": len(index),
        "nbytes": index.nbytes,
        "rss_delta_mib": rss_mib("VmRSS") - before,
        "build_10k_seconds": build,
        "per_array": per_name,
    }


CASES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "getitem": case_getitem,
    "loader": case_loader,
    "prefetch": case_prefetch,
    "naive": case_naive,
    "index": case_index,
    "million": case_million,
}


def child_main(spec: dict[str, Any]) -> None:
    result = CASES[spec["case"]](spec)
    result["peak_rss_mib"] = rss_mib("VmHWM")
    print(json.dumps(result))


# ----------------------------------------------------------------------------------------------- parent


def run_child(spec: dict[str, Any], profile: set[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one case in a fresh interpreter (with extra environment variables ``env``); return its measures."""
    spec = {**spec, "profile": spec["case"] in profile}
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if done.stderr.strip() and (done.returncode or spec["profile"]):
        print(done.stderr, file=sys.stderr)
    if done.returncode:
        raise SystemExit(f"case {spec['case']} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


Rows = list[list[str]]


def _median_run(runs: list[dict[str, Any]], measure: str) -> dict[str, Any]:
    """The run whose ``measure`` is the median (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r[measure])
    return ordered[(len(ordered) - 1) // 2]


def section_ab(work: Path, repeat: int, profile: set[str], sections: set[str], rows: Rows, notes: list[str]) -> None:
    """(a) warm ``ds[i]`` and (b) warm DataLoader throughput, on 24 120k-point frames."""
    from _baseline import export_npy

    from playment_torch.dataset import PlaymentSegmentationDataset
    from playment_torch.testing.server import FakePlaymentServer
    from playment_torch.testing.synthetic import add_synthetic_project

    with FakePlaymentServer() as server:
        add_synthetic_project(server, n_jobs=4, frames_per_job=6, points_per_frame=120_000, seed=0)
        cache = str(work / "warm")
        ds = PlaymentSegmentationDataset(server.project_id, client=_client(server), cache_dir=cache, progress=False)
        ds.prefetch(progress=False)
        count = export_npy(ds, work / "npy")
        ds.cache.close()
        shared = {
            "url": server.url,
            "key": server.api_key,
            "project": server.project_id,
            "cache": cache,
            "npy": str(work / "npy"),
            "count": count,
            "repeat": repeat,
        }
        if "a" in sections:
            # Alternate the two sides so a burst of load on this shared machine hits both alike.
            runs: dict[str, list[dict[str, Any]]] = {"playment": [], "npy": []}
            for _ in range(3):
                for kind in random.sample(list(runs), len(runs)):
                    runs[kind].append(run_child({**shared, "case": "getitem", "kind": kind}, profile))
            ours = _median_run(runs["playment"], "median_ms")
            theirs = _median_run(runs["npy"], "median_ms")
            ratio = ours["median_ms"] / theirs["median_ms"]
            rows.append(
                [
                    "(a) warm `ds[i]`, 120k points, median ms/item",
                    f"{ours['median_ms']:.2f}",
                    f"{theirs['median_ms']:.2f}",
                    f"{ratio:.2f}x",
                    "<= 1.5x",
                    _met(ratio <= 1.5),
                    f"{ours['peak_rss_mib']:.0f} / {theirs['peak_rss_mib']:.0f}",
                ]
            )
            # Diagnosis, not a competitor: the same child with glibc told to keep freed memory, which shows how
            # much of the time is first-touch page faults on memory returned to the OS after every item.
            kept = run_child({**shared, "case": "getitem", "kind": "playment"}, profile, env=KEEP_MEMORY)
            rows.append(
                [
                    "(a') same, glibc trim/mmap thresholds raised (diagnosis)",
                    f"{kept['median_ms']:.2f}",
                    f"{theirs['median_ms']:.2f}",
                    f"{kept['median_ms'] / theirs['median_ms']:.2f}x",
                    "-",
                    "-",
                    f"{kept['peak_rss_mib']:.0f}",
                ]
            )
            notes.append(
                "(a) medians of the three alternating runs: playment_torch "
                + ", ".join(f"{r['median_ms']:.2f}" for r in runs["playment"])
                + " ms; npy "
                + ", ".join(f"{r['median_ms']:.2f}" for r in runs["npy"])
                + " ms. Minor page faults per item: playment_torch "
                + f"{ours['faults_per_item']:.0f} (thresholds raised: {kept['faults_per_item']:.0f}), "
                + f"npy {theirs['faults_per_item']:.0f}"
            )
        if "b" in sections:
            for workers in (0, 2):
                measured: dict[str, list[dict[str, Any]]] = {"playment": [], "npy": []}
                for _ in range(3):  # alternate, as in (a); allocation luck makes single runs bimodal here
                    for kind in random.sample(list(measured), len(measured)):
                        spec = {**shared, "case": "loader", "kind": kind, "workers": workers}
                        measured[kind].append(run_child(spec, profile))
                ours = _median_run(measured["playment"], "fps")
                theirs = _median_run(measured["npy"], "fps")
                ratio = theirs["fps"] / ours["fps"]
                rss = f"{ours['peak_rss_mib']:.0f} / {theirs['peak_rss_mib']:.0f}"
                if workers:
                    rss += f" (workers {ours['worker_rss_mib']:.0f} / {theirs['worker_rss_mib']:.0f})"
                rows.append(
                    [
                        f"(b) warm DataLoader, {workers} workers, batch 4, frames/s",
                        f"{ours['fps']:.0f}",
                        f"{theirs['fps']:.0f}",
                        f"baseline/pt {ratio:.2f}x",
                        "none set",
                        "-",
                        rss,
                    ]
                )
                notes.append(
                    f"(b) {workers} workers, frames/s of the three runs: playment_torch "
                    + ", ".join(f"{r['fps']:.0f}" for r in measured["playment"])
                    + "; npy "
                    + ", ".join(f"{r['fps']:.0f}" for r in measured["npy"])
                )


def section_c(work: Path, repeat: int, profile: set[str], rows: Rows, notes: list[str]) -> None:
    """(c) cold prefetch of 200 frames with 50 ms latency against a naive sequential loop."""
    from playment_torch.dataset import PlaymentSegmentationDataset
    from playment_torch.testing.server import FakePlaymentServer
    from playment_torch.testing.synthetic import add_synthetic_project

    with FakePlaymentServer() as server:
        add_synthetic_project(server, n_jobs=40, frames_per_job=5, points_per_frame=10_000, seed=1)
        resolved = work / "resolved"
        ds = PlaymentSegmentationDataset(
            server.project_id, client=_client(server), cache_dir=str(resolved), progress=False
        )
        assert len(ds) == PREFETCH_FRAMES
        ds.cache.close()
        server.latency = LATENCY
        spec = {
            "url": server.url,
            "key": server.api_key,
            "project": server.project_id,
            "cache": str(resolved),
            "work": str(work),
            "repeat": min(repeat, 3),
        }
        ours = run_child({**spec, "case": "prefetch"}, profile)
        naive = run_child({**spec, "case": "naive", "subset": NAIVE_SUBSET}, profile)
    naive_total = naive["per_frame"] * PREFETCH_FRAMES
    speedup = naive_total / ours["seconds"]
    rows.append(
        [
            f"(c) cold prefetch, {PREFETCH_FRAMES} frames, +{LATENCY * 1e3:.0f} ms/request, s",
            f"{ours['seconds']:.2f}",
            f"{naive_total:.1f} (extrapolated)",
            f"{speedup:.1f}x faster",
            ">= 10x",
            _met(speedup >= 10),
            f"{ours['peak_rss_mib']:.0f} / {naive['peak_rss_mib']:.0f}",
        ]
    )
    notes.append(
        f"(c) naive loop: {naive['seconds']:.2f} s for the first {naive['frames']} frames "
        f"({naive['per_frame'] * 1e3:.0f} ms/frame), times {PREFETCH_FRAMES}; prefetch runs: "
        + ", ".join(f"{s:.2f}" for s in ours["all_seconds"])
        + f" s, {ours['mib']:.1f} MiB each"
    )


def section_d(work: Path, repeat: int, profile: set[str], rows: Rows, notes: list[str]) -> None:
    """(d) the index of a 2,000-job project, cold then from the cache; the memory of a 1M-frame index."""
    from playment_torch.testing.server import FakePlaymentServer
    from playment_torch.testing.synthetic import make_job

    server = FakePlaymentServer(page_size=100).start()
    try:
        template = make_job(seed=5, n_frames=1, points_per_frame=10_000)
        for url, content in template.files.items():
            server.put_file(url, content)
        for _ in range(INDEX_JOBS):
            server.add_job(template.result, job_id=str(uuid.uuid4()))
        spec = {"url": server.url, "key": server.api_key, "project": server.project_id, "cache": str(work / "index")}
        cold = run_child({**spec, "case": "index", "refresh": "if_missing", "repeat": 1}, profile)
        # Warm: the results are cached, the server still answers (refresh="never" needs every frame cached
        # too; bench_scale.py measures that offline construction at 2,000 jobs x 50 frames).
        warm = run_child({**spec, "case": "index", "refresh": "if_missing", "repeat": min(repeat, 3)}, profile)
    finally:
        server.stop()
    assert cold["frames"] == warm["frames"] == INDEX_JOBS, (cold, warm)
    rows.append(
        [
            f"(d) {INDEX_JOBS} one-frame jobs, results cached (`refresh='if_missing'`), s",
            f"{warm['first']:.2f} (best {warm['best']:.2f})",
            f"cold: {cold['first']:.1f}",
            "-",
            "< 5 s",
            _met(warm["first"] < 5),
            f"{warm['peak_rss_mib']:.0f} / cold {cold['peak_rss_mib']:.0f}",
        ]
    )
    million = run_child({"case": "million"}, profile)
    per_frame = million["nbytes"] / million["frames"]
    rows.append(
        [
            f"(d) 1,000,000-frame index, tiled from 10,000 ({CHUNK_KEYS} label keys/frame), MiB",
            f"nbytes {million['nbytes'] / 2**20:.0f} ({per_frame:.0f} B/frame)",
            f"RSS +{million['rss_delta_mib']:.0f}",
            "-",
            "none set",
            "-",
            f"{million['peak_rss_mib']:.0f}",
        ]
    )
    biggest = sorted(million["per_array"].items(), key=lambda kv: -kv[1])
    notes.append(
        "(d) 1M index by array: "
        + ", ".join(f"{name} {size / 2**20:.0f}" for name, size in biggest if size > 2**20)
        + f" MiB; FrameIndex.build of the 10,000-frame chunk: {million['build_10k_seconds']:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="passes / epochs / runs per measurement")
    parser.add_argument("--profile", nargs="*", default=[], choices=sorted(CASES), help="cProfile these cases")
    parser.add_argument(
        "--sections",
        nargs="*",
        default=["a", "b", "c", "d", "e"],
        choices=["a", "b", "c", "d", "e"],
        help="what to run",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return

    profile = set(args.profile)
    sections = set(args.sections)
    repeat = max(1, args.repeat)
    wall = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_dataset_"))
    rows: Rows = []
    notes: list[str] = []
    try:
        if sections & {"a", "b"}:
            section_ab(work, repeat, profile, sections, rows, notes)
        if "c" in sections:
            section_c(work, repeat, profile, rows, notes)
        if "d" in sections:
            section_d(work, repeat, profile, rows, notes)
        if "e" in sections:
            # (e) the cold path and the warm floor on 120k-point frames, server in another process: the rows of
            # bench_cold.py, measured by it, printed below the table.
            import bench_cold

            cold = bench_cold.measure(48, 120_000, max(3, repeat))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    header = ["measurement", "playment_torch", "baseline", "ratio", "target", "met", "peak RSS MiB (pt / base)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    for note in notes:
        print(f"- {note}")
    print(f"- total wall time {time.perf_counter() - wall:.0f} s; {repeat} passes/epochs per measurement")
    if "e" in sections:
        print()
        print(
            "(e) the cold path and the warm floor (bench_cold.py: 48 frames of 120k points, server in another process)"
        )
        bench_cold.print_rows(*cold)


def _client(server: Any) -> Any:
    from playment_torch.client import PlaymentClient

    return PlaymentClient(server.api_key, base_url=server.url)


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


if __name__ == "__main__":
    main()
