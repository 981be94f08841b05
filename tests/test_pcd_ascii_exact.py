"""ASCII float32 values round as a direct decimal -> float32 parse does (issue 12, item 5: exactness first).

numpy parses a float32 field as float64 and casts: two roundings, wrong for decimals just beside the midpoint
of two float32 values. The reference here is independent of numpy's parser: exact rational arithmetic.
"""

from __future__ import annotations

import numpy as np
import pytest
from float32_reference import near_midpoints, reference_float32
from hypothesis import given, settings
from hypothesis import strategies as st

from playment_torch.formats.pcd import encode_pcd, read_pcd

tokens = st.one_of(
    near_midpoints(),
    st.floats(width=32, allow_nan=False, allow_infinity=False).map(lambda v: f"{v:.9g}"),
    st.integers(0, 30).flatmap(lambda p: st.decimals(allow_nan=False, allow_infinity=False, places=p)).map(str),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(tokens, tokens, tokens), min_size=1, max_size=12))
def test_float32_fields_round_like_a_direct_parse(rows: list[tuple[str, str, str]]) -> None:
    # x is a plain float32 field, v a float32 field of COUNT 2 (values beyond the first column), w a float64.
    header = f"FIELDS x v w\nSIZE 4 4 8\nTYPE F F F\nCOUNT 1 2 1\nWIDTH {len(rows)}\nDATA ascii\n"
    body = "".join(f"{a} {b} {c} {a}\n" for a, b, c in rows)
    data = read_pcd((header + body).encode()).data
    for i, (a, b, c) in enumerate(rows):
        for got, text in ((data["x"][i], a), (data["v"][i, 0], b), (data["v"][i, 1], c)):
            want = reference_float32(text)
            assert got.tobytes() == want.tobytes(), (text, got, want)
        assert data["w"][i] == float(a)  # float64: correctly rounded by numpy's parser already


def test_decimals_beside_a_float32_midpoint() -> None:
    # Midpoint of 1.0 and the next float32 is 1 + 2**-24 = 1.000000059604644775390625 exactly.
    rows = [
        "1.000000059604644775390625000001",  # above: 1 + 2**-23 (numpy alone gives 1.0)
        "1.000000059604644775390624999999",  # below: 1.0
        "1.000000059604644775390625",  # a tie: even, 1.0
        "-1.000000059604644775390625000001",  # the same below zero
        "340282356779733661637539395458142568447",  # just under the overflow midpoint: the largest float32
        "340282356779733661637539395458142568448",  # the overflow midpoint itself: inf (ties to even)
        "7.00649232162408535461864791644958065640130970938257885878534141944895541342930300743319094181060791015625e-46",
    ]
    header = f"FIELDS x\nSIZE 4\nTYPE F\nCOUNT 1\nWIDTH {len(rows)}\nDATA ascii\n"
    data = read_pcd((header + "\n".join(rows) + "\n").encode()).data["x"]
    top = np.finfo(np.float32).max
    want = np.array(
        [np.nextafter(np.float32(1), np.float32(2)), 1, 1, -np.nextafter(np.float32(1), np.float32(2)), top, np.inf, 0],
        dtype=np.float32,
    )
    assert data.tobytes() == want.tobytes()
    assert [reference_float32(r).tobytes() for r in rows] == [w.tobytes() for w in want]


# ------------------------------------------------------------------------------------------- round trips


FIELD_TYPES = [("<f4", "F", 4), ("<f8", "F", 8), ("<i1", "I", 1), ("<u2", "U", 2), ("<i4", "I", 4), ("<u8", "U", 8)]
FIELD_TYPES += [("<i8", "I", 8), ("<u1", "U", 1)]


@st.composite
def clouds(draw: st.DrawFn) -> np.ndarray:
    picks = draw(st.lists(st.sampled_from(FIELD_TYPES), min_size=1, max_size=4))
    counts = [draw(st.integers(1, 3)) for _ in picks]
    dtype = np.dtype(
        [
            (f"f{i}", t[0], (c,)) if c > 1 else (f"f{i}", t[0])
            for i, (t, c) in enumerate(zip(picks, counts, strict=True))
        ]
    )
    n = draw(st.integers(1, 20))
    data = np.zeros(n, dtype=dtype)
    for name in dtype.names:
        base = dtype[name].base
        size = data[name].size
        if base.kind == "f":
            width = 32 if base.itemsize == 4 else 64
            elements = st.floats(width=width, allow_nan=False, allow_infinity=False)
        else:
            info = np.iinfo(base)
            elements = st.integers(int(info.min), int(info.max))
        values = draw(st.lists(elements, min_size=size, max_size=size))
        data[name] = np.array(values, dtype=base).reshape(data[name].shape)
    return data


@pytest.mark.filterwarnings("error")
@settings(max_examples=200, deadline=None)
@given(clouds())
def test_written_ascii_reads_back_bit_exactly(data: np.ndarray) -> None:
    assert read_pcd(encode_pcd(data, encoding="ascii")).data.tobytes() == data.tobytes()


def test_every_decimal_spelling() -> None:
    header = "FIELDS a b c d\nSIZE 4 8 2 8\nTYPE F F I U\nWIDTH 3\nDATA ascii\n"
    body = "-.5 5. 007 18446744073709551615\n1e3 +2.5e-1 -0 0\n-0.0 1631322303.5091321 -32768 +42\n"
    data = read_pcd((header + body).encode()).data
    assert data["a"].tolist() == [-0.5, 1000.0, -0.0] and np.signbit(data["a"][2])
    assert data["b"].tolist() == [5.0, 0.25, 1631322303.5091321]
    assert data["c"].tolist() == [7, 0, -32768]
    assert data["d"].tolist() == [2**64 - 1, 0, 42]
