"""Many nodes, side by side in one run: downloads per file by sampler, MDS export, warm loading MDS vs our cache.

Run from the repository root (needs the ``[mds]`` extra)::

    python benchmarks/bench_nodes.py [--frames-per-job 12] [--points 120000]

Cases:

(a) Downloads per file over 2 simulated nodes x 2 ranks x 3 epochs (80 frames of 10k points; every node its own
    cache folder, shared by its ranks; ranks run one after the other), counted from the fake server's request
    log: ``torch.utils.data.DistributedSampler(shuffle=True)`` against :class:`playment_torch.NodeAwareSampler`.
    The expectation for ``DistributedSampler`` is ``N·(1 − (1 − 1/N)^E)`` = 1.75 per file.
(b) Export of a warm cache (4 jobs x ``--frames-per-job`` frames of ``--points`` points, fields x y z intensity)
    to MDS shards with :func:`playment_torch.export_mds` (2 reading threads): time and shard bytes, without
    compression and with zstd.
(c) Warm ``DataLoader(batch_size=4, collate_fn=collate_points, num_workers=2)`` over the same frames: our dataset
    on its warm cache (finished samples cached) against ``PlaymentStreamingDataset`` on the plain and the zstd
    export (shards already local). Frames/s is the best of 3 epochs after a warm-up epoch (persistent workers,
    started in the warm-up); CPU ms/frame is the CPU time of this process and its two workers (``/proc``) over
    the epoch divided by its frames, best epoch.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

import playment_torch as pt
from playment_torch.client import PlaymentClient, RetryPolicy
from playment_torch.mds import PlaymentStreamingDataset, export_mds
from playment_torch.testing import FakePlaymentServer, add_synthetic_project

NODES, RANKS, EPOCHS = 2, 2, 3


def client(server: FakePlaymentServer) -> PlaymentClient:
    return PlaymentClient(server.api_key, base_url=server.url, retry=RetryPolicy(max_retries=3, backoff=0.01))


def downloads_per_file(make_sampler: Callable[[Any, int, int], Iterable[int]], root: Path) -> dict[str, float]:
    """Case (a) for one sampler: a fresh server and caches, 2 nodes x 2 ranks x 3 epochs."""
    with FakePlaymentServer() as server:
        add_synthetic_project(server, n_jobs=8, frames_per_job=10, points_per_frame=10_000, seed=5, cameras=0)
        datasets = {
            (node, rank): pt.PlaymentSegmentationDataset(
                server.project_id, client=client(server), cache_dir=root / f"node{node}", progress=False
            )
            for node in range(NODES)
            for rank in range(RANKS)
        }
        server.clear_requests()
        for epoch in range(EPOCHS):
            for (node, rank), ds in datasets.items():
                sampler = make_sampler(ds, node, rank)
                sampler.set_epoch(epoch)  # type: ignore[attr-defined]
                for i in sampler:
                    ds[i]
        counts = Counter(r.path for r in server.requests if r.route == "storage" and r.method == "GET")
    files = len(counts)
    return {"files": files, "mean": sum(counts.values()) / files, "max": max(counts.values())}


def cpu_seconds(workers: Iterable[Any] = ()) -> float:
    """CPU seconds of this process plus the given (live) worker processes, from ``/proc/<pid>/stat``."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    ticks = os.sysconf("SC_CLK_TCK")
    for worker in workers:
        fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def loader_rate(dataset: Any, epochs: int = 3) -> tuple[float, float]:
    """Case (c): best frames/s and best CPU ms/frame over ``epochs`` epochs after a warm-up epoch."""
    loader = DataLoader(dataset, batch_size=4, collate_fn=pt.collate_points, num_workers=2, persistent_workers=True)
    rates, cpu = [], []
    for epoch in range(epochs + 1):
        frames = 0
        iterator = iter(loader)  # persistent: the same two workers every epoch, started in the warm-up
        workers = list(iterator._workers)  # type: ignore[attr-defined]
        started, cpu_before = time.perf_counter(), cpu_seconds(workers)
        for batch in iterator:
            frames += len(batch.offsets) - 1
        elapsed, used = time.perf_counter() - started, cpu_seconds(workers) - cpu_before
        if epoch:
            rates.append(frames / elapsed)
            cpu.append(1000 * used / frames)
    del loader
    return max(rates), min(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames-per-job", type=int, default=12)
    parser.add_argument("--points", type=int, default=120_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-nodes-"))
    print(f"torch {torch.__version__}, scratch {root}", flush=True)

    print(f"\n(a) downloads per file, {NODES} nodes x {RANKS} ranks x {EPOCHS} epochs, one cache per node")

    def distributed(ds: Any, node: int, rank: int) -> DistributedSampler[int]:
        return DistributedSampler(ds, num_replicas=NODES * RANKS, rank=node * RANKS + rank, shuffle=True, seed=0)

    def node_aware(ds: Any, node: int, rank: int) -> pt.NodeAwareSampler:
        return pt.NodeAwareSampler(ds, num_nodes=NODES, node_rank=node, local_world_size=RANKS, local_rank=rank)

    for name, make in (("DistributedSampler(shuffle=True)", distributed), ("NodeAwareSampler", node_aware)):
        started = time.perf_counter()
        result = downloads_per_file(make, root / name[:4])
        print(
            f"  {name:<34} {result['files']:>4} files  {result['mean']:.2f} downloads/file (max {result['max']})"
            f"  [{time.perf_counter() - started:.1f} s]",
            flush=True,
        )

    frames = 4 * args.frames_per_job
    print(f"\n(b) export of a warm cache, {frames} frames of {args.points} points (x y z intensity)")
    with FakePlaymentServer() as server:
        started = time.perf_counter()
        add_synthetic_project(
            server, n_jobs=4, frames_per_job=args.frames_per_job, points_per_frame=args.points, seed=9
        )
        print(f"  synthetic project generated in {time.perf_counter() - started:.1f} s", flush=True)
        ds = pt.PlaymentSegmentationDataset(
            server.project_id, client=client(server), cache_dir=root / "cache", progress=False
        )
        ds.prefetch(num_threads=8, progress=False)
        for i in range(len(ds)):
            ds[i]  # the finished samples too: warm means one read per item
    exports = {}
    for compression in (None, "zstd"):
        out = root / f"mds-{compression or 'plain'}"
        report = export_mds(ds, out, compression=compression, num_workers=2, progress=False)
        exports[compression] = out
        print(
            f"  {compression or 'none':<6} {report.seconds:6.2f} s  {report.frames / report.seconds:6.1f} frames/s"
            f"  {report.bytes / 2**20:7.1f} MiB in {report.shards} shards",
            flush=True,
        )

    print(f"\n(c) warm DataLoader, batch 4, 2 workers, {frames} frames of {args.points} points")
    cases: list[tuple[str, Any]] = [("our warm cache", ds)]
    for compression, out in exports.items():
        stream = PlaymentStreamingDataset(local=str(out), batch_size=4)
        cases.append((f"MDS {compression or 'plain'}", stream))
    for name, dataset in cases:
        rate, cpu = loader_rate(dataset)
        print(f"  {name:<16} {rate:7.1f} frames/s  {cpu:6.2f} CPU ms/frame", flush=True)


if __name__ == "__main__":
    sys.exit(main())
