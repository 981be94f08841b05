"""Filling the cache with many frames at once: threads for the network, processes for the CPU. Torch-free.

A cold frame costs the client ~15-30 ms of CPU (HTTP, decoding, checksums, the cache write), most of it Python
holding the GIL, so threads alone stop scaling at about one core: on a 2-core machine 32 threads were no faster
than 8. :func:`fetch_frames` therefore splits the frames between forked worker processes (one per core by
default) that each run a pool of threads, and gathers what they did. Processes need ``fork`` (Linux) and a
process allowed to start others (not a DataLoader worker); elsewhere the frames are fetched by threads here.

Every process writes the same cache under its per-key locks, so a frame is downloaded once whatever the split;
counters (bytes, hits) go to the dataset's shared counters, which sum over processes.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import pickle
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from playment_torch._store import FrameStore
from playment_torch.errors import PlaymentError

__all__ = ["FetchOutcome", "default_processes", "fetch_frames"]

# Fewer frames than this per process and a fork costs more than it saves.
_FRAMES_PER_PROCESS = 16
_MAX_PROCESSES = 8
_POLL_SECONDS = 0.1


@dataclass
class FetchOutcome:
    """What fetching did, by frame position.

    Attributes:
        downloaded: Positions that needed a download.
        failures: ``(position, error)`` of the frames that failed (an error that crossed from a worker process
            is an unpickled copy: same type and message, no traceback).
    """

    downloaded: list[int] = field(default_factory=list)
    failures: list[tuple[int, PlaymentError]] = field(default_factory=list)


def default_processes(frames: int) -> int:
    """One process per core this process may use, at most 8 and at most one per 16 frames; 1 without ``fork``."""
    if not _can_fork():
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - sched_getaffinity is Linux-only
        cores = os.cpu_count() or 1
    return max(1, min(cores, _MAX_PROCESSES, frames // _FRAMES_PER_PROCESS))


def fetch_frames(
    store: FrameStore,
    positions: Sequence[int],
    *,
    threads: int,
    processes: int,
    on_progress: Callable[[int], None],
) -> FetchOutcome:
    """Make sure every frame of ``positions`` is cached.

    Args:
        store: The frames.
        positions: Which.
        threads: Concurrent downloads in all (divided between the processes).
        processes: Worker processes (1: threads in this process only; more need ``fork``).
        on_progress: Called in this process with the number of frames finished since the last call.

    Returns:
        The outcome, positions in no particular order.
    """
    processes = max(1, min(processes, len(positions)))
    if processes == 1 or not _can_fork():
        return _fetch_here(store, positions, max(1, threads), on_progress)
    return _fetch_forked(store, positions, threads, processes, on_progress)


def _can_fork() -> bool:
    # A daemonic process (a DataLoader worker, a prefetch worker) may not start processes of its own.
    return (
        sys.platform.startswith("linux")
        and "fork" in multiprocessing.get_all_start_methods()
        and not multiprocessing.current_process().daemon
    )


def _fetch_here(
    store: FrameStore, positions: Sequence[int], threads: int, on_progress: Callable[[int], None]
) -> FetchOutcome:
    """Fetch with threads in this process: a frame's point cloud and mask are separate tasks, so a thread
    never waits on one file's round trips before starting the other's (with 50 ms per request a frame is four
    round trips); the lengths are checked once both are in."""
    outcome = FetchOutcome()
    # (position, record, whether it is the frame's last record)
    tasks = [
        (position, record, record == records[-1])
        for position in positions
        for records in (store.records(position),)
        for record in records
    ]
    kept = threading.Event()

    def fetch(task: tuple[int, int, bool]) -> tuple[bool, int, PlaymentError | None]:
        position, record, _ = task
        try:
            downloaded, length = store.ensure_record(position, record)
        except PlaymentError as exc:
            if kept.is_set():
                # A traceback holds its frames' locals, download bodies included: only the first failure keeps
                # its tracebacks; a project failing systematically keeps its errors' messages.
                _lighten(exc)
            kept.set()
            return False, -1, exc
        return downloaded, length, None

    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(fetch, tasks)  # in task order: a frame's records are adjacent
        pending: list[tuple[bool, int, PlaymentError | None]] = []
        for (position, _, last), result in zip(tasks, results, strict=True):
            pending.append(result)
            if not last:
                continue
            _finish(store, position, pending, outcome)
            pending = []
            on_progress(1)
    return outcome


def _finish(
    store: FrameStore, position: int, records: list[tuple[bool, int, PlaymentError | None]], outcome: FetchOutcome
) -> None:
    """Record a frame whose records are all fetched: a failure (the first record's first), or a success."""
    error = next((failure for _, _, failure in records if failure is not None), None)
    if error is None and len(records) == 2:
        try:
            store.check_lengths(position, points=records[0][1], keys=records[1][1])
        except PlaymentError as exc:
            error = exc
    if error is not None:
        outcome.failures.append((position, error))
    elif any(downloaded for downloaded, _, _ in records):
        outcome.downloaded.append(position)


def _fetch_forked(
    store: FrameStore,
    positions: Sequence[int],
    threads: int,
    processes: int,
    on_progress: Callable[[int], None],
) -> FetchOutcome:
    context = multiprocessing.get_context("fork")
    shares = [list(positions[k::processes]) for k in range(processes)]
    per_process = max(1, -(-threads // processes))
    workers: list[tuple[Any, Any, Any, list[int]]] = []
    outcome = FetchOutcome()
    try:
        for share in shares:
            done = context.Value("q", 0, lock=False)  # written by the worker alone, read here
            receive, send = context.Pipe(duplex=False)
            worker = context.Process(
                target=_worker, args=(store, share, per_process, done, send), name="playment-prefetch", daemon=True
            )
            worker.start()
            send.close()
            workers.append((worker, receive, done, share))
        reported = [0] * len(workers)
        pending = {receive: i for i, (_, receive, _, _) in enumerate(workers)}
        while pending:
            ready = multiprocessing.connection.wait(list(pending), timeout=_POLL_SECONDS)
            for i, (_, _, done, _) in enumerate(workers):
                now = int(done.value)
                if now > reported[i]:
                    on_progress(now - reported[i])
                    reported[i] = now
            for connection in ready:
                i = pending.pop(connection)
                worker, receive, _, share = workers[i]
                try:
                    downloaded, carried = receive.recv()
                    part = FetchOutcome(downloaded, [(position, error.restore()) for position, error in carried])
                except (EOFError, OSError):
                    worker.join()
                    part = _lost(share, worker.exitcode)
                outcome.downloaded.extend(part.downloaded)
                outcome.failures.extend(part.failures)
                finished = len(share)
                if finished > reported[i]:
                    on_progress(finished - reported[i])
                    reported[i] = finished
    finally:
        for worker, receive, _, _ in workers:
            if worker.is_alive():
                worker.terminate()
            worker.join()
            receive.close()
    return outcome


def _worker(store: FrameStore, share: list[int], threads: int, done: Any, send: Any) -> None:
    """A worker process: fetch its share with its own threads, count progress, send the outcome back."""
    lock = threading.Lock()

    def progress(count: int) -> None:
        with lock:
            done.value += count

    try:
        outcome = _fetch_here(store, share, threads, progress)
    except BaseException as exc:  # pragma: no cover - anything else still reaches the parent as failures
        error = PlaymentError(f"prefetch worker failed: {type(exc).__name__}: {exc}")
        outcome = FetchOutcome(failures=[(position, error) for position in share])
    send.send((outcome.downloaded, [(position, _Carried(_chain(error))) for position, error in outcome.failures]))
    send.close()


def _lighten(error: PlaymentError) -> None:
    """Drop what an error holds beyond its messages: tracebacks, implicit contexts, and causes that are not
    library errors (only those are looked at, e.g. for an unreachable host)."""
    link: PlaymentError = error
    for _ in range(8):
        link.__traceback__ = None
        link.__context__ = None
        cause = link.__cause__
        if not isinstance(cause, PlaymentError):
            link.__cause__ = None
            return
        link = cause


@dataclass(frozen=True)
class _Carried:
    """An error on its way from a worker process: pickling keeps neither ``__cause__`` nor a traceback, so the
    chain of library errors travels as a list and is linked again on arrival (callers look in the chain, e.g.
    for the :class:`~playment_torch.errors.HostUnreachableError` behind a frame's failure)."""

    chain: list[PlaymentError]

    def restore(self) -> PlaymentError:
        for error, cause in zip(self.chain, self.chain[1:], strict=False):
            error.__cause__ = cause
        return self.chain[0]


def _chain(error: PlaymentError) -> list[PlaymentError]:
    """The error and the library errors it was raised from, each picklable (else a plain copy of its message)."""
    chain: list[PlaymentError] = []
    link: BaseException | None = error
    while isinstance(link, PlaymentError) and len(chain) < 8:
        cause = link.__cause__
        link.__cause__ = link.__context__ = None
        link.__traceback__ = None
        try:
            pickle.loads(pickle.dumps(link))
            chain.append(link)
        except Exception:  # a subclass that does not survive pickling: keep its type's message at least
            chain.append(PlaymentError(str(link)))
        link = cause
    return chain


def _lost(share: list[int], exitcode: int | None) -> FetchOutcome:
    """A worker that died without reporting (killed, out of memory): its frames failed, saying so."""
    error = PlaymentError(f"the prefetch worker process died (exit code {exitcode}) before reporting")
    return FetchOutcome(failures=[(position, error) for position in share])
