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

``--fill-frames`` also writes a one-byte record under every frame's two cache keys before the offline case, so
that the offline check finds every frame present (the cache a finished prefetch leaves), instead of none.

``--direct`` measures a project too large to host in the fake server's memory (1,000,000 frames is 10,000
results of 2-3 MiB): it writes the records a cold construction leaves (each job's API JSON, its generated
result file's bytes and digest) straight into the cache, from results generated job by job, and the server
holds only the listing. It then measures, each in a fresh process: the first construction (the listing from
the server, every job from the cache, the index built from the 10,000 cached results: a cold construction's
CPU without the downloads), a warm one (the cached index) and an offline one::

    python benchmarks/bench_scale.py --direct --jobs 10000 --frames 100 --keys 83
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


def serve(conn: Any, jobs: int, frames: int, keys: int, listing_only: bool = False) -> None:
    """The fake server, in its own process, answering commands from the parent over a pipe.

    ``listing_only``: the jobs' results are empty placeholders (the cache holds the real ones, see ``--direct``).
    """
    from large_results import add_large_jobs, job_ids

    from playment_torch.testing.server import FakePlaymentServer

    with FakePlaymentServer(page_size=100) as server:
        started = time.perf_counter()
        if listing_only:
            batch_ids = [server.add_batch(f"batch {b}") for b in range(max(1, jobs // 500))]
            for n, job_id in enumerate(job_ids(jobs)):
                server.add_job({"sensor_data": {"frames": []}}, job_id=job_id, batch_id=batch_ids[n % len(batch_ids)])
        else:
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
    """Run one step in this fresh process and print what it cost, as JSON."""
    if spec.get("step") == "populate":
        populate(spec)
        return
    if spec.get("step") == "fill":
        fill_frames(spec)
        return
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


def no_client() -> Any:
    raise RuntimeError("this step never uses the network")


def populate(spec: dict[str, Any]) -> None:
    """Write the records a cold construction leaves in the cache, from results generated job by job.

    Each job gets its API JSON (completed, with a result URL), its result file's bytes and their digest,
    under the catalog's own keys, exactly as :class:`~playment_torch._catalog.Catalog` writes them after a
    download. Nothing else: the listing is asked from the server and the index is built by the measured run.
    """
    import numpy as np
    from large_results import job_ids, large_result_bytes, result_template

    from playment_torch._catalog import _JOB, Catalog, _digest
    from playment_torch.cache import ArrayCache, cache_key
    from playment_torch.testing.server import PLAYMENT_STORAGE

    project_id = spec["project_id"]
    cache = ArrayCache(spec["cache"])
    catalog = Catalog(project_id, cache=cache, client=no_client)  # only its key functions are used
    template = result_template(spec["frames"], spec["keys"])
    total = 0
    for job_id in job_ids(spec["jobs"]):
        body = large_result_bytes(template, job_id)
        url = f"{PLAYMENT_STORAGE}/{project_id}/results/{job_id}/generated.json"
        payload = {
            "data": {"project_id": project_id, "job_id": job_id, "status": "completed", "result": url},
            "success": True,
        }
        now = time.time()
        cache.put_json(cache_key(_JOB, project_id=project_id, job_id=job_id), {"fetched_at": now, "payload": payload})
        cache.put_array(catalog._result_key(job_id, url), np.frombuffer(body, dtype=np.uint8), metadata=True)
        record = {"fetched_at": now, "digest": _digest(body), "bytes": len(body)}
        cache.put_json(catalog._digest_key(job_id, url), record)
        total += len(body)
    print(json.dumps({"result_bytes": total}))


def fill_frames(spec: dict[str, Any]) -> None:
    """Put a one-byte record under every frame's cache keys: the cache a finished prefetch leaves (in size, not
    content), so that the offline case checks every frame present."""
    import numpy as np

    from playment_torch._catalog import Catalog, Refresh
    from playment_torch._store import FrameStore
    from playment_torch.cache import ArrayCache

    cache = ArrayCache(spec["cache"])
    catalog = Catalog(spec["project_id"], cache=cache, client=no_client, refresh=Refresh.NEVER)
    index = catalog.open(None, None)
    # The dataset's default point fields: the same keys its offline check looks for.
    store = FrameStore(
        index,
        cache,
        no_client,
        point_fields=("x", "y", "z", "intensity"),
        ignore_index=-100,
        offline=True,
        count=lambda **_: None,
    )
    one = np.zeros(1, dtype=np.uint8)
    count = 0
    for position in range(len(index)):
        for key in store.keys(position):
            cache.put_array(key, one)
            count += 1
    print(json.dumps({"records": count}))


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
    parser.add_argument("--fill-frames", action="store_true", help="offline case: every frame's records present")
    parser.add_argument("--direct", action="store_true", help="write the cold run's records instead of running it")
    parser.add_argument("--skip-offline", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return

    frames = args.jobs * args.frames
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=serve, args=(child, args.jobs, args.frames, args.keys, args.direct), daemon=True)
    server.start()
    info = parent.recv()
    print(f"project: {args.jobs} jobs x {args.frames} frames = {frames:,} frames, {args.keys} label keys a frame")
    print(f"(server process: generated and hosted in {info['setup_seconds']:.0f} s)")
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    base = {"url": info["url"], "key": info["key"], "project_id": info["project_id"]}
    rows: list[tuple[str, dict[str, Any], str]] = []
    cold: dict[str, Any] | None = None
    try:
        cache = str(work / "cache")
        parent.send("clear")
        parent.recv()
        if args.direct:
            started = time.perf_counter()
            spec = {**base, "cache": cache, "step": "populate", "jobs": args.jobs, "frames": args.frames}
            written = result_of(run_child({**spec, "keys": args.keys}))
            print(
                f"(cache populated directly with {args.jobs} results, {written['result_bytes'] / 2**30:.2f} GiB, "
                f"in {time.perf_counter() - started:.0f} s)"
            )
            first = result_of(run_child({**base, "cache": cache, "refresh": "if_missing"}))
            parent.send("counts")
            counts = parent.recv()
            note = f"index built from the cached results; {counts['routes'].get('attachments', 0)} downloads"
            rows.append(("first (cached results, no index)", first, note))
        else:
            cold = result_of(run_child({**base, "cache": cache, "refresh": "if_missing"}))
            parent.send("counts")
            counts = parent.recv()
            rows.append(("cold (empty cache)", cold, f"{counts['routes'].get('job', 0)} job calls"))
        warm = result_of(run_child({**base, "cache": cache, "refresh": "if_missing"}))
        rows.append(("warm (refresh='if_missing')", warm, "listing + cached index"))
        if not args.skip_offline:
            note = "no request"
            if args.fill_frames:
                started = time.perf_counter()
                filled = result_of(run_child({**base, "cache": cache, "step": "fill"}))
                print(f"(wrote {filled['records']:,} frame records in {time.perf_counter() - started:.0f} s)")
                note = f"no request; checks {filled['records']:,} frame records, all present"
            offline = result_of(run_child({**base, "cache": cache, "refresh": "never"}))
            rows.append(("offline (refresh='never')", offline, note))
        if not args.skip_concurrent and not args.direct:
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
    print("| case | wall s | CPU s | CPU ms/job | peak RSS MiB | RSS after MiB | index MiB | notes |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, r, note in rows:
        print(
            f"| {name} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['cpu'] / max(r['jobs'], 1) * 1e3:.1f} | "
            f"{r['peak_rss']:.0f} | {r['rss_after']:.0f} | {r['index_mib']:.1f} | {note} |"
        )
    if cold is not None and frames < 1_000_000:
        scale = 1_000_000 / frames
        print()
        print(
            f"Extrapolated linearly to 1,000,000 frames ({scale:.0f}x): cold CPU ~{cold['cpu'] * scale / 60:.1f} min, "
            f"warm ~{warm['wall'] * scale:.1f} s, index ~{cold['index_mib'] * scale:.0f} MiB per rank"
        )


if __name__ == "__main__":
    main()
