"""The fast ASCII route (simdjson tokenizer) keeps the exact route's contract (issue 12, item 5).

read_pcd decodes an ASCII data section on a fast route when it is laid out as PCL writes it, and on its exact
route (numpy's C tokenizer) otherwise. These tests generate files of every field type, number spelling and
layout, valid and broken, and require the fast route to give the exact route's bytes whenever it answers.
They also check the fact float32 exactness rests on: a decimal -> float64 -> float32 parse differs from a
direct decimal -> float32 parse only where the float64 value is exactly a float32 rounding midpoint.
"""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest
from float32_reference import near_midpoints, reference_float32
from hypothesis import given, settings
from hypothesis import strategies as st
from shared_data import PCD_DATA, requires_shared_data

from playment_torch.errors import PlaymentFormatError
from playment_torch.formats import pcd
from playment_torch.formats.pcd import encode_pcd, read_pcd


def off_json_range(text: str) -> bool:
    is_integer = not any(c in text for c in ".eE")
    # simdjson's integers: int64 when negative, uint64 when not.
    return abs(Fraction(text)) > 10**300 or (is_integer and not -(2**63) <= int(text) < 2**64)


# --------------------------------------------------------------------------------------- the float32 claim


@settings(max_examples=600, deadline=None)
@given(
    st.one_of(
        near_midpoints(),
        st.tuples(st.integers(1, 10**25), st.integers(-70, 40)).map(lambda me: f"{me[0]}e{me[1]}"),
    )
)
def test_double_rounding_errs_only_on_exact_float32_midpoints(text: str) -> None:
    direct = reference_float32(text)
    as_float64 = float(text)  # Python's float() is correctly rounded, as numpy's and simdjson's parsers are
    with np.errstate(over="ignore"):
        twice = np.float32(as_float64)
    if twice.tobytes() != direct.tobytes():
        # The claim: the float64 value sits exactly halfway between the two float32 candidates.
        low, high = sorted([twice, direct])
        assert np.isfinite(low)
        high_value = Fraction(float(high)) if np.isfinite(high) else Fraction(2**128)
        assert Fraction(as_float64) == (Fraction(float(low)) + high_value) / 2, text
    # And the fix applied to that float64 value gives the direct parse.
    fixed = pcd._to_float32(np.array([as_float64]), lambda row, k: text.encode())
    assert fixed.tobytes() == direct.tobytes(), text


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(near_midpoints(), near_midpoints()), min_size=1, max_size=10))
def test_float32_near_midpoints_on_the_fast_route(rows: list[tuple[str, str]]) -> None:
    header = f"FIELDS x v\nSIZE 4 4\nTYPE F F\nCOUNT 1 2\nWIDTH {len(rows)}\nDATA ascii\n"
    body = "".join(f"{a} {b} {a}\n" for a, b in rows)
    blob = (header + body).encode()
    parsed = read_pcd(blob)
    fast = pcd._decode_ascii_fast(blob, parsed.header)
    # Midpoint decimals are JSON numbers; simdjson refuses those beyond float64's range and integers beyond
    # 64 bits (then the exact route answers).
    assert fast is not None or any(off_json_range(t) for row in rows for t in row)
    for i, (a, b) in enumerate(rows):
        for got, text in ((parsed.data["x"][i], a), (parsed.data["v"][i, 0], b), (parsed.data["v"][i, 1], a)):
            assert got.tobytes() == reference_float32(text).tobytes(), text


# ------------------------------------------------------------------------------ fast route == exact route


def routes(blob: bytes) -> tuple[np.ndarray | None, tuple[str, object]]:
    """(the fast route's array or None, the exact route's outcome) for an ASCII file."""
    try:
        header = read_pcd(blob, require_final_newline=False).header
    except PlaymentFormatError:
        header = None
    if header is None:
        try:
            header, _ = pcd._parse_header(blob)
        except PlaymentFormatError as exc:
            return None, ("error", str(exc))
    if header.points == 0:
        return None, ("ok", b"")
    try:
        exact: tuple[str, object] = ("ok", pcd._decode_ascii_exact(blob, header).tobytes())
    except PlaymentFormatError as exc:
        exact = ("error", str(exc))
    return pcd._decode_ascii_fast(blob, header), exact


def assert_fast_matches_exact(blob: bytes) -> None:
    fast, exact = routes(blob)
    if fast is not None:
        assert exact[0] == "ok", (blob[-300:], exact)
        assert fast.tobytes() == exact[1], blob[-300:]
    # Through the front door too: read_pcd's outcome is the exact route's (values or message).
    try:
        got: tuple[str, object] = ("ok", read_pcd(blob, require_final_newline=False).data.tobytes())
    except PlaymentFormatError as exc:
        got = ("error", str(exc))
    if exact[0] == "ok" or got[0] == "error":
        assert got == exact or exact[1] == b"", (got, exact)


FIELD_TYPES = [("F", 4), ("F", 8), ("I", 1), ("I", 2), ("I", 4), ("I", 8), ("U", 1), ("U", 2), ("U", 4), ("U", 8)]


def integer_tokens(type_: str, size: int) -> st.SearchStrategy[str]:
    bits = 8 * size
    low, high = (0, 2**bits - 1) if type_ == "U" else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return st.one_of(
        st.integers(low, high).map(str),
        st.sampled_from([str(low), str(high), str(low - 1), str(high + 1), "0", "-0", "1.0", "1e2", "100", "nan"]),
        st.sampled_from([str(2**53 + 1), str(2**63), str(2**64 - 1), str(2**64), str(-(2**63)), str(-(2**53) - 1)]),
    )


FLOAT_TOKENS = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False).map(lambda v: f"{v:.9g}"),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda v: f"{v:.17e}"),
    st.integers(-(2**70), 2**70).map(str),
    near_midpoints(),
    st.sampled_from(
        ["0", "-0", "0.0", "-0.0", "-0e0", "1e400", "-1e400", "1e-400", "4.9e-324", "3.4028235e38", "3.4028236e38"]
    ),
    st.sampled_from(["nan", "-nan", "inf", "-inf", "NaN", "+1.5", ".5", "5.", "007", "1e", "-", "1.2.3", "0x1p3"]),
    st.sampled_from(["nan", "-nan", "inf", "-inf", "1nan", "nan5", "nanan", "infinity", "-inff", "+nan", "--nan"]),
)


@st.composite
def ascii_files(draw: st.DrawFn) -> bytes:
    fields = draw(st.lists(st.sampled_from(FIELD_TYPES), min_size=1, max_size=4))
    counts = [draw(st.integers(1, 3)) for _ in fields]
    n = draw(st.integers(1, 8))
    rows = []
    for _ in range(n):
        tokens = []
        for (type_, size), count in zip(fields, counts, strict=True):
            strategy = FLOAT_TOKENS if type_ == "F" else integer_tokens(type_, size)
            tokens += [draw(strategy) for _ in range(count)]
        rows.append(tokens)
    sep = draw(st.sampled_from([" ", " ", " ", "  ", "\t"]))
    eol = draw(st.sampled_from(["\n", "\n", "\n", "\r\n", " \n"]))
    lines = [sep.join(tokens) for tokens in rows]
    how = draw(
        st.sampled_from(["as is", "as is", "as is", "ragged", "blank line", "trailing row", "short", "no final eol"])
    )
    if how == "ragged" and lines:
        i = draw(st.integers(0, n - 1))
        lines[i] = lines[i] + sep + "1" if draw(st.booleans()) else lines[i].rsplit(sep, 1)[0]
    elif how == "blank line":
        lines.insert(draw(st.integers(0, n)), "")
    elif how == "trailing row":
        lines.append("1 2 3")
    elif how == "short":
        lines = lines[:-1]
    body = eol.join(lines) + ("" if how == "no final eol" else eol)
    header = (
        f"VERSION 0.7\nFIELDS {' '.join(f'f{i}' for i in range(len(fields)))}\n"
        f"SIZE {' '.join(str(s) for _, s in fields)}\nTYPE {' '.join(t for t, _ in fields)}\n"
        f"COUNT {' '.join(map(str, counts))}\nWIDTH {n}\nHEIGHT 1\nPOINTS {n}\nDATA ascii\n"
    )
    return (header + body).encode()


@settings(max_examples=700, deadline=None)
@given(ascii_files())
def test_fast_route_agrees_with_the_exact_route(blob: bytes) -> None:
    assert_fast_matches_exact(blob)


@st.composite
def clean_clouds(draw: st.DrawFn) -> np.ndarray:
    fields = draw(st.lists(st.sampled_from(FIELD_TYPES), min_size=1, max_size=5))
    counts = [draw(st.integers(1, 3)) for _ in fields]
    dtype = np.dtype(
        [
            (f"f{i}", pcd._PCD_TO_NUMPY[field], (c,)) if c > 1 else (f"f{i}", pcd._PCD_TO_NUMPY[field])
            for i, (field, c) in enumerate(zip(fields, counts, strict=True))
        ]
    )
    n = draw(st.integers(1, 30))
    data = np.zeros(n, dtype=dtype)
    for name in dtype.names:
        base = dtype[name].base
        size = data[name].size
        if base.kind == "f":
            elements = st.floats(width=32 if base.itemsize == 4 else 64, allow_nan=False, allow_infinity=False)
        else:
            info = np.iinfo(base)
            elements = st.integers(int(info.min), int(info.max))
        data[name] = np.array(draw(st.lists(elements, min_size=size, max_size=size)), dtype=base).reshape(
            data[name].shape
        )
    return data


@settings(max_examples=300, deadline=None)
@given(clean_clouds())
def test_files_this_module_writes_take_the_fast_route(data: np.ndarray) -> None:
    blob = encode_pcd(data, encoding="ascii")
    header = read_pcd(blob).header
    fast = pcd._decode_ascii_fast(blob, header)
    assert fast is not None
    assert fast.tobytes() == data.tobytes() == pcd._decode_ascii_exact(blob, header).tobytes()
    assert read_pcd(blob).data.tobytes() == data.tobytes()


@settings(max_examples=100, deadline=None)
@given(clean_clouds(), st.sampled_from([1, 16, 50, 200]), st.data())
def test_chunk_boundaries_change_nothing(data: np.ndarray, chunk: int, draw: st.DataObject) -> None:
    # Chunks smaller than a line (taken whole), and nan, inf and -0 at the start of a chunk.
    floats = [name for name in data.dtype.names if data.dtype[name].base.kind == "f"]
    if floats:
        values = data[floats[0]].reshape(-1)
        for i in draw.draw(st.lists(st.integers(0, values.size - 1), max_size=3)):
            values[i] = draw.draw(st.sampled_from([np.nan, -np.inf, np.inf, -0.0]))
    blob = encode_pcd(data, encoding="ascii")
    header = read_pcd(blob).header
    whole = pcd._decode_ascii_fast(blob, header)
    saved = pcd._CHUNK
    pcd._CHUNK = chunk
    try:
        chunked = pcd._decode_ascii_fast(blob, header)
    finally:
        pcd._CHUNK = saved
    assert whole is not None and chunked is not None
    assert chunked.tobytes() == whole.tobytes() == pcd._decode_ascii_exact(blob, header).tobytes()


def test_signed_zeros_and_integer_extremes() -> None:
    header = "FIELDS a b c d e\nSIZE 4 8 8 8 1\nTYPE F F I U U\nWIDTH 4\nDATA ascii\n"
    body = (
        "-0 -0 -9223372036854775808 18446744073709551615 255\n"
        "0 -0.0 9223372036854775807 9007199254740993 0\n"
        "-0e0 0 -9007199254740993 0 1\n"
        "1 2 3 4 5\n"
    )
    blob = (header + body).encode()
    assert pcd._decode_ascii_fast(blob, read_pcd(blob).header) is not None
    data = read_pcd(blob).data
    assert np.signbit(data["a"]).tolist() == [True, False, True, False]
    assert np.signbit(data["b"]).tolist() == [True, True, False, False]
    assert data["c"].tolist() == [-(2**63), 2**63 - 1, -(2**53) - 1, 3]
    assert data["d"].tolist() == [2**64 - 1, 2**53 + 1, 0, 4]
    assert data["e"].tolist() == [255, 0, 1, 5]


@pytest.mark.filterwarnings("error")
def test_nanosecond_timestamps_are_read_exactly_on_the_fast_route() -> None:
    rng = np.random.default_rng(7)
    stamps = 1_631_322_303_000_000_000 + rng.integers(0, 10**12, 5000)
    offsets = rng.integers(-(2**62), 2**62, 5000)
    data = np.zeros(5000, dtype=[("t", "<u8"), ("o", "<i8"), ("x", "<f4")])
    data["t"], data["o"], data["x"] = stamps, offsets, rng.normal(size=5000)
    blob = encode_pcd(data, encoding="ascii")
    fast = pcd._decode_ascii_fast(blob, read_pcd(blob).header)
    assert fast is not None and fast.tobytes() == data.tobytes()


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("1 2 -0", "-0 is not unsigned"),
        ("1 2 256", "out of range"),
        ("1 2 1.0", "a float in an integer field"),
        ("1 2 1e2", "an exponent in an integer field"),
        ("1 2 -1", "negative unsigned"),
        ("1 18446744073709551616 1", "beyond uint64"),
        ("1 18446744073709551616.0 1", "a float beyond 2**53 in an integer field"),
        ("1 9007199254740993.0 1", "a float beyond 2**53 in an integer field"),
    ],
)
def test_integer_fields_refuse_what_the_exact_route_refuses(line: str, why: str) -> None:
    blob = f"FIELDS a b c\nSIZE 4 8 1\nTYPE F U U\nWIDTH 2\nDATA ascii\n1 2 3\n{line}\n".encode()
    assert pcd._decode_ascii_fast(blob, pcd._parse_header(blob)[0]) is None, why
    with pytest.raises(PlaymentFormatError, match="line 7"):
        read_pcd(blob)


@pytest.mark.parametrize(
    "body",
    [
        "1 2\n3 4\n",  # the plain layout: the fast route
        "1 2\r\n3 4\r\n",  # CRLF
        "1\t2\n3\t4\n",  # tabs
        "1  2\n3 4\n",  # a run of spaces
        "1 2 \n3 4\n",  # a trailing space
        "1 2\n\n3 4\n",  # a blank line
        "1 2\n3 4\n5 6\n",  # a row after POINTS rows (ignored, like PCL)
        "nan 2\n-inf 4\n",  # nan and inf, as PCL writes them: the fast route too
        "NaN 2\nInf 4\n",  # other spellings numpy reads
        "1nan 2\n3 4\n",  # not a value ("10.0" to JSON once nan is spelled 0.0)
        "+1 .5\n5. 007\n",  # spellings numpy reads and JSON does not
        "1,2\n3 4\n",  # a comma is not a separator
        "[1 2]\n3 4\n",
        "1 2\n3 4",  # no final line break
        "1 2 3\n4\n",  # ragged rows whose values add up to POINTS x fields
        "1\n2 3 4\n",
    ],
)
def test_layouts_off_the_fast_route_decode_as_before(body: str) -> None:
    blob = f"FIELDS a b\nSIZE 4 8\nTYPE F F\nWIDTH 2\nDATA ascii\n{body}".encode()
    fast, _ = routes(blob)
    assert (fast is not None) == (body in ("1 2\n3 4\n", "nan 2\n-inf 4\n"))
    assert_fast_matches_exact(blob)


@requires_shared_data
def test_the_real_scan_takes_the_fast_route_bit_exactly() -> None:
    shipped = read_pcd(PCD_DATA / "files" / "patchwork__000000.pcd")
    expected = np.load(PCD_DATA / "expected" / "patchwork__000000.pcd.npz")
    blob = encode_pcd(shipped.data, encoding="ascii", width=shipped.header.width, height=shipped.header.height)
    fast = pcd._decode_ascii_fast(blob, read_pcd(blob).header)
    assert fast is not None
    for name in expected.files:
        assert fast[name].tobytes() == np.ascontiguousarray(expected[name]).tobytes(), name
    assert fast.tobytes() == pcd._decode_ascii_exact(blob, read_pcd(blob).header).tobytes()


def test_nan_and_inf_keep_their_signs_bit_exactly() -> None:
    blob = b"FIELDS a b c\nSIZE 4 8 4\nTYPE F F I\nWIDTH 3\nDATA ascii\nnan -inf 1\n-nan 1 2\ninf -nan 3\n"
    header = read_pcd(blob).header
    fast = pcd._decode_ascii_fast(blob, header)
    assert fast is not None
    assert fast.tobytes() == pcd._decode_ascii_exact(blob, header).tobytes()
    assert np.signbit(fast["a"]).tolist() == [False, True, False]
    assert np.isnan(fast["a"][:2]).all() and fast["a"][2] == np.inf
    with pytest.raises(PlaymentFormatError, match="line 7: 'nan' is not a valid I4 value"):
        read_pcd(blob.replace(b"-nan 1 2", b"-nan 1 nan"))  # nan in an integer field


@requires_shared_data
@pytest.mark.parametrize(
    "name", ["pcl__sac_plane_test.pcd", "pcl__bun0.pcd", "pypcd4__ascii.pcd", "pdal__utm17_tab.pcd"]
)
def test_real_ascii_files(name: str) -> None:
    blob = (PCD_DATA / "files" / name).read_bytes()
    header = read_pcd(blob, require_final_newline=False).header
    fast = pcd._decode_ascii_fast(blob, header)
    exact = pcd._decode_ascii_exact(blob, header)
    if name != "pdal__utm17_tab.pcd":  # tab-separated: the exact route's
        assert fast is not None, name
    if fast is not None:
        assert fast.tobytes() == exact.tobytes()
    expected = np.load(PCD_DATA / "expected" / f"{name}.npz")
    got = read_pcd(PCD_DATA / "files" / name).data
    for field in expected.files:
        assert np.array_equal(got[field], expected[field], equal_nan=True), field


def test_loadtxt_reference_is_independent() -> None:
    # The exact route itself against np.loadtxt + exact float32 rounding on a small mixed file.
    blob = b"FIELDS x t\nSIZE 4 8\nTYPE F F\nWIDTH 2\nDATA ascii\n0.1 1631322303.5091321\n-2.5e-3 7\n"
    data = read_pcd(blob).data
    reference = np.loadtxt(io.BytesIO(blob.split(b"DATA ascii\n")[1]), dtype=np.float64)
    assert data["t"].tolist() == reference[:, 1].tolist()
    assert [v.tobytes() for v in data["x"]] == [reference_float32(t).tobytes() for t in ("0.1", "-2.5e-3")]
