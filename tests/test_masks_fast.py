"""The simdjson route of read_mask keeps the exact route's contract (issue 12, item 5).

read_mask takes a fast route (simdjson) and falls back to its exact route (whole-buffer checks and numpy's C
parser) whenever simdjson refuses a body. The contract is the exact route's: these tests compare the two on
generated valid and invalid bodies, value for value and message for message.
"""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from playment_torch.errors import PlaymentFormatError
from playment_torch.formats import masks
from playment_torch.formats._simdjson import number_buffer
from playment_torch.formats.masks import encode_mask, read_mask

INT64 = np.iinfo(np.int64)


def outcome(parse, body: bytes) -> tuple[str, object]:
    """("ok", keys as a list) or ("error", message) of one parse."""
    try:
        keys = parse(body)
    except PlaymentFormatError as exc:
        return "error", str(exc)
    assert keys.dtype == np.int64 and keys.ndim == 1
    return "ok", keys.tolist()


def assert_same_contract(body: bytes) -> None:
    if body.lstrip(b" \t\r\n")[:1] != b"[":
        return  # not JSON: both routes hand it to the PCD reader, one code path
    assert outcome(read_mask, body) == outcome(masks._parse_json_keys_exact, body), body[:200]


# Tokens a mask body might hold: good keys, and everything the contract refuses.
GOOD_TOKENS = [
    "0",
    "7",
    "-1",
    "-0",
    "400",
    "1234567890",
    str(INT64.max),
    str(INT64.min),
    str(INT64.max - 1),
    str(INT64.min + 1),
]
BAD_TOKENS = [
    "1.0",
    "1.5",
    "1e3",
    "1E3",
    "-1e-3",
    "0.0",
    "true",
    "false",
    "null",
    "NaN",
    "Infinity",
    "-Infinity",
    "nan",
    "inf",
    '"1"',
    "{}",
    '{"a":1}',
    "[]",
    "[1]",
    "[[2]]",
    "[1,[2]]",
    "07",
    "00",
    "-07",
    "+1",
    "-",
    "--1",
    "- 1",
    "1-2",
    "",
    str(INT64.max + 1),
    str(INT64.min - 1),
    str(2**64 - 1),
    str(2**64),
    "9" * 40,
    "0x10",
    "1_0",
    "\ufeff1",
]
SPACE = st.sampled_from(["", "", "", " ", "\n", "\t", "\r\n", "  \n\t", "\x0b", "\xa0"])


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    tokens = draw(
        st.lists(
            st.one_of(
                st.sampled_from(GOOD_TOKENS),
                st.integers(-(2**70), 2**70).map(str),
                st.sampled_from(BAD_TOKENS),
            ),
            max_size=8,
        )
    )
    parts = [draw(SPACE) + token + draw(SPACE) for token in tokens]
    body = draw(SPACE) + "[" + ",".join(parts) + "]" + draw(SPACE)
    blob = body.encode("utf-8")
    how = draw(st.sampled_from(["as is", "as is", "truncate", "insert", "delete", "bom", "append"]))
    if how == "truncate" and blob:
        blob = blob[: draw(st.integers(0, len(blob) - 1))]
    elif how == "insert":
        at = draw(st.integers(0, len(blob)))
        blob = blob[:at] + draw(st.sampled_from([b"[", b"]", b",", b"-", b"0", b".", b"e", b" ", b"\x00"])) + blob[at:]
    elif how == "delete" and blob:
        at = draw(st.integers(0, len(blob) - 1))
        blob = blob[:at] + blob[at + 1 :]
    elif how == "bom":
        blob = b"\xef\xbb\xbf" + blob
    elif how == "append":
        blob += draw(st.sampled_from([b"]", b"[", b"[1]", b"x", b",", b"\x00"]))
    return blob


@settings(max_examples=1500, deadline=None)
@given(bodies())
def test_fast_and_exact_routes_agree(body: bytes) -> None:
    assert_same_contract(body)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(INT64.min, INT64.max), max_size=50), st.sampled_from(["", " ", "\n", " \r\n\t"]))
def test_valid_masks_take_the_fast_route(keys: list[int], space: str) -> None:
    body = (space + "[" + space + ("," + space).join(map(str, keys)) + space + "]" + space).encode()
    fast = number_buffer(body, "i")
    assert fast is not None and fast.tolist() == keys  # simdjson accepted it: the fast route is the one used
    assert read_mask(body).tolist() == keys
    assert_same_contract(body)


@pytest.mark.parametrize(
    ("bad", "where"),
    # An empty token alone is "[]", the empty mask, which is valid.
    [
        (bad, where)
        for bad in BAD_TOKENS
        for where in ("alone", "first", "middle", "last")
        if (bad, where) != ("", "alone")
    ],
)
def test_every_refused_token_is_refused_by_both_routes(bad: str, where: str) -> None:
    tokens = {"alone": [bad], "first": [bad, "1", "2"], "middle": ["1", bad, "2"], "last": ["1", "2", bad]}[where]
    body = ("[" + ",".join(tokens) + "]").encode()
    if bad in ("[]", "[1]"):  # nested arrays: refused, though simdjson's as_buffer flattens them
        assert number_buffer(body, "i") is not None
    with pytest.raises(PlaymentFormatError):
        read_mask(body)
    assert_same_contract(body)


def test_nested_arrays_that_flatten_to_valid_keys_are_refused() -> None:
    for body in (b"[[1],2]", b"[[]]", b"[1,[]]", b"[[1,2],[3]]", b"[ [ 1 ] ]"):
        with pytest.raises(PlaymentFormatError, match=r"unexpected b'\[' at byte"):
            read_mask(body)


TRUNCATED = [
    (b"[", 1),
    (b"  [", 3),
    (b"[\n", 1),  # the offset where the body's last non-space byte ends
    (b"[1", 2),
    (b"[1,", 3),
    (b"[16,-58", 7),
    (b"[16,-58,", 8),
    (b"[16,-58, 1,\n 0", 14),
    (b"[16,-58, 1,\n 0 \n", 14),
]


@pytest.mark.parametrize(("body", "offset"), TRUNCATED)
def test_truncated_bodies_name_the_byte_where_they_end(body: bytes, offset: int) -> None:
    with pytest.raises(PlaymentFormatError, match=rf"not a closed array: .* at byte {offset}$"):
        read_mask(body)


def test_every_prefix_of_a_mask_is_an_error() -> None:
    body = b" [16,-58, 1,\n 0,\t9223372036854775807 ]\n"
    complete = len(body.rstrip())
    for end in range(complete):
        prefix = body[:end]
        with pytest.raises(PlaymentFormatError) as info:
            read_mask(prefix)
        if prefix.strip():
            assert "byte" in str(info.value), prefix
    assert read_mask(body[:complete]).tolist() == [16, -58, 1, 0, INT64.max]


def test_large_mask_matches_the_exact_route() -> None:
    keys = np.random.default_rng(3).integers(INT64.min, INT64.max, 500_000, endpoint=True)
    body = encode_mask(keys)
    got = read_mask(body)
    assert got.flags.writeable  # callers may modify what they get, as with the exact route
    assert np.array_equal(got, keys)
    assert np.array_equal(masks._parse_json_keys_exact(body), keys)
    for source in (bytearray(body), memoryview(body)):
        assert np.array_equal(read_mask(source), keys)


def test_mask_from_a_path(tmp_path) -> None:
    path = tmp_path / "mask.json"
    path.write_bytes(b"[3,-1,2]\n")
    assert read_mask(path).tolist() == [3, -1, 2]


def test_threads_share_the_parser_pool_safely() -> None:
    rng = random.Random(5)
    cases = []
    for i in range(40):
        keys = [rng.randrange(-5, 10**6) for _ in range(rng.randrange(0, 3000))]
        body = encode_mask(np.array(keys, dtype=np.int64)) if i % 5 else b"[1,[2]]"
        cases.append((body, keys if i % 5 else None))
    failures: list[str] = []

    def work() -> None:
        for body, keys in cases * 3:
            try:
                got = read_mask(body).tolist()
                if got != keys:
                    failures.append(f"wrong keys for {body[:20]!r}")
            except PlaymentFormatError:
                if keys is not None:
                    failures.append(f"refused {body[:20]!r}")

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
