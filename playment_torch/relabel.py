"""Send frames back to Playment for labelling: one new job per frame, in a named batch, idempotent by reference.

:func:`create_jobs` (and ``playment-torch relabel``) takes frames, usually the worst frames of an evaluation,
finds each frame's ``sensor_data`` in its source job's result (its sensors with their URLs and poses, its
``ego_pose``, and the job's ``sensor_meta``) and creates, in the batch named by the caller, one job per frame
whose ``data.sensor_data`` holds that one frame.

Choices where Playment's documentation is silent:

* **Reference ids** name the source: ``<prefix>:<job_id>:<frame_id>`` (prefix ``relabel`` by default). Playment
  documents no length or character set, so the readable form is used only when the job and frame ids are made
  of ``A-Z a-z 0-9 . _ -`` and the whole id is at most 128 characters (UUID job ids and numeric frame ids
  always are); otherwise it is ``<prefix>:sha256:<40 hex digits>`` of the job and frame ids, still
  deterministic. A prefix has 1-32 characters of that same set, so a reference id never holds a ``:`` other
  than its separators and two sources never share one.
* **Idempotency is the caller's job** (Playment does not document whether it rejects a duplicate
  ``reference_id``): before creating anything, the batch of that name is looked up in the project details
  (reused if it exists: a rerun never makes a second batch of the same name; if several exist, the first
  listed is used and the jobs of all of them count) and its jobs' reference ids are listed; frames whose
  reference id is there already are skipped. Only the named batch is searched: the same frames sent to
  another batch name are new jobs there.
* **A crash or a lost answer** cannot double-create silently. A job POST is never retried once its request
  may have reached the server (see :meth:`PlaymentClient._post_json`: only connections that were never made
  and 408/429/503 answers are retried); such a failure is recorded, and after the run the batch is listed once
  more: a failed job that the listing shows is counted as created. A run killed between a POST and its answer
  leaves at most the jobs in flight uncertain, and the next run lists first, so it creates them only if the
  server never did (or if its listing does not show them yet: Playment does not document how soon it does).
* **Rate**: job creation is documented at about 20 requests per second. A token bucket (``rate`` per second,
  bursts of one, so at most ``rate + 1`` requests in any one-second window) paces every job and batch POST and
  every source-job request of this module, shared by its threads. It is local to the call, so it composes with
  any limit the client itself applies: the slower of the two wins.
* **Sources**: a frame is matched by ``frame_id`` (as a string) in ``sensor_data.frames``; an older
  single-frame result, with ``sensors`` and ``ego_pose`` directly under ``sensor_data``, is one frame named by
  ``annotation_data.frames[0]._id`` (or ``"0"``). The frame and ``sensor_meta`` are sent as the result has them
  (``data_url``, ``original_url``, poses: the URLs Playment already knows). A legacy ``{legend, url}`` result
  has no sensor data to send: its frames fail. A source job that is not completed fails its frames.
* **Failures** of one frame (its job missing, not completed, no such frame, a validation error) are recorded
  and the others go on; an authentication failure stops the run, since every request would fail alike.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playment_torch.client import PlaymentClient, _TokenBucket
from playment_torch.errors import (
    APIError,
    AuthenticationError,
    ConfigError,
    FrameError,
    PlaymentError,
    PlaymentFormatError,
)

__all__ = [
    "DEFAULT_RATE",
    "RelabelFailed",
    "RelabelOutcome",
    "RelabelReport",
    "create_jobs",
    "frame_sensor_data",
    "read_frames_csv",
    "reference_id_for",
    "run_cli",
]

logger = logging.getLogger("playment_torch")

#: Job creation requests per second: Playment documents "up to ~20 requests/second".
DEFAULT_RATE = 20.0
DEFAULT_PREFIX = "relabel"
_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")
_MAX_PREFIX = 32
_MAX_REFERENCE_ID = 128
_JOB_COLUMNS = ("job", "job_id")
_FRAME_COLUMNS = ("frame", "frame_id")

# Outcome statuses.
CREATED = "created"
SKIPPED = "skipped"
FAILED = "failed"
PLANNED = "planned"


def reference_id_for(job_id: str, frame_id: str, *, prefix: str = DEFAULT_PREFIX) -> str:
    """The reference id of the job that relabels one frame: deterministic, naming its source.

    Args:
        job_id: The source job.
        frame_id: The frame in it.
        prefix: 1-32 characters of ``A-Z a-z 0-9 . _ -``.

    Returns:
        ``<prefix>:<job_id>:<frame_id>`` when both ids are of that character set and the result is at most 128
        characters; ``<prefix>:sha256:<40 hex digits of sha256(job_id NUL frame_id)>`` otherwise.

    Raises:
        ConfigError: an empty id or a prefix outside the character set.
    """
    if not isinstance(prefix, str) or not _SAFE.match(prefix) or len(prefix) > _MAX_PREFIX:
        raise ConfigError(f"reference prefix must be 1-{_MAX_PREFIX} characters of A-Z a-z 0-9 . _ -, got {prefix!r}")
    if not job_id or not frame_id:
        raise ConfigError(f"a frame to relabel needs a job id and a frame id, got {job_id!r}, {frame_id!r}")
    readable = f"{prefix}:{job_id}:{frame_id}"
    if _SAFE.match(job_id) and _SAFE.match(frame_id) and len(readable) <= _MAX_REFERENCE_ID:
        return readable
    digest = hashlib.sha256(f"{job_id}\0{frame_id}".encode()).hexdigest()[:40]
    return f"{prefix}:sha256:{digest}"


def read_frames_csv(path: str | os.PathLike[str], *, limit: int | None = None) -> list[tuple[str, str]]:
    """Read ``(job_id, frame_id)`` pairs from a CSV with a header row, in file order.

    The job column is ``job`` or ``job_id``, the frame column ``frame`` or ``frame_id`` (case and surrounding
    spaces ignored); other columns (metrics) are ignored. Blank lines are skipped.

    Args:
        path: The CSV file, e.g. the per-frame metrics of an evaluation sorted worst first.
        limit: Keep only the first ``limit`` rows.

    Returns:
        The pairs, as strings.

    Raises:
        ConfigError: the file cannot be read, or ``limit`` is negative.
        PlaymentFormatError: no header with a job and a frame column, or a row with an empty job or frame
            (the message names the file and line).
    """
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must not be negative, got {limit}")
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise PlaymentFormatError(f"{path}: empty file, expected a header with 'job' and 'frame' columns")
            names = [cell.strip().lower() for cell in header]
            job_column = next((names.index(n) for n in _JOB_COLUMNS if n in names), None)
            frame_column = next((names.index(n) for n in _FRAME_COLUMNS if n in names), None)
            if job_column is None or frame_column is None:
                raise PlaymentFormatError(
                    f"{path}: line 1: the header needs a 'job' (or 'job_id') and a 'frame' (or 'frame_id') column, "
                    f"got {header!r}"
                )
            pairs: list[tuple[str, str]] = []
            for row in reader:
                if limit is not None and len(pairs) >= limit:
                    break
                if not any(cell.strip() for cell in row):
                    continue
                cells = [*row, "", ""]
                job_id, frame_id = cells[job_column].strip(), cells[frame_column].strip()
                if not job_id or not frame_id:
                    raise PlaymentFormatError(f"{path}: line {reader.line_num}: empty job or frame")
                pairs.append((job_id, frame_id))
    except OSError as exc:
        raise ConfigError(f"cannot read the frames file {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PlaymentFormatError(f"{path}: not a UTF-8 CSV file: {exc}") from exc
    return pairs


@dataclass(frozen=True)
class RelabelOutcome:
    """What happened to one frame.

    Attributes:
        reference_id: The reference id of its relabelling job.
        source_job_id: The job the frame comes from.
        source_frame_id: The frame.
        status: ``"created"``, ``"skipped"`` (its job exists already), ``"failed"``, or ``"planned"`` (a dry
            run would create it).
        job_id: The relabelling job (created now, or found by a skip); "" otherwise.
        reason: Why it was skipped or failed (one line).
    """

    reference_id: str
    source_job_id: str
    source_frame_id: str
    status: str
    job_id: str = ""
    reason: str = ""

    def describe(self) -> str:
        """One line for people: the status, the reference id, the job made or found, and any reason.

        The source job and frame are added when the reference id is hashed, since it does not name them.
        """
        verb = {PLANNED: "would create", CREATED: "created", SKIPPED: "skipped", FAILED: "failed"}[self.status]
        line = f"{verb} {self.reference_id}"
        if not self.reference_id.endswith(f":{self.source_job_id}:{self.source_frame_id}"):
            line += f" (job {self.source_job_id}, frame {self.source_frame_id})"  # a hashed id does not say
        if self.job_id:
            line += f" -> job {self.job_id}"
        if self.reason:
            line += f": {self.reason}"
        return line


@dataclass(frozen=True)
class RelabelReport:
    """The result of :func:`create_jobs`.

    Attributes:
        project_id: The project.
        batch_name: The batch's name.
        batch_id: The batch ("" in a dry run that would create it).
        batch_created: Whether this run created the batch (or, in a dry run, would).
        dry_run: Whether nothing was created on purpose.
        outcomes: One per input frame, in input order.
    """

    project_id: str
    batch_name: str
    batch_id: str
    batch_created: bool
    dry_run: bool
    outcomes: tuple[RelabelOutcome, ...]

    def _count(self, status: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)

    @property
    def created(self) -> int:
        """Jobs created by this run."""
        return self._count(CREATED)

    @property
    def skipped(self) -> int:
        """Frames whose job existed already (or that were listed twice)."""
        return self._count(SKIPPED)

    @property
    def failed(self) -> int:
        """Frames whose job could not be created (or, in a dry run, whose source could not be read)."""
        return self._count(FAILED)

    @property
    def planned(self) -> int:
        """Jobs a dry run would create."""
        return self._count(PLANNED)

    @property
    def ok(self) -> bool:
        """Whether no frame failed."""
        return self.failed == 0

    def batch_line(self) -> str:
        """One line about the batch."""
        if self.dry_run and self.batch_created:
            return f"would create batch {self.batch_name!r} in project {self.project_id}"
        if not self.batch_id:
            return f"no batch {self.batch_name!r} in project {self.project_id} (nothing to create)"
        verb = "created" if self.batch_created else "using existing"
        return f"{verb} batch {self.batch_name!r} ({self.batch_id}) in project {self.project_id}"

    def summary(self) -> str:
        """The one-line summary the CLI prints last."""
        if self.dry_run:
            return f"dry run: {self.planned} to create, {self.skipped} skipped, {self.failed} failed (nothing created)"
        return f"relabel: {self.created} created, {self.skipped} skipped, {self.failed} failed"

    def __str__(self) -> str:
        return "\n".join([self.batch_line(), *(o.describe() for o in self.outcomes), self.summary()])


def _pacer(rate: float) -> _TokenBucket:
    """The client's token bucket with bursts of one at ``rate``: at most ``rate + 1`` POSTs in any second."""
    return _TokenBucket(rate, burst=1, refill=rate)


@dataclass(frozen=True)
class _Item:
    reference_id: str
    job_id: str
    frame_id: str


def create_jobs(
    project_id: str,
    frames: str | os.PathLike[str] | Iterable[Any],
    *,
    work_flow_id: str,
    batch_name: str,
    client: PlaymentClient | None = None,
    description: str = "",
    reference_prefix: str = DEFAULT_PREFIX,
    limit: int | None = None,
    dry_run: bool = False,
    rate: float = DEFAULT_RATE,
    num_threads: int = 4,
) -> RelabelReport:
    """Create one Playment job per frame, in the batch ``batch_name``, skipping frames sent there before.

    See the module docstring for reference ids, idempotency, what a lost answer does, and the rate limit.

    Args:
        project_id: The project both the source jobs and the new jobs belong to.
        frames: A CSV path (see :func:`read_frames_csv`), or ``(job_id, frame_id)`` pairs, or objects with
            ``job_id`` and ``frame_id`` attributes (such as :class:`~playment_torch.models.FrameRef`), in the
            order to create them.
        work_flow_id: The workflow of the new jobs.
        batch_name: The batch to create them in; created if the project has none of that name.
        client: The API client; by default one configured from ``PLAYMENT_API_KEY``.
        description: The description of a batch this call creates.
        reference_prefix: The first part of every reference id.
        limit: Only the first ``limit`` frames.
        dry_run: Read everything, create nothing; the report says what would be created.
        rate: Requests per second this call makes at most (job POSTs, the batch POST, source-job requests).
        num_threads: Requests in flight at once (still paced by ``rate``).

    Returns:
        The report: the batch, and one outcome per frame in input order.

    Raises:
        ConfigError: an empty ``work_flow_id`` or ``batch_name``, a bad prefix, rate, thread count or limit,
            or an unreadable frames file.
        PlaymentFormatError: a malformed frames CSV.
        AuthenticationError: the key was refused (nothing can be created).
        APIError: the project or the batch listing could not be read, or the batch could not be created
            (without them, skipping what exists cannot be guaranteed).
    """
    for name, value in (("work_flow_id", work_flow_id), ("batch_name", batch_name), ("project_id", project_id)):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
    if not rate > 0:
        raise ConfigError(f"rate must be positive, got {rate}")
    if num_threads < 1:
        raise ConfigError(f"num_threads must be at least 1, got {num_threads}")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must not be negative, got {limit}")
    pairs = _frame_pairs(frames, limit)
    options: dict[str, Any] = {
        "project_id": project_id,
        "pairs": pairs,
        "work_flow_id": work_flow_id,
        "batch_name": batch_name,
        "description": description,
        "reference_prefix": reference_prefix,
        "dry_run": dry_run,
        "bucket": _pacer(rate),
        "num_threads": num_threads,
    }
    if client is not None:
        return _create_jobs(client, **options)
    with PlaymentClient() as own:  # closed afterwards: it is this call's own
        return _create_jobs(own, **options)


def _create_jobs(
    client: PlaymentClient,
    *,
    project_id: str,
    pairs: list[tuple[str, str]],
    work_flow_id: str,
    batch_name: str,
    description: str,
    reference_prefix: str,
    dry_run: bool,
    bucket: _TokenBucket,
    num_threads: int,
) -> RelabelReport:
    outcomes: dict[int, RelabelOutcome] = {}
    items: list[tuple[int, _Item]] = []
    first_seen: dict[str, int] = {}
    for position, (job_id, frame_id) in enumerate(pairs):
        item = _Item(reference_id_for(job_id, frame_id, prefix=reference_prefix), job_id, frame_id)
        if item.reference_id in first_seen:
            reason = f"listed twice (first on row {first_seen[item.reference_id] + 1})"
            outcomes[position] = _outcome(item, SKIPPED, reason=reason)
            continue
        first_seen[item.reference_id] = position
        items.append((position, item))

    # What exists already: the batch of that name and the reference ids of its jobs.
    project = client.get_project(project_id)
    batches = [batch for batch in project.batches if batch.name == batch_name]
    batch_id = batches[0].id if batches else ""
    existing = _existing_references(client, project_id, [batch.id for batch in batches])
    todo: list[tuple[int, _Item]] = []
    for position, item in items:
        found = existing.get(item.reference_id)
        if found is not None:
            outcomes[position] = _outcome(item, SKIPPED, job_id=found, reason=f"already in batch {batch_name!r}")
        else:
            todo.append((position, item))

    # The frames to send, from their source jobs' results (each result read once).
    sources = _source_frames(client, project_id, [item for _, item in todo], bucket, num_threads)
    ready: list[tuple[int, _Item, dict[str, Any]]] = []
    for position, item in todo:
        found_frame = sources[(item.job_id, item.frame_id)]
        if isinstance(found_frame, PlaymentError):
            outcomes[position] = _outcome(item, FAILED, reason=_one_line(str(found_frame)))
        else:
            ready.append((position, item, found_frame))

    batch_created = not batch_id and bool(ready)
    if dry_run:
        for position, item, _ in ready:
            outcomes[position] = _outcome(item, PLANNED)
        return _report(project_id, batch_name, batch_id, batch_created, True, outcomes)

    if batch_created:
        batch_id = _create_batch(client, project_id, batch_name, description, bucket)

    created = _post_jobs(client, project_id, batch_id, work_flow_id, ready, bucket, num_threads)
    outcomes.update(created)
    lost = [position for position, _, _ in ready if outcomes[position].status == FAILED]
    if lost:
        # An answer lost after the request left may hide a job that exists: the listing is the truth.
        try:
            listed = _existing_references(client, project_id, [batch_id])
        except PlaymentError as exc:
            # The report of what was created matters more; a rerun lists again before creating anything.
            logger.warning("could not list batch %s to check failed jobs: %s", batch_id, _one_line(str(exc)))
            listed = {}
        for position in lost:
            outcome = outcomes[position]
            if outcome.reference_id in listed:
                outcomes[position] = RelabelOutcome(
                    outcome.reference_id,
                    outcome.source_job_id,
                    outcome.source_frame_id,
                    CREATED,
                    job_id=listed[outcome.reference_id],
                    reason="its answer was lost, but the batch lists the job",
                )
    return _report(project_id, batch_name, batch_id, batch_created, False, outcomes)


def _frame_pairs(frames: str | os.PathLike[str] | Iterable[Any], limit: int | None) -> list[tuple[str, str]]:
    if isinstance(frames, (str, os.PathLike)):
        return read_frames_csv(frames, limit=limit)
    pairs: list[tuple[str, str]] = []
    for entry in frames:
        if limit is not None and len(pairs) >= limit:
            break
        if hasattr(entry, "job_id") and hasattr(entry, "frame_id"):
            pairs.append((str(entry.job_id), str(entry.frame_id)))
        elif isinstance(entry, (tuple, list)) and len(entry) == 2:
            pairs.append((str(entry[0]), str(entry[1])))
        else:
            raise ConfigError(f"a frame to relabel is a (job_id, frame_id) pair or has those attributes, got {entry!r}")
    return pairs


def _outcome(item: _Item, status: str, *, job_id: str = "", reason: str = "") -> RelabelOutcome:
    return RelabelOutcome(item.reference_id, item.job_id, item.frame_id, status, job_id=job_id, reason=reason)


def _report(
    project_id: str,
    batch_name: str,
    batch_id: str,
    batch_created: bool,
    dry_run: bool,
    outcomes: Mapping[int, RelabelOutcome],
) -> RelabelReport:
    ordered = tuple(outcomes[position] for position in sorted(outcomes))
    return RelabelReport(project_id, batch_name, batch_id, batch_created, dry_run, ordered)


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _existing_references(client: PlaymentClient, project_id: str, batch_ids: Iterable[str]) -> dict[str, str]:
    """reference id -> job id of every job in the batches (the first job, if a reference repeats)."""
    references: dict[str, str] = {}
    for batch_id in batch_ids:
        for summary in client.iter_batch_jobs(project_id, batch_id):
            if summary.reference_id:
                references.setdefault(summary.reference_id, summary.job_id)
    return references


def _source_frames(
    client: PlaymentClient, project_id: str, items: list[_Item], bucket: _TokenBucket, num_threads: int
) -> dict[tuple[str, str], dict[str, Any] | PlaymentError]:
    """(job, frame) -> the ``sensor_data`` to post for it, or the error that prevents it."""
    wanted: dict[str, list[str]] = {}
    for item in items:
        wanted.setdefault(item.job_id, []).append(item.frame_id)

    def fetch(job_id: str) -> dict[tuple[str, str], dict[str, Any] | PlaymentError]:
        found: dict[tuple[str, str], dict[str, Any] | PlaymentError] = {}
        try:
            bucket.acquire()
            job = client.get_job(project_id, job_id)
            result = client.get_result_json(job)
        except AuthenticationError:
            raise
        except PlaymentError as exc:
            return {(job_id, frame_id): exc for frame_id in wanted[job_id]}
        for frame_id in wanted[job_id]:
            try:
                found[(job_id, frame_id)] = frame_sensor_data(result, job_id=job_id, frame_id=frame_id)
            except PlaymentError as exc:
                found[(job_id, frame_id)] = exc
        return found

    merged: dict[tuple[str, str], dict[str, Any] | PlaymentError] = {}
    with ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="relabel-source") as pool:
        for found in pool.map(fetch, list(wanted)):
            merged.update(found)
    return merged


def frame_sensor_data(result: Any, *, job_id: str, frame_id: str) -> dict[str, Any]:
    """The ``sensor_data`` of a job that relabels one frame of a result: that frame and the result's sensors.

    Args:
        result: A job's decoded result JSON.
        job_id: The job (for messages).
        frame_id: The frame, matched as a string against ``frame_id``.

    Returns:
        ``{"frames": [<the frame, as the result has it>], "sensor_meta": [<the result's sensor_meta>]}``, a
        deep copy.

    Raises:
        PlaymentFormatError: the result has no (usable) ``sensor_data``, e.g. a legacy ``{legend, url}`` result.
        FrameError: the result has no such frame.
    """
    sensor_data = result.get("sensor_data") if isinstance(result, dict) else None
    if not isinstance(sensor_data, dict):
        raise PlaymentFormatError(
            f"job {job_id}: the result has no sensor_data (a legacy-format result names no sensor files to send)"
        )
    metas = sensor_data.get("sensor_meta")
    if not isinstance(metas, list):
        raise PlaymentFormatError(f"job {job_id}: sensor_data.sensor_meta is not an array")
    frames = sensor_data.get("frames")
    if isinstance(frames, list):
        candidates = [f for f in frames if isinstance(f, dict)]
        ids = [str(f.get("frame_id", "")) for f in candidates]
    elif isinstance(sensor_data.get("sensors"), list):
        # Older single-frame layout: the frame's fields sit directly under sensor_data.
        annotation_frames = (result.get("annotation_data") or {}).get("frames") or []
        first = annotation_frames[0] if annotation_frames and isinstance(annotation_frames[0], dict) else {}
        single_id = str(sensor_data.get("frame_id", first.get("_id", "0")))
        frame = {key: value for key, value in sensor_data.items() if key not in ("frames", "sensor_meta")}
        candidates, ids = [{"frame_id": single_id, **frame}], [single_id]
    else:
        raise PlaymentFormatError(f"job {job_id}: sensor_data has neither frames nor sensors")
    matches = [frame for frame, fid in zip(candidates, ids, strict=True) if fid == frame_id]
    if not matches:
        listed = ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "")
        raise FrameError(f"no such frame in the result (frames: {listed})", job_id=job_id, frame_id=frame_id)
    if len(matches) > 1:
        raise PlaymentFormatError(f"job {job_id}: frame {frame_id!r} appears {len(matches)} times in sensor_data")
    return {"frames": [copy.deepcopy(matches[0])], "sensor_meta": copy.deepcopy(metas)}


def _create_batch(client: PlaymentClient, project_id: str, name: str, description: str, bucket: _TokenBucket) -> str:
    bucket.acquire()
    try:
        return client.create_batch(project_id, name, description)
    except AuthenticationError:
        raise
    except APIError as exc:
        # The batch may exist although its answer was lost: a second one of the same name would split the jobs.
        bucket.acquire()
        again = [batch for batch in client.get_project(project_id).batches if batch.name == name]
        if again:
            logger.warning("creating batch %r failed (%s), but the project lists it: using it", name, exc)
            return again[0].id
        raise


def _post_jobs(
    client: PlaymentClient,
    project_id: str,
    batch_id: str,
    work_flow_id: str,
    ready: list[tuple[int, _Item, dict[str, Any]]],
    bucket: _TokenBucket,
    num_threads: int,
) -> dict[int, RelabelOutcome]:
    refused = threading.Event()

    def post(entry: tuple[int, _Item, dict[str, Any]]) -> tuple[int, RelabelOutcome]:
        position, item, sensor_data = entry
        if refused.is_set():
            return position, _outcome(item, FAILED, reason="not attempted: the API key was refused")
        bucket.acquire()
        try:
            job = client.create_job(
                project_id,
                reference_id=item.reference_id,
                work_flow_id=work_flow_id,
                batch_id=batch_id,
                sensor_data=sensor_data,
            )
        except AuthenticationError:
            refused.set()
            raise
        except PlaymentError as exc:
            logger.warning("%s", _one_line(str(exc)))
            return position, _outcome(item, FAILED, reason=_one_line(str(exc)))
        return position, _outcome(item, CREATED, job_id=job.job_id)

    with ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="relabel-post") as pool:
        return dict(pool.map(post, ready))


def run_cli(args: argparse.Namespace) -> None:
    """``playment-torch relabel``: create the jobs, print one line per frame and a summary.

    Args:
        args: The parsed command line (``project``, ``frames``, ``work_flow_id``, ``batch_name``,
            ``description``, ``reference_prefix``, ``limit``, ``dry_run``, ``base_url``, ``rate``, ``threads``).

    Raises:
        PlaymentError: anything :func:`create_jobs` raises, or, after printing the report, a
            :class:`RelabelFailed` when a frame failed (exit code 1).
    """
    from playment_torch.client import DEFAULT_BASE_URL

    client = PlaymentClient(base_url=args.base_url or DEFAULT_BASE_URL)
    with client:
        report = create_jobs(
            args.project,
            args.frames,
            work_flow_id=args.work_flow_id,
            batch_name=args.batch_name,
            client=client,
            description=args.description,
            reference_prefix=args.reference_prefix,
            limit=args.limit,
            dry_run=args.dry_run,
            rate=args.rate,
            num_threads=args.threads,
        )
    print(report, flush=True)
    if not report.ok:
        raise RelabelFailed(
            f"{report.failed} of {len(report.outcomes)} frames failed (listed above); rerun to retry them"
        )


class RelabelFailed(PlaymentError):
    """Some frames could not be sent for labelling (the report lists them); rerunning retries only those."""
