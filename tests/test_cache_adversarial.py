"""The cache under attack: forged file identity, copied entries, metadata eviction, fork and locks, full disks.

Each test builds the case with real files and real processes and fails on the 0.1 cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import playment_torch.cache as cache_module
from playment_torch.cache import ArrayCache, cache_key
from playment_torch.errors import CacheError

# The tree whose playment_torch this test imported, so subprocesses run the same code.
WORKTREE = Path(cache_module.__file__).resolve().parents[1]
BIG = np.arange(20_000, dtype=np.float64)  # a value file, not a row inside SQLite


def value_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.val"))


def file_of(cache: ArrayCache, key: str, array: np.ndarray) -> Path:
    """The value file holding ``array`` (recognised by its payload bytes)."""
    payload = array.tobytes()
    (path,) = [p for p in value_files(cache.directory) if p.read_bytes().endswith(payload)]
    return path


def settle(path: Path) -> None:
    old = time.time() - 60
    os.utime(path, (old, old))


def hold_key(cache: ArrayCache, key: str = "k") -> tuple[threading.Thread, threading.Event]:
    """A thread inside ``cache.get_or_create(key)``, holding its lock until the returned event is set."""
    inside, release = threading.Event(), threading.Event()

    def create() -> np.ndarray:
        inside.set()
        release.wait(60)
        return BIG

    holder = threading.Thread(target=lambda: cache.get_or_create(key, create))
    holder.start()
    assert inside.wait(30)
    return holder, release


def env_with_worktree() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(WORKTREE)}


# --- 17: file identity and the key in the header ----------------------------------------------------------------


def test_in_place_overwrite_with_restored_mtime_is_caught(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path / "c")
    array = np.arange(100_000, dtype=np.float32)
    cache.put_array("k", array)
    path = file_of(cache, "k", array)
    settle(path)
    np.testing.assert_array_equal(cache.get_array("k"), array)  # checked in full and remembered
    status = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    with open(path, "r+b") as handle:  # in place: same inode, same size
        handle.write(data)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))  # and the old modification time back
    assert (path.stat().st_ino, path.stat().st_size, path.stat().st_mtime_ns) == (
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
    )
    assert cache.get_array("k") is None, "st_ctime_ns changed, so the payload is checked again"
    assert cache.stats.corrupt == 1


def test_entry_copied_from_another_key_is_not_returned(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path / "c")
    first, second = np.full(20_000, 1.0), np.full(20_000, 2.0)
    cache.put_array("frame-1", first)
    cache.put_array("frame-2", second)
    shutil.copyfile(file_of(cache, "frame-2", second), file_of(cache, "frame-1", first))
    assert cache.verify().bad == ["frame-1"]
    assert cache.get_array("frame-1") is None, "a valid entry of frame-2 must not read back as frame-1"
    assert cache.stats.corrupt == 1 and "frame-1" not in cache
    np.testing.assert_array_equal(cache.get_array("frame-2"), second)


def test_small_entry_swapped_between_keys_in_sqlite(tmp_path: Path) -> None:
    import sqlite3

    cache = ArrayCache(tmp_path / "c")
    cache.put_array("a", np.arange(3))
    cache.put_array("b", np.arange(5))
    cache.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "c" / "cache.db")) as db:
        (value,) = db.execute("SELECT value FROM Cache WHERE key = 'b'").fetchone()
        db.execute("UPDATE Cache SET value = ? WHERE key = 'a'", (value,))
        db.commit()
    assert cache.get_array("a") is None
    np.testing.assert_array_equal(cache.get_array("b"), np.arange(5))
    assert ArrayCache(tmp_path / "c").verify().bad == []  # the damaged entry was dropped on read


def test_entries_of_the_old_format_are_misses_not_damage(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path / "c")
    cache.put_array("k", BIG)
    path = file_of(cache, "k", BIG)
    data = bytearray(path.read_bytes())
    data[4] = 1  # what 0.1 wrote: format version 1
    path.write_bytes(bytes(data))
    report = cache.verify()
    assert report.bad == [] and report.outdated == 1
    assert cache.get_array("k") is None
    assert (cache.stats.misses, cache.stats.corrupt) == (1, 0)
    assert "k" not in cache  # dropped, to be fetched again


# --- 15: the remembered-check table is bounded in bytes --------------------------------------------------------


def test_file_table_costs_its_budget_and_no_more(tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = ArrayCache(tmp_path / "c", checked_table_bytes=1 << 20)
        table = cache._files
        for i in range(200_000):  # far more files than slots: the table does not grow
            digest = int.from_bytes(cache_module._key_digest(f"points|p|job-{i // 80}|frame-{i % 80}|lidar|"), "little")
            table.remember(digest, filename=f"ab/cd/{i:028x}.val", version=i + 1)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert table.slots == 32_768 and table.shared  # 32 bytes each, in the cache's own file
    assert (tmp_path / "c" / "files.table").stat().st_size == 1 << 20
    assert grown < 64 * 1024, f"{grown} bytes of Python memory for a 1 MiB mapped table"
    # The last key written is found with its file and version; an overwritten one is simply not known.
    assert table.find(digest) == (f"ab/cd/{199_999:028x}.val", 200_000)
    first = int.from_bytes(cache_module._key_digest("points|p|job-0|frame-0|lidar|"), "little")
    assert table.find(first) == (None, 0)


def test_file_table_is_shared_by_processes_and_never_trusted_alone(tmp_path: Path) -> None:
    """A second process (a fresh handle) finds the value file without SQLite; a slot naming another key's file,
    or a file that is gone, costs a lookup and never a wrong value."""
    cache = ArrayCache(tmp_path / "c")
    arrays = {f"k{i}": np.full(20_000, float(i)) for i in range(3)}
    for key, array in arrays.items():
        cache.put_array(key, array)
        settle(file_of(cache, key, array))
        np.testing.assert_array_equal(cache.get_array(key), array)  # the SQLite path records file and check
    other = pickle.loads(pickle.dumps(cache))  # as a spawned worker gets it: maps the same table file
    digests = {key: int.from_bytes(cache_module._key_digest(key), "little") for key in arrays}
    assert all(other._files.find(d)[0] for d in digests.values())
    lookups: list[str] = []
    real = ArrayCache._read_entry
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ArrayCache, "_read_entry", lambda self, store, key: lookups.append(key) or real(self, store, key))
        for key, array in arrays.items():
            np.testing.assert_array_equal(other.get_array(key), array)
        assert lookups == [], "warm reads went through the shared table"
        # Forge: k0's slot names k1's file. The header names k1, so k0 is read through SQLite, correctly.
        k1_file = other._files.find(digests["k1"])[0]
        other._files.remember(digests["k0"], filename=k1_file)
        np.testing.assert_array_equal(other.get_array("k0"), arrays["k0"])
        assert lookups == ["k0"]
        # A file that is gone (deleted behind the cache's back): a lookup, then a miss as the row says.
        os.unlink(tmp_path / "c" / k1_file)
        assert other.get_array("k1") is None
    assert other.stats.corrupt == 1 and cache.get_array("k2") is not None


def test_remembered_checks_still_check_evicted_slots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ArrayCache(tmp_path / "c", checked_table_bytes=32)  # one slot
    arrays = {f"k{i}": np.full(20_000, float(i)) for i in range(3)}
    for key, array in arrays.items():
        cache.put_array(key, array)
        settle(file_of(cache, key, array))
    sums: list[int] = []
    real = cache_module._payload_sums
    monkeypatch.setattr(cache_module, "_payload_sums", lambda words: sums.append(1) or real(words))
    for _ in range(2):
        for key, array in arrays.items():
            np.testing.assert_array_equal(cache.get_array(key), array)
    assert len(sums) == 6, "one slot: each read evicts the previous key, so each is checked again"
    np.testing.assert_array_equal(cache.get_array("k2"), arrays["k2"])
    assert len(sums) == 6, "the key in the slot is trusted"


# --- 16: metadata survives array traffic -------------------------------------------------------------------------


def test_size_limited_cache_never_evicts_json_metadata(tmp_path: Path) -> None:
    entry = 160_064  # BIG framed
    cache = ArrayCache(tmp_path / "c", size_limit=40_000 + 3 * entry)
    metadata = {
        cache_key("job", project_id="p", job_id=f"j{i}"): {"job": i, "frames": list(range(50))} for i in range(8)
    }
    for key, value in metadata.items():
        cache.put_json(key, value)
    for i in range(60):
        cache.put_array(cache_key("points", project_id="p", job_id=f"j{i % 8}", frame_id=f"f{i}"), BIG)
    assert all(cache.get_json(key) == value for key, value in metadata.items()), "every metadata entry survived"
    arrays = [key for key in list(cache.keys()) if key.startswith("points|")]
    assert 1 <= len(arrays) <= 4, "arrays are still evicted down to the limit"
    assert cache.volume() - ArrayCache(tmp_path / "c" / "meta").volume() < cache.size_limit + entry  # type: ignore[operator]


def test_size_limited_dataset_keeps_its_metadata_through_prefetch(server, tmp_path: Path) -> None:
    from playment_torch import PlaymentClient
    from playment_torch.dataset import PlaymentSegmentationDataset
    from playment_torch.testing.synthetic import add_synthetic_project

    add_synthetic_project(server, n_jobs=4, frames_per_job=2, points_per_frame=10_000, seed=3)
    client = PlaymentClient(server.api_key, base_url=server.url)
    # Room for a few frames' arrays only: prefetching all 8 frames evicts arrays.
    online = PlaymentSegmentationDataset(
        server.project_id, client=client, cache_dir=tmp_path / "c", cache_size_limit=1_000_000
    )
    metadata = {key: value for key in list(online.cache.keys()) if (value := online.cache.get_json(key)) is not None}
    kinds = {key.split("|")[0] for key in metadata}
    assert {"catalog-project@1", "catalog-job@1", "catalog-digest@1"} <= kinds, kinds
    # Result bytes and the index are arrays kept in the metadata store.
    every = list(online.cache.keys())
    results = [key for key in every if key.startswith(("catalog-result@", "catalog-index@"))]
    assert len(results) == 4 + 1 and all(online.cache.get_array(key, metadata=True) is not None for key in results)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = online.prefetch(num_threads=2, progress=False)
    assert not report.failures
    arrays_left = [key for key in list(online.cache.keys()) if key not in metadata and key not in results]
    assert len(arrays_left) < 3 * len(online), "the limit evicted arrays (a frame has three: points, mask, labels)"
    assert {key: online.cache.get_json(key) for key in metadata} == metadata, "no metadata was evicted"
    # Offline, the jobs and results still come from the cache (frames may be missing: they were evicted).
    offline_cache = ArrayCache(tmp_path / "c")
    assert all(offline_cache.get_json(key) == value for key, value in metadata.items())
    assert all(offline_cache.get_array(key, metadata=True) is not None for key in results)


# --- 14: locks, fork, timeouts ------------------------------------------------------------------------------------

WAITER = """
import sys, time
import numpy as np
from playment_torch.cache import ArrayCache
cache = ArrayCache(sys.argv[1])
print("waiting", flush=True)
start = time.monotonic()
value = cache.get_or_create("k", lambda: np.zeros(1))
print(f"{time.monotonic() - start:.3f} {value.size}", flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_child_forked_while_a_thread_holds_a_key_lock_does_not_keep_it(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path / "c")
    holder, release = hold_key(cache)
    # Another process queues on the key's lock file while the thread holds it.
    waiter = subprocess.Popen(
        [sys.executable, "-c", WAITER, str(cache.directory)], stdout=subprocess.PIPE, text=True, env=env_with_worktree()
    )
    child = 0
    try:
        assert waiter.stdout is not None and waiter.stdout.readline().strip() == "waiting"
        time.sleep(0.5)  # let it reach flock
        child = os.fork()
        if child == 0:  # the child lives on, holding whatever it inherited
            try:
                time.sleep(60)
            finally:
                os._exit(0)
        release.set()
        holder.join(30)
        out, _ = waiter.communicate(timeout=20)  # before the fix: the child's whole life (60 s)
        elapsed, size = out.split()
        assert int(size) == BIG.size, "the waiter read the stored value instead of creating its own"
        assert float(elapsed) < 15
        assert os.waitpid(child, os.WNOHANG) == (0, 0), "the forked child is still alive"
    finally:
        release.set()
        if child:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_forked_child_gets_fresh_in_process_locks(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path / "c")
    holder, release = hold_key(cache)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read)
            # The parent's thread holds "k" in-process; that thread does not exist here. With the lock table
            # reset, the child waits on the file lock only, which the parent releases below.
            value = cache.get_or_create("k", lambda: np.zeros(1))
            os.write(write, str(value.size).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        time.sleep(0.3)
        release.set()
        holder.join(30)
        # Before the fix the child waited for ever: on the thread lock it inherited held, or on the file lock
        # it inherited itself (released by close only, and the child never closes its copy).
        ready, _, _ = select.select([read], [], [], 20)
        assert ready, "the forked child is stuck on a lock it inherited"
        with os.fdopen(read) as pipe:
            assert pipe.read() == str(BIG.size)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)


def test_lock_files_are_close_on_exec(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path / "c")
    seen: list[bool] = []

    def create() -> np.ndarray:
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{name}").endswith(".lock"):
                    seen.append(bool(fcntl.fcntl(int(name), fcntl.F_GETFD) & fcntl.FD_CLOEXEC))
        return BIG

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc")
    cache.get_or_create("k", create)
    assert seen == [True]


def test_waiting_for_a_lock_times_out_and_goes_on(tmp_path: Path) -> None:
    holder_cache = ArrayCache(tmp_path / "c")
    # A second handle on the same directory: its wait is on the file lock, as another process's would be.
    waiter_cache = ArrayCache(tmp_path / "c", lock_timeout=0.5)
    holder, release = hold_key(holder_cache)
    try:
        start = time.monotonic()
        with pytest.warns(RuntimeWarning, match=r"waited 0.5 s for the lock on cache key 'k'"):
            value = waiter_cache.get_or_create("k", lambda: np.ones(3))
        assert 0.4 < time.monotonic() - start < 5
        np.testing.assert_array_equal(value, np.ones(3))
    finally:
        release.set()
        holder.join(30)
    # Same-process threads time out too.
    same = ArrayCache(tmp_path / "d", lock_timeout=0.3)
    holder, release = hold_key(same)
    try:
        with pytest.warns(RuntimeWarning, match="another thread holds"):
            np.testing.assert_array_equal(same.get_or_create("k", lambda: np.ones(2)), np.ones(2))
    finally:
        release.set()
        holder.join(30)


def test_degraded_locking_warns_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "_DEGRADED_WARNED", [False])
    cache = ArrayCache(tmp_path / "c")
    cache.put_array("warm-up", np.arange(3))  # opening takes its own lock, which never warns
    shutil.rmtree(tmp_path / "c" / "locks")
    (tmp_path / "c" / "locks").write_text("not a directory")  # lock files cannot be created
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(3):
            np.testing.assert_array_equal(cache.get_or_create(f"k{i}", lambda: np.arange(4)), np.arange(4))
    messages = [str(w.message) for w in caught if "locking between processes is off" in str(w.message)]
    assert len(messages) == 1 and "cannot create lock files" in messages[0]


# --- 13: a full disk, a read-only directory -----------------------------------------------------------------------


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_to_the_brim(cache: ArrayCache) -> dict[str, np.ndarray]:
    """Write arrays and metadata until the disk refuses, then fill what is left with a file."""
    stored: dict[str, np.ndarray] = {}
    for i in range(1000):
        key = cache_key("points", project_id="p", job_id="j", frame_id=f"f{i:03d}")
        array = np.full(5_000, float(i))
        try:
            cache.put_array(key, array)
            stored[key] = array
            cache.put_json(cache_key("job", project_id="p", job_id=f"j{i}"), {"i": i})
        except Exception:
            cache.delete(key)  # one JSON entry per array, so the counts below are exact
            stored.pop(key, None)
            break
    cache.close()
    with contextlib.suppress(OSError), open(cache.directory.parent / "filler", "wb") as filler:
        while True:
            filler.write(b"\0" * 4096)
            filler.flush()
    return stored


CHILD_READER = """
import json, sys
import numpy as np
from playment_torch.cache import ArrayCache
cache = ArrayCache(sys.argv[1])
keys = json.loads(sys.argv[2])
ok = sum(1 for i, key in enumerate(keys) if (a := cache.get_array(key)) is not None and a[0] == float(i))
print(ok, cache.get_json(sys.argv[3]), len(cache))
"""


def test_warm_cache_reads_and_clears_on_a_full_disk(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", "3m") as disk:
        cache = ArrayCache(disk / "cache")
        stored = fill_to_the_brim(cache)
        assert len(stored) > 10
        with open(disk / "probe", "wb") as probe, pytest.raises(OSError):
            probe.write(b"x" * 8192)
            probe.flush()
        keys = list(stored)
        job_key = cache_key("job", project_id="p", job_id="j3")
        # A fresh process (nothing open yet) reads everything.
        reader = subprocess.run(
            [sys.executable, "-c", CHILD_READER, str(disk / "cache"), json.dumps(keys), job_key],
            capture_output=True,
            text=True,
            env=env_with_worktree(),
            timeout=60,
        )
        assert reader.returncode == 0, reader.stderr
        assert reader.stdout.split() == [str(len(keys)), "{'i':", "3}", str(2 * len(keys))]
        # So does this one, through a fresh handle; a write is a CacheError, not a crash.
        fresh = ArrayCache(disk / "cache")
        np.testing.assert_array_equal(fresh.get_array(keys[-1]), stored[keys[-1]])
        with pytest.raises(cache_module.CacheError, match=r"cannot be written|No space|full"):
            fresh.put_array("new", BIG)
        fresh.close()
        info = subprocess.run(
            [sys.executable, "-m", "playment_torch.cli", "cache", "info", "--cache-dir", str(disk / "cache")],
            capture_output=True,
            text=True,
            env=env_with_worktree(),
            timeout=60,
        )
        assert info.returncode == 0, info.stderr
        assert info.stdout.splitlines()[0].startswith(f"cache {disk / 'cache'}: {2 * len(keys)} entries")
        clear = subprocess.run(
            [sys.executable, "-m", "playment_torch.cli", "cache", "clear", "--cache-dir", str(disk / "cache")],
            capture_output=True,
            text=True,
            env=env_with_worktree(),
            timeout=60,
        )
        assert clear.returncode == 0, clear.stderr
        assert clear.stdout.strip() == f"cache {disk / 'cache'}: removed {2 * len(keys)} entries"
        assert value_files(disk / "cache") == []
        after = ArrayCache(disk / "cache")
        assert len(after) == 0
        after.close()


def test_reads_from_a_read_only_directory(tmp_path: Path) -> None:
    source = tmp_path / "source"
    cache = ArrayCache(source)
    cache.put_array("big", BIG)
    cache.put_array("small", np.arange(7))
    cache.put_json("job", {"id": 1})
    cache.close()
    view = tmp_path / "view"
    view.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    bound = subprocess.run(["mount", "--bind", str(source), str(view)], capture_output=True)
    if bound.returncode:
        pytest.skip(f"cannot bind-mount here (needs root): {bound.stderr.decode().strip()}")
    try:
        remount = subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True)
        if remount.returncode:
            pytest.skip(f"cannot remount read-only: {remount.stderr.decode().strip()}")
        with pytest.raises(OSError):
            (view / "probe").write_bytes(b"x")
        readonly = ArrayCache(view)
        np.testing.assert_array_equal(readonly.get_array("big"), BIG)
        np.testing.assert_array_equal(readonly.get_array("small"), np.arange(7))
        assert readonly.get_json("job") == {"id": 1}
        assert readonly.get_array("missing") is None
        assert sorted(readonly.keys()) == ["big", "job", "small"] and len(readonly) == 3
        assert readonly.verify().bad == []
        with pytest.raises(cache_module.CacheError, match="cannot be written"):
            readonly.put_array("new", BIG)
        readonly.close()
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


def test_a_forked_child_trusts_what_its_parent_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh DataLoader worker does not check every file again (the table is keyed by file identity)."""
    cache = ArrayCache(tmp_path / "c")
    arrays = {f"k{i}": np.full(20_000, float(i)) for i in range(3)}
    for key, array in arrays.items():
        cache.put_array(key, array)
        settle(file_of(cache, key, array))
        np.testing.assert_array_equal(cache.get_array(key), array)  # checked in full once, here
    sums: list[int] = []
    real = cache_module._payload_sums
    monkeypatch.setattr(cache_module, "_payload_sums", lambda words: sums.append(1) or real(words))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: read everything, report how many payloads it summed
        try:
            ok = all(np.array_equal(cache.get_array(key), array) for key, array in arrays.items())
            os.write(write, f"{int(ok)} {len(sums)}".encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    ok, summed = os.read(read, 64).decode().split()
    os.close(read)
    assert ok == "1" and summed == "0", "the child read every value without checking its payload again"


def test_a_damaged_database_leaves_predictions_and_counters_in_place(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path / "c")
    cache.put_array("a", np.arange(10))
    predictions = tmp_path / "c" / "predictions" / "run-1"
    predictions.mkdir(parents=True)
    (predictions / "classes.json").write_text('{"classes": ["road"]}')
    (tmp_path / "c" / "stats").mkdir()
    cache.close()
    (tmp_path / "c" / "cache.db").write_bytes(b"not a database" * 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fresh = ArrayCache(tmp_path / "c")
        assert fresh.get_array("a") is None  # the damaged database was moved aside and replaced
    assert (predictions / "classes.json").read_text() == '{"classes": ["road"]}', "a user's predictions stay"
    assert (tmp_path / "c" / "stats").is_dir()
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("c.corrupt-")]
    assert len(moved) == 1 and not (moved[0] / "predictions").exists()


def test_a_value_file_write_that_fails_midway_leaves_no_file_and_no_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    cache = ArrayCache(tmp_path / "c")
    cache.put_array("kept", np.arange(100_000))
    files_before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "c").rglob("*.val"))
    written: list[int] = []
    real_open = open

    class Filling:
        """A value file on a disk that fills after 64 kB: short writes, then ENOSPC."""

        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def write(self, data: memoryview) -> int:
            if sum(written) >= 65_536:
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(min(len(data), 10_000))
            return int(self.handle.write(data[:10_000]))

        def __enter__(self) -> Filling:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

    def opening(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(path, mode, *args, **kwargs)
        return Filling(handle) if mode == "xb" else handle

    monkeypatch.setattr(cache_module, "open", opening, raising=False)
    with pytest.raises(CacheError, match="No space left"):
        cache.put_array("big", np.arange(1_000_000))
    monkeypatch.undo()
    assert sum(written) >= 65_536, "the write went part of the way"
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "c").rglob("*.val")) == files_before
    assert cache.get_array("big") is None
    np.testing.assert_array_equal(cache.get_array("kept"), np.arange(100_000))
    # Short writes are written on, not lost: the same write on a disk with room stores every byte.
    cache.put_array("big", np.arange(1_000_000))
    np.testing.assert_array_equal(ArrayCache(tmp_path / "c").get_array("big"), np.arange(1_000_000))
    assert all(p.parent.name[1] == "0" for p in (tmp_path / "c").rglob("*.val")), "16 second-level folders"
