"""Concurrent attachment downloads through ``PlaymentClient``: one thread against many, same files.

Run from the repository root::

    python benchmarks/bench_client.py [--files 500] [--threads 32] [--latency 0.02] [--size 16384]
                                      [--server-process]

The fake Playment server (``playment_torch.testing.FakePlaymentServer``) hosts ``--files`` Playment-hosted
files and adds ``--latency`` seconds to every request. Each download is two requests (``/v1/attachments``,
then the signed storage URL), so one thread pays about twice the latency per file; ``--threads`` threads share
one client (one session, one connection pool). Every body is checked against what was uploaded, and any error
fails the run. By default the server runs on threads of this process, competing with the client for the GIL
(the harder case, as in ``tests/test_client.py``); ``--server-process`` runs it in a child process instead, to
measure the client alone.

Prints per-file milliseconds, files/s and the speedup (sequential time / concurrent time, same file count).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import multiprocessing.connection
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playment_torch.client import PlaymentClient, RetryPolicy  # noqa: E402
from playment_torch.testing.server import PLAYMENT_STORAGE, FakePlaymentServer  # noqa: E402


def content_of(index: int, size: int) -> bytes:
    """Deterministic bytes of file ``index``, so both processes agree without shipping them."""
    seed = hashlib.sha256(str(index).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def url_of(index: int) -> str:
    return f"{PLAYMENT_STORAGE}/bench/{index:05d}.bin"


def _fill(server: FakePlaymentServer, files: int, size: int, latency: float) -> None:
    for i in range(files):
        server.put_file(url_of(i), content_of(i, size))
    server.latency = latency


def _serve(conn: multiprocessing.connection.Connection, files: int, size: int, latency: float) -> None:
    with FakePlaymentServer() as server:
        _fill(server, files, size, latency)
        conn.send((server.url, server.api_key))
        conn.recv()  # until the parent is done


@contextmanager
def fake_server(files: int, size: int, latency: float, in_process: bool) -> Iterator[tuple[str, str]]:
    """Yield ``(url, api_key)`` of a running fake server hosting the files."""
    if in_process:
        with FakePlaymentServer() as server:
            _fill(server, files, size, latency)
            yield server.url, server.api_key
        return
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_serve, args=(child, files, size, latency))
    process.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the fake server process did not start within 60 s")
        yield parent.recv()
    finally:
        parent.send("stop")
        process.join(30)


def timed_downloads(client: PlaymentClient, indices: list[int], size: int, threads: int) -> float:
    """Download ``indices`` with ``threads`` threads; verify every body; return the wall time in seconds."""
    start = time.perf_counter()
    if threads == 1:
        bodies = [client.download(url_of(i)) for i in indices]
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            bodies = list(pool.map(client.download, [url_of(i) for i in indices]))
    elapsed = time.perf_counter() - start
    for i, body in zip(indices, bodies, strict=True):
        if body != content_of(i, size):
            raise AssertionError(f"file {i} came back different")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=500, help="attachments to download (each run)")
    parser.add_argument("--threads", type=int, default=32, help="threads of the concurrent run")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds the server adds to every request")
    parser.add_argument("--size", type=int, default=16384, help="bytes per file")
    parser.add_argument("--server-process", action="store_true", help="run the fake server in a child process")
    args = parser.parse_args()

    indices = list(range(args.files))
    # Retries are off: an error must fail the benchmark, not hide in a slower number.
    retry = RetryPolicy(max_retries=0)
    with (
        fake_server(args.files, args.size, args.latency, not args.server_process) as (url, key),
        PlaymentClient(key, base_url=url, retry=retry) as client,
    ):
        timed_downloads(client, [0], args.size, 1)  # connections warm, session created
        sequential = timed_downloads(client, indices, args.size, 1)
        concurrent = timed_downloads(client, indices, args.size, args.threads)

    where = "child process" if args.server_process else "this process"
    print(
        f"{args.files} attachments of {args.size} bytes, {args.latency * 1000:.0f} ms latency per request "
        f"(2 requests per file), server in {where}"
    )
    print("| threads | total s | ms per file | files/s |")
    print("|---|---|---|---|")
    for threads, seconds in ((1, sequential), (args.threads, concurrent)):
        print(f"| {threads} | {seconds:.2f} | {seconds / args.files * 1000:.2f} | {args.files / seconds:.0f} |")
    print(f"speedup ({args.threads} threads vs 1): {sequential / concurrent:.1f}x")


if __name__ == "__main__":
    main()
