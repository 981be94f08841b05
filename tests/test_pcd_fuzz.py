"""Fuzz tests for playment_torch.formats.pcd: damaged files raise PlaymentFormatError or decode, nothing else.

Warnings are errors here: a numpy warning escaping the reader is a bug.
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shared_data import HAVE_SHARED_DATA, PCD_FILES

from playment_torch.errors import PlaymentFormatError
from playment_torch.formats.pcd import PointCloud, encode_pcd, read_pcd

pytestmark = pytest.mark.filterwarnings("error")

ENCODINGS = ("ascii", "binary", "binary_compressed")


def _generated_cloud() -> np.ndarray:
    data = np.zeros(
        6, dtype=[("x", "<f4"), ("_", "<u2"), ("t", "<f8"), ("rgb", "u1", (3,)), ("label", "<i4"), ("id", "<u8")]
    )
    data["x"] = [0.5, -1.5, np.nan, np.inf, 3.25, 0]
    data["_"] = 7
    data["t"] = np.linspace(-1e10, 1e10, 6)
    data["rgb"] = np.arange(18).reshape(6, 3)
    data["label"] = [-(2**31), 2**31 - 1, 0, 1, -1, 5]
    data["id"] = [0, 2**64 - 1, 1, 2, 3, 4]
    return data


GENERATED = {e: encode_pcd(_generated_cloud(), encoding=e) for e in ENCODINGS}
SHIPPED = [
    "pcdrs__mixed_types_compressed.pcd",
    "pypcd4__ascii_multi_count.pcd",
    "pcl__octants.pcd",
    "pypcd4__binary_compressed_organized.pcd",
    "pcdrs__test_v06_binary.pcd",
    "pcdrs__padding_ascii.pcd",
]
# Real files seed the fuzzer where ../shared/data is present; the generated clouds cover every encoding anyway.
SEEDS: list[bytes] = [*GENERATED.values(), *((PCD_FILES / name).read_bytes() for name in SHIPPED if HAVE_SHARED_DATA)]


def decode_or_format_error(blob: bytes) -> PointCloud | None:
    """Only a successful, self-consistent parse or PlaymentFormatError may come out."""
    try:
        cloud = read_pcd(blob)
    except PlaymentFormatError as exc:
        assert str(exc), "errors must say what is wrong"
        return None
    header = cloud.header
    assert len(cloud) == header.points == header.width * header.height
    assert cloud.data.dtype.itemsize == header.point_size
    assert cloud.data.dtype.names == header.fields
    return cloud


@settings(max_examples=250, deadline=None)
@given(seed=st.sampled_from(SEEDS), fraction=st.floats(0.0, 1.0))
def test_truncated_files(seed: bytes, fraction: float) -> None:
    cut = int(len(seed) * fraction)
    decode_or_format_error(seed[:cut])


@pytest.mark.parametrize("encoding", ["binary", "binary_compressed"])
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_truncated_binary_data_never_decodes_partially(encoding: str, data: st.DataObject) -> None:
    blob = GENERATED[encoding]
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(PlaymentFormatError):
        read_pcd(blob[:cut])


@settings(max_examples=300, deadline=None)
@given(
    seed=st.sampled_from(SEEDS),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_byte_flips(seed: bytes, flips: list[tuple[float, int]]) -> None:
    blob = bytearray(seed)
    for where, value in flips:
        blob[int(where * len(blob))] = value
    decode_or_format_error(bytes(blob))


@settings(max_examples=150, deadline=None)
@given(seed=st.sampled_from(SEEDS), where=st.floats(0.0, 1.0), junk=st.binary(min_size=1, max_size=64))
def test_inserted_and_deleted_bytes(seed: bytes, where: float, junk: bytes) -> None:
    at = int(where * len(seed))
    decode_or_format_error(seed[:at] + junk + seed[at:])
    decode_or_format_error(seed[:at] + seed[at + len(junk) :])


number_tokens = st.sampled_from(["0", "1", "2", "3", "4", "8", "-1", "x", "1.5", "1000000000", "", "99999999999"])
header_lines = st.one_of(
    st.builds(lambda n: "VERSION " + n, st.sampled_from([".5", ".6", "0.7", "", "a b"])),
    st.builds(lambda f: "FIELDS " + " ".join(f), st.lists(st.sampled_from(["x", "y", "_", "X", "rgb"]), max_size=4)),
    st.builds(lambda f: "COLUMNS " + " ".join(f), st.lists(st.sampled_from(["x", "y", "_"]), max_size=3)),
    st.builds(lambda v: "SIZE " + " ".join(v), st.lists(number_tokens, max_size=4)),
    st.builds(lambda v: "TYPE " + " ".join(v), st.lists(st.sampled_from(["I", "U", "F", "f", "X", "1"]), max_size=4)),
    st.builds(lambda v: "COUNT " + " ".join(v), st.lists(number_tokens, max_size=4)),
    st.builds(lambda v: "WIDTH " + v, number_tokens),
    st.builds(lambda v: "HEIGHT " + v, number_tokens),
    st.builds(lambda v: "POINTS " + v, number_tokens),
    st.builds(lambda v: "VIEWPOINT " + " ".join(v), st.lists(number_tokens, max_size=8)),
    st.just("# comment"),
    st.just(""),
    st.text(max_size=12),
)
bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(["1 2 3\n4 5 6\n", "1\n", "nan inf\n", ""]).map(str.encode),
    st.sampled_from([GENERATED["binary"][-120:], GENERATED["binary_compressed"][-80:]]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(header_lines, max_size=10),
    data_line=st.sampled_from(["DATA ascii", "DATA binary", "DATA binary_compressed", "DATA zip", "DATA", ""]),
    body=bodies,
)
def test_random_headers(lines: list[str], data_line: str, body: bytes) -> None:
    blob = ("\n".join([*lines, data_line]) + "\n").encode("utf-8", "surrogatepass") + body
    decode_or_format_error(blob)


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_valid_files_with_one_header_line_rewritten(encoding: str, data: st.DataObject) -> None:
    blob = GENERATED[encoding]
    offset = read_pcd(blob).header.data_offset
    lines = blob[:offset].decode().splitlines()
    index = data.draw(st.integers(0, len(lines) - 1))
    keyword = lines[index].split()[0]
    values = data.draw(st.lists(st.one_of(number_tokens, st.sampled_from(["F", "U", "I", "_", "x"])), max_size=8))
    lines[index] = " ".join([keyword, *values])
    decode_or_format_error(("\n".join(lines) + "\n").encode() + blob[offset:])


def _claim(blob: bytes, points: int) -> bytes:
    header_end = read_pcd(blob).header.data_offset
    header = blob[:header_end].decode()
    lines = [
        f"WIDTH {points}" if line.startswith("WIDTH") else f"POINTS {points}" if line.startswith("POINTS") else line
        for line in header.splitlines()
    ]
    return ("\n".join(lines) + "\n").encode() + blob[header_end:]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("points", [10**9, 2**32 + 6, 10**15])
def test_huge_point_claims_fail_fast_without_allocating(encoding: str, points: int) -> None:
    blob = _claim(GENERATED[encoding], points)
    assert len(blob) < 2048
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(PlaymentFormatError, match=str(points)):
            read_pcd(blob)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5, elapsed
    assert peak < 1_000_000, peak


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_huge_count_claim_fails_fast(encoding: str) -> None:
    blob = GENERATED[encoding].replace(b"COUNT 1 1 1 3 1 1", b"COUNT 1 1 1 300000000 1 1")
    assert blob != GENERATED[encoding]
    start = time.perf_counter()
    with pytest.raises(PlaymentFormatError):
        read_pcd(blob)
    assert time.perf_counter() - start < 0.5
