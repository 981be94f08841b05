"""Constructing a dataset over a real-sized project: cold, warm, offline, and two ranks at once on one cache.

Run from the repository root::

    python benchmarks/bench_scale.py [--jobs 2000] [--frames 50] [--keys 83] [--skip-concurrent]

The project is generated, not tiled: ``--jobs`` jobs of ``--frames`` frames with ``--keys`` label keys a frame
(one annotation per key and frame, as Playment writes them; 50 x 83 is ~1.35 MiB of result JSON a job), every
job's result its own file with its own URLs. The fake server holding them runs in its own process, so the
measured processes' memory is the dataset's alone. Each case runs in a fresh process:

* cold: an empty cache; every listing page, job and result comes from the server (no latency added, so this is
  the CPU cost: download, digest, cache write, parse, index);
* warm: the same cache, ``refresh="if_missing"`` (the default): the listing is asked again, the rest is the
  cached job records and the cached index;
* offline: ``refresh="never"``, the server never asked; this includes the up-front check of every frame's
  cache entries (existence checks). No frame was downloaded here, so with ``offline_subset=True`` it keeps none
  and says so in one warning;
* two ranks: two processes constructing at once on a fresh cache; the server's request log counts job calls,
  listing pages and result downloads.

Wall and CPU seconds (user + system of the process, all threads), peak RSS (``VmHWM``), RSS after construction
with the index alive, and the index's own bytes. At the end, a linear extrapolation to 1,000,000 frames.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------------------------------------- the server


def serve(conn: Any, jobs: int, frames: int, keys: int) -> None:
    """The fake server, in its own process, answering commands from the parent over a pipe."""
    from large_results import add_large_jobs

    from playment_torch.testing.server import FakePlaymentServer

    with FakePlaymentServer(page_size=100) as server:
        started = time.perf_counter()
        add_large_jobs(server, jobs, frames=frames, keys=keys, batches=max(1, jobs // 500))
        conn.send(
            {
                "url": server.url,
                "key": server.api_key,
                "project_id": server.project_id,
                "setup_seconds": time.perf_counter() - started,
            }
        )
        while True:
            command = conn.recv()
            if command == "stop":
                return
            if command == "clear":
                server.clear_requests()
                conn.send(None)
            elif command == "counts":
                requests = server.requests
                routes = Counter(r.route for r in requests)
                results = Counter(r.query.get("url") for r in requests if r.route == "attachments")
                conn.send(
                    {
                        "routes": dict(routes),
                        "results": len(results),
                        "most_downloads_of_one_result": max(results.values(), default=0),
                    }
                )


# ----------------------------------------------------------------------------------------------- measuring


def child_main(spec: dict[str, Any]) -> None:
    """Construct the dataset once in this fresh process and print what it cost, as JSON."""
    from playment_torch.client import PlaymentClient
    from playment_torch.dataset import PlaymentSegmentationDataset

    client = PlaymentClient(spec["key"], base_url=spec["url"])
    if spec.get("start_at"):
        time.sleep(max(0.0, spec["start_at"] - time.time()))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    ds = PlaymentSegmentationDataset(
        spec["project_id"],
        client=client,
        cache_dir=spec["cache"],
        refresh=spec["refresh"],
        progress=False,
        offline_subset=True,  # the frames were never downloaded: an offline run keeps none, and says so
    )
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    gc.collect()
    print(
        json.dumps(
            {
                "wall": wall,
                "cpu": usage.ru_utime + usage.ru_stime - cpu0,
                "peak_rss": rss_mib("VmHWM"),
                "rss_after": rss_mib("VmRSS"),
                "index_mib": ds.index.nbytes / 2**20,
                "frames": len(ds),
                "jobs": len(ds.index.jobs),
            }
        )
    )


def run_child(spec: dict[str, Any]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def result_of(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"child failed:\n{err}")
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--keys", type=int, default=83)
    parser.add_argument("--skip-concurrent", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return

    frames = args.jobs * args.frames
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=serve, args=(child, args.jobs, args.frames, args.keys), daemon=True)
    server.start()
    info = parent.recv()
    print(f"project: {args.jobs} jobs x {args.frames} frames = {frames:,} frames, {args.keys} label keys a frame")
    print(f"(server process: generated and hosted in {info['setup_seconds']:.0f} s)")
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    base = {"url": info["url"], "key": info["key"], "project_id": info["project_id"]}
    rows: list[tuple[str, dict[str, Any], str]] = []
    try:
        cache = str(work / "cache")
        parent.send("clear")
        parent.recv()
        cold = result_of(run_child({**base, "cache": cache, "refresh": "if_missing"}))
        parent.send("counts")
        counts = parent.recv()
        rows.append(("cold (empty cache)", cold, f"{counts['routes'].get('job', 0)} job calls"))
        warm = result_of(run_child({**base, "cache": cache, "refresh": "if_missing"}))
        rows.append(("warm (refresh='if_missing')", warm, "listing + cached index"))
        offline = result_of(run_child({**base, "cache": cache, "refresh": "never"}))
        rows.append(("offline (refresh='never')", offline, "no request"))
        if not args.skip_concurrent:
            shared = str(work / "shared")
            parent.send("clear")
            parent.recv()
            start_at = time.time() + 3.0  # both processes past their imports
            pair = [
                run_child({**base, "cache": shared, "refresh": "if_missing", "start_at": start_at}) for _ in range(2)
            ]
            results = [result_of(p) for p in pair]
            parent.send("counts")
            counts = parent.recv()
            routes = counts["routes"]
            note = (
                f"{routes.get('job', 0)} job calls, {routes.get('batch', 0)} batch pages, "
                f"{counts['results']} results downloaded, at most {counts['most_downloads_of_one_result']}x each"
            )
            slower = max(results, key=lambda r: r["wall"])
            rows.append(("two ranks at once, cold, slower rank", slower, note))
    finally:
        parent.send("stop")
        server.join(60)
        shutil.rmtree(work, ignore_errors=True)

    print()
    print("| case | wall s | CPU s | peak RSS MiB | RSS after MiB | index MiB | notes |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, r, note in rows:
        print(
            f"| {name} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['peak_rss']:.0f} | {r['rss_after']:.0f} | "
            f"{r['index_mib']:.1f} | {note} |"
        )
    scale = 1_000_000 / frames
    print()
    print(
        f"Extrapolated linearly to 1,000,000 frames ({scale:.0f}x): cold CPU ~{cold['cpu'] * scale / 60:.1f} min, "
        f"warm ~{warm['wall'] * scale:.1f} s, index ~{cold['index_mib'] * scale:.0f} MiB per rank"
    )


if __name__ == "__main__":
    main()
