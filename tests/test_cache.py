"""The disk cache: keys, round trips, integrity, a damaged database, eviction, locking, pickling, statistics."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import playment_torch.cache as cache_module
from playment_torch.cache import ArrayCache, CacheStats, VerifyReport, cache_key, default_cache_dir
from playment_torch.errors import CacheError, ConfigError

POINT_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"), ("ring", "<u2")])
# Above diskcache's 32 KiB threshold, so the entry is a value file rather than a row in SQLite.
BIG = np.arange(20_000, dtype=np.float64)  # 160,000 payload bytes
BIG_ENTRY_SIZE = 160_064  # 64-byte header (40 fixed + 8 shape + "'<f8'") + payload


def value_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.val"))


def same(a: np.ndarray, b: np.ndarray | None) -> bool:
    """Equal dtype, shape and bytes (byte equality also holds for NaN)."""
    return b is not None and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture
def cache(tmp_path: Path) -> ArrayCache:
    return ArrayCache(tmp_path / "cache")


def damage_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning) and "damaged" in str(w.message)]


# --- location and keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PLAYMENT_TORCH_CACHE": "/data/ptc", "XDG_CACHE_HOME": "/xdg"}, "/data/ptc"),
        ({"XDG_CACHE_HOME": "/xdg"}, "/xdg/playment_torch"),
        ({"XDG_CACHE_HOME": "relative/ignored"}, "/home/u/.cache/playment_torch"),
        ({}, "/home/u/.cache/playment_torch"),
        ({"PLAYMENT_TORCH_CACHE": ""}, "/home/u/.cache/playment_torch"),
    ],
)
def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str) -> None:
    for name in ("PLAYMENT_TORCH_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", "/home/u")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert default_cache_dir() == Path(expected)


def test_cache_without_directory_uses_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PLAYMENT_TORCH_CACHE", str(tmp_path / "env-cache"))
    cache = ArrayCache()
    cache.put_array("k", np.arange(3))
    assert cache.directory == tmp_path / "env-cache"
    assert (tmp_path / "env-cache" / "cache.db").is_file()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {
                "kind": "points",
                "project_id": "p1",
                "job_id": "j1",
                "frame_id": "f0",
                "sensor_id": "lidar",
                "url": "https://s3.example.com/b/f0.pcd?X-Amz-Signature=abc&X-Amz-Credential=AKIA",
            },
            "points|p1|j1|f0|lidar|https://s3.example.com/b/f0.pcd",
        ),
        ({"kind": "project", "project_id": "p1"}, "project|p1||||"),
        (
            {"kind": "mask", "project_id": "p|1", "job_id": "50%", "url": "https://user:pw@Host.example.com:8443/m#x"},
            "mask|p%7C1|50%25|||https://host.example.com:8443/m",
        ),
    ],
)
def test_cache_key_format(kwargs: dict[str, str], expected: str) -> None:
    assert cache_key(**kwargs) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://bucket.s3.amazonaws.com/a/b.pcd?X-Amz-Signature=1111&X-Amz-Date=20240101",
        "https://bucket.s3.amazonaws.com/a/b.pcd?X-Amz-Signature=2222&X-Amz-Date=20240102",
        "https://bucket.s3.amazonaws.com/a/b.pcd",
        "https://bucket.s3.amazonaws.com/a/b.pcd#fragment",
        "https://key:secret@bucket.s3.amazonaws.com/a/b.pcd?sig=3",
    ],
)
def test_cache_key_is_stable_across_signatures(url: str) -> None:
    key = cache_key("points", project_id="p", job_id="j", frame_id="f", url=url)
    assert key == "points|p|j|f||https://bucket.s3.amazonaws.com/a/b.pcd"
    for secret in ("Signature", "sig=", "secret", "key:", "#"):
        assert secret not in key


def test_cache_key_distinguishes_every_part() -> None:
    base = {"project_id": "p", "job_id": "j", "frame_id": "f", "sensor_id": "s", "url": "https://h/u"}
    keys = {cache_key("points", **base)}
    keys.add(cache_key("mask", **base))
    for name in base:
        keys.add(cache_key("points", **{**base, name: base[name] + "x"}))
    # "|" inside a part cannot forge another identity.
    keys.add(cache_key("points", project_id="p|j", job_id="f"))
    keys.add(cache_key("points", project_id="p", job_id="j|f"))
    assert len(keys) == 2 + len(base) + 2


@pytest.mark.parametrize("kwargs", [{"kind": "", "project_id": "p"}, {"kind": "points", "project_id": ""}])
def test_cache_key_rejects_empty_identity(kwargs: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        cache_key(**kwargs)


@pytest.mark.parametrize("size_limit", [0, -5])
def test_size_limit_must_be_positive(tmp_path: Path, size_limit: int) -> None:
    with pytest.raises(ConfigError, match="size_limit"):
        ArrayCache(tmp_path, size_limit=size_limit)


# --- round trips -------------------------------------------------------------------------------------------


def _structured_points(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    data = np.zeros(n, POINT_DTYPE)
    for name in ("x", "y", "z", "intensity"):
        data[name] = rng.normal(size=n)
    data["ring"] = rng.integers(0, 64, size=n)
    return data


def _subarray_fields() -> np.ndarray:
    dtype = np.dtype([("xyz", "<f4", (3,)), ("rgb", "u1", (3,)), ("label", "<i8"), ("cov", "<f8", (2, 2))])
    data = np.zeros(7, dtype)
    data["xyz"] = np.arange(21, dtype=np.float32).reshape(7, 3)
    data["rgb"] = 200
    data["label"] = np.arange(7) - 3
    data["cov"] = np.eye(2)
    return data


ROUND_TRIPS = {
    "structured 120k (file)": _structured_points(120_000),
    "structured small (sqlite)": _structured_points(10),
    "subarray fields": _subarray_fields(),
    "nested structured": np.zeros(3, [("a", [("b", "<i4"), ("c", "<f2", (2,))]), ("d", "?")]),
    "aligned structured with padding": np.ones(5, np.dtype([("a", "u1"), ("b", "<f8")], align=True)),
    "float32 2-D": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "float64 with nan and inf": np.array([np.nan, np.inf, -np.inf, -0.0, 1e308]),
    "float16": np.array([1.5, -2.25], np.float16),
    "int8": np.array([-128, 127], np.int8),
    "uint16": np.array([0, 65535], np.uint16),
    "int64 big (file)": np.arange(-50_000, 50_000, dtype=np.int64),
    "uint64 extremes": np.array([0, 2**64 - 1], np.uint64),
    "bool": np.array([True, False, True]),
    "complex128": np.array([1 + 2j, -3.5j]),
    "big-endian float64": np.array([1.0, 2.0], ">f8"),
    "unicode": np.array(["ab", "", "ünï"]),
    "bytes": np.array([b"a\x00b", b"xyz"]),
    "datetime64": np.array(["2024-01-01T00:00", "1970-01-01T00:01"], "datetime64[s]"),
    "empty 1-D": np.zeros(0, np.float32),
    "empty structured": np.zeros(0, POINT_DTYPE),
    "empty 2-D": np.zeros((0, 4), np.float32),
    "empty middle axis": np.zeros((3, 0, 2)),
    "0-d": np.array(3.25),
    "3-D": np.arange(24, dtype=np.int32).reshape(2, 3, 4),
    "Fortran order": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "non-contiguous view": np.arange(40, dtype=np.int16)[::3],
    "void zero-size": np.zeros(2, "V0"),
}


@pytest.mark.parametrize("array", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_array_round_trip(cache: ArrayCache, array: np.ndarray) -> None:
    cache.put_array("k", array)
    got = cache.get_array("k")
    assert got is not None
    assert got.dtype == array.dtype
    assert got.shape == array.shape
    assert got.tobytes() == array.tobytes()
    assert got.flags.c_contiguous and got.flags.writeable and got.flags.aligned


def test_returned_array_is_private(cache: ArrayCache) -> None:
    cache.put_array("k", BIG)
    first = cache.get_array("k")
    assert first is not None
    first[:] = -1  # writable, and the write stays in this copy
    assert same(BIG, cache.get_array("k"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    array=hnp.arrays(
        dtype=st.one_of(
            hnp.scalar_dtypes(),
            hnp.array_dtypes(hnp.scalar_dtypes(), min_size=1, max_size=3),
        ),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
    )
)
def test_array_round_trip_property(cache: ArrayCache, array: np.ndarray) -> None:
    cache.put_array("k", array)
    assert same(array, cache.get_array("k"))


def test_object_arrays_are_refused(cache: ArrayCache) -> None:
    with pytest.raises(CacheError, match="Python objects"):
        cache.put_array("k", np.array([{"a": 1}], dtype=object))
    assert "k" not in cache


@pytest.mark.parametrize(
    "value",
    [
        {"job_id": "j1", "status": "completed", "frames": [{"id": "f0", "pose": [0.0, 1.5, -2.0]}]},
        ["ünïcode", 1, 2.5, None, True],
        "a string",
        12345678901234567890,
        {"big": list(range(20_000))},  # large enough to be a value file
    ],
)
def test_json_round_trip(cache: ArrayCache, value: Any) -> None:
    cache.put_json("r", value)
    assert cache.get_json("r") == value


def test_json_null_is_a_hit(cache: ArrayCache) -> None:
    cache.put_json("null", None)
    assert cache.get_json("null") is None
    assert (cache.stats.hits, cache.stats.misses) == (1, 0)


def test_json_errors(cache: ArrayCache) -> None:
    assert cache.get_json("missing") is None
    with pytest.raises(CacheError, match="JSON-serialisable"):
        cache.put_json("r", {"a": object()})
    with pytest.raises(CacheError, match="JSON-serialisable"):
        cache.put_json("r", "lone surrogate \ud800")
    assert "r" not in cache
    cache.put_json("json", {"a": 1})
    cache.put_array("array", np.arange(3))
    # Arrays and JSON live in separate stores (metadata is never evicted by arrays): each kind is its own
    # namespace, so asking for the other kind is a plain miss.
    assert cache.get_array("json") is None and cache.get_json("array") is None
    assert cache.get_json("json") == {"a": 1} and same(np.arange(3), cache.get_array("array"))


def test_put_replaces(cache: ArrayCache) -> None:
    cache.put_array("k", BIG)
    cache.put_array("k", np.arange(4, dtype=np.uint8))
    assert same(np.arange(4, dtype=np.uint8), cache.get_array("k"))
    assert len(cache) == 1
    assert value_files(cache.directory) == []  # the replaced value file was removed


def test_bookkeeping(cache: ArrayCache) -> None:
    assert len(cache) == 0 and list(cache.keys()) == [] and "a" not in cache
    empty_volume = cache.volume()
    for key in ("b", "a", "c"):
        cache.put_array(key, BIG)
    assert len(cache) == 3
    assert list(cache.keys()) == ["a", "b", "c"]
    assert "a" in cache
    assert cache.volume() >= empty_volume + 3 * BIG_ENTRY_SIZE
    assert cache.delete("a") is True
    assert cache.delete("a") is False
    assert "a" not in cache and cache.get_array("a") is None
    assert cache.clear() == 2
    assert len(cache) == 0 and value_files(cache.directory) == []


# --- damaged entries ---------------------------------------------------------------------------------------


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


DAMAGE = {
    "magic": lambda p: _overwrite(p, 0, b"XXXX"),
    "header length": lambda p: _overwrite(p, 8, b"\x40\x01"),
    "shape": lambda p: _overwrite(p, 40, (10_000).to_bytes(8, "little")),  # same byte count, other shape
    "dtype descr": lambda p: _overwrite(p, 48, b"'<i8'"),  # same itemsize, other dtype
    "first payload byte": lambda p: _overwrite(p, 64, b"\xff"),
    "payload middle zeroed": lambda p: _overwrite(p, 80_000, bytes(4096)),
    "last byte": lambda p: _overwrite(p, BIG_ENTRY_SIZE - 1, b"\x01"),
    "garbage": lambda p: p.write_bytes(np.random.default_rng(1).bytes(BIG_ENTRY_SIZE)),
    "two pages swapped": lambda p: _swap_pages(p),
    "truncated half": lambda p: os.truncate(p, BIG_ENTRY_SIZE // 2),
    "truncated in header": lambda p: os.truncate(p, 10),
    "truncated to nothing": lambda p: os.truncate(p, 0),
    "one byte short": lambda p: os.truncate(p, BIG_ENTRY_SIZE - 1),
    "bytes appended": lambda p: p.write_bytes(p.read_bytes() + b"\0" * 8),
    "file deleted": lambda p: p.unlink(),
}


def _swap_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    first, second = slice(4096, 8192), slice(40960, 45056)
    data[first], data[second] = data[second], data[first]
    path.write_bytes(bytes(data))


def test_damage_cases_really_change_the_file(tmp_path: Path) -> None:
    """Guard for the table above: every case alters the bytes (a no-op would pass the next test vacuously)."""
    original = ArrayCache(tmp_path)
    original.put_array("k", np.random.default_rng(0).normal(size=BIG.size))
    (path,) = value_files(tmp_path)
    before = path.read_bytes()
    for name, damage in DAMAGE.items():
        path.write_bytes(before)
        damage(path)
        assert not path.exists() or path.read_bytes() != before, name


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_entry_is_dropped_counted_and_refetched(cache: ArrayCache, damage: Any) -> None:
    array = np.random.default_rng(0).normal(size=BIG.size)
    cache.put_array("k", array)
    cache.put_array("other", BIG)
    (path,) = [p for p in value_files(cache.directory) if _holds(p, array)]
    damage(path)

    assert cache.get_array("k") is None
    assert cache.stats.corrupt == 1 and cache.stats.misses == 1 and cache.stats.hits == 0
    assert "k" not in cache
    assert not path.exists()  # the damaged file went with its entry
    assert same(BIG, cache.get_array("other"))  # neighbours untouched
    cache.put_array("k", array)
    assert same(array, cache.get_array("k"))


def _holds(path: Path, array: np.ndarray) -> bool:
    return path.read_bytes()[64:] == array.tobytes()


def test_damaged_small_entry_in_sqlite(cache: ArrayCache) -> None:
    array = np.arange(10, dtype=np.int32)
    cache.put_array("small", array)
    cache.close()
    with sqlite3.connect(cache.directory / "cache.db") as con:
        (blob,) = con.execute("SELECT value FROM Cache WHERE key = 'small'").fetchone()
        damaged = bytearray(blob)
        damaged[-4] ^= 0x10
        con.execute("UPDATE Cache SET value = ? WHERE key = 'small'", (bytes(damaged),))
    con.close()
    assert cache.get_array("small") is None
    assert cache.stats.corrupt == 1 and "small" not in cache


@pytest.mark.parametrize(
    "foreign",
    [{"pickled": 1}, "a small string", "a large string " * 5000, b"short raw bytes", 42],
    ids=["pickle", "str", "str file", "bytes", "int"],
)
def test_entries_not_written_by_us_are_damage(cache: ArrayCache, foreign: Any) -> None:
    import diskcache

    cache.put_array("mine", np.arange(3))
    with diskcache.Cache(str(cache.directory)) as other:
        other.set("foreign", foreign)
    assert cache.get_array("foreign") is None
    assert cache.stats.corrupt == 1 and "foreign" not in cache
    assert same(np.arange(3), cache.get_array("mine"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_change_or_truncation_is_caught(cache: ArrayCache, data: st.DataObject) -> None:
    array = _structured_points(3000)  # 54,000 bytes of payload: a value file
    cache.put_array("k", array)
    (path,) = value_files(cache.directory)
    raw = bytearray(path.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        path.write_bytes(bytes(raw[: data.draw(st.integers(0, len(raw) - 1), label="length")]))
    else:
        position = data.draw(st.integers(0, len(raw) - 1), label="position")
        raw[position] ^= data.draw(st.integers(1, 255), label="xor")
        path.write_bytes(bytes(raw))
    corrupt_before = cache.stats.corrupt
    assert cache.get_array("k") is None
    assert cache.stats.corrupt == corrupt_before + 1


def test_concurrent_overwrites_never_return_a_mix(cache: ArrayCache) -> None:
    first, second = np.zeros(50_000, np.int64), np.full(50_000, 7, np.int64)
    cache.put_array("k", first)
    stop = time.monotonic() + 0.6
    seen: list[int] = []
    failures: list[str] = []

    def write() -> None:
        flip = False
        while time.monotonic() < stop:
            cache.put_array("k", second if flip else first)
            flip = not flip

    def read() -> None:
        while time.monotonic() < stop:
            got = cache.get_array("k")
            if got is None or not (same(first, got) or same(second, got)):
                failures.append("mixed or missing")
            else:
                seen.append(int(got[0]))

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert cache.stats.corrupt == 0
    assert set(seen) == {0, 7}


# --- damaged database ----------------------------------------------------------------------------------------


def _fill(cache: ArrayCache, count: int = 200) -> None:
    for i in range(count):
        cache.put_array(f"small{i:03d}", np.arange(100 + i))
    cache.put_array("big", BIG)


DB_DAMAGE = {
    "garbage": lambda db: db.write_bytes(np.random.default_rng(2).bytes(db.stat().st_size)),
    "truncated half": lambda db: os.truncate(db, db.stat().st_size // 2),
    "truncated to nothing": lambda db: os.truncate(db, 0),
    "header overwritten": lambda db: _overwrite(db, 0, b"\x00" * 100),
}


@pytest.mark.parametrize("damage", DB_DAMAGE.values(), ids=DB_DAMAGE.keys())
def test_damaged_database_on_open_is_moved_aside(tmp_path: Path, damage: Any) -> None:
    directory = tmp_path / "cache"
    cache = ArrayCache(directory)
    _fill(cache)
    cache.close()
    damage(directory / "cache.db")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh = ArrayCache(directory)
        assert fresh.get_array("big") is None
        assert len(fresh) == 0
        fresh.put_array("big", BIG)
        assert same(BIG, fresh.get_array("big"))
    messages = damage_warnings(caught)
    assert len(messages) == 1
    (aside,) = tmp_path.glob("cache.corrupt-*")
    assert str(aside) in messages[0]
    assert (aside / "cache.db").is_file() and value_files(aside)  # the old contents, kept for a post-mortem
    assert len(value_files(directory)) == 1  # only the new entry


@pytest.mark.parametrize("damage", [DB_DAMAGE["garbage"], DB_DAMAGE["truncated half"]], ids=["garbage", "half"])
def test_damaged_database_in_use_is_moved_aside_once(tmp_path: Path, damage: Any) -> None:
    directory = tmp_path / "cache"
    first, second = ArrayCache(directory), ArrayCache(directory)
    _fill(first)
    first.close()  # checkpoint the WAL, so the damage below is what the next reads see
    assert same(BIG, first.get_array("big"))
    assert same(BIG, second.get_array("big"))
    damage(directory / "cache.db")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [first.get_array(f"small{i:03d}") for i in range(200)]
        first.put_array("new", BIG)
        # The second handle notices on its own and adopts the new database rather than moving it aside.
        assert same(BIG, second.get_array("new"))
        second.put_array("from second", np.arange(3))
        assert same(np.arange(3), first.get_array("from second"))
    assert all(r is None or same(np.arange(100 + i), r) for i, r in enumerate(results))
    assert len(damage_warnings(caught)) == 1
    assert len(list(tmp_path.glob("cache.corrupt-*"))) == 1


def test_deleted_cache_directory_is_recreated(cache: ArrayCache) -> None:
    cache.put_array("k", BIG)
    import shutil

    shutil.rmtree(cache.directory)
    assert cache.get_array("k") is None
    cache.put_array("k", BIG)
    assert same(BIG, ArrayCache(cache.directory).get_array("k"))


# --- size limit ------------------------------------------------------------------------------------------------


def test_size_limit_evicts_least_recently_used(tmp_path: Path) -> None:
    probe = ArrayCache(tmp_path / "probe")
    probe.put_array("x", BIG)
    base = probe.volume() - BIG_ENTRY_SIZE  # the database's own pages
    cache = ArrayCache(tmp_path / "lru", size_limit=base + int(3.5 * BIG_ENTRY_SIZE))
    for name in ("e0", "e1", "e2"):
        cache.put_array(name, BIG)
    assert sorted(cache.keys()) == ["e0", "e1", "e2"]
    assert cache.get_array("e0") is not None  # e0 is now the most recently used
    # A write that goes over the limit evicts the two least recently used entries.
    cache.put_array("e3", BIG)
    assert sorted(cache.keys()) == ["e0", "e3"]
    cache.put_array("e4", BIG)
    assert sorted(cache.keys()) == ["e0", "e3", "e4"]
    assert cache.get_array("e3") is not None
    cache.put_array("e5", BIG)
    assert sorted(cache.keys()) == ["e3", "e5"]
    assert cache.volume() <= cache.size_limit  # type: ignore[operator]


def test_every_read_of_a_bounded_cache_counts_as_a_use(tmp_path: Path) -> None:
    """A repeated read must refresh recency too (an unbounded cache's warm reads skip SQLite; a bounded one's do
    not, or the entry read most would be evicted first)."""
    probe = ArrayCache(tmp_path / "probe")
    probe.put_array("x", BIG)
    base = probe.volume() - BIG_ENTRY_SIZE
    cache = ArrayCache(tmp_path / "lru", size_limit=base + int(3.5 * BIG_ENTRY_SIZE))
    for name in ("e0", "e1", "e2"):
        cache.put_array(name, BIG)
    for name in ("e0", "e1", "e0"):  # e0's second read is its last use: after e1's
        assert cache.get_array(name) is not None
    cache.put_array("e3", BIG)  # over the limit: the two least recently used go (e2, then e1)
    assert sorted(cache.keys()) == ["e0", "e3"]


def test_reopening_with_a_smaller_limit_evicts(tmp_path: Path) -> None:
    big = ArrayCache(tmp_path)
    for i in range(30):
        big.put_array(f"e{i:02d}", BIG)
    big.close()
    limit = 12 * BIG_ENTRY_SIZE
    small = ArrayCache(tmp_path, size_limit=limit)
    assert small.volume() <= limit
    # Evicted ten at a time, oldest first, until under the limit: 30 -> 20 -> 10.
    assert sorted(small.keys()) == [f"e{i}" for i in range(20, 30)]


def test_unbounded_cache_does_not_keep_diskcache_default_limit(cache: ArrayCache) -> None:
    import diskcache

    cache.put_array("k", BIG)
    # What the database records is what any handle (ours or diskcache's) applies.
    assert diskcache.Cache(str(cache.directory)).size_limit >= 2**62


# --- get_or_create ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("without_fcntl", [False, True], ids=["flock", "no-fcntl fallback"])
def test_get_or_create_threads_create_once(
    cache: ArrayCache, monkeypatch: pytest.MonkeyPatch, without_fcntl: bool
) -> None:
    if without_fcntl:
        monkeypatch.setattr(cache_module, "_fcntl", None)
    calls = []
    barrier = threading.Barrier(8)
    results: list[np.ndarray] = [np.empty(0)] * 8

    def create() -> np.ndarray:
        calls.append(1)
        time.sleep(0.2)
        return BIG

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = cache.get_or_create("k", create)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert all(same(BIG, result) for result in results)
    assert list((cache.directory / "locks").glob("*.lock")) == []  # lock files are removed after use


def _count_and_make(counter: Any) -> np.ndarray:
    with counter.get_lock():
        counter.value += 1
    time.sleep(0.5)
    return BIG


def _child_get_or_create(pickled: bytes, counter: Any, barrier: Any, results: Any) -> None:
    cache = pickle.loads(pickled)  # what spawn-started DataLoader workers do with a dataset's cache
    barrier.wait()
    value = cache.get_or_create("shared", lambda: _count_and_make(counter))
    results.put((bool(same(BIG, value)), cache.stats.hits, cache.stats.misses))


# fork keeps the test fast (spawn re-imports torch in every child); the cache reaches the children pickled,
# as it would under spawn, and is opened there for the first time.
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def test_get_or_create_two_processes_create_once(cache: ArrayCache) -> None:
    context: Any = multiprocessing.get_context(START_METHOD)
    counter = context.Value("i", 0)
    barrier = context.Barrier(2)
    results = context.Queue()
    pickled = pickle.dumps(cache)
    children = [
        context.Process(target=_child_get_or_create, args=(pickled, counter, barrier, results)) for _ in range(2)
    ]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert counter.value == 1
    assert all(ok for ok, _, _ in outcomes)
    # One child created (a miss, no hit); the other read the stored value (a hit, after a miss if it had to wait).
    assert sorted(hits for _, hits, _ in outcomes) == [0, 1]
    assert sorted(misses for _, _, misses in outcomes)[1] == 1
    assert same(BIG, cache.get_array("shared"))


def _fork_child(cache: ArrayCache, results: Any) -> None:
    fresh_stats = cache.stats == CacheStats()
    value = cache.get_array("k")
    cache.put_array("from child", np.arange(5))
    results.put((fresh_stats, bool(same(BIG, value)), cache.stats.hits))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="fork is POSIX-only")
def test_forked_child_reopens_its_own_handle(cache: ArrayCache) -> None:
    cache.put_array("k", BIG)
    assert same(BIG, cache.get_array("k"))  # the parent's handle is open and has counted a hit
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_fork_child, args=(cache, results))
    child.start()
    fresh_stats, ok, child_hits = results.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert fresh_stats and ok and child_hits == 1
    assert cache.stats.hits == 1  # the parent's counters are its own
    assert same(np.arange(5), cache.get_array("from child"))


def test_exception_in_create_stores_nothing(cache: ArrayCache) -> None:
    def fail() -> np.ndarray:
        raise ValueError("download failed")

    with pytest.raises(ValueError, match="download failed"):
        cache.get_or_create("k", fail)
    assert "k" not in cache and len(cache) == 0
    # The lock was released: the next caller creates normally.
    assert same(BIG, cache.get_or_create("k", lambda: BIG))
    assert same(BIG, cache.get_or_create("k", fail))  # stored now, so create is not called


def test_get_or_create_returns_stored_value_without_calling_create(cache: ArrayCache) -> None:
    cache.put_array("k", BIG)

    def never() -> np.ndarray:
        raise AssertionError("create called although the value is cached")

    assert same(BIG, cache.get_or_create("k", never))


# --- pickling, statistics, verify --------------------------------------------------------------------------------


def test_pickle_is_small_and_reopens(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path, size_limit=10**9)
    cache.put_array("k", BIG)
    payload = pickle.dumps(cache)
    assert len(payload) < 300
    assert b"sqlite" not in payload.lower() and b"Lock" not in payload
    clone = pickle.loads(payload)
    assert clone.directory == cache.directory and clone.size_limit == 10**9
    assert clone.stats == CacheStats()
    assert same(BIG, clone.get_array("k"))


def test_stats_count_exactly(cache: ArrayCache) -> None:
    assert cache.get_array("k") is None
    cache.put_array("k", BIG)
    assert same(BIG, cache.get_array("k"))
    assert same(BIG, cache.get_array("k"))
    assert cache.stats == CacheStats(
        hits=2, misses=1, corrupt=0, bytes_read=2 * BIG_ENTRY_SIZE, bytes_written=BIG_ENTRY_SIZE
    )
    (path,) = value_files(cache.directory)
    assert path.stat().st_size == BIG_ENTRY_SIZE
    os.truncate(path, 100)
    assert cache.get_array("k") is None
    assert (cache.stats.misses, cache.stats.corrupt, cache.stats.hits) == (2, 1, 2)
    cache.stats.reset()
    assert cache.stats == CacheStats()


def test_verify_finds_and_repairs(cache: ArrayCache) -> None:
    cache.put_array("good1", BIG)
    cache.put_array("good2", np.arange(3))  # small: stored inside SQLite
    cache.put_json("job", {"status": "completed"})
    paths = _files_by_key(cache, ["truncated", "flipped", "gone"])
    os.truncate(paths["truncated"], 1000)
    _overwrite(paths["flipped"], 70_000, b"\x01")
    paths["gone"].unlink()

    report = cache.verify()
    assert report == VerifyReport(checked=6, bad=["flipped", "gone", "truncated"], repaired=0)
    assert len(cache) == 6 and cache.stats.corrupt == 0  # verify alone changes nothing
    report = cache.verify(repair=True)
    assert report == VerifyReport(checked=6, bad=["flipped", "gone", "truncated"], repaired=3)
    assert sorted(cache.keys()) == ["good1", "good2", "job"]
    assert cache.verify() == VerifyReport(checked=3, bad=[], repaired=0)


def _files_by_key(cache: ArrayCache, keys: list[str]) -> dict[str, Path]:
    """Map keys to their value files: each key gets a distinct array, recognised by its payload."""
    found = {}
    for index, key in enumerate(keys):
        marker = np.full(BIG.size, index + 1000.0)
        cache.put_array(key, marker)
        (found[key],) = [p for p in value_files(cache.directory) if _holds(p, marker)]
    return found


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_payload_check_is_remembered_only_for_a_settled_file_version(cache: ArrayCache, monkeypatch) -> None:
    array = np.arange(100_000, dtype=np.float32)
    cache.put_array("k", array)
    (path,) = value_files(cache.directory)
    old = time.time() - 60
    os.utime(path, (old, old))
    sums = []
    real = cache_module._payload_sums
    monkeypatch.setattr(cache_module, "_payload_sums", lambda words: sums.append(1) or real(words))
    for _ in range(3):
        np.testing.assert_array_equal(cache.get_array("k"), array)
    assert len(sums) == 1, "a settled file's payload is checked once per process"
    # Any rewrite gives the file a new modification time: the next read checks the payload again.
    _flip_middle_byte(path)
    assert cache.get_array("k") is None and cache.stats.corrupt == 1


def test_a_fresh_file_is_checked_on_every_read(cache: ArrayCache) -> None:
    array = np.arange(100_000, dtype=np.int64)
    cache.put_array("k", array)
    (path,) = value_files(cache.directory)
    np.testing.assert_array_equal(cache.get_array("k"), array)
    # Damage that keeps size and modification time (file times tick coarsely): still caught, because a file
    # written moments ago is not trusted on its stat data.
    status = path.stat()
    _flip_middle_byte(path)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert cache.get_array("k") is None and cache.stats.corrupt == 1


def test_verify_always_checks_payloads(cache: ArrayCache) -> None:
    cache.put_array("k", np.arange(100_000, dtype=np.int64))
    (path,) = value_files(cache.directory)
    old = time.time() - 60
    os.utime(path, (old, old))
    assert cache.get_array("k") is not None
    status = path.stat()
    _flip_middle_byte(path)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert cache.verify().bad == ["k"]
