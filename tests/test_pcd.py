"""Tests for playment_torch.formats.pcd: reference files, header variants, bad input, writer round trips."""

from __future__ import annotations

import io
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import lzf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from shared_data import PCD_DATA as DATA
from shared_data import requires_shared_data, shared_files

from playment_torch.errors import PlaymentFormatError
from playment_torch.formats.pcd import PCDHeader, PointCloud, encode_pcd, read_pcd, write_pcd

FILES = shared_files()
GOOD_FILES = [f for f in FILES if "corrupt" not in f.name]
ENCODINGS = ("ascii", "binary", "binary_compressed")


def same_values(got: np.ndarray, want: np.ndarray, *, nan_payloads: bool = True) -> bool:
    """Exact equality; floats compare bit for bit (or NaN-for-NaN when payloads cannot survive)."""
    if got.shape != want.shape:
        return False
    if got.dtype.kind != "f":
        return bool(np.array_equal(got, want))
    want = want.astype(want.dtype.newbyteorder("<"))
    got = got.astype(got.dtype.newbyteorder("<"))
    if nan_payloads:
        return got.tobytes() == want.tobytes()
    nan = np.isnan(want)
    if not np.array_equal(np.isnan(got), nan):
        return False
    return got[~nan].tobytes() == want[~nan].tobytes()


# ---------------------------------------------------------------------------------------------------------
# Reference files
# ---------------------------------------------------------------------------------------------------------


@requires_shared_data
def test_reference_data_is_present() -> None:
    assert len(GOOD_FILES) >= 30, f"shared test data missing under {DATA}"


@requires_shared_data
@pytest.mark.parametrize("path", GOOD_FILES, ids=lambda p: p.name)
def test_reference_file_matches_expected(path: Path) -> None:
    cloud = read_pcd(path)
    expected = np.load(DATA / "expected" / f"{path.name}.npz")
    assert list(cloud.data.dtype.names) == list(expected.files)
    assert cloud.data.ndim == 1
    assert len(cloud) == cloud.header.points == cloud.header.width * cloud.header.height
    for name in expected.files:
        got, want = cloud.data[name], expected[name]
        assert got.dtype == want.dtype, name
        assert same_values(got, want), name


@requires_shared_data
@pytest.mark.parametrize(
    ("name", "encoding", "width", "height", "version", "viewpoint"),
    [
        ("patchwork__000000.pcd", "binary_compressed", 1875, 128, "0.7", (0, 0, 0, 1, 0, 0, 0)),
        ("pcl__pcl_logo.pcd", "binary_compressed", 12909, 1, "0.7", (0, 0, -2, 0, 1, 0, 0)),
        ("pcl__colored_cloud.pcd", "binary", 1, 1000, "0.7", (0, 0, 0, 1, 0, 0, 0)),
        ("pcdrs__legacy_v05.pcd", "ascii", 3, 1, ".5", (0, 0, 0, 1, 0, 0, 0)),
        ("pcl__bunny.pcd", "ascii", 397, 1, ".5", (0, 0, 0, 1, 0, 0, 0)),
        ("pypcd4__ascii_with_empty_points.pcd", "ascii", 0, 0, ".7", (0, 0, 0, 1, 0, 0, 0)),
        ("pcdrs__test_v06_mixed_types.pcd", "binary", 1, 1, "0.6", (0, 0, 0, 1, 0, 0, 0)),
    ],
)
def test_reference_file_headers(
    name: str, encoding: str, width: int, height: int, version: str, viewpoint: tuple[float, ...]
) -> None:
    header = read_pcd(DATA / "files" / name).header
    assert (header.encoding, header.width, header.height, header.version) == (encoding, width, height, version)
    assert header.viewpoint == tuple(float(v) for v in viewpoint)
    assert header.points == width * height


@requires_shared_data
def test_count_64_field_header_and_layout() -> None:
    cloud = read_pcd(DATA / "files" / "pcl__brisk_descriptors_gt.pcd")
    assert cloud.header.counts == (1, 1, 64)
    assert cloud.data.dtype["brisk_descriptor512"].shape == (64,)
    assert cloud.data["brisk_descriptor512"].shape == (1534, 64)


@requires_shared_data
def test_corrupt_compressed_file_raises() -> None:
    with pytest.raises(PlaymentFormatError, match=r"byte \d+"):
        read_pcd(DATA / "files" / "pcdrs__corrupt_compressed.pcd")


@requires_shared_data
@pytest.mark.parametrize(
    "as_source",
    [
        lambda p: p,
        lambda p: str(p),
        lambda p: p.read_bytes(),
        lambda p: bytearray(p.read_bytes()),
        lambda p: memoryview(p.read_bytes()),
    ],
    ids=["pathlike", "str", "bytes", "bytearray", "memoryview"],
)
@pytest.mark.parametrize("name", ["pcdrs__binary.pcd", "pcl__milk_color.pcd", "pcl__bun0.pcd"])
def test_sources_decode_alike_and_own_their_memory(as_source: Callable[[Path], object], name: str) -> None:
    path = DATA / "files" / name
    source = as_source(path)
    cloud = read_pcd(source)  # type: ignore[arg-type]
    reference = read_pcd(path.read_bytes())
    assert cloud.data.tobytes() == reference.data.tobytes()
    assert cloud.data.dtype == reference.data.dtype
    assert cloud.data.flags.writeable
    if isinstance(source, bytes | bytearray | memoryview):
        assert not np.shares_memory(cloud.data, np.frombuffer(source, dtype=np.uint8))


@requires_shared_data
def test_binary_dtype_is_packed_like_the_file() -> None:
    cloud = read_pcd(DATA / "files" / "patchwork__000000.pcd")
    dtype = cloud.data.dtype
    assert dtype.itemsize == 4 + 4 + 4 + 8 + 1 + 2 + 4
    assert [dtype.fields[n][1] for n in dtype.names] == [0, 4, 8, 12, 20, 21, 23]
    assert all(dtype[n].byteorder in "<|=" for n in dtype.names)
    assert dtype == cloud.header.dtype()


# ---------------------------------------------------------------------------------------------------------
# Header variants (ASCII text built by hand)
# ---------------------------------------------------------------------------------------------------------

BASE_HEADER = [
    "# .PCD v0.7 - Point Cloud Data file format",
    "VERSION 0.7",
    "FIELDS x y z label",
    "SIZE 4 4 4 2",
    "TYPE F F F U",
    "COUNT 1 1 1 1",
    "WIDTH 3",
    "HEIGHT 1",
    "VIEWPOINT 0 0 0 1 0 0 0",
    "POINTS 3",
    "DATA ascii",
]
BASE_ROWS = ["1.5 -2 3e2 7", "nan inf -inf 0", "0 -0 1e-3 65535"]
BASE_X = np.array([1.5, np.nan, 0], dtype=np.float32)
BASE_Y = np.array([-2, np.inf, -0.0], dtype=np.float32)
BASE_Z = np.array([300, -np.inf, 1e-3], dtype=np.float32)
BASE_LABEL = np.array([7, 0, 65535], dtype=np.uint16)


def build(header: list[str], rows: list[str], *, eol: str = "\n", final_eol: bool = True) -> bytes:
    text = eol.join(header + rows) + (eol if final_eol else "")
    return text.encode()


def drop(keyword: str) -> Callable[[list[str]], list[str]]:
    return lambda h: [line for line in h if not line.startswith(keyword + " ")]


def replace(keyword: str, line: str) -> Callable[[list[str]], list[str]]:
    return lambda h: [line if old.startswith(keyword + " ") else old for old in h]


HEADER_VARIANTS: dict[str, Callable[[], bytes]] = {
    "plain": lambda: build(BASE_HEADER, BASE_ROWS),
    "crlf": lambda: build(BASE_HEADER, BASE_ROWS, eol="\r\n"),
    "tabs": lambda: build([h.replace(" ", "\t") for h in BASE_HEADER[1:]], [r.replace(" ", "\t") for r in BASE_ROWS]),
    "runs_of_spaces_and_trailing_space": lambda: build(
        [h.replace(" ", "  ") + " " for h in BASE_HEADER[1:]], ["  " + r.replace(" ", " \t ") + "  " for r in BASE_ROWS]
    ),
    "columns_keyword": lambda: build(replace("FIELDS", "COLUMNS x y z label")(BASE_HEADER), BASE_ROWS),
    "v05_without_viewpoint": lambda: build(drop("VIEWPOINT")(replace("VERSION", "VERSION .5")(BASE_HEADER)), BASE_ROWS),
    "comments_and_blank_lines": lambda: build(
        ["# first", "#second", *BASE_HEADER[1:4], "   # indented comment", "", *BASE_HEADER[4:]], BASE_ROWS
    ),
    "no_count": lambda: build(drop("COUNT")(BASE_HEADER), BASE_ROWS),
    "no_points": lambda: build(drop("POINTS")(BASE_HEADER), BASE_ROWS),
    "no_width": lambda: build(drop("WIDTH")(BASE_HEADER), BASE_ROWS),
    "no_height": lambda: build(drop("HEIGHT")(BASE_HEADER), BASE_ROWS),
    "only_points": lambda: build(drop("WIDTH")(drop("HEIGHT")(BASE_HEADER)), BASE_ROWS),
    "lowercase_keywords": lambda: build(
        [h if h.startswith("#") else h.split(" ", 1)[0].lower() + " " + h.split(" ", 1)[1] for h in BASE_HEADER],
        BASE_ROWS,
    ),
    "no_final_newline": lambda: build(BASE_HEADER, BASE_ROWS, final_eol=False),
    "trailing_blank_lines": lambda: build(BASE_HEADER, [*BASE_ROWS, "", "   ", ""]),
    "nan_inf_spellings": lambda: build(BASE_HEADER, [BASE_ROWS[0], "NaN +Inf -INF 0", BASE_ROWS[2]]),
    "other_float_spellings": lambda: build(BASE_HEADER, ["1.50 -2.0 3.0E+02 7", "-nan Infinity -inf 0", BASE_ROWS[2]]),
    "header_keywords_reordered": lambda: build([*reversed(BASE_HEADER[1:-1]), BASE_HEADER[-1]], BASE_ROWS),
}


@pytest.mark.parametrize("variant", list(HEADER_VARIANTS))
def test_header_variants_decode_the_same_cloud(variant: str) -> None:
    # Bytes must not end inside their last value (test_pcd_ends.py); a file may, as PCL reads it.
    cloud = read_pcd(HEADER_VARIANTS[variant](), require_final_newline=variant != "no_final_newline")
    assert cloud.header.fields == ("x", "y", "z", "label")
    assert (cloud.header.width, cloud.header.height, cloud.header.points) == (3, 1, 3)
    assert cloud.header.counts == (1, 1, 1, 1)
    assert cloud.header.viewpoint == (0, 0, 0, 1, 0, 0, 0)
    assert cloud.header.encoding == "ascii"
    assert same_values(cloud.data["x"], BASE_X, nan_payloads=False)
    assert same_values(cloud.data["y"], BASE_Y)
    assert same_values(cloud.data["z"], BASE_Z)
    assert same_values(cloud.data["label"], BASE_LABEL)
    assert cloud.data.dtype["label"] == np.dtype("<u2")


def test_header_fields_and_offset() -> None:
    blob = build(BASE_HEADER, BASE_ROWS)
    header = read_pcd(blob).header
    assert header.data_offset == blob.index(b"1.5 -2")
    assert header.version == "0.7"
    assert header.sizes == (4, 4, 4, 2)
    assert header.types == ("F", "F", "F", "U")
    assert header.point_size == 14
    v05 = read_pcd(HEADER_VARIANTS["v05_without_viewpoint"]()).header
    assert v05.version == ".5"


def test_uppercase_field_names_are_kept() -> None:
    blob = build(replace("FIELDS", "FIELDS X Y Z Label")(BASE_HEADER), BASE_ROWS)
    cloud = read_pcd(blob)
    assert cloud.data.dtype.names == ("X", "Y", "Z", "Label")
    assert same_values(cloud.data["Label"], BASE_LABEL)


def test_organized_dimensions_derive_from_points_and_one_side() -> None:
    header = replace("WIDTH", "WIDTH 1")(replace("HEIGHT", "HEIGHT 3")(BASE_HEADER))
    cloud = read_pcd(build(drop("WIDTH")(header), BASE_ROWS))
    assert (cloud.header.width, cloud.header.height) == (1, 3)
    cloud = read_pcd(build(drop("HEIGHT")(header), BASE_ROWS))
    assert (cloud.header.width, cloud.header.height) == (1, 3)
    cloud = read_pcd(build(drop("POINTS")(header), BASE_ROWS))
    assert (cloud.header.width, cloud.header.height, cloud.header.points) == (1, 3, 3)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(("width", "height"), [(0, 1), (0, 0), (5, 0)])
def test_points_zero_in_every_encoding(encoding: str, width: int, height: int) -> None:
    empty = np.zeros(0, dtype=[("x", "<f4"), ("ring", "<u2", (3,))])
    blob = encode_pcd(empty, encoding=encoding, width=width, height=height)
    cloud = read_pcd(blob)
    assert len(cloud) == 0
    assert cloud.data.dtype.names == ("x", "ring")
    assert cloud.data.dtype["ring"].shape == (3,)
    assert (cloud.header.width, cloud.header.height, cloud.header.points) == (width, height, 0)


def test_points_zero_compressed_without_size_words() -> None:
    blob = encode_pcd(np.zeros(0, dtype=[("x", "<f4")]), encoding="binary_compressed")
    assert len(read_pcd(blob[:-8])) == 0


@pytest.mark.parametrize("encoding", ["binary", "binary_compressed", "ascii"])
@pytest.mark.parametrize("trailing", [b"\x00" * 3914, b"garbage\n", b"\xff", b"1 2 3 4 5 6\n7 8 9\n"])
def test_trailing_bytes_after_the_data_are_ignored(encoding: str, trailing: bytes) -> None:
    # PCL reads POINTS points and stops: whatever follows (padding, junk, extra rows) is ignored.
    data = sample_cloud()
    cloud = read_pcd(encode_pcd(data, encoding=encoding) + trailing)
    assert cloud.data.tobytes() == encode_pcd(data, encoding="binary")[-data.size * 18 :]


def test_ascii_rows_after_points_zero_are_ignored() -> None:
    blob = build([*BASE_HEADER[:6], "WIDTH 0", "HEIGHT 1", "POINTS 0", "DATA ascii"], ["1 2 3 4"])
    assert len(read_pcd(blob)) == 0


def test_crlf_header_before_binary_data() -> None:
    data = sample_cloud()
    blob = encode_pcd(data, encoding="binary")
    header_end = blob.index(b"DATA binary\n") + len(b"DATA binary\n")
    crlf = blob[:header_end].replace(b"\n", b"\r\n") + blob[header_end:]
    assert read_pcd(crlf).data.tobytes() == read_pcd(blob).data.tobytes()


def sample_cloud(n: int = 7) -> np.ndarray:
    data = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"), ("ring", "<u2")])
    data["x"] = np.arange(n) * 1.25
    data["y"] = -np.arange(n)
    data["z"] = np.nan
    data["intensity"] = np.linspace(0, 255, n)
    data["ring"] = np.arange(n) * 1000
    return data


def test_repeated_padding_fields_get_distinct_names() -> None:
    header = [
        "VERSION .7",
        "FIELDS x _ _ y _",
        "SIZE 4 4 1 4 2",
        "TYPE F U U F I",
        "WIDTH 2",
        "HEIGHT 1",
        "POINTS 2",
        "DATA ascii",
    ]
    cloud = read_pcd(build(header, ["1 99 5 2 -1", "3 98 6 4 -2"]))
    assert cloud.data.dtype.names == ("x", "_", "_1", "y", "_2")
    assert cloud.header.fields == ("x", "_", "_1", "y", "_2")
    assert cloud.data["_"].tolist() == [99, 98]
    assert cloud.data["_1"].tolist() == [5, 6]
    assert cloud.data["_2"].tolist() == [-1, -2]
    assert cloud.data["y"].tolist() == [2, 4]


def test_padding_renaming_skips_taken_names() -> None:
    header = ["FIELDS _ _1 _", "SIZE 1 1 1", "TYPE U U U", "WIDTH 1", "DATA ascii"]
    cloud = read_pcd(build(header, ["1 2 3"]))
    assert cloud.data.dtype.names == ("_", "_1", "_2")
    assert cloud.data.tolist() == [(1, 2, 3)]


def compressed_blob(header_lines: list[str], payload: bytes) -> bytes:
    packed = lzf.compress(payload, len(payload) + 64)
    sizes = np.array([len(packed), len(payload)], dtype="<u4").tobytes()
    return ("\n".join(header_lines) + "\n").encode() + sizes + packed


def test_compressed_layout_is_pcl_field_by_field_point_by_point_without_padding() -> None:
    # Built by hand in PCL's layout, independently of encode_pcd.
    n = 3
    x = np.array([1.0, 2.0, 3.0], dtype="<f4")
    desc = np.arange(n * 4, dtype="u1").reshape(n, 4)  # point i holds 4i .. 4i+3
    ring = np.array([10, 20, 30], dtype="<u2")
    header = [
        "VERSION 0.7",
        "FIELDS x _ desc ring",
        "SIZE 4 4 1 2",
        "TYPE F F U U",
        "COUNT 1 1 4 1",
        f"WIDTH {n}",
        "HEIGHT 1",
        f"POINTS {n}",
        "DATA binary_compressed",
    ]
    cloud = read_pcd(compressed_blob(header, x.tobytes() + desc.tobytes() + ring.tobytes()))
    assert cloud.data["x"].tolist() == x.tolist()
    assert cloud.data["desc"].tolist() == desc.tolist()
    assert cloud.data["ring"].tolist() == ring.tolist()
    assert cloud.data["_"].tolist() == [0.0, 0.0, 0.0]
    # and the writer produces exactly that layout
    again = encode_pcd(cloud.data, encoding="binary_compressed")
    offset = read_pcd(again).header.data_offset
    size, raw_size = np.frombuffer(again, dtype="<u4", count=2, offset=offset)
    assert raw_size == n * (4 + 4 + 2)
    assert lzf.decompress(again[offset + 8 : offset + 8 + size], raw_size) == (
        x.tobytes() + desc.tobytes() + ring.tobytes()
    )


def test_ascii_integers_keep_full_precision() -> None:
    header = ["FIELDS a b c", "SIZE 8 8 8", "TYPE I U F", "WIDTH 2", "DATA ascii"]
    rows = ["-9223372036854775808 18446744073709551615 9007199254740993", "9223372036854775807 9007199254740993 0"]
    cloud = read_pcd(build(header, rows))
    assert cloud.data["a"].tolist() == [-(2**63), 2**63 - 1]
    assert cloud.data["b"].tolist() == [2**64 - 1, 2**53 + 1]
    assert cloud.data["c"].dtype == np.dtype("<f8")


def test_organized_cloud_stays_one_dimensional_row_major() -> None:
    grid = np.zeros((2, 3), dtype=[("v", "<i4")])
    grid["v"] = [[0, 1, 2], [10, 11, 12]]
    for encoding in ENCODINGS:
        cloud = read_pcd(encode_pcd(grid, encoding=encoding))
        assert (cloud.header.width, cloud.header.height) == (3, 2)
        assert cloud.data["v"].tolist() == [0, 1, 2, 10, 11, 12]


# ---------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------


def bad_header(change: Callable[[list[str]], list[str]]) -> bytes:
    return build(change(BASE_HEADER), BASE_ROWS)


BAD_FILES: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty": (lambda: b"", r"without FIELDS and DATA"),
    "missing_fields": (lambda: bad_header(drop("FIELDS")), r"no FIELDS"),
    "missing_data": (lambda: "\n".join(BASE_HEADER[:-1]).encode(), r"without DATA"),
    "missing_size": (lambda: bad_header(drop("SIZE")), r"no SIZE"),
    "missing_type": (lambda: bad_header(drop("TYPE")), r"no TYPE"),
    "points_vs_width_height": (lambda: bad_header(replace("POINTS", "POINTS 4")), r"POINTS 4 \(line 10\)"),
    "size_count_mismatch": (lambda: bad_header(replace("SIZE", "SIZE 4 4 4")), r"SIZE on line 4 has 3 values"),
    "type_count_mismatch": (lambda: bad_header(replace("TYPE", "TYPE F F F U U")), r"TYPE on line 5 has 5"),
    "count_count_mismatch": (lambda: bad_header(replace("COUNT", "COUNT 1")), r"COUNT on line 6 has 1"),
    "unknown_type": (lambda: bad_header(replace("TYPE", "TYPE F F F X")), r"unknown TYPE 'X'"),
    "float_size_2": (lambda: bad_header(replace("TYPE", "TYPE F F F F")), r"SIZE 2 is not valid for TYPE F"),
    "int_size_3": (lambda: bad_header(replace("SIZE", "SIZE 4 4 4 3")), r"SIZE 3 is not valid"),
    "negative_size": (lambda: bad_header(replace("SIZE", "SIZE 4 -4 4 2")), r"SIZE value '-4' on line 4"),
    "non_numeric_size": (lambda: bad_header(replace("SIZE", "SIZE 4 four 4 2")), r"SIZE value 'four'"),
    "count_zero": (lambda: bad_header(replace("COUNT", "COUNT 1 1 0 1")), r"COUNT 0 of field 'z'"),
    "non_numeric_width": (lambda: bad_header(replace("WIDTH", "WIDTH 3.0")), r"WIDTH value '3.0' on line 7"),
    "huge_width_digits": (lambda: bad_header(replace("WIDTH", "WIDTH " + "9" * 5000)), r"implausibly large"),
    "unknown_data": (lambda: bad_header(replace("DATA", "DATA binary_lz4")), r"unknown DATA 'binary_lz4' on line 11"),
    "data_without_value": (lambda: bad_header(replace("DATA", "DATA")), r"unknown DATA '' on line 11"),
    "unknown_keyword": (lambda: bad_header(lambda h: [*h[:3], "COLOR red", *h[3:]]), r"'COLOR' on line 4"),
    "duplicate_keyword": (lambda: bad_header(lambda h: [*h[:3], "SIZE 4 4 4 2", *h[3:]]), r"SIZE given twice"),
    "duplicate_field": (lambda: bad_header(replace("FIELDS", "FIELDS x y x label")), r"'x' appears twice"),
    "viewpoint_six_numbers": (lambda: bad_header(replace("VIEWPOINT", "VIEWPOINT 0 0 0 1 0 0")), r"6 values, not 7"),
    "viewpoint_not_numbers": (lambda: bad_header(replace("VIEWPOINT", "VIEWPOINT 0 0 0 1 0 0 a")), r"not 7 numbers"),
    "no_dimensions": (lambda: bad_header(lambda h: drop("POINTS")(drop("WIDTH")(h))), r"neither POINTS nor WIDTH"),
    "points_not_multiple_of_height": (
        lambda: bad_header(lambda h: replace("HEIGHT", "HEIGHT 2")(drop("WIDTH")(h))),
        r"not a multiple of HEIGHT 2",
    ),
    "binary_header_bytes": (lambda: b"VERSION 0.7\n\xff\xfe\x00\x01\n", r"line 2 at byte 12 is not text"),
    "ascii_too_few_values": (lambda: build(BASE_HEADER, ["1 2 3 4", "1 2 3", "1 2 3 4"]), r"line 13 has 3 values"),
    "ascii_too_many_values": (lambda: build(BASE_HEADER, ["1 2 3 4", "1 2 3 4 5", "1 2 3 4"]), r"line 13 has 5"),
    "ascii_missing_line": (lambda: build(BASE_HEADER, BASE_ROWS[:2]), r"ends on line 13 after 2 of POINTS 3"),
    "ascii_no_data": (lambda: build(BASE_HEADER, ["", " "]), r"after 0 of POINTS 3"),
    "ascii_bad_float": (lambda: build(BASE_HEADER, ["1 2 3 4", "1 2 3,5 4", "1 2 3 4"]), r"line 13: '3,5'"),
    "ascii_int_out_of_range": (lambda: build(BASE_HEADER, ["1 2 3 65536", *BASE_ROWS[1:]]), r"line 12: '65536'"),
    "ascii_negative_unsigned": (lambda: build(BASE_HEADER, ["1 2 3 -1", *BASE_ROWS[1:]]), r"U2 value"),
    "ascii_float_for_int": (lambda: build(BASE_HEADER, ["1 2 3 4.0", *BASE_ROWS[1:]]), r"'4.0' is not a valid U2"),
    "ascii_nan_for_int": (lambda: build(BASE_HEADER, ["1 2 3 nan", *BASE_ROWS[1:]]), r"'nan' is not a valid U2"),
    "ascii_huge_points_claim": (
        lambda: build([*BASE_HEADER[:6], "WIDTH 1000000000", "HEIGHT 1", "DATA ascii"], BASE_ROWS),
        r"after 3 of POINTS 1000000000",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_input_raises_format_error_naming_where(case: str) -> None:
    make, message = BAD_FILES[case]
    with pytest.raises(PlaymentFormatError, match=message):
        read_pcd(make())


def binary_cases() -> dict[str, tuple[bytes, str]]:
    data = sample_cloud(10)
    binary = encode_pcd(data, encoding="binary")
    compressed = encode_pcd(data, encoding="binary_compressed")
    offset = read_pcd(compressed).header.data_offset
    csize, usize = (int(v) for v in np.frombuffer(compressed, dtype="<u4", count=2, offset=offset))
    body = compressed[offset + 8 :]

    def with_sizes(c: int, u: int, payload: bytes = body) -> bytes:
        return compressed[:offset] + np.array([c, u], dtype="<u4").tobytes() + payload

    big = encode_pcd(sample_cloud(1000), encoding="binary_compressed")
    big_header = big[: read_pcd(big).header.data_offset]
    corrupt = bytearray(body)
    corrupt[0] = 0xFF  # a back-reference before the start of the output
    return {
        "binary_truncated": (binary[:-1], r"binary data truncated: POINTS 10 x 18 bytes = 180 bytes"),
        "binary_header_only": (binary[: read_pcd(binary).header.data_offset], r"only 0 bytes follow"),
        "compressed_truncated_payload": (compressed[:-3], rf"compressed size {csize} at byte {offset} exceeds"),
        "compressed_no_size_words": (compressed[: offset + 5], r"no size words at byte"),
        "compressed_size_beyond_file": (with_sizes(10**9, usize), r"exceeds the"),
        "uncompressed_size_mismatch": (with_sizes(csize, usize + 1), rf"uncompressed size {usize + 1} at byte"),
        "uncompressed_size_too_small": (with_sizes(csize, usize - 18), r"!= POINTS 10 x 18 bytes = 180"),
        "corrupt_lzf": (with_sizes(csize, usize, bytes(corrupt)), rf"corrupt LZF data at byte {offset + 8}"),
        "lzf_decodes_short": (with_sizes(csize - 2, usize, body[:-2]), r"LZF data at byte|corrupt LZF"),
        "impossible_expansion": (
            big_header + np.array([4, 18000], dtype="<u4").tobytes() + b"\x00abcd",
            r"impossible for 4 bytes of LZF data",
        ),
    }


def test_compressed_padding_claims_are_bounded() -> None:
    header = ["FIELDS x _", "SIZE 1 1", "TYPE U U", "COUNT 1 1000000000", "WIDTH 100", "DATA binary_compressed"]
    with pytest.raises(PlaymentFormatError, match="padding fields make a point 1000000001 bytes"):
        read_pcd(compressed_blob(header, bytes(100)))
    only_padding = ["FIELDS _", "SIZE 4", "TYPE F", "WIDTH 1000000000000", "DATA binary_compressed"]
    blob = ("\n".join(only_padding) + "\n").encode() + bytes(8)
    with pytest.raises(PlaymentFormatError, match="only padding"):
        read_pcd(blob)


@pytest.mark.parametrize("case", list(binary_cases()))
def test_bad_binary_data_raises_format_error(case: str) -> None:
    blob, message = binary_cases()[case]
    with pytest.raises(PlaymentFormatError, match=message):
        read_pcd(blob)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_billion_point_claim_fails_fast_without_allocating(encoding: str) -> None:
    blob = encode_pcd(sample_cloud(10), encoding=encoding)
    blob = blob.replace(b"WIDTH 10\n", b"WIDTH 1000000000\n").replace(b"POINTS 10\n", b"POINTS 1000000000\n")
    assert len(blob) < 2048
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(PlaymentFormatError, match="1000000000"):
            read_pcd(blob)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 1_000_000


def test_unsupported_source_type() -> None:
    with pytest.raises(PlaymentFormatError, match="not int"):
        read_pcd(42)  # type: ignore[arg-type]


def test_missing_path_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_pcd(tmp_path / "nope.pcd")


# ---------------------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------------------


def test_encode_header_is_pcl_style() -> None:
    blob = encode_pcd(sample_cloud(2), encoding="ascii", viewpoint=(1, 2.5, 0, 1, 0, 0, 0))
    header = blob[: blob.index(b"DATA ascii\n") + 11].decode()
    assert header.splitlines() == [
        "# .PCD v0.7 - Point Cloud Data file format",
        "VERSION 0.7",
        "FIELDS x y z intensity ring",
        "SIZE 4 4 4 4 2",
        "TYPE F F F F U",
        "COUNT 1 1 1 1 1",
        "WIDTH 2",
        "HEIGHT 1",
        "VIEWPOINT 1 2.5 0 1 0 0 0",
        "POINTS 2",
        "DATA ascii",
    ]
    assert blob[len(header) :] == b"0 0 nan 0 0\n1.25 -1 nan 255 1000\n"


def test_encode_binary_is_little_endian_and_packed() -> None:
    data = np.array([(1, 2.0)], dtype=[("a", ">u2"), ("b", ">f8")])
    blob = encode_pcd(data, encoding="binary")
    assert blob.endswith(b"\x01\x00" + np.array(2.0, dtype="<f8").tobytes())
    assert blob.endswith(b"DATA binary\n\x01\x00\x00\x00\x00\x00\x00\x00\x00\x40")


def test_incompressible_payload_is_still_lzf() -> None:
    rng = np.random.default_rng(3)
    data = np.frombuffer(rng.bytes(4000), dtype=[("v", "<u4")]).copy()
    blob = encode_pcd(data, encoding="binary_compressed")
    offset = read_pcd(blob).header.data_offset
    size, raw_size = np.frombuffer(blob, dtype="<u4", count=2, offset=offset)
    assert raw_size == 4000 and size > 4000
    assert read_pcd(blob).data.tobytes() == data.tobytes()


def test_write_pcd_to_path_and_file_object(tmp_path: Path) -> None:
    data = sample_cloud()
    for encoding in ENCODINGS:
        expected = encode_pcd(data, encoding=encoding, viewpoint=(0, 0, 1, 1, 0, 0, 0))
        path = tmp_path / f"{encoding}.pcd"
        write_pcd(path, data, encoding=encoding, viewpoint=(0, 0, 1, 1, 0, 0, 0))
        assert path.read_bytes() == expected
        write_pcd(str(path), data, encoding=encoding, viewpoint=(0, 0, 1, 1, 0, 0, 0))
        assert path.read_bytes() == expected
        buffer = io.BytesIO()
        write_pcd(buffer, data, encoding=encoding, viewpoint=(0, 0, 1, 1, 0, 0, 0))
        assert buffer.getvalue() == expected
        cloud = read_pcd(path)
        assert cloud.header.viewpoint == (0, 0, 1, 1, 0, 0, 0)
        assert all(same_values(cloud.data[n], data[n], nan_payloads=encoding != "ascii") for n in data.dtype.names)


BAD_WRITES: dict[str, tuple[Callable[[], object], str]] = {
    "plain_array": (lambda: encode_pcd(np.zeros(3, dtype="f4")), r"structured array"),
    "not_an_array": (lambda: encode_pcd([1, 2, 3]), r"got list"),  # type: ignore[arg-type]
    "float16": (lambda: encode_pcd(np.zeros(3, dtype=[("x", "f2")])), r"'x': dtype float16"),
    "bool": (lambda: encode_pcd(np.zeros(3, dtype=[("x", "?")])), r"'x': dtype bool"),
    "complex": (lambda: encode_pcd(np.zeros(3, dtype=[("x", "c8")])), r"'x'"),
    "string": (lambda: encode_pcd(np.zeros(3, dtype=[("x", "S4")])), r"'x'"),
    "nested": (lambda: encode_pcd(np.zeros(3, dtype=[("p", [("x", "f4")])])), r"'p'"),
    "2d_subarray": (lambda: encode_pcd(np.zeros(3, dtype=[("m", "f4", (2, 2))])), r"subarray shape \(2, 2\)"),
    "3d_data": (lambda: encode_pcd(np.zeros((2, 2, 2), dtype=[("x", "f4")])), r"shape \(2, 2, 2\)"),
    "space_in_name": (lambda: encode_pcd(np.zeros(3, dtype=[("a b", "f4")])), r"'a b'"),
    "unknown_encoding": (lambda: encode_pcd(sample_cloud(), encoding="lzf"), r"unknown PCD encoding 'lzf'"),
    "width_height_mismatch": (lambda: encode_pcd(sample_cloud(7), width=3, height=2), r"WIDTH 3 x HEIGHT 2 != 7"),
    "width_not_divisor": (lambda: encode_pcd(sample_cloud(7), width=3), r"WIDTH 3 x HEIGHT 2 != 7"),
    "viewpoint_length": (lambda: encode_pcd(sample_cloud(), viewpoint=(0, 0, 0)), r"VIEWPOINT needs 7"),
}


@pytest.mark.parametrize("case", list(BAD_WRITES))
def test_writer_rejects_what_pcd_cannot_hold(case: str) -> None:
    call, message = BAD_WRITES[case]
    with pytest.raises(PlaymentFormatError, match=message):
        call()


def test_writer_infers_the_missing_dimension() -> None:
    data = sample_cloud(6)
    assert read_pcd(encode_pcd(data, width=3)).header.height == 2
    assert read_pcd(encode_pcd(data, height=3)).header.width == 2


# ---------------------------------------------------------------------------------------------------------
# Round trips (hypothesis)
# ---------------------------------------------------------------------------------------------------------

SCALARS = ["i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f4", "f8"]
names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,6}", fullmatch=True)


@st.composite
def structured_clouds(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, int]]:
    field_names = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    if draw(st.booleans()):
        field_names.insert(draw(st.integers(0, len(field_names))), "_")
    fields = []
    for name in field_names:
        scalar = draw(st.sampled_from(SCALARS))
        order = draw(st.sampled_from("<>")) if scalar[1] != "1" else "|"
        count = draw(st.sampled_from([1, 1, 2, 3]))
        fields.append((name, order + scalar, (count,)) if count > 1 else (name, order + scalar))
    dtype = np.dtype(fields)
    if draw(st.booleans()):
        height, width = draw(st.integers(1, 4)), draw(st.integers(0, 5))
    else:
        height, width = 1, draw(st.integers(0, 12))
    data = draw(hnp.arrays(dtype, (height * width,)))
    return data, (width, height)


viewpoints = st.one_of(st.none(), st.tuples(*[st.floats(allow_nan=False, allow_infinity=False, width=64)] * 7))


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=60, deadline=None)
@given(cloud=structured_clouds(), viewpoint=viewpoints, two_d=st.booleans())
def test_round_trip_is_exact(
    encoding: str, cloud: tuple[np.ndarray, tuple[int, int]], viewpoint: tuple[float, ...] | None, two_d: bool
) -> None:
    data, (width, height) = cloud
    if two_d:
        blob = encode_pcd(data.reshape(height, width), encoding=encoding, viewpoint=viewpoint)
    else:
        blob = encode_pcd(data, encoding=encoding, width=width, height=height, viewpoint=viewpoint)
    result = read_pcd(blob)
    header = result.header
    assert (header.width, header.height, header.points) == (width, height, width * height)
    assert header.viewpoint == (viewpoint or (0, 0, 0, 1, 0, 0, 0))
    assert header.encoding == encoding
    assert result.data.dtype.names == data.dtype.names
    for name in data.dtype.names:
        got, want = result.data[name], data[name]
        assert got.dtype == want.dtype.newbyteorder("<") or got.dtype.base == want.dtype.base.newbyteorder("<")
        if name == "_" and encoding == "binary_compressed":
            assert not np.any(got), "padding is left out of compressed data and reads back as zeros"
            continue
        assert same_values(got, want, nan_payloads=encoding != "ascii"), name


def test_point_cloud_len_and_header_dtype() -> None:
    cloud = read_pcd(encode_pcd(sample_cloud(5)))
    assert isinstance(cloud, PointCloud) and isinstance(cloud.header, PCDHeader)
    assert len(cloud) == 5
    assert cloud.header.dtype() == cloud.data.dtype
