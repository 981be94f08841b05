"""Where a PCD body ends: cut-off data is an error, empty clouds decode, and only PlaymentFormatError escapes.

Issue 10 item 4: an ASCII body cut inside its last number (a connection closed early, no Content-Length)
used to decode the cut number as a valid value. Item 5: every encoding of a 0-point cloud decodes to a
0-length array of the header's dtype. Item 12: any bytes give a cloud or a PlaymentFormatError.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shared_data import requires_shared_data, shared_files

from playment_torch.errors import PlaymentFormatError
from playment_torch.formats.masks import read_mask
from playment_torch.formats.pcd import encode_pcd, read_pcd

ENCODINGS = ("ascii", "binary", "binary_compressed")


def cloud(n: int = 4) -> np.ndarray:
    data = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f8"), ("ring", "<u2"), ("label_key", "<i8")])
    data["x"] = np.arange(n) * 0.003582 + 1.0
    data["y"] = -np.arange(n) * 12345.678
    data["ring"] = np.arange(n) * 1000 + 7
    data["label_key"] = np.arange(n) * -987654321 - 12345
    return data


ASCII = encode_pcd(cloud(), encoding="ascii")
DATA_OFFSET = read_pcd(ASCII).header.data_offset


def test_ascii_cut_inside_the_last_value_is_an_error_naming_line_and_byte() -> None:
    assert ASCII.endswith(b"-2962975308\n")
    last_value_start = len(ASCII) - len(b"-2962975308\n")
    lines = ASCII.count(b"\n")
    with pytest.raises(PlaymentFormatError, match=rf"line {lines}: '-' is not a valid I8 value"):
        read_pcd(ASCII[: last_value_start + 1])
    for cut in range(last_value_start + 2, len(ASCII)):  # "-2", ..., "-2962975308" (no line break)
        body = ASCII[:cut]
        with pytest.raises(PlaymentFormatError) as info:
            read_pcd(body)  # before: decoded, the last key being whatever digits arrived
        message = str(info.value)
        assert f"ends on line {lines} without a line break after the last value of point 4" in message
        assert f"{body[last_value_start:].decode()!r} at byte {last_value_start}" in message


def test_every_cut_of_an_ascii_body_is_an_error() -> None:
    for cut in range(DATA_OFFSET, len(ASCII)):
        with pytest.raises(PlaymentFormatError):
            read_pcd(ASCII[:cut])
    assert read_pcd(ASCII).data.tobytes() == cloud().tobytes()


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b" ", b"\t\n\n  "])
def test_ascii_ending_in_whitespace_is_complete(ending: bytes) -> None:
    assert read_pcd(ASCII[:-1] + ending).data.tobytes() == cloud().tobytes()


@pytest.mark.parametrize("trailing", [b"9 9 9", b"\n\n  1 2", b"junk"])
def test_rows_after_the_last_point_may_end_without_a_line_break(trailing: bytes) -> None:
    # The last point's row is closed by the break before the trailing row; PCL ignores what follows.
    assert read_pcd(ASCII + trailing).data.tobytes() == cloud().tobytes()


def test_a_file_without_a_final_newline_decodes_from_its_path(tmp_path: Path) -> None:
    path = tmp_path / "no_final_newline.pcd"
    path.write_bytes(ASCII[:-1])
    assert read_pcd(path).data.tobytes() == cloud().tobytes()
    assert read_pcd(str(path)).data.tobytes() == cloud().tobytes()
    assert read_pcd(ASCII[:-1], require_final_newline=False).data.tobytes() == cloud().tobytes()
    with pytest.raises(PlaymentFormatError, match="require_final_newline=False"):
        read_pcd(path, require_final_newline=True)


def test_legacy_mask_cut_inside_its_last_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PlaymentFormatError, match=r"not a valid PCD .*may be cut off"):
        read_mask(ASCII[:-3])
    path = tmp_path / "mask.pcd"
    path.write_bytes(ASCII[:-1])
    assert read_mask(path).tolist() == cloud()["label_key"].tolist()


@requires_shared_data
@pytest.mark.parametrize("path", shared_files(), ids=lambda p: p.name)
def test_real_ascii_files_as_bytes(path: Path) -> None:
    # Every real file decodes from its path (test_pcd.py); as bytes, only those that end inside a row refuse.
    blob = path.read_bytes()
    if "corrupt" in path.name or read_pcd(path).header.encoding != "ascii":
        return
    unterminated = {"pcl__nhood_test.pcd", "pcdrs__legacy_v05.pcd"}
    if path.name in unterminated:
        with pytest.raises(PlaymentFormatError, match=r"without a line break after the last value"):
            read_pcd(blob)
        assert read_pcd(blob, require_final_newline=False).data.tobytes() == read_pcd(path).data.tobytes()
    else:
        assert read_pcd(blob).data.tobytes() == read_pcd(path).data.tobytes()


@pytest.mark.parametrize("encoding", ["binary", "binary_compressed"])
def test_every_cut_of_a_binary_body_is_an_error(encoding: str) -> None:
    blob = encode_pcd(cloud(40), encoding=encoding)
    start = read_pcd(blob).header.data_offset
    for cut in range(start, len(blob)):
        with pytest.raises(PlaymentFormatError, match=r"truncated|exceeds|size"):
            read_pcd(blob[:cut])


# ------------------------------------------------------------------------------------------- empty clouds

EMPTY_DTYPES = [
    np.dtype([("_", "<u4"), ("x", "<f4"), ("y", "<f4")]),  # the first real field is not at byte 0
    np.dtype([("rgb", "u1", (3,)), ("x", "<f8"), ("id", "<u8")]),
    np.dtype([("label_key", "<i4")]),
]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("dtype", EMPTY_DTYPES, ids=lambda d: "-".join(d.names))
@pytest.mark.parametrize("trailing", [b"", b"\n", b"1 2 3 4 5\n", b"\x00" * 9])
def test_empty_clouds_decode_to_zero_points_of_the_header_dtype(
    encoding: str, dtype: np.dtype, trailing: bytes, tmp_path: Path
) -> None:
    blob = encode_pcd(np.zeros(0, dtype=dtype), encoding=encoding) + trailing
    path = tmp_path / "empty.pcd"
    path.write_bytes(blob)
    for source in (blob, bytearray(blob), memoryview(blob), path):
        try:
            decoded = read_pcd(source)
        except PlaymentFormatError:
            # Only junk where compressed size words belong may be refused.
            assert encoding == "binary_compressed" and trailing
            continue
        assert decoded.data.shape == (0,)
        assert decoded.data.dtype == decoded.header.dtype()
        assert decoded.data.dtype.names == dtype.names
        assert [decoded.data.dtype[name] for name in dtype.names] == [dtype[name] for name in dtype.names]
        assert decoded.data[list(dtype.names[1:])].shape == (0,)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_empty_legacy_mask_is_zero_int64_keys(encoding: str) -> None:
    empty = np.zeros(0, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("label_key", "<u4")])
    keys = read_mask(encode_pcd(empty, encoding=encoding))
    assert keys.shape == (0,) and keys.dtype == np.int64
    assert read_mask(b" [ ] ").shape == (0,)


# ------------------------------------------------------------------------------------------- any bytes


def decode_or_format_error(blob: bytes) -> None:
    for parse in (read_pcd, read_mask):
        try:
            parse(blob)
        except PlaymentFormatError as exc:
            assert str(exc)


HOSTILE = [
    b"[" * 100_000 + b"]" * 100_000,
    b"[" * 100_000,
    b"[",
    b"[\x00]",
    b"[" + b"9" * 5000 + b"]",
    b"[1e999, NaN]",
    b"FIELDS x\nSIZE 4\nTYPE F\nWIDTH 1\nDATA ascii\n" + b"9" * 5000 + b"\n",
    b"FIELDS x\nSIZE 8\nTYPE U\nWIDTH 1\nDATA ascii\n" + b"9" * 5000 + b"\n",
    b"FIELDS x\nSIZE 4\nTYPE F\nWIDTH 1\nDATA ascii\nnan\x00\n",
    b"FIELDS \x00\nSIZE 4\nTYPE F\nWIDTH 1\nDATA binary\n\x00\x00\x00\x00",
    b"FIELDS x\nSIZE 4\nTYPE F\nWIDTH " + b"9" * 18 + b"\nDATA binary_compressed\n" + b"\xff" * 8,
]


@pytest.mark.parametrize("blob", HOSTILE, ids=lambda b: re.sub(rb"[^a-z0-9]", b"", b[:12]).decode() or "bytes")
def test_hostile_bytes(blob: bytes) -> None:
    decode_or_format_error(blob)


def test_a_lone_bracket_is_not_a_mask() -> None:
    for blob in (b"[", b" [ ", b"\n[\n", b"[,", b"[-"):
        with pytest.raises(PlaymentFormatError, match="mask JSON"):
            read_mask(blob)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.builds(lambda head, tail: head + tail, st.sampled_from([ASCII[:DATA_OFFSET], b"[", b"["]), st.binary()),
        st.text(alphabet="[]0123456789-, \n\x00.eE", max_size=60).map(str.encode),
    )
)
def test_any_bytes_decode_or_raise_format_error(blob: bytes) -> None:
    decode_or_format_error(blob)
