"""The catalog: project and batch ids -> job listing -> job results -> the compact frame index.

Everything here is torch-free and talks to the network only through :class:`~playment_torch.client.PlaymentClient`
and to the disk only through :class:`~playment_torch.cache.ArrayCache`.

What is cached, and why (one record per key, each written whole):

* listings (project details, batch pages) and jobs: the API's JSON exactly as it answered, with the time it was
  fetched: ``{"fetched_at": t, "payload": ...}``;
* results: the result file's bytes as downloaded (never re-serialised), plus a small digest record
  ``{"fetched_at": t, "digest": ..., "bytes": n}`` so that a warm start does not read megabytes per job;
* the index itself (:meth:`FrameIndex.to_bytes`), keyed by the index format and every ``(job, digest)``. The
  class map is applied after reading it (:meth:`FrameIndex.apply_classes`), so one cached index serves every
  choice of ``classes`` and ``ignore_index``.

The refresh policy is chosen once, as a :class:`Refresh` value whose methods say which cached record may be
reused. Concurrent constructions on one cache (DataLoader workers, DDP ranks on a node) share the work: every
network fetch happens under a per-key lock, and a record fetched *after this construction started* (by another
process that held the lock meanwhile) is as fresh as a fetch of our own, so it is reused under every policy. So
with two ranks constructing at once, each batch page is listed once, each job asked once, each result downloaded
once, and the index built once.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import socket
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from playment_torch._columns import JobColumns, Unusual, columns_of, read_columns
from playment_torch.cache import ArrayCache, cache_key
from playment_torch.client import PlaymentClient
from playment_torch.errors import (
    CacheError,
    ConfigError,
    JobNotCompletedError,
    PlaymentError,
    PlaymentFormatError,
    redact_url,
)
from playment_torch.index import INDEX_FORMAT, FrameIndex, IndexBuilder
from playment_torch.models import BatchPage, Job, JobResult, Project

__all__ = [
    "SNAPSHOT_FORMAT",
    "Catalog",
    "FrameCacheReport",
    "JobCacheCount",
    "Refresh",
    "ResolvedJob",
    "Snapshot",
    "cache_report",
    "read_snapshot",
    "write_snapshot",
]

logger = logging.getLogger("playment_torch")

#: Version of the snapshot lock file.
SNAPSHOT_FORMAT = 1
_SNAPSHOT_KIND = "playment-torch-snapshot"
# Record kinds carry a version: a change of layout reads as a miss, never as a wrong value.
_PROJECT = "catalog-project@1"
_BATCH = "catalog-batch@1"
_JOB = "catalog-job@1"
_RESULT = "catalog-result@1"
_DIGEST = "catalog-digest@1"
_INDEX = f"catalog-index@{INDEX_FORMAT}"
# How long the reachability probe of the API host may take before the host counts as unreachable.
_PROBE_SECONDS = 3.0


class Refresh(enum.Enum):
    """When a cached API answer may stand in for asking the API again.

    * ``IF_MISSING``: completed jobs and their results come from the cache (a completed job is final and a result
      URL names its content); listings and jobs not yet completed are asked again (batches gain jobs). When the
      API host does not accept connections, the whole construction falls back to the cache with one warning.
    * ``ALWAYS``: everything is asked again; files whose identity did not change are still not downloaded again.
    * ``NEVER``: only the cache; nothing touches the network.

    Under every policy, a record fetched after this construction started is reused: another process fetched it
    while this one waited on its lock.
    """

    IF_MISSING = "if_missing"
    ALWAYS = "always"
    NEVER = "never"

    @classmethod
    def parse(cls, value: str | Refresh) -> Refresh:
        """The policy named ``value``.

        Raises:
            ConfigError: no policy has that name.
        """
        if isinstance(value, Refresh):
            return value
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(repr(p.value) for p in cls)
            raise ConfigError(f"refresh must be one of {names}; got {value!r}") from None

    @property
    def online(self) -> bool:
        """Whether this policy may use the network at all."""
        return self is not Refresh.NEVER

    def reuses_listing(self, record: Any, since: float) -> bool:
        """A project or batch listing: only offline, or when fetched during this construction."""
        return self is Refresh.NEVER or _fresh(record, since)

    def reuses_job(self, record: Any, since: float) -> bool:
        """A job's details: completed jobs are final unless ``ALWAYS``."""
        if self is Refresh.NEVER or _fresh(record, since):
            return True
        return self is Refresh.IF_MISSING and _status(record) == "completed"

    def reuses_result(self, record: Any, since: float) -> bool:
        """A result (by its URL's identity): asked again only under ``ALWAYS`` (a result rewritten in place)."""
        return self is not Refresh.ALWAYS or _fresh(record, since)


def _fresh(record: Any, since: float) -> bool:
    return isinstance(record, dict) and float(record.get("fetched_at", 0.0)) >= since


def _status(record: Any) -> str:
    payload = record.get("payload") if isinstance(record, dict) else None
    data = payload.get("data", payload) if isinstance(payload, dict) else None
    return str(data.get("status", "")) if isinstance(data, dict) else ""


@dataclass(frozen=True)
class ResolvedJob:
    """A completed job as the catalog pins it: where its result lives and what it contains.

    Attributes:
        job_id: The job.
        result_url: Its result's URL as the API gave it (may carry a signature: never logged unredacted).
        digest: The first 16 hex digits of the SHA-256 of the result file's bytes.
    """

    job_id: str
    result_url: str
    digest: str


@dataclass
class _Outcome:
    job: ResolvedJob | None = None
    pending: str = ""  # the status of a job that is not completed
    error: PlaymentError | None = None
    missing: str = ""  # what the cache lacks, under NEVER


class _NeedsNetwork(Exception):
    """Internal: the cache cannot answer and this pass may not use the network."""


Bar = Callable[[int, str, str], AbstractContextManager[Any]]


class Catalog:
    """Resolves ids into completed jobs and their compact index, through the cache and the API.

    Args:
        project_id: The project.
        cache: The disk cache shared by every process on the machine.
        client: Returns the API client (called only when the network is needed, so ``NEVER`` needs no key).
        refresh: The :class:`Refresh` policy.
        on_error: ``"raise"``, or ``"skip"`` a job that fails (with a warning).
        num_threads: Concurrent API calls and downloads.
        bar: Makes a progress bar ``(total, description, unit)``.
    """

    def __init__(
        self,
        project_id: str,
        *,
        cache: ArrayCache,
        client: Callable[[], PlaymentClient],
        refresh: Refresh = Refresh.IF_MISSING,
        on_error: str = "raise",
        num_threads: int = 16,
        bar: Bar | None = None,
    ) -> None:
        self.project_id = project_id
        self.cache = cache
        self._client = client
        self.refresh = refresh
        self.on_error = on_error
        self.num_threads = max(1, num_threads)
        self._bar: Bar = bar if bar is not None else _no_bar
        self._started = time.time()
        self._offline_reason = ""
        #: Jobs left out (``on_error="skip"``): job id -> why, without the ``job J:`` prefix.
        self.failed_jobs: dict[str, str] = {}
        #: Jobs that are not completed and so have no result yet: job id -> status.
        self.pending_jobs: dict[str, str] = {}

    # ------------------------------------------------------------------------------------------- entry points

    def open(self, job_ids: Sequence[str] | None, batch_ids: Sequence[str] | None) -> FrameIndex:
        """Resolve the ids and return the index of every completed job (classes not applied yet).

        Args:
            job_ids: Jobs to use; with ``batch_ids`` too, both are used.
            batch_ids: Batches whose jobs to use; neither given: every batch of the project.

        Returns:
            The index, in job id order then frame order.

        Raises:
            CacheError: ``NEVER`` (or the fallback when the API host is unreachable) and something is not cached;
                the message lists what.
            PlaymentError: a job failed and ``on_error="raise"``.
        """
        self._started = time.time()
        self._check_reachable()
        return self.index(self.resolve(job_ids, batch_ids))

    def resolve(self, job_ids: Sequence[str] | None, batch_ids: Sequence[str] | None) -> list[ResolvedJob]:
        """Ids -> sorted completed jobs with their result's identity and digest (see :meth:`open`)."""
        missing: list[str] = []
        wanted: set[str] = set(job_ids or ())
        if batch_ids is None and job_ids is None:
            project = self._project(missing)
            batch_ids = [batch.id for batch in project.batches] if project else []
        for batch_id in batch_ids or ():
            wanted.update(self._batch_job_ids(batch_id, missing))
        ordered = sorted(wanted)
        outcomes = self._resolve_jobs(ordered, self._job)
        missing += [o.missing for o in outcomes.values() if o.missing]
        if missing:
            shown = ", ".join(sorted(missing)[:20]) + (" ..." if len(missing) > 20 else "")
            raise CacheError(f"{self._offline_why()} but {len(missing)} items are not cached: {shown}")
        return self._collect(ordered, outcomes)

    def resolve_pinned(self, pins: Sequence[ResolvedJob], *, follow_changes: bool = False) -> list[ResolvedJob]:
        """The pinned result of each job, from the cache; from the server when it still has that version.

        Args:
            pins: Jobs with the result identity and digest a snapshot recorded.
            follow_changes: Take the server's current result of a job whose pinned version is neither cached
                nor on the server any more (with one warning listing those jobs).

        Returns:
            The jobs to index, in the pins' order.

        Raises:
            PlaymentError: some pinned results changed on the server and are not cached (the message names the
                jobs), unless ``follow_changes``; or the API failed.
        """
        self._started = time.time()
        changed: list[str] = []
        resolved: list[ResolvedJob] = []
        for pin in pins:
            record = self.cache.get_json(self._digest_key(pin.job_id, pin.result_url))
            if isinstance(record, dict) and record.get("digest") == pin.digest:
                resolved.append(pin)
                continue
            if not self.refresh.online:
                raise CacheError(f"the pinned result of job {pin.job_id} is not cached and refresh='never'")
            job = self._fetch_job(pin.job_id)
            if not job.is_completed:
                raise JobNotCompletedError(job.job_id, job.status)
            current = self._result_digest(job)
            if current.digest == pin.digest:
                resolved.append(current)
                continue
            changed.append(pin.job_id)
            resolved.append(current)
        if changed and not follow_changes:
            raise PlaymentError(
                f"the result of {len(changed)} pinned jobs changed on the server and the pinned version is not "
                f"cached: {', '.join(changed)}; pass follow_changes=True to use their current results"
            )
        if changed:
            warnings.warn(
                f"following the current result of {len(changed)} jobs changed since the snapshot: {', '.join(changed)}",
                RuntimeWarning,
                stacklevel=4,
            )
        return resolved

    def index(self, jobs: Sequence[ResolvedJob]) -> FrameIndex:
        """The index of ``jobs``: read from the cache, or built job by job (once per machine) and cached."""
        key = self.index_key(jobs)
        found = self._cached_index(key)
        if found is not None:
            return found
        with self.cache.lock(key):
            found = self._cached_index(key)  # another process built it while we waited
            if found is not None:
                return found
            builder = IndexBuilder(self.project_id)
            failed = False
            with self._bar(len(jobs), "indexing jobs", "job") as bar:
                for job in jobs:
                    try:
                        builder.add_columns(self._parse(job), job.digest, result_url=job.result_url)
                    except PlaymentError as exc:
                        if self.on_error == "raise":
                            raise
                        failed = True
                        self.failed_jobs[job.job_id] = _reason(exc, f"job {job.job_id}")
                        warnings.warn(f"skipping job {job.job_id}: {exc}", RuntimeWarning, stacklevel=4)
                    bar.update(1)
            index = builder.finish()
            del builder  # its parts: the index's size again, for a large project
            if not failed:
                # An index missing a job that failed to parse is not cached: the next run warns again.
                self.cache.put_array(key, index.to_array(), metadata=True)
            return index

    def index_key(self, jobs: Sequence[ResolvedJob]) -> str:
        """The cache key of the index of ``jobs``: their ids and digests, and the index format."""
        identity = json.dumps([[j.job_id, j.digest] for j in jobs], separators=(",", ":"))
        digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
        return cache_key(f"{_INDEX}@{digest}", project_id=self.project_id)

    # ------------------------------------------------------------------------------------------- reachability

    def _check_reachable(self) -> None:
        """Under ``IF_MISSING``, fall back to the cache when the API host does not accept connections.

        A dead server must not cost the client's retries (about 12 s of backoff, or 30 s timeouts when packets
        are dropped) before training can start from a warm cache. One TCP connection attempt decides; an HTTP
        error (auth, 5xx) is not a fallback reason and surfaces as usual.
        """
        if self.refresh is not Refresh.IF_MISSING:
            return
        client = self._client()
        parts = urllib.parse.urlsplit(client.base_url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((host, port), timeout=_PROBE_SECONDS):
                return
        except OSError as exc:
            reason = f"the API host {host}:{port} is unreachable ({type(exc).__name__})"
        warnings.warn(f"{reason}: using the cached listing and results", RuntimeWarning, stacklevel=4)
        self._offline_reason = reason
        self.refresh = Refresh.NEVER

    def _offline_why(self) -> str:
        return self._offline_reason or "refresh='never'"

    # ------------------------------------------------------------------------------------------- listings

    def _listing(self, key: str, fetch: Callable[[], Any], missing: list[str], what: str) -> Any:
        record = self.cache.get_json(key)
        if record is not None and self.refresh.reuses_listing(record, self._started):
            return record["payload"]
        if not self.refresh.online:
            missing.append(what)
            return None
        with self.cache.lock(key):
            record = self.cache.get_json(key)
            if record is not None and self.refresh.reuses_listing(record, self._started):
                return record["payload"]
            payload = fetch()
            self.cache.put_json(key, {"fetched_at": time.time(), "payload": payload})
            return payload

    def _project(self, missing: list[str]) -> Project | None:
        key = cache_key(_PROJECT, project_id=self.project_id)
        path = f"/v1/projects/{_quote(self.project_id)}/details"
        payload = self._listing(
            key, lambda: self._get_json(path, f"project {self.project_id}"), missing, "project details"
        )
        return None if payload is None else Project.from_api(payload, project_id=self.project_id)

    def _batch_job_ids(self, batch_id: str, missing: list[str]) -> list[str]:
        key = cache_key(_BATCH, project_id=self.project_id, job_id=batch_id)
        pages = self._listing(key, lambda: self._batch_pages(batch_id), missing, f"batch {batch_id}")
        ids: list[str] = []
        for page in pages or ():
            parsed = BatchPage.from_api(page, project_id=self.project_id, batch_id=batch_id)
            ids.extend(job.job_id for job in parsed.jobs)
        return ids

    def _batch_pages(self, batch_id: str) -> list[Any]:
        """Every page of a batch listing, as the API answered (the client's pagination rules)."""
        path = f"/v1/projects/{_quote(self.project_id)}/batch/{_quote(batch_id)}"
        what = f"project {self.project_id}, batch {batch_id}"
        pages: list[Any] = []
        token = ""
        seen: set[str] = set()
        while True:
            payload = self._client()._get_json(path, params={"page_token": token}, what=what)
            page = BatchPage.from_api(payload, project_id=self.project_id, batch_id=batch_id)
            pages.append(payload)
            token = page.next_page_token
            if not token or not page.jobs:
                return pages
            if token in seen:
                raise PlaymentFormatError(f"{what}: the server repeated page token {token[:32]!r}")
            seen.add(token)

    def _get_json(self, path: str, what: str) -> Any:
        # The client's raw JSON door: the payload is cached exactly as the API sent it.
        return self._client()._get_json(path, what=what)

    # ------------------------------------------------------------------------------------------- jobs

    def _resolve_jobs(self, ordered: Sequence[str], resolve: Callable[[str, bool], ResolvedJob]) -> dict[str, _Outcome]:
        outcomes: dict[str, _Outcome] = {}

        def attempt(job_id: str, network: bool = True) -> None:
            try:
                outcomes[job_id] = _Outcome(job=resolve(job_id, network))
            except _NeedsNetwork:
                pass
            except JobNotCompletedError as exc:
                outcomes[job_id] = _Outcome(pending=exc.status)
            except _Missing as exc:
                outcomes[job_id] = _Outcome(missing=str(exc))
            except PlaymentError as exc:
                outcomes[job_id] = _Outcome(error=exc)

        with self._bar(len(ordered), "resolving jobs", "job") as bar:
            # Cached jobs first, in this thread: a few small reads each, no lock, no network.
            for job_id in ordered:
                attempt(job_id, False)
                bar.update(job_id in outcomes)
            remote = [job_id for job_id in ordered if job_id not in outcomes]
            if remote:
                with ThreadPoolExecutor(self.num_threads) as pool:
                    for _ in pool.map(attempt, remote):
                        bar.update(1)
        return outcomes

    def _collect(self, ordered: Sequence[str], outcomes: dict[str, _Outcome]) -> list[ResolvedJob]:
        jobs: list[ResolvedJob] = []
        pending: list[str] = []
        for job_id in ordered:
            outcome = outcomes[job_id]
            if outcome.pending:
                pending.append(f"{job_id} ({outcome.pending})")
                self.pending_jobs[job_id] = outcome.pending
            elif outcome.error is not None:
                if self.on_error == "raise":
                    raise outcome.error
                self.failed_jobs[job_id] = _reason(outcome.error, f"job {job_id}")
                warnings.warn(f"skipping job {job_id}: {outcome.error}", RuntimeWarning, stacklevel=4)
            elif outcome.job is not None:
                jobs.append(outcome.job)
        if pending:
            shown = ", ".join(pending[:10]) + (" ..." if len(pending) > 10 else "")
            warnings.warn(
                f"{len(pending)} of {len(ordered)} jobs are not completed and are left out: {shown}",
                RuntimeWarning,
                stacklevel=4,
            )
        return jobs

    def _job(self, job_id: str, network: bool) -> ResolvedJob:
        """One job's result identity and digest, under the policy.

        Raises:
            _NeedsNetwork: ``network`` is false and the cache cannot answer.
            _Missing: the policy is offline and the cache cannot answer.
            JobNotCompletedError: the job has no result yet.
            PlaymentError: the API or the download failed.
        """
        key = cache_key(_JOB, project_id=self.project_id, job_id=job_id)
        record = self.cache.get_json(key)
        if record is not None and self.refresh.reuses_job(record, self._started):
            job = Job.from_api(record["payload"], project_id=self.project_id, job_id=job_id)
        elif not self.refresh.online:
            raise _Missing(f"job {job_id}")
        elif not network:
            raise _NeedsNetwork
        else:
            job = self._fetch_job(job_id)
        if not job.is_completed:
            raise JobNotCompletedError(job.job_id, job.status)
        if not job.result_url:
            raise JobNotCompletedError(job.job_id, "completed without result")
        record = self.cache.get_json(self._digest_key(job_id, job.result_url))
        if record is not None and self.refresh.reuses_result(record, self._started):
            return ResolvedJob(job_id, job.result_url, str(record["digest"]))
        if not self.refresh.online:
            raise _Missing(f"the result of job {job_id}")
        if not network:
            raise _NeedsNetwork
        return self._result_digest(job)

    def _fetch_job(self, job_id: str) -> Job:
        """Ask the API for a job (once per machine when several processes ask at once) and cache its JSON."""
        key = cache_key(_JOB, project_id=self.project_id, job_id=job_id)
        with self.cache.lock(key):
            record = self.cache.get_json(key)
            if record is not None and _fresh(record, self._started):
                return Job.from_api(record["payload"], project_id=self.project_id, job_id=job_id)
            path = f"/v1/projects/{_quote(self.project_id)}/jobs/{_quote(job_id)}"
            payload = self._get_json(path, f"job {job_id}")
            job = Job.from_api(payload, project_id=self.project_id, job_id=job_id)
            self.cache.put_json(key, {"fetched_at": time.time(), "payload": payload})
            return job

    def _digest_key(self, job_id: str, url: str) -> str:
        return cache_key(_DIGEST, project_id=self.project_id, job_id=job_id, url=url)

    def _result_key(self, job_id: str, url: str) -> str:
        return cache_key(_RESULT, project_id=self.project_id, job_id=job_id, url=url)

    def _result_digest(self, job: Job) -> ResolvedJob:
        """Download a job's result (once per machine), cache its bytes and digest, and return them."""
        key = self._digest_key(job.job_id, job.result_url)
        with self.cache.lock(key):
            record = self.cache.get_json(key)
            reusable = self.refresh.reuses_result(record, self._started)
            if record is not None and reusable and self._result_key(job.job_id, job.result_url) in self.cache:
                return ResolvedJob(job.job_id, job.result_url, str(record["digest"]))
            body = self._download_result(job)
            digest = _digest(body)
            self.cache.put_array(
                self._result_key(job.job_id, job.result_url), np.frombuffer(body, dtype=np.uint8), metadata=True
            )
            # The digest record last: its presence means the bytes were stored.
            self.cache.put_json(key, {"fetched_at": time.time(), "digest": digest, "bytes": len(body)})
            return ResolvedJob(job.job_id, job.result_url, digest)

    def _download_result(self, job: Job) -> bytes:
        # A result is Playment's private file: always through the attachments API. Errors name its URL.
        return self._client().download(job.result_url, private=True, in_place=True)

    # ------------------------------------------------------------------------------------------- the index

    def _cached_index(self, key: str) -> FrameIndex | None:
        data = self.cache.get_array(key, metadata=True)
        if data is None:
            return None
        try:
            return FrameIndex.from_bytes(data)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("cached index %s is unreadable (%s); building it again", key, exc)
            return None

    def _parse(self, job: ResolvedJob) -> JobColumns:
        """A resolved job's result as the index's columns, from the cached bytes (downloaded again if evicted).

        The bulk reader (:func:`~playment_torch._columns.read_columns`) handles the common shape of a result
        without a Python object per annotation; anything else takes the validating parser, whose errors name
        the JSON path of the problem.
        """
        key = self._result_key(job.job_id, job.result_url)
        data = self.cache.get_array(key, metadata=True)
        if data is None:
            if not self.refresh.online:
                raise CacheError(f"{self._offline_why()} but the result of job {job.job_id} is not cached")
            with self.cache.lock(self._digest_key(job.job_id, job.result_url)):
                data = self.cache.get_array(key, metadata=True)
                if data is None:
                    body = self._download_result(
                        Job(self.project_id, job.job_id, "completed", result_url=job.result_url)
                    )
                    if _digest(body) != job.digest:
                        raise PlaymentError(
                            f"job {job.job_id}: the result at {redact_url(job.result_url)} changed while the "
                            "dataset was being built; construct it again"
                        )
                    data = np.frombuffer(body, dtype=np.uint8)
                    self.cache.put_array(key, data, metadata=True)
        try:
            return read_columns(data, job_id=job.job_id)
        except Unusual:
            pass
        try:
            payload = json.loads(data.tobytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise PlaymentFormatError(
                f"job {job.job_id}: the result at {redact_url(job.result_url)} is not JSON: {exc}"
            ) from exc
        return columns_of(JobResult.from_api(payload, project_id=self.project_id, job_id=job.job_id))


class _Missing(Exception):
    """Internal: an offline policy and the cache lacks this (the message says what)."""


def _reason(exc: BaseException, where: str) -> str:
    """An error's message without the ``job J:`` it may start with (the caller names the job once)."""
    message = " ".join(str(exc).split())
    for prefix in (where + ": ", where + ", ", where + " "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None


def _no_bar(total: int, desc: str, unit: str) -> AbstractContextManager[Any]:
    return _NoBar()


# ----------------------------------------------------------------------------------------------- frame cache


@dataclass(frozen=True)
class JobCacheCount:
    """How many of one job's frames the cache can serve without the network.

    Attributes:
        job_id: The job.
        frames: Its frames in the dataset.
        cached: Frames whose records (points and mask) are cached.
    """

    job_id: str
    frames: int
    cached: int

    @property
    def missing(self) -> int:
        return self.frames - self.cached


@dataclass
class FrameCacheReport:
    """What the cache holds of a dataset's frames (existence checks, not reads: integrity is checked on read).

    Attributes:
        jobs: Per job counts, in the dataset's order.
        cached: One flag per frame of the index.
    """

    jobs: list[JobCacheCount] = field(default_factory=list)
    cached: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def frames(self) -> int:
        return len(self.cached)

    @property
    def missing(self) -> int:
        return int((~self.cached).sum())

    def summary(self, limit: int = 10) -> str:
        """``"48 of 80 frames are not cached: job A (16 of 16), job B (32 of 40)"``."""
        short = [j for j in self.jobs if j.missing]
        shown = ", ".join(f"job {j.job_id} ({j.missing} of {j.frames})" for j in short[:limit])
        more = f" and {len(short) - limit} more jobs" if len(short) > limit else ""
        return f"{self.missing} of {self.frames} frames are not cached: {shown}{more}"


def cache_report(index: FrameIndex, cache: ArrayCache, frame_keys: Callable[[int], Sequence[str]]) -> FrameCacheReport:
    """Check whether the cache can serve each frame without the network, every frame's records at once.

    One bulk existence check (:meth:`ArrayCache.contains_many`: a few ``IN`` queries per thousand keys) rather
    than a query per key, which took over 5 s for the 200,000 records of a 100,000-frame dataset.

    Args:
        index: The frames.
        cache: The disk cache.
        frame_keys: A frame's records (the frame store's keys): it is cached when all of them are present.

    Returns:
        Per job counts and one flag per frame.
    """
    per_frame = [frame_keys(position) for position in range(len(index))]
    counts = np.fromiter(map(len, per_frame), dtype=np.int64, count=len(per_frame))
    keys = [key for frame in per_frame for key in frame]
    present = cache.contains_many(keys)
    # A frame is cached when none of its keys is missing.
    owner = np.repeat(np.arange(len(index)), counts)
    cached = np.bincount(owner, weights=~present, minlength=len(index)) == 0
    counts_total = np.bincount(index.frame_job, minlength=len(index.jobs))
    counts_cached = np.bincount(index.frame_job[cached], minlength=len(index.jobs))
    jobs = [
        JobCacheCount(job.job_id, int(counts_total[n]), int(counts_cached[n]))
        for n, job in enumerate(index.jobs)
        if counts_total[n]
    ]
    return FrameCacheReport(jobs=jobs, cached=cached)


# ----------------------------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class Snapshot:
    """A dataset pinned: which results, which frames, which classes (see :func:`write_snapshot`).

    Attributes:
        project_id: The project.
        jobs: Each job's result identity (URL without signature) and digest.
        frames: ``(job_id, frame_id, sensor_id)`` of every item, in order.
        classes: Class name -> training index.
        ignore_index: The label of unlabeled points.
        point_fields: The columns of ``points``.
    """

    project_id: str
    jobs: tuple[ResolvedJob, ...]
    frames: tuple[tuple[str, str, str], ...]
    classes: dict[str, int]
    ignore_index: int
    point_fields: tuple[str, ...]

    def summary(self) -> str:
        """One line for the CLI: ``"snapshot of 80 frames of 2 jobs, 8 classes, project P"``."""
        classes = len({index for index in self.classes.values() if index != self.ignore_index})
        return (
            f"snapshot of {len(self.frames)} frames of {len(self.jobs)} jobs, {classes} classes, "
            f"project {self.project_id}"
        )


def write_snapshot(
    path: str | os.PathLike[str],
    index: FrameIndex,
    *,
    classes: dict[str, int],
    ignore_index: int,
    point_fields: Sequence[str],
) -> Snapshot:
    """Write a JSON lock file of ``index``'s frames, the results they come from and the label recipe.

    The file is written whole (a temporary file renamed into place).

    Args:
        path: Where to write.
        index: The frames.
        classes: Class name -> training index.
        ignore_index: The label of unlabeled points.
        point_fields: The columns of ``points``.

    Returns:
        What was written.
    """
    used = sorted(set(index.frame_job.tolist()))
    snapshot = Snapshot(
        project_id=index.project_id,
        jobs=tuple(ResolvedJob(index.jobs[n].job_id, index.jobs[n].result_url, index.jobs[n].digest) for n in used),
        frames=tuple(frames_of(index)),
        classes=dict(classes),
        ignore_index=int(ignore_index),
        point_fields=tuple(point_fields),
    )
    document = {
        "format": _SNAPSHOT_KIND,
        "version": SNAPSHOT_FORMAT,
        "project_id": snapshot.project_id,
        "jobs": [{"job_id": j.job_id, "result_url": j.result_url, "digest": j.digest} for j in snapshot.jobs],
        "classes": snapshot.classes,
        "ignore_index": snapshot.ignore_index,
        "point_fields": list(snapshot.point_fields),
        "frames": [list(f) for f in snapshot.frames],
    }
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(document, separators=(",", ":")) + "\n", encoding="utf-8")
    partial.replace(target)
    return snapshot


def read_snapshot(path: str | os.PathLike[str]) -> Snapshot:
    """Read a lock file written by :func:`write_snapshot`.

    Raises:
        ConfigError: the file cannot be read or is not a snapshot of a known version.
    """
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the snapshot {path}: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != _SNAPSHOT_KIND:
        raise ConfigError(f"{path} is not a playment-torch snapshot")
    if document.get("version") != SNAPSHOT_FORMAT:
        raise ConfigError(f"{path}: snapshot version {document.get('version')!r}, this library reads {SNAPSHOT_FORMAT}")
    try:
        return Snapshot(
            project_id=str(document["project_id"]),
            jobs=tuple(ResolvedJob(str(j["job_id"]), str(j["result_url"]), str(j["digest"])) for j in document["jobs"]),
            frames=tuple((str(a), str(b), str(c)) for a, b, c in document["frames"]),
            classes={str(k): int(v) for k, v in document["classes"].items()},
            ignore_index=int(document["ignore_index"]),
            point_fields=tuple(str(f) for f in document["point_fields"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: malformed snapshot ({type(exc).__name__}: {exc})") from exc


def frames_of(index: FrameIndex) -> Iterator[tuple[str, str, str]]:
    """``(job_id, frame_id, sensor_id)`` of every item."""
    for i in range(len(index)):
        yield index.job_of(i).job_id, index.frame_ids[i], index.sensor_ids[i]
