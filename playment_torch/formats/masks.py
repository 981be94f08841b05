"""Decode Playment segmentation masks: one integer label key per point of the frame's point cloud.

Playment serves a mask as a JSON array of integers (``[16,58,1,...]``); older jobs served a PCD file with
fields ``x y z label_key`` instead. :func:`read_mask` tells them apart by the first non-whitespace byte.

Masks are parsed on every cache miss, so the JSON path avoids Python objects per key. It has two routes
with one contract:

* **Fast**: simdjson (the ``pysimdjson`` dependency, see :mod:`playment_torch.formats._simdjson`) validates
  the JSON and converts every key to int64 in one pass, about twice as fast as numpy's parser. It is only
  trusted where it cannot accept more than the exact route: it refuses floats, literals, strings, objects,
  malformed JSON and integers beyond int64 by itself, and flattens nested arrays, which are therefore refused
  here by counting ``[`` (with strings refused, every ``[`` is an array).
* **Exact** (whenever simdjson refuses a document, and so for every error): the bytes are checked with a
  handful of whole-buffer operations and converted by numpy's C parser; its error names the byte offset.

``tests/test_masks_fast.py`` checks the two routes agree, value for value and error for error, on generated
valid and invalid bodies.
"""

from __future__ import annotations

import os
import re

import numpy as np

from playment_torch.errors import PlaymentFormatError
from playment_torch.formats._simdjson import number_buffer
from playment_torch.formats.pcd import read_pcd

__all__ = ["encode_mask", "label_keys", "read_mask"]

_JSON_SPACE = b" \t\r\n"
_INT64_MIN = np.iinfo(np.int64).min
_INT64_MAX = np.iinfo(np.int64).max
_NOT_ALLOWED = re.compile(rb"[^0-9,\- \t\r\n]")
_FIRST_NON_SPACE = re.compile(rb"[^ \t\r\n]")
_TOKEN = re.compile(rb"[ \t\r\n]*(-?[0-9]+)[ \t\r\n]*")
_DIGIT = np.zeros(256, dtype=bool)
_DIGIT[ord("0") : ord("9") + 1] = True


def read_mask(source: bytes | bytearray | memoryview | str | os.PathLike[str]) -> np.ndarray:
    """Decode a mask: a JSON array of integer label keys, or a legacy PCD file with a ``label_key`` field.

    Args:
        source: The mask's bytes, or a path to the file (a ``str`` is always a path).

    Returns:
        ``int64`` array with one label key per point (keys may be negative).

    Raises:
        PlaymentFormatError: The JSON is not a flat array of integers that fit in int64 (nested arrays,
            floats, strings, objects, literals, empty elements, unbalanced brackets), the PCD does not decode
            or has no single-valued ``label_key`` field, or its keys are not integers.
        OSError: ``source`` is a path that cannot be read.
    """
    from_path = isinstance(source, str | os.PathLike)
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            blob: bytes | bytearray = f.read()
    elif isinstance(source, bytes | bytearray):
        blob = source
    elif isinstance(source, memoryview):
        blob = source.tobytes()
    else:
        raise PlaymentFormatError(
            f"read_mask expects bytes, bytearray, memoryview or a path, not {type(source).__name__}"
        )
    first = _FIRST_NON_SPACE.search(blob)
    if first is not None and first.group() == b"[":
        return _parse_json_keys(bytes(blob))
    return _pcd_label_keys(blob, from_path=from_path)


def encode_mask(keys: np.ndarray) -> bytes:
    """Encode label keys as the JSON array Playment serves, e.g. ``b"[16,58,1]"``.

    Args:
        keys: 1-D array (or sequence) of integers.

    Returns:
        Compact JSON without spaces.

    Raises:
        PlaymentFormatError: ``keys`` is not 1-D or holds non-integers.
    """
    array = np.asarray(keys)
    if array.ndim != 1:
        raise PlaymentFormatError(f"a mask is a flat array of label keys, got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        raise PlaymentFormatError(f"mask label keys must be integers, got dtype {array.dtype}")
    return ("[" + ",".join(map(str, array.tolist())) + "]").encode("ascii")


def _parse_json_keys(blob: bytes) -> np.ndarray:
    keys = number_buffer(blob, "i")
    # as_buffer flattens nested arrays; a body with one "[" has none (strings, the only other place a "["
    # could be, are refused by as_buffer). find (memchr) rather than count: 5x faster on a valid body.
    if keys is not None and blob.find(b"[", blob.index(b"[") + 1) < 0:
        return keys
    return _parse_json_keys_exact(blob)


def _parse_json_keys_exact(blob: bytes) -> np.ndarray:
    """The exact route: every body the fast route refuses, and every error message."""
    text = blob.strip(_JSON_SPACE)
    if not text.endswith(b"]") or len(text) < 2:
        raise PlaymentFormatError(
            f"mask JSON is not a closed array: it ends with {text[-20:]!r} at byte {len(blob.rstrip(_JSON_SPACE))}"
        )
    inner = text[1:-1]
    base = blob.index(b"[") + 1  # byte offset of inner within blob, for messages
    bad = inner.translate(None, b"0123456789,- \t\r\n")
    if bad:
        match = _NOT_ALLOWED.search(inner)
        assert match is not None
        position = base + match.start()
        char = inner[match.start() : match.start() + 1]
        raise PlaymentFormatError(
            f"mask JSON is not a flat array of integers: unexpected {char!r} at byte {position} "
            "(nested arrays, floats, strings, objects and literals are not label keys)"
        )
    if not inner.strip(_JSON_SPACE):
        return np.zeros(0, dtype=np.int64)
    raw = np.frombuffer(inner, dtype=np.uint8)
    # numpy's parser reads a lone "-" as 0; JSON needs a digit right after every minus sign.
    minus = np.flatnonzero(raw == ord("-"))
    if minus.size:
        after = minus + 1
        ok = after < raw.size
        ok[ok] = _DIGIT[raw[after[ok]]]
        if not ok.all():
            raise PlaymentFormatError(f"mask JSON has a '-' without digits at byte {base + int(minus[~ok][0])}")
    # JSON numbers have no leading zeros ("07") but numpy reads them: find each "0" followed by a digit (rare,
    # so whole-buffer compares, uint8 wrap-around making "- 48 < 10" the digit test) and see what precedes it.
    zeros = np.flatnonzero((raw[:-1] == ord("0")) & ((raw[1:] - np.uint8(ord("0"))) < 10))
    if zeros.size:
        leading = (zeros == 0) | ~_DIGIT[raw[zeros - 1]]
        if leading.any():
            raise PlaymentFormatError(
                f"mask JSON has a number with a leading zero at byte {base + int(zeros[leading][0])}"
            )
    expected = int(np.count_nonzero(raw == ord(","))) + 1
    try:
        keys = np.fromstring(inner, dtype=np.int64, sep=",")  # C parser, no Python int per key
    except ValueError:
        keys = None
    if keys is None or keys.size != expected:
        raise _locate_json_error(inner, base)
    # strtoll saturates on overflow: an extreme value may be a key that does not fit; check those exactly.
    extreme = np.flatnonzero((keys == _INT64_MAX) | (keys == _INT64_MIN))
    if extreme.size:
        elements = inner.split(b",")
        for index in extreme.tolist():
            token = elements[index].strip(_JSON_SPACE)
            # More than 19 digits never fits; the length check also keeps int() away from its digit limit.
            if len(token.lstrip(b"-")) > 19 or not _INT64_MIN <= int(token) <= _INT64_MAX:
                shown = token[:30].decode("ascii") + ("..." if len(token) > 30 else "")
                raise PlaymentFormatError(f"mask element {index}: label key {shown} does not fit in int64")
    return keys


def _locate_json_error(inner: bytes, base: int) -> PlaymentFormatError:
    """Describe the first malformed element (error path only)."""
    position = 0
    for index, element in enumerate(inner.split(b",")):
        if _TOKEN.fullmatch(element) is None:
            what = "an empty element" if not element.strip(_JSON_SPACE) else f"{element.strip()[:30]!r}"
            return PlaymentFormatError(f"mask JSON element {index} at byte {base + position} is {what}, not an integer")
        position += len(element) + 1
    return PlaymentFormatError(f"mask JSON array starting at byte {base - 1} is malformed")


def _pcd_label_keys(blob: bytes | bytearray, *, from_path: bool) -> np.ndarray:
    try:
        # A legacy mask is checked like a point cloud: bytes must not end inside the last label key.
        cloud = read_pcd(blob, require_final_newline=not from_path)
    except PlaymentFormatError as exc:
        first = blob.lstrip(_JSON_SPACE)[:1]
        raise PlaymentFormatError(f"mask starts with {first!r}: not a JSON array, and not a valid PCD ({exc})") from exc
    return label_keys(cloud.data)


def label_keys(data: np.ndarray) -> np.ndarray:
    """The ``label_key`` field of a decoded legacy PCD mask (``x y z label_key``), checked, as int64.

    Args:
        data: The mask's structured array (:attr:`PointCloud.data`).

    Returns:
        int64 label keys, one per point.

    Raises:
        PlaymentFormatError: no ``label_key`` field, a COUNT other than 1, or values that are not integers
            that fit in int64.
    """
    names = data.dtype.names or ()
    if "label_key" not in names:
        raise PlaymentFormatError(
            f"PCD mask has no label_key field (fields: {' '.join(names)}); "
            "a mask is a JSON array or a PCD with x y z label_key"
        )
    field = data.dtype["label_key"]
    if field.shape:
        raise PlaymentFormatError(f"PCD mask field label_key has COUNT {int(np.prod(field.shape))}, expected 1")
    column = data["label_key"]
    if field.kind == "f":
        finite = np.isfinite(column)
        if not finite.all() or np.any(column != np.trunc(column)) or np.any(np.abs(column) >= 2.0**63):
            raise PlaymentFormatError("PCD mask label_key values are not all integers")
    elif field.kind == "u" and field.itemsize == 8 and np.any(column > _INT64_MAX):
        raise PlaymentFormatError("PCD mask label_key values do not fit in int64")
    return column.astype(np.int64)
