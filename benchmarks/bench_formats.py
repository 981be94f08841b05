"""Decode throughput of ``playment_torch.formats`` against its peers, side by side in one run.

Run from the repository root::

    python benchmarks/bench_formats.py [--repeat N] [--seed S]

Cases: a synthetic 120k-point ``x y z intensity ring`` cloud (float32 x4 + uint16) in every encoding, the real
240k-point scan ``../shared/data/pcd/files/patchwork__000000.pcd`` (binary_compressed as shipped, re-encoded to
binary and ascii), and a 120k-key mask. Every reader decodes the same bytes from memory. Timing cannot favour
anyone: each round runs every reader once in a freshly shuffled order (a reader that follows a heavy one, such
as open3d, pays for its cache misses, so a fixed order would hand that cost to the same reader every time),
and the table reports the **median** of N rounds (``time.perf_counter``; 10 N for the ~2 ms mask), with the
best beside it. Peers where
importable (skipped cleanly otherwise): pypcd4, open3d, pcd_py (a Rust reader), ``np.loadtxt`` for ASCII;
``json.loads`` + ``np.array`` and pysimdjson for masks. MB/s counts decoded bytes (the structured array's
``nbytes``); "speedup" is peer median / playment_torch median (above 1 = playment_torch is faster). A last
table puts each case's playment_torch median beside its fastest peer's.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playment_torch.formats.masks import encode_mask, read_mask  # noqa: E402
from playment_torch.formats.pcd import encode_pcd, read_pcd  # noqa: E402

REAL_SCAN = ROOT.parent / "shared" / "data" / "pcd" / "files" / "patchwork__000000.pcd"
ENCODINGS = ("binary", "binary_compressed", "ascii")


Timing = tuple[float, float] | Exception


def median_of(readers: dict[str, Callable[[], Any]], repeat: int, rng: random.Random) -> dict[str, Timing]:
    """Median and best wall time of each reader over ``repeat`` rounds, in a shuffled order every round.

    A reader that raises is dropped and its exception returned in place of a timing.
    """
    times: dict[str, list[float]] = {name: [] for name in readers}
    failed: dict[str, Exception] = {}
    order = list(readers)
    for _ in range(repeat):
        rng.shuffle(order)
        for name in order:
            if name in failed:
                continue
            start = time.perf_counter()
            try:
                readers[name]()
            except Exception as exc:  # a peer that cannot read a file is reported, not fatal
                failed[name] = exc
                continue
            times[name].append(time.perf_counter() - start)
    return {
        name: failed[name] if name in failed else (statistics.median(times[name]), min(times[name])) for name in readers
    }


def ring_cloud(n: int = 120_000, seed: int = 0) -> np.ndarray:
    """A LiDAR-like cloud: 128 rings, ranges up to ~80 m, integer intensities."""
    rng = np.random.default_rng(seed)
    cloud = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"), ("ring", "<u2")])
    azimuth = rng.uniform(0, 2 * np.pi, n)
    ring = rng.integers(0, 128, n)
    distance = rng.uniform(2, 80, n)
    elevation = np.deg2rad(-25 + ring * (40 / 127))
    cloud["x"] = distance * np.cos(elevation) * np.cos(azimuth)
    cloud["y"] = distance * np.cos(elevation) * np.sin(azimuth)
    cloud["z"] = distance * np.sin(elevation)
    cloud["intensity"] = rng.integers(0, 256, n)
    cloud["ring"] = ring
    return cloud


def data_offset(blob: bytes) -> int:
    return read_pcd(blob).header.data_offset if blob else 0


def peers_for(blob: bytes, encoding: str, tmpdir: str) -> dict[str, Callable[[], Any]]:
    """The readers to compare with, as zero-argument callables decoding ``blob``."""
    peers: dict[str, Callable[[], Any]] = {}
    try:
        import pypcd4

        peers["pypcd4"] = lambda: pypcd4.PointCloud.from_fileobj(io.BytesIO(blob)).pc_data  # type: ignore[arg-type]
    except ImportError:
        pass
    try:
        import open3d

        # open3d reads only from paths: give it a file in a temporary directory (page cache, not disk).
        path = os.path.join(tmpdir, f"{encoding}.pcd")
        Path(path).write_bytes(blob)
        peers["open3d (tensor)"] = lambda: open3d.t.io.read_point_cloud(path)
    except ImportError:
        pass
    try:
        import pcd_py

        peers["pcd_py"] = lambda: pcd_py.read_pcd_from_buffer(blob)
    except ImportError:
        pass
    if encoding == "ascii":
        header = read_pcd(blob).header
        dtype = header.dtype()
        section = blob[header.data_offset :]
        peers["np.loadtxt"] = lambda: np.loadtxt(io.BytesIO(section), dtype=dtype, comments=None)
    return peers


def bench_cloud(
    label: str, blobs: dict[str, bytes], repeat: int, tmpdir: str, rows: list[list[str]], rng: random.Random
) -> dict[str, float]:
    ratios: dict[str, float] = {}
    for encoding in ENCODINGS:
        blob = blobs[encoding]
        nbytes = read_pcd(blob).data.nbytes
        readers: dict[str, Callable[[], Any]] = {"playment_torch": functools.partial(read_pcd, blob)}
        readers |= peers_for(blob, encoding, tmpdir)
        ratios |= add_rows(label, encoding, median_of(readers, repeat, rng), nbytes, len(blob), rows)
    return ratios


# One line per case: playment_torch's median beside the fastest peer's (filled in by add_rows).
FASTEST: list[list[str]] = []


def add_rows(
    label: str, encoding: str, times: dict[str, Timing], nbytes: int, size: int, rows: list[list[str]]
) -> dict[str, float]:
    """Table rows for one case (ours first), and the speedups against each peer."""
    ours = times.pop("playment_torch")
    assert not isinstance(ours, Exception), ours
    rows.append(row(label, encoding, "playment_torch", ours, nbytes, None, size))
    ratios = {}
    for peer, timing in times.items():
        if isinstance(timing, Exception):
            rows.append([label, encoding, peer, f"error: {type(timing).__name__}", "", "", "", ""])
            continue
        rows.append(row(label, encoding, peer, timing, nbytes, ours[0], size))
        ratios[f"{label} {encoding} vs {peer}"] = timing[0] / ours[0]
    timed = {peer: t for peer, t in times.items() if not isinstance(t, Exception)}
    if timed:
        peer = min(timed, key=lambda name: timed[name][0])
        FASTEST.append(
            [
                label,
                encoding,
                f"{ours[0] * 1e3:.2f}",
                peer,
                f"{timed[peer][0] * 1e3:.2f}",
                f"{timed[peer][0] / ours[0]:.2f}",
            ]
        )
    return ratios


def row(
    label: str,
    encoding: str,
    reader: str,
    timing: tuple[float, float],
    nbytes: int,
    ours: float | None,
    size: int,
) -> list[str]:
    median, best = timing
    speedup = "1.00 (ref)" if ours is None else f"{median / ours:.2f}"
    return [
        label,
        encoding,
        reader,
        f"{median * 1e3:.2f}",
        f"{best * 1e3:.2f}",
        f"{nbytes / median / 1e6:.0f}",
        speedup,
        f"{size / 1e6:.2f}",
    ]


def mask_peers(mask: bytes) -> dict[str, Callable[[], Any]]:
    peers: dict[str, Callable[[], Any]] = {"json.loads + np.array": lambda: np.array(json.loads(mask))}
    try:
        import simdjson

        parser = simdjson.Parser()
        # as_buffer gives the flat int64 array without a Python int per key (the fair comparison).
        peers["pysimdjson as_buffer"] = lambda: np.frombuffer(parser.parse(mask).as_buffer(of_type="i"), np.int64)
    except ImportError:
        pass
    return peers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15, help="rounds per measurement (the median is reported)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled reader order")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows: list[list[str]] = []
    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        synthetic = ring_cloud()
        blobs = {e: encode_pcd(synthetic, encoding=e) for e in ENCODINGS}
        ratios |= bench_cloud("ring 120k", blobs, args.repeat, tmpdir, rows, rng)
        if REAL_SCAN.exists():
            shipped = REAL_SCAN.read_bytes()
            real = read_pcd(shipped)
            w, h = real.header.width, real.header.height
            real_blobs = {
                "binary_compressed": shipped,
                "binary": encode_pcd(real.data, encoding="binary", width=w, height=h),
                "ascii": encode_pcd(real.data, encoding="ascii", width=w, height=h),
            }
            ratios |= bench_cloud("patchwork 240k", real_blobs, args.repeat, tmpdir, rows, rng)
        else:
            print(f"(skipping the real scan: {REAL_SCAN} not found)")

    keys = np.random.default_rng(1).integers(-1, 400, 120_000)
    mask = encode_mask(keys)
    parsed = read_mask(mask)
    assert np.array_equal(parsed, keys)
    readers: dict[str, Callable[[], Any]] = {"playment_torch": lambda: read_mask(mask)}
    readers |= mask_peers(mask)
    for name, read in readers.items():
        assert np.array_equal(read(), keys), name
    # A mask decodes in ~2 ms, where scheduling noise is a large share of one round: ten times the rounds.
    mask_times = median_of(readers, 10 * args.repeat, rng)
    ratios |= add_rows("mask 120k keys", "json", mask_times, parsed.nbytes, len(mask), rows)

    header = ["case", "encoding", "reader", "ms (median)", "ms (best)", "MB/s decoded", "speedup vs peer", "file MB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    print("speedup = peer median / playment_torch median:")
    for name, value in ratios.items():
        print(f"  {name}: {value:.2f}x")
    print()
    print("playment_torch against the fastest peer of each case (medians; speedup > 1: playment_torch is faster):")
    print()
    fastest = ["case", "encoding", "playment_torch ms", "fastest peer", "peer ms", "speedup"]
    print("| " + " | ".join(fastest) + " |")
    print("|" + "---|" * len(fastest))
    for r in FASTEST:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
