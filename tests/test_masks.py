"""Tests for playment_torch.formats.masks: JSON label-key masks and legacy PCD masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from playment_torch.errors import PlaymentFormatError
from playment_torch.formats.masks import encode_mask, read_mask
from playment_torch.formats.pcd import encode_pcd

INT64 = np.iinfo(np.int64)

VALID_JSON: dict[str, tuple[bytes, list[int]]] = {
    "compact": (b"[16,58,1]", [16, 58, 1]),
    "single": (b"[7]", [7]),
    "spaces": (b"[ 16 , 58 ,1 ]", [16, 58, 1]),
    "newlines_and_tabs": (b"\n[\r\n\t16,\n58,\n\t1\n]\n", [16, 58, 1]),
    "leading_and_trailing_whitespace": (b"  \t[1,2]  \n", [1, 2]),
    "negative": (b"[-1,0,-300]", [-1, 0, -300]),
    "minus_zero": (b"[-0]", [0]),
    "zeros_inside_numbers": (b"[0,10,100,-100,0]", [0, 10, 100, -100, 0]),
    "int64_extremes": (
        f"[{INT64.max},{INT64.min},{INT64.max - 1}]".encode(),
        [INT64.max, INT64.min, INT64.max - 1],
    ),
    "empty": (b"[]", []),
    "empty_with_space": (b"[ \n ]", []),
}


@pytest.mark.parametrize("case", list(VALID_JSON))
def test_json_masks(case: str) -> None:
    blob, expected = VALID_JSON[case]
    keys = read_mask(blob)
    assert keys.dtype == np.int64
    assert keys.ndim == 1
    assert keys.tolist() == expected


MALFORMED_JSON: dict[str, tuple[bytes, str]] = {
    "nested": (b"[[1,2],[3]]", r"unexpected b'\[' at byte 1"),
    "nested_deep": (b"[1,[2]]", r"unexpected b'\[' at byte 3"),
    "float": (b"[1,1.5,2]", r"unexpected b'\.' at byte 4"),
    "float_integral": (b"[1.0]", r"unexpected b'\.'"),
    "exponent": (b"[1e5]", r"unexpected b'e'"),
    "string": (b'["1"]', r"unexpected b'\"'"),
    "object": (b'[{"a":1}]', r"unexpected b'\{'"),
    "top_level_object": (b'{"keys":[1]}', r"not a JSON array"),
    "true": (b"[true]", r"unexpected b't'"),
    "null": (b"[1,null]", r"unexpected b'n'"),
    "nan": (b"[NaN]", r"unexpected b'N'"),
    "plus_sign": (b"[+1]", r"unexpected b'\+'"),
    "empty_element": (b"[1,,2]", r"element 1 at byte 3 is an empty element"),
    "leading_comma": (b"[,1]", r"element 0 at byte 1 is an empty element"),
    "trailing_comma": (b"[1,2,]", r"element 2 at byte 5 is an empty element"),
    "only_comma": (b"[,]", r"empty element"),
    "missing_comma": (b"[1 2]", r"element 0 at byte 1 is b'1 2'"),
    "lone_minus": (b"[1,-,2]", r"'-' without digits at byte 3"),
    "minus_space": (b"[- 1]", r"'-' without digits at byte 1"),
    "double_minus": (b"[--1]", r"'-' without digits at byte 1"),
    "minus_inside": (b"[1-2]", r"b'1-2'"),
    "minus_at_end": (b"[1,-]", r"'-' without digits at byte 3"),
    "leading_zero": (b"[1,07]", r"leading zero at byte 3"),
    "leading_zero_first": (b"[00]", r"leading zero at byte 1"),
    "leading_zero_negative": (b"[ -012]", r"leading zero at byte 3"),
    "unclosed": (b"[1,2", r"not a closed array"),
    "unopened": (b"1,2]", r"not a JSON array"),
    "extra_closing": (b"[1,2]]", r"unexpected b'\]'"),
    "extra_after": (b"[1,2] 3", r"not a closed array"),
    "two_arrays": (b"[1][2]", r"unexpected b'\]'"),
    "bracket_only": (b"[", r"not a closed array"),
    "too_big": (b"[9223372036854775808]", r"9223372036854775808 does not fit in int64"),
    "too_small": (b"[1,-9223372036854775809]", r"-9223372036854775809 does not fit in int64"),
    "way_too_big": (b"[" + b"9" * 40 + b"]", r"does not fit in int64"),
    "non_ascii": ("[1,\u00e9]".encode(), r"unexpected b'\\xc3'"),
    "nul_byte": (b"[1,\x002]", r"unexpected b'\\x00'"),
    "empty_input": (b"", r"not a JSON array, and not a valid PCD"),
    "whitespace_only": (b" \n ", r"not a JSON array"),
}


@pytest.mark.parametrize("case", list(MALFORMED_JSON))
def test_malformed_json_masks_raise(case: str) -> None:
    blob, message = MALFORMED_JSON[case]
    with pytest.raises(PlaymentFormatError, match=message):
        read_mask(blob)


def test_big_mask_matches_json() -> None:
    rng = np.random.default_rng(7)
    keys = rng.integers(-(2**40), 2**40, 120_000)
    blob = json.dumps(keys.tolist()).encode()  # json.dumps puts a space after each comma
    assert np.array_equal(read_mask(blob), keys)
    assert np.array_equal(read_mask(encode_mask(keys)), keys)


@settings(max_examples=150, deadline=None)
@given(
    keys=st.lists(st.integers(INT64.min, INT64.max), max_size=50),
    indent=st.sampled_from([None, 0, 1, "\t"]),
    separators=st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", ":")]),
)
def test_any_json_integer_list_round_trips(keys: list[int], indent: int | str | None, separators: tuple) -> None:
    blob = json.dumps(keys, indent=indent, separators=separators).encode()
    assert read_mask(blob).tolist() == keys
    assert read_mask(encode_mask(np.array(keys, dtype=np.int64))).tolist() == keys


json_values = st.recursive(
    st.one_of(
        st.integers(INT64.min, INT64.max),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=3),
        st.booleans(),
        st.none(),
    ),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=2), children, max_size=2),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(json_values, max_size=6))
def test_mask_is_accepted_exactly_when_json_is_a_flat_int_list(values: list[object]) -> None:
    blob = json.dumps(values).encode()
    if all(type(v) is int for v in values):
        assert read_mask(blob).tolist() == values
    else:
        with pytest.raises(PlaymentFormatError):
            read_mask(blob)


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=40).map(lambda b: b"[" + b))
def test_arbitrary_bytes_after_bracket_never_escape(blob: bytes) -> None:
    try:
        keys = read_mask(blob)
    except PlaymentFormatError:
        return
    assert keys.tolist() == json.loads(blob)


def test_encode_mask_is_compact_json() -> None:
    assert encode_mask(np.array([16, 58, 1])) == b"[16,58,1]"
    assert encode_mask(np.array([], dtype=np.int64)) == b"[]"
    assert encode_mask(np.array([-1, 2**63 - 1], dtype=np.int64)) == b"[-1,9223372036854775807]"
    assert encode_mask(np.array([3], dtype=np.uint8)) == b"[3]"


@pytest.mark.parametrize(
    ("keys", "message"),
    [(np.zeros((2, 2), dtype=int), r"shape \(2, 2\)"), (np.array([1.5]), r"dtype float64")],
)
def test_encode_mask_rejects_non_flat_or_non_integer(keys: np.ndarray, message: str) -> None:
    with pytest.raises(PlaymentFormatError, match=message):
        encode_mask(keys)


# ---------------------------------------------------------------------------------------------------------
# Legacy PCD masks
# ---------------------------------------------------------------------------------------------------------


def legacy_mask(keys: list[int], *, key_type: str = "<i4", encoding: str = "ascii", name: str = "label_key") -> bytes:
    cloud = np.zeros(len(keys), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), (name, key_type)])
    cloud["x"] = np.arange(len(keys))
    cloud[name] = keys
    return encode_pcd(cloud, encoding=encoding)


@pytest.mark.parametrize("encoding", ["ascii", "binary", "binary_compressed"])
@pytest.mark.parametrize("key_type", ["<i4", "<u2", "<i8", "<u8", "<f4", "<f8"])
def test_legacy_pcd_masks(encoding: str, key_type: str) -> None:
    keys = [0, 16, 58, 1, 3] if key_type[1] in "uf" else [-1, 16, 58, 1, -7]
    result = read_mask(legacy_mask(keys, key_type=key_type, encoding=encoding))
    assert result.dtype == np.int64
    assert result.tolist() == keys


def test_legacy_pcd_mask_handwritten_ascii_with_leading_whitespace() -> None:
    text = (
        "\n# .PCD v.7 - legacy Playment mask\nVERSION .7\nFIELDS x y z label_key\nSIZE 4 4 4 4\nTYPE F F F I\n"
        "COUNT 1 1 1 1\nWIDTH 3\nHEIGHT 1\nPOINTS 3\nDATA ascii\n0 0 0 16\n1 0 0 -1\n2 0 0 58\n"
    )
    assert read_mask(text.encode()).tolist() == [16, -1, 58]


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (legacy_mask([1, 2], name="label"), r"no label_key field \(fields: x y z label\)"),
        (legacy_mask([1, 2], key_type="<f4")[:-2], r"not a JSON array, and not a valid PCD"),
        (legacy_mask([2**63], key_type="<u8"), r"do not fit in int64"),
        (b"VERSION .7\nFIELDS x label_key\nSIZE 4 4\nTYPE F F\nWIDTH 1\nDATA ascii\n0 1.5\n", r"not all integers"),
        (b"VERSION .7\nFIELDS x label_key\nSIZE 4 4\nTYPE F F\nWIDTH 1\nDATA ascii\n0 nan\n", r"not all integers"),
        (b"FIELDS label_key\nSIZE 1\nTYPE U\nCOUNT 2\nWIDTH 1\nDATA ascii\n1 2\n", r"COUNT 2, expected 1"),
        (b"hello", r"starts with b'h': not a JSON array, and not a valid PCD"),
    ],
)
def test_bad_legacy_pcd_masks(blob: bytes, message: str) -> None:
    with pytest.raises(PlaymentFormatError, match=message):
        read_mask(blob)


# ---------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blob", [b"[3,-1,4]", legacy_mask([3, -1, 4])], ids=["json", "pcd"])
def test_mask_sources(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "mask.bin"
    path.write_bytes(blob)
    for source in (path, str(path), blob, bytearray(blob), memoryview(blob)):
        assert read_mask(source).tolist() == [3, -1, 4]


def test_mask_unsupported_source_type() -> None:
    with pytest.raises(PlaymentFormatError, match="not list"):
        read_mask([1, 2])  # type: ignore[arg-type]
