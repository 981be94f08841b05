"""A shared pool of simdjson parsers: the fast number tokenizer behind masks and ASCII PCDs.

pysimdjson (bindings to simdjson, a SIMD JSON parser with correctly rounded number parsing) turns a JSON
array of numbers into a flat typed buffer without a Python object per number: ``parse(...).as_buffer``.
It is used as a *primitive* only: callers gate and check its input and output themselves, and fall back to
their own exact path whenever it refuses a document, so its accepting more or less than they do cannot
change what they accept.

A parser keeps its buffers (about five times the largest document it parsed) and is not safe to use from two
threads at once, nor again while a document from it is alive. So parsers are lent out from a small pool:
taken for one parse, returned after it, and at most :data:`_POOL_SIZE` are kept between calls, only if the
documents they parsed were at most :data:`_KEEP_BELOW` bytes: a kept parser holds its buffers for the life of
the process. (ASCII PCDs are parsed in 1 MiB chunks, masks are ~0.3 MB: kept parsers stay a few MB.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import simdjson

__all__ = ["number_buffer"]

# Decoding runs in prefetch threads; more parsers than this are created when needed, but not kept.
_POOL_SIZE = 2
_KEEP_BELOW = 32 << 20
_pool: list[Any] = []


def number_buffer(document: Any, of_type: str) -> np.ndarray | None:
    """Parse ``document`` (a JSON array of numbers, possibly nested) into a flat numpy array.

    Args:
        document: Bytes-like JSON text (``bytes``, ``bytearray``, a ``uint8`` numpy array, ...).
        of_type: ``"i"`` (int64: every element must be a JSON integer that fits) or ``"d"`` (float64: any
            JSON number, integers converted with one rounding).

    Returns:
        The numbers in document order (nested arrays flattened), a writable array; ``None`` when simdjson
        refuses the document for any reason (malformed JSON, an element of another type, a number out of
        range), so the caller can take its exact path and its precise error message.
    """
    try:
        parser = _pool.pop()  # list.pop/append are atomic under the GIL: no lock needed
    except IndexError:
        parser = simdjson.Parser()
    try:
        # One expression: the parsed document is released before the parser goes back to the pool.
        buffer = parser.parse(document).as_buffer(of_type=of_type)
    except (ValueError, TypeError, RuntimeError, OverflowError, MemoryError):
        # A refused document (or a parser in a state it cannot recover from): the parser is not reused.
        return None
    if len(_pool) < _POOL_SIZE and len(document) <= _KEEP_BELOW:
        _pool.append(parser)
    return np.frombuffer(buffer, dtype=np.int64 if of_type == "i" else np.float64)
