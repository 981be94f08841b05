"""The ``playment-torch`` command: demo, prefetch, inspect, verify, cache, serve.

Exit codes: 0 success, 1 a :class:`~playment_torch.errors.PlaymentError` (one line on stderr; the traceback only
with ``--debug``), 2 a usage error. The API key is read from ``PLAYMENT_API_KEY`` only: a key given as an
argument would land in shell history and process listings.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from playment_torch.cache import ArrayCache, default_cache_dir
from playment_torch.errors import PlaymentError
from playment_torch.mds import export_command

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: the flags work before or after the command without the subcommand's default undoing them.
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="tracebacks, debug logs")
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")

    parser = argparse.ArgumentParser(
        prog="playment-torch",
        description="Playment point cloud segmentation jobs as PyTorch training data.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", parents=[common], help="train and evaluate on a synthetic project served locally (no account)"
    )
    demo.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    demo.add_argument("--frames", type=int, default=32, help="frames in the synthetic project (default 32)")
    demo.add_argument("--points", type=int, default=20_000, help="points per frame (default 20000)")
    demo.add_argument("--cache-dir", help="cache folder (default: a temporary one)")
    demo.add_argument("--seed", type=int, default=0)

    def selection(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--project", required=True, help="Playment project id")
        sub.add_argument("--batch", action="append", default=None, help="batch id (repeatable)")
        sub.add_argument("--job", action="append", default=None, help="job id (repeatable)")
        sub.add_argument("--cache-dir", help=f"cache folder (default {default_cache_dir()})")
        sub.add_argument("--base-url", default=None, help="API base URL (default https://api.playment.io)")
        sub.add_argument("--threads", type=int, default=16, help="concurrent downloads (default 16)")

    prefetch = commands.add_parser(
        "prefetch", parents=[common], help="download and cache every frame (key from PLAYMENT_API_KEY)"
    )
    selection(prefetch)
    inspect = commands.add_parser("inspect", parents=[common], help="classes, frames and points of a project")
    selection(inspect)
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.add_argument("--offline", action="store_true", help="use only the cache (refresh='never')")

    verify = commands.add_parser("verify", parents=[common], help="check every cache entry's integrity")
    verify.add_argument("--cache-dir")
    verify.add_argument("--repair", action="store_true", help="drop bad entries")

    cache = commands.add_parser("cache", parents=[common], help="cache info / clear")
    cache.add_argument("action", choices=("info", "clear"))
    cache.add_argument("--cache-dir")

    export = commands.add_parser(
        "export", parents=[common], help="write the frames as MosaicML Streaming shards (needs the [mds] extra)"
    )
    selection(export)
    export.add_argument("--format", choices=("mds",), default="mds", help="output format (default mds)")
    export.add_argument("--out", required=True, help="folder or remote (s3://...); '{snapshot}' -> the snapshot id")
    export.add_argument("--compression", default=None, help="e.g. zstd (default none)")
    export.add_argument("--fields", default="x,y,z,intensity", help="point fields (default x,y,z,intensity)")

    serve = commands.add_parser("serve", parents=[common], help="run the fake Playment server for your own tests")
    serve.add_argument("--jobs", type=int, default=4, help="synthetic jobs (default 4)")
    serve.add_argument("--frames", type=int, default=5, help="frames per job (default 5)")
    serve.add_argument("--points", type=int, default=30_000, help="points per frame (default 30000)")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    args.debug = getattr(args, "debug", False)
    args.quiet = getattr(args, "quiet", False)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    handler = _COMMANDS[args.command]
    try:
        handler(args)
    except PlaymentError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"playment-torch: error: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("playment-torch: interrupted", file=sys.stderr)
        return 130
    return 0


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.quiet else None


def _dataset(args: argparse.Namespace, **options: Any) -> Any:
    from playment_torch.client import DEFAULT_BASE_URL, PlaymentClient
    from playment_torch.dataset import PlaymentSegmentationDataset

    refresh = options.pop("refresh", "if_missing")
    # The shell's commands do not know a training script's point fields: cache the decoded arrays only, from
    # which any training run derives its finished samples.
    options.setdefault("cache_samples", False)
    client = None
    if refresh != "never":
        client = PlaymentClient(base_url=args.base_url or DEFAULT_BASE_URL)
    return PlaymentSegmentationDataset(
        args.project,
        job_ids=args.job,
        batch_ids=args.batch,
        client=client,
        cache_dir=args.cache_dir,
        refresh=refresh,
        progress=_progress(args),
        num_threads=args.threads,
        **options,
    )


def _demo(args: argparse.Namespace) -> None:
    from playment_torch.demo import run_demo

    run_demo(
        epochs=args.epochs,
        frames=args.frames,
        points_per_frame=args.points,
        cache_dir=args.cache_dir,
        seed=args.seed,
        progress=_progress(args),
    )


def _prefetch(args: argparse.Namespace) -> None:
    dataset = _dataset(args, point_fields=("x", "y", "z"), on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the failures are listed below, one line each
        report = dataset.prefetch(num_threads=args.threads, progress=not args.quiet)
    print(f"project {args.project}: {len(dataset.index.jobs)} jobs, {report}")
    for job_id, frame_id, message in report.failures:
        print(f"  failed: job {job_id}, frame {frame_id}: {_one_line(message)}")
    if report.failures:
        raise PlaymentError(f"{len(report.failures)} frames could not be prefetched (listed above)")


def _inspect(args: argparse.Namespace) -> None:
    import numpy as np

    dataset = _dataset(args, point_fields=("x", "y", "z"), refresh="never" if args.offline else "if_missing")
    classes = dataset.classes
    points_per_class = np.zeros(len(classes), dtype=np.int64)
    frames_per_class = np.zeros(len(classes), dtype=np.int64)
    frames_per_job: dict[str, int] = {}
    sizes = []
    unlabeled = 0
    from tqdm.auto import tqdm

    # disable=None: a bar on a terminal only.
    for i in tqdm(range(len(dataset)), desc="inspect", unit="frame", disable=True if args.quiet else None, leave=False):
        sample = dataset[i]
        labels = sample.labels.numpy()
        known = labels[labels != dataset.ignore_index]
        counts = np.bincount(known, minlength=len(classes))
        points_per_class += counts
        frames_per_class += counts > 0
        unlabeled += len(labels) - len(known)
        sizes.append(len(labels))
        job = dataset.index.job_of(i).job_id
        frames_per_job[job] = frames_per_job.get(job, 0) + 1
    total = int(sum(sizes))
    summary = {
        "project": args.project,
        "jobs": len(dataset.index.jobs),
        "frames": len(dataset),
        "classes": [
            {"name": name, "points": int(points_per_class[i]), "frames": int(frames_per_class[i])}
            for i, name in enumerate(classes)
        ],
        "frames_per_job": frames_per_job,
        "points_per_frame": {
            "min": min(sizes, default=0),
            "median": statistics.median(sizes) if sizes else 0,
            "max": max(sizes, default=0),
        },
        "points": total,
        "unlabeled_share": unlabeled / total if total else 0.0,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"project {args.project}: {summary['jobs']} jobs, {summary['frames']} frames, {total} points")
    print(f"{'class':<24}{'points':>12}{'share':>9}{'frames':>8}")
    for entry in summary["classes"]:
        share = entry["points"] / total if total else 0.0
        print(f"{entry['name']:<24}{entry['points']:>12}{share:>9.1%}{entry['frames']:>8}")
    sizes_summary = summary["points_per_frame"]
    print(f"points per frame: min {sizes_summary['min']}, median {sizes_summary['median']}, max {sizes_summary['max']}")
    print(f"unlabeled points: {summary['unlabeled_share']:.1%}")
    print("frames per job: " + ", ".join(f"{job} {n}" for job, n in sorted(frames_per_job.items())))


def _existing_cache(args: argparse.Namespace) -> ArrayCache:
    """The cache to look at; one that does not exist is not created just to be looked at."""
    directory = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if not directory.is_dir():
        raise PlaymentError(f"no cache at {directory}")
    return ArrayCache(directory)


def _verify(args: argparse.Namespace) -> None:
    cache = _existing_cache(args)
    report = cache.verify(repair=args.repair)
    print(f"cache {cache.directory}: {report.checked} entries checked, {len(report.bad)} bad")
    for key in report.bad:
        print(f"  bad: {key}")
    if report.bad and args.repair:
        print(f"dropped {report.repaired} bad entries; they will be fetched again when needed")
    cache.close()
    if report.bad and not args.repair:
        raise _CacheDamaged(f"{len(report.bad)} bad cache entries; run with --repair to drop them")


class _CacheDamaged(PlaymentError):
    """``verify`` found bad entries and was not asked to repair them."""


def _cache(args: argparse.Namespace) -> None:
    cache = _existing_cache(args)
    if args.action == "info":
        print(f"cache {cache.directory}: {len(cache)} entries, {cache.volume() / 2**20:.1f} MiB")
    else:
        removed = cache.clear()
        print(f"cache {cache.directory}: removed {removed} entries")
    cache.close()


def _serve(args: argparse.Namespace) -> None:
    from playment_torch.testing.server import FakePlaymentServer
    from playment_torch.testing.synthetic import add_synthetic_project

    with FakePlaymentServer() as server:
        add_synthetic_project(
            server, n_jobs=args.jobs, frames_per_job=args.frames, points_per_frame=args.points, seed=args.seed
        )
        # The fake server's key is a throwaway made for this run; printing it is the point.
        print(f"url:        {server.url}")
        print(f"project id: {server.project_id}")
        print(f"api key:    {server.api_key}")
        print(
            f"try: PLAYMENT_API_KEY=<key> playment-torch inspect --project {server.project_id} --base-url {server.url}",
            flush=True,
        )
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.1 if deadline is not None else 1.0)


_COMMANDS = {
    "demo": _demo,
    "prefetch": _prefetch,
    "inspect": _inspect,
    "verify": _verify,
    "cache": _cache,
    "serve": _serve,
    "export": export_command,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
