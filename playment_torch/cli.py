"""The ``playment-torch`` command: demo, prefetch, inspect, verify, cache, serve, relabel.

Exit codes: 0 success, 1 a :class:`~playment_torch.errors.PlaymentError` (one line on stderr; the traceback only
with ``--debug``), 2 a usage error. The API key is read from ``PLAYMENT_API_KEY`` only: a key given as an
argument would land in shell history and process listings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import sys
import time
import traceback
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from playment_torch.cache import ArrayCache, default_cache_dir, parse_duration
from playment_torch.errors import ConfigError, PlaymentError
from playment_torch.mds import export_command

__all__ = ["main"]

API_KEY = "PLAYMENT_API_KEY"
_NO_KEY = (
    f"no Playment API key: set {API_KEY} (export {API_KEY}=...); the command line never takes the key as an "
    "argument, so that it stays out of shell history and process lists"
)


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
    demo.add_argument("--pictures", default=".", help="folder for demo-frame.png and demo-confusion.png (default .)")
    demo.add_argument("--no-pictures", action="store_true", help="draw no pictures")

    def selection(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--project", required=True, help="Playment project id")
        sub.add_argument("--batch", action="append", default=None, help="batch id (repeatable)")
        sub.add_argument("--job", action="append", default=None, help="job id (repeatable)")
        sub.add_argument("--cache-dir", help=f"cache folder (default {default_cache_dir()})")
        sub.add_argument("--base-url", default=None, help="API base URL (default https://api.playment.io)")
        sub.add_argument("--threads", type=int, default=16, help="concurrent downloads (default 16)")
        sub.add_argument(
            "--point-fields",
            default="x,y,z,intensity",
            help="comma-separated PCD fields your training uses (default x,y,z,intensity): the cache stores "
            "finished points, so other fields download each point cloud again",
        )

    prefetch = commands.add_parser(
        "prefetch", parents=[common], help="download and cache every frame (key from PLAYMENT_API_KEY)"
    )
    selection(prefetch)
    prefetch.add_argument(
        "--snapshot", metavar="FILE", help="then pin what was prefetched: write a snapshot (lock file) to FILE"
    )
    prefetch.add_argument(
        "--processes",
        type=int,
        default=None,
        help="worker processes sharing the threads (default: one per core, at most 8; Linux only)",
    )
    inspect = commands.add_parser("inspect", parents=[common], help="classes, frames and points of a project")
    selection(inspect)
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.add_argument("--offline", action="store_true", help="use only the cache (refresh='never')")

    evaluate = commands.add_parser("evaluate", parents=[common], help="score saved predictions frame by frame")
    selection(evaluate)
    evaluate.add_argument("--predictions", required=True, help="predictions folder (pt.PredictionWriter)")
    evaluate.add_argument("--out", default="evaluation", help="folder for the metrics files (default ./evaluation)")
    evaluate.add_argument("--worst", type=int, default=20, help="worst frames to list (default 20)")
    evaluate.add_argument("--allow-missing", action="store_true", help="exit 0 even if frames lack a prediction")
    evaluate.add_argument("--no-picture", action="store_true", help="skip confusion.png (needs the viz extra)")
    evaluate.add_argument("--playment-results", metavar="DIR", help="also write the predictions as Playment results")
    evaluate.add_argument("--url-prefix", help="URL the Playment results name for DIR (default its file:// URI)")

    verify = commands.add_parser("verify", parents=[common], help="check every cache entry's integrity")
    verify.add_argument("--cache-dir")
    verify.add_argument("--repair", action="store_true", help="drop bad entries")

    def duration(text: str) -> float:
        try:
            return parse_duration(text)
        except PlaymentError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    cache = commands.add_parser(
        "cache", parents=[common], help="cache info (per project) / clear (all, one project, or unused ones)"
    )
    cache.add_argument("action", choices=("info", "clear"))
    cache.add_argument("--cache-dir")
    cache.add_argument("--project", help="clear: only this project's entries")
    cache.add_argument(
        "--older-than", type=duration, metavar="DURATION", help="clear: only projects unused for this long (7d, 12h)"
    )
    cache.add_argument("--yes", "-y", action="store_true", help="clear without asking (never asked off a terminal)")

    relabel = commands.add_parser("relabel", parents=[common], help="send frames back to Playment for labelling")
    relabel.add_argument("--project", required=True, help="Playment project id")
    relabel.add_argument("--frames", required=True, help="CSV with 'job' and 'frame' columns (e.g. worst frames)")
    relabel.add_argument("--work-flow-id", required=True, help="workflow of the new jobs")
    relabel.add_argument("--batch-name", required=True, help="batch to create them in (reused if it exists)")
    relabel.add_argument("--description", default="", help="description of a new batch")
    relabel.add_argument("--reference-prefix", default="relabel", help="reference ids: PREFIX:job:frame")
    relabel.add_argument("--limit", type=int, default=None, help="only the first N frames of the CSV")
    relabel.add_argument("--dry-run", action="store_true", help="print what would be created; create nothing")
    relabel.add_argument("--rate", type=float, default=20.0, help="requests per second at most (default 20)")
    relabel.add_argument("--threads", type=int, default=4, help="requests in flight (default 4)")
    relabel.add_argument("--base-url", default=None, help="API base URL (default https://api.playment.io)")
    show = commands.add_parser(
        "show", parents=[common], help="picture (PNG) or export (.ply, .pcd) of one frame (key from PLAYMENT_API_KEY)"
    )
    show.add_argument("--project", required=True, help="Playment project id")
    show.add_argument("--job", required=True, help="job id")
    show.add_argument("--frame", required=True, help="frame id")
    show.add_argument("--camera", help="also draw this camera's image with the points projected (name or id)")
    show.add_argument("--predictions", help="predictions folder: ground truth | prediction | disagreement")
    show.add_argument("--color-by", choices=("class", "intensity", "sweep"), default="class")
    show.add_argument("--sweeps", type=int, default=None, help="frames per picture (default 1; 3 for sweep)")
    show.add_argument("--extent", type=float, default=40.0, help="metres from the ego to the map's edges (40)")
    show.add_argument("--resolution", type=float, default=0.1, help="metres per pixel (default 0.1)")
    show.add_argument("-o", "--output", required=True, help="output file: .png picture, or .ply / .pcd export")
    show.add_argument("--cache-dir", help=f"cache folder (default {default_cache_dir()})")
    show.add_argument("--base-url", default=None, help="API base URL (default https://api.playment.io)")

    export = commands.add_parser(
        "export", parents=[common], help="write the frames as MosaicML Streaming shards (needs the [mds] extra)"
    )
    selection(export)
    export.add_argument("--format", choices=("mds",), default="mds", help="output format (default mds)")
    export.add_argument("--out", required=True, help="folder or remote (s3://...); '{snapshot}' -> the snapshot id")
    export.add_argument("--compression", default=None, help="e.g. zstd (default none)")

    serve = commands.add_parser("serve", parents=[common], help="run the fake Playment server for your own tests")
    serve.add_argument("--jobs", type=int, default=4, help="synthetic jobs (default 4)")
    serve.add_argument("--frames", type=int, default=5, help="frames per job (default 5)")
    serve.add_argument("--points", type=int, default=30_000, help="points per frame (default 30000)")
    serve.add_argument("--seed", type=int, default=0, help="same seed, same project, batch and job ids and key")
    serve.add_argument("--port", type=int, default=0, help="API port on 127.0.0.1 (default: any free port)")
    serve.add_argument("--api-key", default=None, help="the key the fake server expects (default: one from --seed)")
    serve.add_argument("--batches", type=int, default=1, help="batches the jobs are dealt to (default 1)")
    serve.add_argument("--json", action="store_true", help="print the connection details as one JSON object")
    serve.add_argument("--latency", type=float, default=0.0, help="seconds added to every response (default 0)")
    serve.add_argument(
        "--encoding", default="binary", choices=("ascii", "binary", "binary_compressed"), help="PCD encoding"
    )
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
        with warnings.catch_warnings():
            # A warning is one line for the user, never Python's "file:line: RuntimeWarning" and source line.
            warnings.showwarning = _show_warning
            handler(args)
    except PlaymentError as exc:
        if args.debug:
            traceback.print_exc()
        message = str(exc)
        if isinstance(exc, ConfigError) and message.startswith("no Playment API key"):
            message = _NO_KEY  # the library's message speaks to Python callers ("pass api_key=")
        print(f"playment-torch: error: {_one_line(message)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("playment-torch: interrupted", file=sys.stderr)
        return 130
    return 0


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _show_warning(message: Warning | str, *_: Any, **__: Any) -> None:
    print(f"playment-torch: warning: {_one_line(str(message))}", file=sys.stderr)


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.quiet else None


def _dataset(args: argparse.Namespace, **options: Any) -> Any:
    from playment_torch.client import API_KEY_ENV, DEFAULT_BASE_URL, PlaymentClient
    from playment_torch.dataset import PlaymentSegmentationDataset

    refresh = options.pop("refresh", "if_missing")
    client = None
    if refresh != "never":
        if not os.environ.get(API_KEY_ENV, "").strip():
            raise ConfigError(_NO_KEY)
        client = PlaymentClient(base_url=args.base_url or DEFAULT_BASE_URL)
    options.setdefault("point_fields", tuple(name.strip() for name in args.point_fields.split(",") if name.strip()))
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
        pictures=None if args.no_pictures else args.pictures,
    )


def _prefetch(args: argparse.Namespace) -> None:
    with warnings.catch_warnings():
        # Jobs left out and frames that fail are summarised below, one line per job: no warning per item.
        warnings.simplefilter("ignore", RuntimeWarning)
        dataset = _dataset(args, on_error="skip")
        report = dataset.prefetch(num_threads=args.threads, progress=not args.quiet, processes=args.processes)
    print(f"project {args.project}: {len(dataset.index.jobs)} jobs, {report}")
    problems = _job_problems(args, dataset, report)
    for line in problems:
        print(f"  {line}")
    if args.snapshot and not problems:
        # Pinned only when everything asked for is cached: a snapshot promises its frames load offline.
        print(f"wrote {args.snapshot}: {dataset.snapshot(args.snapshot).summary()}")
    elif args.snapshot:
        print(f"no snapshot written to {args.snapshot}: not every frame asked for is cached")
    if problems:
        raise PlaymentError(f"{len(problems)} of the jobs asked for could not be prefetched completely (listed above)")


def _job_problems(args: argparse.Namespace, dataset: Any, report: Any) -> list[str]:
    """One line per job that was asked for and is not all in the cache now (one line in all for a dead host)."""
    if report.unreachable_hosts:
        hosts = ", ".join(report.unreachable_hosts)
        jobs = len(report.failures_by_job())
        return [
            f"failed: {len(report.failures)} frames of {jobs} jobs: {hosts} stopped answering (connections "
            "refused, reset or timing out); rerun when it is back: what is cached stays"
        ]
    lines = [f"failed: job {job_id}: {_one_line(reason)}" for job_id, reason in sorted(dataset.failed_jobs.items())]
    named = set(args.job or ())
    for job_id, status in sorted(dataset.pending_jobs.items()):
        if job_id in named:  # a batch in progress has pending jobs; a job named on the command line must be done
            lines.append(f"failed: job {job_id}: it is {status!r}, not completed, so it has no result yet")
    import numpy as np

    index = dataset.index
    per_job = np.bincount(index.frame_job, minlength=len(index.jobs))
    totals = {job.job_id: int(per_job[n]) for n, job in enumerate(index.jobs)}
    for job_id, frames in report.failures_by_job().items():
        reasons = sorted({reason for _, reason in frames})
        ids = ", ".join(frame_id for frame_id, _ in frames[:10]) + (" ..." if len(frames) > 10 else "")
        more = f" (and {len(reasons) - 1} other reasons)" if len(reasons) > 1 else ""
        lines.append(
            f"failed: job {job_id}: {len(frames)} of {totals.get(job_id, len(frames))} frames (frame {ids}): "
            f"{_one_line(reasons[0])}{more}"
        )
    return lines


def _inspect(args: argparse.Namespace) -> None:
    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # offline: what is missing is listed below, per job
        dataset = _dataset(args, refresh="never", offline_subset=True) if args.offline else _dataset(args)
    missing = _offline_lines(dataset) if args.offline else []
    classes = dataset.classes
    points_per_class = np.zeros(len(classes), dtype=np.int64)
    frames_per_class = np.zeros(len(classes), dtype=np.int64)
    frames_per_job: dict[str, int] = {}
    sizes = []
    unlabeled = 0
    nonfinite: dict[str, int] = {}  # "job J, frame F" -> points with NaN or infinite coordinates
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
        bad = int((~np.isfinite(sample.points[:, :3].numpy())).any(axis=1).sum())
        if bad:
            nonfinite[f"job {job}, frame {dataset.index.frame_ids[i]}"] = bad
    total = int(sum(sizes))
    summary = {
        "project": args.project,
        "jobs": len(np.unique(dataset.index.frame_job)),  # jobs with frames here (offline: cached ones)
        "frames": len(dataset),
        "classes": [
            {"name": name, "points": int(points_per_class[i]), "frames": int(frames_per_class[i])}
            for i, name in enumerate(classes)
        ],
        "frames_per_job": frames_per_job,
        "points_per_frame": {
            "min": min(sizes, default=0),
            "median": _number(statistics.median(sizes)) if sizes else 0,
            "max": max(sizes, default=0),
        },
        "points": total,
        "unlabeled_share": unlabeled / total if total else 0.0,
        "nonfinite_points": nonfinite,
    }
    if args.offline and dataset.offline_report is not None:
        summary["cache"] = [
            {"job": job.job_id, "frames": job.frames, "cached": job.cached, "missing": job.missing}
            for job in dataset.offline_report.jobs
        ]
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_inspection(args, summary, classes, nonfinite, missing)
    if missing:
        raise PlaymentError(f"{len(missing)} jobs have frames that are not cached (listed above)")


def _offline_lines(dataset: Any) -> list[str]:
    """``inspect --offline``: one line per job whose frames the cache does not all hold."""
    report = dataset.offline_report
    if report is None:
        return []
    return [f"job {job.job_id}: {job.missing} of {job.frames} frames not cached" for job in report.jobs if job.missing]


def _print_inspection(
    args: argparse.Namespace,
    summary: dict[str, Any],
    classes: Sequence[str],
    nonfinite: dict[str, int],
    missing: list[str],
) -> None:
    total = summary["points"]
    frames_per_job = summary["frames_per_job"]
    if args.offline and summary.get("cache") is not None:
        cached = sum(job["cached"] for job in summary["cache"])
        frames = sum(job["frames"] for job in summary["cache"])
        print(f"cache: {cached} of {frames} frames cached" + (":" if missing else " (all)"))
        for line in missing:
            print(f"  {line}")
    print(f"project {args.project}: {summary['jobs']} jobs, {summary['frames']} frames, {total} points")
    print(f"{'class':<24}{'points':>12}{'share':>9}{'frames':>8}")
    for entry in summary["classes"]:
        share = entry["points"] / total if total else 0.0
        print(f"{entry['name']:<24}{entry['points']:>12}{share:>9.1%}{entry['frames']:>8}")
    sizes_summary = summary["points_per_frame"]
    print(f"points per frame: min {sizes_summary['min']}, median {sizes_summary['median']}, max {sizes_summary['max']}")
    print(f"unlabeled points: {summary['unlabeled_share']:.1%}")
    if nonfinite:
        shown = ", ".join(f"{where} ({count})" for where, count in list(nonfinite.items())[:10])
        more = " ..." if len(nonfinite) > 10 else ""
        total_bad = sum(nonfinite.values())
        print(f"non-finite points (NaN/inf coordinates, kept): {total_bad} in {len(nonfinite)} frames: {shown}{more}")
    print("frames per job: " + ", ".join(f"{job} {n}" for job, n in sorted(frames_per_job.items())))


def _number(value: float) -> float | int:
    """A median of counts as the count it is (``30000``, not ``30000.0``), keeping a true half."""
    return int(value) if float(value).is_integer() else value


def _evaluate(args: argparse.Namespace) -> None:
    from playment_torch.evaluation import run_evaluate_command

    run_evaluate_command(args, lambda **options: _dataset(args, **options))


def _existing_cache(args: argparse.Namespace) -> ArrayCache:
    """The cache to look at; one that does not exist is not created just to be looked at."""
    directory = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if not directory.is_dir():
        raise PlaymentError(f"no cache at {directory}")
    return ArrayCache(directory)


def _verify(args: argparse.Namespace) -> None:
    """Check every entry. A damaged database is moved aside by the cache; say so, name where, and exit 1."""
    cache = _existing_cache(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the cache's damage warning: reported below instead
        report = cache.verify(repair=args.repair)
    cache.close()
    for moved in report.moved_aside:
        where = f"moved to {moved.destination}" if moved.destination else "deleted (it could not be moved)"
        print(f"cache {cache.directory}: damaged database {moved.database} ({_one_line(moved.reason)}) {where}")
    summary = f"cache {cache.directory}: "
    if report.moved_aside:
        # Never "0 bad" about a cache whose entries were just thrown away with its database.
        count = len(report.moved_aside)
        summary += f"{count} damaged database{'s' * (count > 1)} replaced by an empty one, "
        summary += f"{report.checked} remaining entries checked" + (f", {len(report.bad)} bad" if report.bad else "")
    else:
        summary += f"{report.checked} entries checked, {len(report.bad)} bad"
    if report.outdated:
        summary += f", {report.outdated} outdated (written by an older version; fetched again when needed)"
    print(summary)
    for key in report.bad:
        print(f"  bad: {key}")
    if report.bad and args.repair:
        print(f"dropped {report.repaired} bad entries; they will be fetched again when needed")
    if report.moved_aside:
        kept = [str(moved.destination) for moved in report.moved_aside if moved.destination]
        where = f"; the old contents are in {', '.join(kept)} (delete with: rm -r {' '.join(kept)})" if kept else ""
        raise _CacheDamaged(f"the cache database was damaged: its entries will be fetched again when needed{where}")
    if report.bad and not args.repair:
        raise _CacheDamaged(f"{len(report.bad)} bad cache entries; run with --repair to drop them")


class _CacheDamaged(PlaymentError):
    """``verify`` found bad entries and was not asked to repair them, or found the database damaged."""


def _cache(args: argparse.Namespace) -> None:
    """``cache info``: totals and one line per project. ``cache clear``: everything, a project, or old ones."""
    cache = _existing_cache(args)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a damaged database: reported below instead
            _cache_action(cache, args)
    finally:
        cache.close()
        for moved in cache.moved_aside:
            where = f"moved to {moved.destination}" if moved.destination else "deleted (it could not be moved)"
            print(
                f"playment-torch: warning: damaged cache database {moved.database} ({_one_line(moved.reason)}) {where}",
                file=sys.stderr,
            )


def _cache_action(cache: ArrayCache, args: argparse.Namespace) -> None:
    """Run ``cache info`` or ``cache clear`` on an open cache."""
    if args.action == "info":
        print(f"cache {cache.directory}: {len(cache)} entries, {cache.volume() / 2**20:.1f} MiB")
        usage = cache.projects()
        names = [item.project_id if item.project_id is not None else "(other keys)" for item in usage]
        width = max([len("project"), *map(len, names)]) + 2
        if usage:
            print(f"{'project':<{width}}{'frames':>7}{'entries':>9}{'MiB':>10}  last used (UTC)")
        for name, item in zip(names, usage, strict=True):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(item.last_used))
            print(f"{name:<{width}}{item.frames:>7}{item.entries:>9}{item.bytes / 2**20:>10.1f}  {when}")
        return
    selective = args.project is not None or args.older_than is not None
    keys = cache.matching_keys(project_id=args.project, older_than=args.older_than) if selective else None
    count = len(keys) if keys is not None else len(cache)
    what = f"{count} entries"
    if args.project is not None:
        what += f" of project {args.project}"
    if args.older_than is not None:
        what += f" of projects unused for {args.older_than / 86400:g} days"
    if not count:
        print(f"cache {cache.directory}: nothing to remove ({what})")
        return
    # Ask only a person at a terminal; scripts and CI (stdin not a terminal) are never blocked on a prompt.
    if not args.yes and sys.stdin.isatty():
        answer = input(f"remove {what} from {cache.directory}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise PlaymentError("cancelled; nothing removed")
    removed = cache.delete_many(keys) if keys is not None else cache.clear()
    print(f"cache {cache.directory}: removed {removed} entries")


def _serve(args: argparse.Namespace) -> None:
    from playment_torch.testing.server import FakePlaymentServer
    from playment_torch.testing.synthetic import add_synthetic_project

    # The same seed gives the same project id, key and (through the synthetic scenes) batch and job ids, so a
    # script or a CI job can hard-code them; the fake key guards nothing real, printing it is the point.
    seeded = uuid.UUID(bytes=hashlib.sha256(f"playment-torch serve {args.seed}".encode()).digest()[:16], version=4)
    api_key = args.api_key or f"fake-key-{args.seed}"
    server = FakePlaymentServer(api_key=api_key, project_id=str(seeded), port=args.port)
    with server:
        jobs = add_synthetic_project(
            server,
            n_jobs=args.jobs,
            frames_per_job=args.frames,
            points_per_frame=args.points,
            seed=args.seed,
            batches=args.batches,
            encoding=args.encoding,
        )
        server.latency = args.latency
        batches: dict[str, list[str]] = {}
        for job in jobs:
            batches.setdefault(job.batch_id or server.default_batch_id, []).append(job.job_id)
        details = {
            "url": server.url,
            "project_id": server.project_id,
            "api_key": server.api_key,
            "batches": batches,
            "jobs": [job.job_id for job in jobs],
        }
        if args.json:
            print(json.dumps(details), flush=True)
        else:
            print(f"fake Playment server at {server.url} (stop it with Ctrl-C)")
            print(f"project id: {server.project_id}")
            for batch_id, job_ids in batches.items():
                print(f"batch {batch_id}: {len(job_ids)} jobs")
                for job_id in job_ids:
                    print(f"  job {job_id}")
            print("in another terminal:")
            print(f"  export {API_KEY}={server.api_key}")
            print(f"  playment-torch inspect --project {server.project_id} --base-url {server.url}", flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.1 if deadline is not None else 1.0)


def _relabel(args: argparse.Namespace) -> None:
    from playment_torch.relabel import run_cli

    run_cli(args)


def _export(args: argparse.Namespace) -> None:

    args.fields = args.point_fields  # the selection's --point-fields, as every other command names them
    export_command(args)


def _show(args: argparse.Namespace) -> None:
    from playment_torch.viz import show_command  # Pillow is an optional extra: imported only for this command

    show_command(args)


_COMMANDS = {
    "demo": _demo,
    "prefetch": _prefetch,
    "inspect": _inspect,
    "evaluate": _evaluate,
    "verify": _verify,
    "cache": _cache,
    "serve": _serve,
    "relabel": _relabel,
    "show": _show,
    "export": _export,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
