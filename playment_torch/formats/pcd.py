"""Read and write PCD (Point Cloud Data) files in every encoding: ascii, binary and binary_compressed.

PCL's own reader and writer (``io/src/pcd_io.cpp``) are the reference for layouts:

* ``binary``: points one after another, fields packed without padding, little-endian.
* ``binary_compressed``: ``uint32`` compressed size, ``uint32`` uncompressed size, then an LZF payload that
  holds the fields one after another (each field's column for all points); a ``COUNT > 1`` field is stored
  point by point (all ``COUNT`` values of point 0, then of point 1, ...). Padding fields named ``_`` are left
  out of the payload (they read back as zeros).
* ``ascii``: one line per point, whitespace-separated values, ``COUNT`` values per field.

Decoded clouds are numpy structured arrays with an explicit little-endian dtype laid out like the file's
points (the ``binary`` layout), so a ``binary`` file maps onto its bytes without conversion.

ASCII decoding:

* Values are exact: integers keep their full 64 bits, float64 values are correctly rounded, and float32 values
  round as a direct decimal -> float32 parse does (numpy's own float32 parse rounds twice). float32 fields are
  parsed to float64 and cast; the cast can only differ from a direct parse where the float64 value is exactly
  a float32 rounding midpoint (float64 keeps 29 more bits, and rounding is monotonic), so those rare values
  are found by their bits and settled from their decimal text (``tests/test_pcd_ascii_fast.py`` checks the
  claim against exact rational arithmetic).
* Two routes, one contract. The **fast route** takes data laid out as PCL writes it (single spaces, ``\n``
  line ends, JSON-style numbers, ``nan``/``inf``): the section is rewritten byte for byte into a JSON array
  and tokenized by simdjson (pysimdjson, also behind :mod:`~playment_torch.formats.masks`), ~3x faster than
  numpy's tokenizer, then checked with whole-array operations (values per line, integer spellings, ``-0``).
  Anything else, and every error, takes the **exact route**: numpy's C tokenizer per field type, whose
  error names the line at fault. ``tests/test_pcd_ascii_fast.py`` requires the two to agree bit for bit.
* Bytes must not end inside the last value (see :func:`read_pcd`): a cut download is an error, not a cloud.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import lzf
import numpy as np

from playment_torch.errors import PlaymentFormatError

__all__ = ["ENCODINGS", "PCDHeader", "PointCloud", "encode_pcd", "read_pcd", "write_pcd"]

#: The ``DATA`` encodings this module reads and writes.
ENCODINGS: tuple[str, ...] = ("ascii", "binary", "binary_compressed")

_DEFAULT_VIEWPOINT: tuple[float, ...] = (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)

# (TYPE, SIZE) -> little-endian numpy type string; F has no 1- or 2-byte form in PCD.
_PCD_TO_NUMPY: dict[tuple[str, int], str] = {
    ("I", 1): "<i1",
    ("I", 2): "<i2",
    ("I", 4): "<i4",
    ("I", 8): "<i8",
    ("U", 1): "<u1",
    ("U", 2): "<u2",
    ("U", 4): "<u4",
    ("U", 8): "<u8",
    ("F", 4): "<f4",
    ("F", 8): "<f8",
}
_NUMPY_KIND_TO_PCD = {"i": "I", "u": "U", "f": "F"}


@dataclass(frozen=True)
class PCDHeader:
    """The header of a PCD file, normalized.

    Attributes:
        version: ``VERSION`` as written (``".7"``, ``"0.7"``, ...), ``""`` when absent.
        fields: Field names, as used in :attr:`PointCloud.data` (repeated ``_`` become ``_``, ``_1``, ...).
        sizes: Bytes per value of each field.
        types: ``"I"``, ``"U"`` or ``"F"`` per field.
        counts: Values per point of each field.
        width: ``WIDTH``; for unorganized clouds the number of points.
        height: ``HEIGHT``; 1 for unorganized clouds.
        viewpoint: ``VIEWPOINT``: translation (3) and quaternion w x y z (4).
        points: Number of points (``WIDTH * HEIGHT``).
        encoding: ``"ascii"``, ``"binary"`` or ``"binary_compressed"``.
        data_offset: Byte offset where the data section starts.
    """

    version: str
    fields: tuple[str, ...]
    sizes: tuple[int, ...]
    types: tuple[str, ...]
    counts: tuple[int, ...]
    width: int
    height: int
    viewpoint: tuple[float, ...]
    points: int
    encoding: str
    data_offset: int

    @property
    def point_size(self) -> int:
        """Bytes per point in the ``binary`` layout (every field, padding included)."""
        return sum(s * c for s, c in zip(self.sizes, self.counts, strict=True))

    def dtype(self) -> np.dtype:
        """The packed little-endian structured dtype of one point, laid out like the ``binary`` encoding."""
        return _packed_dtype(self.fields, self.types, self.sizes, self.counts)


@dataclass(frozen=True, eq=False)  # arrays have no single truth value: compare clouds by identity
class PointCloud:
    """A decoded PCD file.

    Attributes:
        data: Structured array of shape ``(points,)``, one named field per PCD field; a ``COUNT > 1`` field is
            a subarray field of shape ``(COUNT,)``. Organized clouds stay 1-D, row-major (``WIDTH`` fastest).
        header: The file's header.
    """

    data: np.ndarray
    header: PCDHeader

    def __len__(self) -> int:
        return int(self.data.shape[0])


def _packed_dtype(names: Sequence[str], types: Sequence[str], sizes: Sequence[int], counts: Sequence[int]) -> np.dtype:
    formats: list[str | tuple[str, tuple[int]]] = []
    offsets: list[int] = []
    offset = 0
    for type_, size, count in zip(types, sizes, counts, strict=True):
        base = _PCD_TO_NUMPY[(type_, size)]
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(offset)
        offset += size * count
    return np.dtype({"names": list(names), "formats": formats, "offsets": offsets, "itemsize": offset})


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    type_: str
    size: int
    count: int
    base: np.dtype  # little-endian scalar dtype


def _field_specs(dtype: np.dtype) -> list[_FieldSpec]:
    if dtype.names is None or not dtype.names:
        raise PlaymentFormatError(f"cannot encode PCD: data must be a structured array with fields, not {dtype}")
    specs = []
    for name in dtype.names:
        field_dtype = dtype.fields[name][0]  # type: ignore[index]
        count = 1
        base = field_dtype
        if field_dtype.subdtype is not None:
            base, shape = field_dtype.subdtype
            if len(shape) != 1 or shape[0] < 1:
                raise PlaymentFormatError(
                    f"cannot encode PCD field {name!r}: subarray shape {shape} is not (COUNT,), COUNT >= 1"
                )
            count = int(shape[0])
        kind = _NUMPY_KIND_TO_PCD.get(base.kind)
        if kind is None or (kind, base.itemsize) not in _PCD_TO_NUMPY:
            raise PlaymentFormatError(
                f"cannot encode PCD field {name!r}: dtype {field_dtype} is not (u)int8-64 or float32/64"
            )
        if not name or any(ch.isspace() for ch in name) or name.startswith("#"):
            raise PlaymentFormatError(f"cannot encode PCD field name {name!r}: empty, has whitespace or starts with #")
        specs.append(_FieldSpec(name, kind, base.itemsize, count, base.newbyteorder("<")))
    return specs


def _format_number(value: float) -> str:
    # Header numbers: integers without a fraction (PCL style), others with the shortest exact repr.
    if math.isfinite(value) and value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _encode_header(
    specs: Sequence[_FieldSpec], width: int, height: int, viewpoint: Sequence[float], encoding: str
) -> bytes:
    lines = [
        "# .PCD v0.7 - Point Cloud Data file format",
        "VERSION 0.7",
        "FIELDS " + " ".join(s.name for s in specs),
        "SIZE " + " ".join(str(s.size) for s in specs),
        "TYPE " + " ".join(s.type_ for s in specs),
        "COUNT " + " ".join(str(s.count) for s in specs),
        f"WIDTH {width}",
        f"HEIGHT {height}",
        "VIEWPOINT " + " ".join(_format_number(v) for v in viewpoint),
        f"POINTS {width * height}",
        f"DATA {encoding}",
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _column(flat: np.ndarray, spec: _FieldSpec) -> np.ndarray:
    """One field of ``flat`` as a C-contiguous little-endian ``(N,)`` or ``(N, COUNT)`` array."""
    return np.ascontiguousarray(flat[spec.name], dtype=spec.base)


def _encode_ascii(flat: np.ndarray, specs: Sequence[_FieldSpec]) -> bytes:
    n = flat.shape[0]
    ncols = sum(s.count for s in specs)
    if n == 0:
        return b""
    # %-formatting of Python ints is exact at any width; %.9g round-trips every float32 and %r (the shortest
    # repr) every float64, so ASCII files read back bit-exactly (NaN and inf print as nan / inf).
    table = np.empty((n, ncols), dtype=object)
    formats = []
    col = 0
    for spec in specs:
        values = _column(flat, spec).reshape(n, spec.count)
        fmt = "%d" if spec.type_ != "F" else ("%.9g" if spec.size == 4 else "%r")
        for k in range(spec.count):
            table[:, col] = values[:, k].tolist()
            formats.append(fmt)
            col += 1
    row = " ".join(formats) + "\n"
    return ((row * n) % tuple(table.ravel().tolist())).encode("ascii")


def _encode_binary(flat: np.ndarray, specs: Sequence[_FieldSpec]) -> bytes:
    packed = np.empty(
        flat.shape[0],
        dtype=_packed_dtype(
            [s.name for s in specs],
            [s.type_ for s in specs],
            [s.size for s in specs],
            [s.count for s in specs],
        ),
    )
    for spec in specs:
        packed[spec.name] = flat[spec.name]
    return packed.tobytes()


def _encode_compressed(flat: np.ndarray, specs: Sequence[_FieldSpec]) -> bytes:
    # PCL leaves padding fields out of the compressed payload; its reader expects exactly that.
    raw = b"".join(_column(flat, s).tobytes() for s in specs if s.name != "_")
    if not raw:
        return np.array([0, 0], dtype="<u4").tobytes()
    payload = lzf.compress(raw)
    if payload is None:
        # Incompressible data: lzf.compress gives up when the output is not smaller than the input. PCL needs
        # an LZF stream anyway, so allow LZF's worst-case expansion (one control byte per 32 literals).
        payload = lzf.compress(raw, len(raw) + len(raw) // 32 + 16)
        if payload is None:  # pragma: no cover - cannot happen with the worst-case bound above
            raise PlaymentFormatError("LZF could not compress the PCD payload")
    return np.array([len(payload), len(raw)], dtype="<u4").tobytes() + payload


def encode_pcd(
    data: np.ndarray,
    *,
    encoding: str = "binary",
    width: int | None = None,
    height: int | None = None,
    viewpoint: Sequence[float] | None = None,
) -> bytes:
    """Encode a structured array as a PCD v0.7 file.

    Args:
        data: Structured array of shape ``(N,)``, or ``(H, W)`` for an organized cloud. Field dtypes int8-64,
            uint8-64 or float32/64 in any byte order; a subarray field of shape ``(COUNT,)`` becomes a field
            with that ``COUNT``. Field names are written as given; a field named ``_`` is padding.
        encoding: ``"ascii"``, ``"binary"`` or ``"binary_compressed"``.
        width: ``WIDTH``; defaults to ``N`` (or ``W`` for 2-D data).
        height: ``HEIGHT``; defaults to 1 (or ``H`` for 2-D data). ``width * height`` must equal the number of
            points.
        viewpoint: Seven numbers (translation, then quaternion w x y z); defaults to
            ``(0, 0, 0, 1, 0, 0, 0)``.

    Returns:
        The whole file. ASCII floats are written with enough digits to read back bit-exactly (except NaN
        payloads), integers in full.

    Raises:
        PlaymentFormatError: ``data`` is not a structured array of supported dtypes, the encoding is unknown,
            ``width * height`` does not match the number of points, or ``viewpoint`` is not 7 numbers.
    """
    if encoding not in ENCODINGS:
        raise PlaymentFormatError(f"unknown PCD encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    if not isinstance(data, np.ndarray):
        raise PlaymentFormatError(f"cannot encode PCD: expected a numpy structured array, got {type(data).__name__}")
    if data.ndim == 2:
        default_height, default_width = data.shape
    elif data.ndim == 1:
        default_height, default_width = 1, data.shape[0]
    else:
        raise PlaymentFormatError(f"cannot encode PCD: data must be 1-D or 2-D (organized), not shape {data.shape}")
    specs = _field_specs(data.dtype)
    flat = data.reshape(-1)
    n = flat.shape[0]
    if width is None and height is None:
        width, height = default_width, default_height
    elif width is None:
        width = n // height if height else 0
    elif height is None:
        height = n // width if width else 0
    assert width is not None and height is not None
    if width < 0 or height < 0 or width * height != n:
        raise PlaymentFormatError(f"cannot encode PCD: WIDTH {width} x HEIGHT {height} != {n} points")
    vp = _DEFAULT_VIEWPOINT if viewpoint is None else tuple(float(v) for v in viewpoint)
    if len(vp) != 7:
        raise PlaymentFormatError(f"cannot encode PCD: VIEWPOINT needs 7 numbers, got {len(vp)}")
    header = _encode_header(specs, int(width), int(height), vp, encoding)
    if encoding == "ascii":
        body = _encode_ascii(flat, specs)
    elif encoding == "binary":
        body = _encode_binary(flat, specs)
    else:
        body = _encode_compressed(flat, specs)
    return header + body


def write_pcd(
    dest: str | os.PathLike[str] | BinaryIO,
    data: np.ndarray,
    *,
    encoding: str = "binary",
    width: int | None = None,
    height: int | None = None,
    viewpoint: Sequence[float] | None = None,
) -> None:
    """Write a structured array as a PCD file to a path or a binary file object.

    Args:
        dest: A path (``str`` or ``os.PathLike``) or a writable binary file object.
        data: See :func:`encode_pcd`.
        encoding: See :func:`encode_pcd`.
        width: See :func:`encode_pcd`.
        height: See :func:`encode_pcd`.
        viewpoint: See :func:`encode_pcd`.

    Raises:
        PlaymentFormatError: See :func:`encode_pcd`.
        OSError: The file could not be written.
    """
    blob = encode_pcd(data, encoding=encoding, width=width, height=height, viewpoint=viewpoint)
    if isinstance(dest, str | os.PathLike):
        with open(dest, "wb") as f:
            f.write(blob)
    else:
        dest.write(blob)


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------

_KEYWORDS = ("VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS", "DATA")
# A header line longer than this is not a header line: stop scanning instead of reading a whole binary file.
_MAX_HEADER_LINE = 1 << 20
# numpy structured dtypes need sizes and subarray counts that fit a C int.
_MAX_POINT_SIZE = 2**31 - 1
# LZF expands at most 88x: a 3-byte back-reference copies at most 264 bytes. A declared uncompressed size
# beyond 128x the compressed size (plus slack for tiny payloads) is a lie, refused before allocating.
_LZF_MAX_RATIO = 128
_LZF_SLACK = 1024
_PADDING_SLACK = 64 << 20
_UINT_RE = re.compile(r"[0-9]+")
_MAX_MESSAGE = 400


def _fail(message: str) -> PlaymentFormatError:
    if len(message) > _MAX_MESSAGE:
        # Messages quote header values, and a hostile header line can be a megabyte: keep both ends (what is
        # wrong, and where) so a failing prefetch of many frames does not hold megabytes of messages.
        message = f"{message[: _MAX_MESSAGE - 120]} ... {message[-100:]}"
    return PlaymentFormatError(f"PCD: {message}")


def _load_source(
    source: bytes | bytearray | memoryview | str | os.PathLike[str],
) -> tuple[bytes | bytearray, bool]:
    """Return the file's bytes and whether they are ours (``True``) or the caller's (``False``)."""
    if isinstance(source, bytes):
        return source, False
    if isinstance(source, bytearray):
        return source, False
    if isinstance(source, memoryview):
        # One copy, into a buffer we own, so binary data can then be a writable view of it.
        return bytearray(source.cast("B") if source.c_contiguous else source.tobytes()), True
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            buf = bytearray(size)
            got = f.readinto(buf)
            rest = f.read()  # the file may have grown (or be a pipe reporting size 0)
        if got != size:
            del buf[got:]
        return buf + rest if rest else buf, True
    raise _fail(f"read_pcd expects bytes, bytearray, memoryview or a path, not {type(source).__name__}")


def _header_int(token: str, keyword: str, lineno: int) -> int:
    if not _UINT_RE.fullmatch(token):
        raise _fail(f"{keyword} value {token!r} on line {lineno} is not a non-negative integer")
    if len(token) > 18:  # also keeps int() away from Python's limit on long digit strings
        raise _fail(f"{keyword} value {token[:24]}... on line {lineno} is implausibly large")
    return int(token)


def _parse_header(buf: bytes | bytearray) -> tuple[PCDHeader, tuple[bool, ...]]:
    """Parse the header lines up to and including ``DATA``; also say which fields are ``_`` padding."""
    entries: dict[str, tuple[list[str], int]] = {}
    pos = 0
    lineno = 0
    total = len(buf)
    data_offset = -1
    while data_offset < 0:
        if pos >= total:
            missing = [k for k in ("FIELDS", "DATA") if k not in entries]
            raise _fail(f"header ends at byte {pos} (line {lineno}) without {' and '.join(missing) or 'DATA'}")
        end = buf.find(b"\n", pos, pos + _MAX_HEADER_LINE)
        if end < 0:
            if total - pos >= _MAX_HEADER_LINE:
                raise _fail(f"header line {lineno + 1} at byte {pos} is longer than {_MAX_HEADER_LINE} bytes")
            end = total
        lineno += 1
        try:
            line = bytes(buf[pos:end]).decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise _fail(f"header line {lineno} at byte {pos} is not text") from exc
        line_start = pos
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        keyword, *values = line.split()
        keyword = keyword.upper()
        if keyword == "COLUMNS":  # the spelling of FIELDS before PCD v0.7
            keyword = "FIELDS"
        if keyword not in _KEYWORDS:
            raise _fail(f"unknown header keyword {keyword!r} on line {lineno} (byte {line_start})")
        if keyword in entries:
            raise _fail(f"{keyword} given twice (lines {entries[keyword][1]} and {lineno})")
        entries[keyword] = (values, lineno)
        if keyword == "DATA":
            data_offset = min(pos, total)
    header = _validate_header(entries, data_offset)
    return header, tuple(name == "_" for name in entries["FIELDS"][0])


def _validate_header(entries: dict[str, tuple[list[str], int]], data_offset: int) -> PCDHeader:
    if "FIELDS" not in entries:
        raise _fail("header has no FIELDS (or COLUMNS) line")
    raw_fields, fields_line = entries["FIELDS"]
    nfields = len(raw_fields)
    if nfields == 0:
        raise _fail(f"FIELDS on line {fields_line} names no field")

    def per_field(keyword: str) -> tuple[list[str], int] | None:
        if keyword not in entries:
            return None
        values, line = entries[keyword]
        if len(values) != nfields:
            raise _fail(f"{keyword} on line {line} has {len(values)} values for {nfields} FIELDS")
        return values, line

    size_entry = per_field("SIZE")
    type_entry = per_field("TYPE")
    count_entry = per_field("COUNT")
    if size_entry is None:
        raise _fail("header has no SIZE line")
    if type_entry is None:
        raise _fail("header has no TYPE line")
    sizes = tuple(_header_int(v, "SIZE", size_entry[1]) for v in size_entry[0])
    types = tuple(v.upper() for v in type_entry[0])
    counts = tuple(_header_int(v, "COUNT", count_entry[1]) for v in count_entry[0]) if count_entry else (1,) * nfields
    for name, type_, size, count in zip(raw_fields, types, sizes, counts, strict=True):
        if type_ not in ("I", "U", "F"):
            raise _fail(f"unknown TYPE {type_!r} for field {name!r} on line {type_entry[1]}")
        if (type_, size) not in _PCD_TO_NUMPY:
            raise _fail(f"SIZE {size} is not valid for TYPE {type_} (field {name!r}, line {size_entry[1]})")
        if count < 1:
            raise _fail(f"COUNT {count} of field {name!r} on line {count_entry[1] if count_entry else 0} is < 1")
    point_size = sum(s * c for s, c in zip(sizes, counts, strict=True))
    if point_size > _MAX_POINT_SIZE:
        raise _fail(f"a point of {point_size} bytes (SIZE x COUNT on line {size_entry[1]}) is too large")

    fields = _unique_names(raw_fields, fields_line)
    width, height, points = _dimensions(entries)

    viewpoint = _DEFAULT_VIEWPOINT
    if "VIEWPOINT" in entries:
        values, line = entries["VIEWPOINT"]
        if len(values) != 7:
            raise _fail(f"VIEWPOINT on line {line} has {len(values)} values, not 7")
        try:
            viewpoint = tuple(float(v) for v in values)
        except ValueError as exc:
            raise _fail(f"VIEWPOINT on line {line} is not 7 numbers: {' '.join(values)!r}") from exc

    version = ""
    if "VERSION" in entries:
        values, line = entries["VERSION"]
        if len(values) != 1:
            raise _fail(f"VERSION on line {line} must be one value, got {len(values)}")
        version = values[0]

    values, line = entries["DATA"]
    if len(values) != 1 or values[0].lower() not in ENCODINGS:
        raise _fail(f"unknown DATA {' '.join(values)!r} on line {line}; expected one of {', '.join(ENCODINGS)}")
    return PCDHeader(
        version=version,
        fields=fields,
        sizes=sizes,
        types=types,
        counts=counts,
        width=width,
        height=height,
        viewpoint=viewpoint,
        points=points,
        encoding=values[0].lower(),
        data_offset=data_offset,
    )


def _unique_names(raw_fields: Sequence[str], line: int) -> tuple[str, ...]:
    # Padding fields may repeat; numpy needs distinct names, so later ones become _1, _2, ...
    taken = {name for name in raw_fields if name != "_"}
    if len(taken) + raw_fields.count("_") != len(raw_fields):
        dup = next(n for n in raw_fields if n != "_" and raw_fields.count(n) > 1)
        raise _fail(f"field {dup!r} appears twice in FIELDS on line {line}")
    names: list[str] = []
    suffix = 0
    for name in raw_fields:
        if name == "_" and "_" in taken:
            suffix += 1
            while f"_{suffix}" in taken:
                suffix += 1
            name = f"_{suffix}"
        taken.add(name)
        names.append(name)
    return tuple(names)


def _dimensions(entries: dict[str, tuple[list[str], int]]) -> tuple[int, int, int]:
    """WIDTH, HEIGHT and POINTS, deriving a missing one from the others where possible."""
    found: dict[str, int] = {}
    for keyword in ("WIDTH", "HEIGHT", "POINTS"):
        if keyword in entries:
            values, line = entries[keyword]
            if len(values) != 1:
                raise _fail(f"{keyword} on line {line} must be one value, got {len(values)}")
            found[keyword] = _header_int(values[0], keyword, line)
    width, height, points = found.get("WIDTH"), found.get("HEIGHT"), found.get("POINTS")
    if points is None:
        if width is None:
            raise _fail("header has neither POINTS nor WIDTH: cannot tell how many points there are")
        height = 1 if height is None else height
        points = width * height
    elif width is None:
        if height is None or height == 1:
            width, height = points, 1
        elif height > 0 and points % height == 0:
            width = points // height
        else:
            raise _fail(f"POINTS {points} is not a multiple of HEIGHT {height} (and WIDTH is missing)")
    elif height is None:
        if width > 0 and points % width == 0:
            height = points // width
        elif width == 0 and points == 0:
            height = 1
        else:
            raise _fail(f"POINTS {points} is not a multiple of WIDTH {width} (and HEIGHT is missing)")
    if width * height != points:
        raise _fail(
            f"POINTS {points} (line {entries['POINTS'][1]}) != WIDTH {width} x HEIGHT {height}"
            if "POINTS" in entries
            else f"WIDTH {width} x HEIGHT {height} disagree with POINTS {points}"
        )
    return width, height, points


def read_pcd(
    source: bytes | bytearray | memoryview | str | os.PathLike[str],
    *,
    require_final_newline: bool | None = None,
    copy: bool = True,
) -> PointCloud:
    """Decode a PCD file (``ascii``, ``binary`` or ``binary_compressed``; VERSION .5 to .7).

    An ASCII file holds exactly POINTS rows (blank lines aside; rows after them are ignored, as PCL does). A
    body cut inside its last number would still parse (``0.0035`` of ``0.003582``), so the last value of the
    last point must be followed by something: its line break (or other whitespace), or further rows. Bytes
    are checked that way by default, because a download whose connection closed early looks exactly like
    that. A file read from a path ends where the file system says, and is read as PCL reads it: a last row
    without a line break is complete (some real files end so).

    Args:
        source: The file's bytes, or a path to it.
        require_final_newline: Whether an ASCII file's last point must be followed by whitespace or more
            rows. ``None`` (default): required for bytes, not for paths.
        copy: ``False`` lets binary data be a view of ``source``'s bytes (read-only for ``bytes``) instead of
            a copy: for a caller that only reads the points and drops ``source`` after, such as the frame store
            selecting its fields (one 2 MB copy fewer per frame).

    Returns:
        The cloud: :attr:`PointCloud.data` is a writable structured array with a packed little-endian dtype
        laid out like the file's points, one entry per point (row-major for organized clouds). It shares no
        memory with ``source``; when ``source`` is a path, binary data is a view of the file's bytes as read.

    Raises:
        PlaymentFormatError: The header is malformed or lies (sizes, counts, dimensions), the data is
            truncated, an ASCII line has the wrong number of values or a value that does not parse (the
            message names the line), the last ASCII value may be cut off (see above; the message names its
            line and byte offset), or compressed data is corrupt or its declared sizes are impossible.
        OSError: ``source`` is a path that cannot be read.
    """
    if require_final_newline is None:
        require_final_newline = not isinstance(source, str | os.PathLike)
    buf, owned = _load_source(source)
    if not copy and isinstance(buf, bytes | bytearray):
        owned = True  # the caller gave up the bytes: no copy to protect them
    header, padding = _parse_header(buf)
    if header.encoding == "binary":
        data = _decode_binary(buf, header, owned)
    elif header.encoding == "binary_compressed":
        data = _decode_compressed(buf, header, padding)
    else:
        data = _decode_ascii(buf, header)
        if require_final_newline and header.points:
            _check_ascii_end(buf, header)
    return PointCloud(data=data, header=header)


def _decode_binary(buf: bytes | bytearray, header: PCDHeader, owned: bool) -> np.ndarray:
    dtype = header.dtype()
    need = header.points * dtype.itemsize
    available = len(buf) - header.data_offset
    if need > available:
        raise _fail(
            f"binary data truncated: POINTS {header.points} x {dtype.itemsize} bytes = {need} bytes "
            f"from byte {header.data_offset}, but only {available} bytes follow"
        )
    if owned:
        return np.frombuffer(buf, dtype=dtype, count=header.points, offset=header.data_offset)
    # The caller's buffer is theirs (and bytes are read-only): take one copy. Copy the bytes, not the array:
    # numpy copies a packed structured array field by field, ~20x slower than this memcpy.
    start = header.data_offset
    return np.frombuffer(bytearray(memoryview(buf)[start : start + need]), dtype=dtype, count=header.points)


def _decode_compressed(buf: bytes | bytearray, header: PCDHeader, padding: Sequence[bool]) -> np.ndarray:
    dtype = header.dtype()
    offset = header.data_offset
    available = len(buf) - offset
    # PCL leaves padding fields out of the payload; they read back as zeros.
    stored = [i for i, pad in enumerate(padding) if not pad]
    stored_size = sum(header.sizes[i] * header.counts[i] for i in stored)
    expected = header.points * stored_size
    if header.points == 0 and available < 8:
        return np.zeros(0, dtype=dtype)
    if available < 8:
        raise _fail(f"binary_compressed data truncated: no size words at byte {offset} ({available} bytes follow)")
    compressed_size = int.from_bytes(buf[offset : offset + 4], "little")
    uncompressed_size = int.from_bytes(buf[offset + 4 : offset + 8], "little")
    if uncompressed_size != expected:
        raise _fail(
            f"uncompressed size {uncompressed_size} at byte {offset + 4} != POINTS {header.points} x "
            f"{stored_size} bytes = {expected}"
        )
    if compressed_size > available - 8:
        raise _fail(f"compressed size {compressed_size} at byte {offset} exceeds the {available - 8} bytes that follow")
    if header.points == 0:
        return np.zeros(0, dtype=dtype)
    if not stored:
        # Nothing would be read, so nothing bounds POINTS: refuse rather than allocate what the header claims.
        raise _fail("binary_compressed data with only padding (_) fields stores nothing to decode")
    if uncompressed_size > compressed_size * _LZF_MAX_RATIO + _LZF_SLACK:
        raise _fail(
            f"uncompressed size {uncompressed_size} at byte {offset + 4} is impossible for {compressed_size} "
            "bytes of LZF data"
        )
    if header.points * dtype.itemsize > 16 * uncompressed_size + _PADDING_SLACK:
        # Padding is not stored, so its size is a mere claim: cap what it may make us allocate.
        raise _fail(
            f"padding fields make a point {dtype.itemsize} bytes for {stored_size} stored bytes: "
            f"{header.points} points would need {header.points * dtype.itemsize} bytes"
        )
    payload = bytes(buf[offset + 8 : offset + 8 + compressed_size])
    try:
        raw = lzf.decompress(payload, uncompressed_size)
    except ValueError as exc:
        raise _fail(f"corrupt LZF data at byte {offset + 8}: {exc}") from exc
    if raw is None or len(raw) != uncompressed_size:
        got = "more" if raw is None else str(len(raw))
        raise _fail(f"LZF data at byte {offset + 8} decompresses to {got} bytes, not the declared {uncompressed_size}")
    n = header.points
    data = np.zeros(n, dtype=dtype) if len(stored) != len(header.fields) else np.empty(n, dtype=dtype)
    position = 0
    for i in stored:
        size, count = header.sizes[i], header.counts[i]
        base = np.dtype(_PCD_TO_NUMPY[(header.types[i], size)])
        column = np.frombuffer(raw, dtype=base, count=n * count, offset=position)
        data[header.fields[i]] = column if count == 1 else column.reshape(n, count)
        position += n * size * count
    return data


_INT_TOKEN = re.compile(rb"[+-]?[0-9]+")
_NON_SPACE = re.compile(rb"\S")
_FLOAT_TOKEN = re.compile(
    rb"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)", re.IGNORECASE
)


def _decode_ascii(buf: bytes | bytearray, header: PCDHeader) -> np.ndarray:
    if header.points == 0:
        return np.zeros(0, dtype=header.dtype())  # whatever follows the header is trailing bytes, ignored like PCL
    data = _decode_ascii_fast(buf, header)
    return data if data is not None else _decode_ascii_exact(buf, header)


# JSON-significant bytes that would change what a data section means if simdjson were shown them: JSON
# whitespace other than the two separators (numpy reads "\r" as a line break), and "[" (nested arrays, which
# as_buffer would flatten; "]" is an error without it). A comma would be an extra separator: the counts of
# spaces and line breaks checked below leave no room for one. Other bytes make simdjson refuse the document
# by themselves (syntax errors, or strings, objects and literals, which as_buffer refuses).
_OFF_FAST_ROUTE = (b"\t", b"\r", b"[")
_FLOAT64_EXACT_INTS = 2.0**53  # integers below this are exact in float64, above it may have been rounded


# Bytes of ASCII data decoded at a time. Chunks bound the memory a decode holds besides the cloud (a few
# copies of one chunk, and a simdjson parser sized for one chunk, ~5 MB, where a whole 15 MB section needs
# ~75 MB); measured on the 240k-point scan, 1 MiB chunks decode as fast as one piece, while chunks under
# 128 KiB are slower (the per-chunk Python and numpy call overhead starts to count).
_CHUNK = 1 << 20


def _decode_ascii_fast(buf: bytes | bytearray, header: PCDHeader) -> np.ndarray | None:
    """Decode the data section as PCL writes it, with simdjson as the number tokenizer; ``None`` otherwise.

    The route applies to a data section of exactly POINTS lines, each of its values as JSON numbers (or
    ``nan``/``inf``) separated by single spaces, every line ending in ``\\n``: what PCL, this module and most
    writers produce. Anything else (tabs, runs of spaces, CRLF, blank lines, rows after the POINTS rows,
    ``+1``, ``.5``, ``007``, ``NaN``, out-of-range values, a missing final line break, errors of any kind)
    returns ``None`` and takes the exact route, which decides what the file means and words its errors. So
    this route must never accept a file the exact route refuses, nor give other values;
    ``tests/test_pcd_ascii_fast.py`` compares the two.

    simdjson parses every number to float64, correctly rounded (as numpy's parser does), so float64 fields are
    exact; float32 fields go through :func:`_to_float32` like the exact route's; integer fields are checked to
    be integer tokens in range, and the rare 8-byte values beyond 2**53 are re-read from their text. The
    section is decoded in chunks of whole lines (:data:`_CHUNK` bytes).
    """
    n = header.points
    ncols = sum(header.counts)
    start = header.data_offset
    end = len(buf)
    if end - start < 2 * n * ncols or buf[-1] != 0x0A:
        return None  # too short for POINTS rows, or no final "\n"
    kinds = np.array([t for t, c in zip(header.types, header.counts, strict=True) for _ in range(c)])
    data = np.empty(n, dtype=header.dtype())
    row = 0
    while start < end:
        stop = end if end - start <= _CHUNK else buf.rfind(b"\n", start, start + _CHUNK) + 1
        if stop <= start:  # a line longer than a chunk: take it whole
            stop = buf.find(b"\n", start + _CHUNK) + 1
        rows = _decode_chunk(bytes(buf[start:stop]), header, kinds, data, row)
        if rows is None:
            return None
        row += rows
        start = stop
    return data if row == n else None


def _decode_chunk(chunk: bytes, header: PCDHeader, kinds: np.ndarray, data: np.ndarray, row: int) -> int | None:
    """Decode whole lines ``chunk`` into ``data[row:]``; the number of rows, or ``None`` (see the caller)."""
    from playment_torch.formats._simdjson import number_buffer

    ncols = kinds.size
    if any(chunk.find(byte) >= 0 for byte in _OFF_FAST_ROUTE):  # memchr scans
        return None
    # Both separators become commas (bytes.replace: a tight loop per byte, twice as fast as translate); "["
    # and "0]" around them make a JSON array (the extra zero is dropped below).
    text = chunk.replace(b" ", b",").replace(b"\n", b",")
    # nan and inf (as PCL writes them, for points without a return) are not JSON: spelled "0.0" (same length)
    # for simdjson, they are found again below and given their values. (Both words hold an "n": one memchr
    # scan clears most chunks.)
    specials = []
    if chunk.find(b"n") >= 0:
        specials = [(word, value) for word, value in _SPECIALS if chunk.find(word) >= 0]
    for word, _ in specials:
        text = text.replace(word, b"0.0")
    parsed = number_buffer(b"".join((b"[", text, b"0]")), "d")
    if parsed is None or (parsed.size - 1) % ncols:
        return None
    values = parsed[:-1]
    rows = values.size // ncols
    if rows == 0 or row + rows > data.shape[0]:
        return None  # (more rows than POINTS: the exact route reads POINTS rows and ignores the rest)
    # ends[v] is the separator after value v (row-major). JSON refused empty values, so separators are single.
    chars = np.frombuffer(text, dtype=np.uint8)
    ends = np.flatnonzero(chars == ord(","))
    original = np.frombuffer(chunk, dtype=np.uint8)
    # Each line holds exactly ncols values: every ncols-th separator is a line break, and the rest are spaces.
    # (The rows * ncols separators count rows line breaks at those places and rows * (ncols - 1) spaces: none
    # is left for another line break, nor for a comma of the file's own.)
    if ends.size != values.size or not (original[ends[ncols - 1 :: ncols]] == ord("\n")).all():
        return None
    if np.count_nonzero(original == ord(" ")) != rows * (ncols - 1):
        return None
    before = np.empty(values.size, dtype=np.intp)  # the separator before each value (-1: the chunk's start)
    before[0] = -1
    before[1:] = ends[:-1]
    # simdjson reads the JSON integer "-0" as the integer 0: find such values (usually none) among the zeros.
    zeros = np.flatnonzero(values == 0)
    negative_zeros = zeros[chars[before[zeros] + 1] == ord("-")]
    if negative_zeros.size:
        if np.any(kinds[negative_zeros % ncols] != "F"):
            return None  # an error in an unsigned field, 0 in a signed one: the exact route decides
        values[negative_zeros] = -0.0
    for word, value in specials:
        where = _whole_tokens(original, chars, word)
        if where is None:
            return None  # "1nan" or "nanx": not a value, though its JSON spelling may parse
        index = np.searchsorted(ends, where)
        if np.any(kinds[index % ncols] != "F"):
            return None  # an error in an integer field
        values[index] = np.copysign(value, values[index])  # "-nan" and "-inf" read as -0.0: keep the sign
    integer_columns = np.flatnonzero(kinds != "F")
    if integer_columns.size:
        # An exponent can make an integral value as long as its integer spelling ("1e2" for 100): refuse
        # exponents in integer fields. Most chunks have none or a few (found by memchr), some have many.
        exponents = _positions(chunk, b"e") + _positions(chunk, b"E")
        if len(exponents) > _FEW:
            exponents = np.flatnonzero((original == ord("e")) | (original == ord("E"))).tolist()
        if exponents and np.isin(np.searchsorted(ends, exponents) % ncols, integer_columns).any():
            return None
    table = values.reshape(rows, ncols)
    before_table, ends_table = before.reshape(rows, ncols), ends.reshape(rows, ncols)
    column = 0
    for name, type_, size, count in zip(header.fields, header.types, header.sizes, header.counts, strict=True):
        block = table[:, column : column + count]
        spans = (chars, before_table[:, column : column + count], ends_table[:, column : column + count])
        field = data[name][row : row + rows].reshape(rows, count)  # a view: results go into the cloud
        if type_ == "F" and size == 4:
            _to_float32(block, functools.partial(_json_token, *spans), out=field)
        elif type_ == "F":
            field[...] = block
        else:
            integers = _integer_block(block, *spans, type_, size)
            if integers is None:
                return None
            field[...] = integers
        column += count
    return rows


_SPECIALS = ((b"nan", np.nan), (b"inf", np.inf))
# The integers spelled with d digits are [_DIGITS_LOW[d], _DIGITS_HIGH[d]): 10**k is exact in float64 up to
# 10**22, and a uint64 has at most 20 digits. Index 0 (no digits) and 21 (too many) hold empty ranges.
_DIGITS_LOW = np.array([np.inf, 0.0] + [10.0 ** (d - 1) for d in range(2, 21)] + [np.inf])
_DIGITS_HIGH = np.array([-np.inf] + [10.0**d for d in range(1, 21)] + [-np.inf])


def _whole_tokens(original: np.ndarray, chars: np.ndarray, word: bytes) -> np.ndarray | None:
    """Where ``word`` (three letters) starts in ``original``; ``None`` unless each is a whole value.

    A whole value starts the chunk or follows a separator (a comma in ``chars``, where separators are
    commas), or a minus sign placed so, and is followed by a separator.
    """
    size = original.size
    hits = np.ones(size - 2, dtype=bool)
    for k, letter in enumerate(word):
        hits &= original[k : size - 2 + k] == letter
    where = np.flatnonzero(hits)
    if where.size == 0 or where[-1] + 3 >= size:
        return None
    padded = np.concatenate((np.array([ord(","), ord(",")], dtype=np.uint8), chars))  # a separator before
    before = padded[where + 1]
    signed = before == ord("-")
    whole = (chars[where + 3] == ord(",")) & ((before == ord(",")) | (signed & (padded[where] == ord(","))))
    return where if whole.all() else None


_FEW = 64  # up to this many hits, bytes.find (memchr) beats a whole-buffer numpy pass


def _positions(data: bytes, needle: bytes) -> list[int]:
    """Offsets of the first ``_FEW + 1`` occurrences of ``needle`` in ``data``."""
    found: list[int] = []
    at = data.find(needle)
    while at >= 0 and len(found) <= _FEW:
        found.append(at)
        at = data.find(needle, at + 1)
    return found


def _integer_block(
    block: np.ndarray, text: np.ndarray, before: np.ndarray, ends: np.ndarray, type_: str, size: int
) -> np.ndarray | None:
    """An integer field's values from their float64 parse, or ``None`` for the exact route to judge.

    The exact route accepts integer tokens only (``1.0`` is an error there). JSON integers have no leading
    zeros, so a value's text is its integer spelling exactly when it is as long as that spelling (digits, and
    a minus sign): a ``.`` makes it longer, and exponents were refused by the caller. ``-0`` never gets here
    (the caller sends it to the exact route). Values beyond 2**53 may have been rounded by the float64 parse
    and are re-read from their text.
    """
    low, high = (0, 2 ** (8 * size) - 1) if type_ == "U" else (-(2 ** (8 * size - 1)), 2 ** (8 * size - 1) - 1)
    if block.min() < low or block.max() > high:
        return None  # (as floats: a value just beyond an 8-byte range may round onto it, and is re-read below)
    digits = ends - before
    digits -= 1
    if type_ == "U":  # all values are >= 0 now: no sign
        magnitude = block
    else:
        magnitude = np.abs(block)
        digits -= block < 0
    # A value of d digits lies in [10**(d-1), 10**d) (0 has one digit); lengths past the table fit nothing.
    digits = np.minimum(digits, _DIGITS_LOW.size - 1)
    spelled = (magnitude >= _DIGITS_LOW[digits]) & (magnitude < _DIGITS_HIGH[digits])
    if size == 8:
        spelled |= magnitude >= _FLOAT64_EXACT_INTS  # rounded values: their text is read below
    if not spelled.all():
        return None
    dtype = np.dtype(_PCD_TO_NUMPY[(type_, size)])
    if size < 8:
        return block.astype(dtype)
    flat = block.ravel()
    with np.errstate(invalid="ignore"):  # values past 2**63 do not cast to int64: they are replaced below
        result = flat.astype(dtype)
    big = np.flatnonzero(magnitude.ravel() >= _FLOAT64_EXACT_INTS)
    if big.size:
        exact = _read_integers(text, before.ravel()[big] + 1, ends.ravel()[big], signed=type_ == "I")
        if exact is None:
            return None
        result[big] = exact
    return result.reshape(block.shape)


def _read_integers(text: np.ndarray, first: np.ndarray, end: np.ndarray, *, signed: bool) -> np.ndarray | None:
    """Read the integer tokens ``text[first:end]`` exactly (8-byte values, e.g. nanosecond timestamps).

    Digit by digit in uint64, which holds every value simdjson let through (it refuses integers beyond
    uint64 and below int64). ``None`` when a token holds anything but an optional minus and digits, or a
    value does not fit the field.
    """
    negative = text[first] == ord("-")
    position = first + negative
    if np.any(end - position > 20) or np.any(end <= position):
        return None
    value = np.zeros(first.size, dtype=np.uint64)
    ten = np.uint64(10)
    for _ in range(int((end - position).max())):
        more = position < end
        digit = text[np.minimum(position, end - 1)].astype(np.uint64) - np.uint64(ord("0"))
        if np.any(more & (digit > 9)):  # (uint64: characters below "0" wrap around to huge values)
            return None
        value = np.where(more, value * ten + digit, value)
        position += more
    if not signed:
        return None if negative.any() else value
    limit = np.where(negative, np.uint64(2**63), np.uint64(2**63 - 1))
    if np.any(value > limit):
        return None
    return np.where(negative, (~value + np.uint64(1)).view(np.int64), value.view(np.int64))


def _json_token(text: np.ndarray, before: np.ndarray, ends: np.ndarray, row: int, k: int) -> bytes:
    """The text of value ``k`` of a field in row ``row`` on the fast route (rare: float32 midpoints only)."""
    return text[before[row, k] + 1 : ends[row, k]].tobytes()


def _decode_ascii_exact(buf: bytes | bytearray, header: PCDHeader) -> np.ndarray:
    """The exact ASCII route (numpy's C tokenizer): every file the fast route passes on, and every error."""
    dtype = header.dtype()
    n = header.points
    start = header.data_offset
    if _NON_SPACE.search(buf, start) is None:
        raise _ascii_error(buf, header, None)
    ncols = sum(header.counts)
    # Each value takes at least one byte plus one separator: refuse impossible claims before parsing.
    if len(buf) - start < n * 2 * ncols - 1:
        raise _ascii_error(buf, header, None)
    # np.loadtxt is a C tokenizer: it parses integers as integers (full int64/uint64 precision), floats with
    # nan/inf, and rejects out-of-range or malformed values. A single-space delimiter is ~10% faster than
    # splitting on any whitespace, so try that first; fall back for tabs, runs of spaces or trailing spaces.
    # BytesIO over bytes shares their buffer, so seeking past the header costs no copy. Like PCL, read POINTS
    # rows and ignore whatever follows them (max_rows does not count blank lines).
    # float32 fields are parsed as float64 and rounded below: numpy's float32 parse is a float64 parse and a
    # cast, which rounds twice and is wrong for decimals that fall next to the midpoint of two float32s.
    parse_dtype = _packed_dtype(
        header.fields,
        header.types,
        [8 if t == "F" else s for t, s in zip(header.types, header.sizes, strict=True)],
        header.counts,
    )
    with warnings.catch_warnings():
        # numpy says once per call that blank lines do not count towards max_rows: that is what PCL does too.
        warnings.filterwarnings("ignore", message="Input line", category=UserWarning)
        try:
            parsed = np.loadtxt(
                _data_stream(buf, start), dtype=parse_dtype, comments=None, delimiter=" ", ndmin=1, max_rows=n
            )
        except ValueError:
            try:
                parsed = np.loadtxt(_data_stream(buf, start), dtype=parse_dtype, comments=None, ndmin=1, max_rows=n)
            except ValueError as exc:
                raise _ascii_error(buf, header, exc) from exc
    if parsed.shape[0] != n:
        raise _ascii_error(buf, header, None)
    if parse_dtype == dtype:
        return parsed
    data = np.empty(n, dtype=dtype)
    column = 0
    for name, type_, size, count in zip(header.fields, header.types, header.sizes, header.counts, strict=True):
        values = parsed[name]
        if type_ == "F" and size == 4:
            values = _to_float32(values, functools.partial(_ascii_token, buf, header, first_column=column))
        data[name] = values
        column += count
    return data


_FLOAT32_OVERFLOW = 2.0**128 - 2.0**103  # decimals from here up round to inf in float32
_FLOAT32_TINY_BITS = np.array(2.0**-126).view(np.uint64)  # the bits of float32's smallest normal, as float64


def _to_float32(
    values: np.ndarray, token: Callable[[int, int], bytes], out: np.ndarray | None = None
) -> np.ndarray:
    """Round float64 values parsed from decimals to float32 as a direct decimal -> float32 parse would.

    A float64 rounding of a decimal can only mislead the cast when it lands exactly on the midpoint of two
    float32 values (the cast then rounds to even, though the decimal itself was above or below). Those rare
    values are found by their bits and settled exactly from their decimal text.

    Args:
        values: ``(N,)`` or ``(N, COUNT)`` float64 values, as parsed.
        token: ``token(row, k)``: the decimal text of value ``k`` of row ``row`` (error path only).
        out: A float32 array of ``values``' shape to write into (a field of the cloud), or ``None``.

    Returns:
        The float32 array (``out`` when given), correctly rounded from the decimals.
    """
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore"):  # beyond float32's range: inf, as a direct parse gives
        if out is None:
            result = values.astype(np.float32)
        else:
            result = out
            result[...] = values
    # A cheap pass over the bits keeps the few values that may be midpoints: in the normal float32 range the
    # 29 float64 mantissa bits below float32's read exactly "1000...0" at a midpoint; below that range (where
    # float32 is evenly spaced) every nonzero value is kept. (A same-size view works on strided arrays too.)
    bits = values.view(np.uint64)
    maybe = ((bits & np.uint64(0x1FFFFFFF)) == np.uint64(0x10000000)) | (
        (bits & np.uint64(0x7FFFFFFFFFFFFFFF)) - np.uint64(1) < _FLOAT32_TINY_BITS - np.uint64(1)  # 0 wraps around
    )
    kept = np.nonzero(maybe)
    subset = values[kept]
    magnitude = np.abs(subset)
    with np.errstate(invalid="ignore", over="ignore"):
        # Normal range, up to the midpoint between the largest float32 and the next power of two (where
        # rounding overflows).
        normal = (
            (magnitude >= 2.0**-126)
            & (magnitude <= _FLOAT32_OVERFLOW)
            & ((subset.view(np.uint64) & np.uint64(0x1FFFFFFF)) == np.uint64(0x10000000))
        )
        # Below it float32 is evenly spaced by 2**-149: a midpoint is an odd multiple of 2**-150.
        scaled = magnitude * 2.0**149
        tiny = (magnitude < 2.0**-126) & (scaled - np.floor(scaled) == 0.5)
    chosen = np.isfinite(subset) & (normal | tiny)
    candidates = np.stack([axis[chosen] for axis in kept], axis=1)
    for where in candidates:
        index = tuple(int(i) for i in where)
        midpoint = Fraction(float(values[index]))
        try:
            exact = Fraction(token(index[0], index[1] if len(index) > 1 else 0).decode("ascii"))
        except ValueError:  # pragma: no cover - numpy parsed it as a decimal, so Fraction does too
            continue
        if exact == midpoint:
            continue  # a true tie: round to even, as the cast did
        # The cast gave one of the two float32 values around the midpoint; the decimal says which is right.
        cast = result[index]
        with np.errstate(over="ignore"):
            if cast < midpoint:
                low, high = cast, np.nextafter(cast, np.float32(np.inf))
            else:
                low, high = np.nextafter(cast, np.float32(-np.inf)), cast
        result[index] = high if exact > midpoint else low
    return result


def _ascii_token(buf: bytes | bytearray, header: PCDHeader, row: int, k: int, *, first_column: int) -> bytes:
    """The text of value ``first_column + k`` of data row ``row`` (counting rows with values; rare path only)."""
    column = first_column + k
    seen = 0
    for line in bytes(buf[header.data_offset :]).splitlines():
        tokens = line.split()
        if tokens:
            if seen == row:
                return tokens[column]
            seen += 1
    raise _fail(f"ASCII row {row} not found")  # pragma: no cover - numpy just parsed this row


_WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")


def _check_ascii_end(buf: bytes | bytearray, header: PCDHeader) -> None:
    """Refuse ASCII data whose last point's last value may have been cut off (nothing follows it).

    Called once the POINTS rows parsed. Data ending in whitespace is complete; otherwise the unterminated last
    line must be a row after the POINTS rows (which PCL ignores), not the last point itself.
    """
    if buf[-1] in _WHITESPACE:
        return
    last_break = max(buf.rfind(b"\n"), buf.rfind(b"\r"), header.data_offset - 1)
    # Rare path (files without a final newline): count the rows before the unterminated line.
    rows_before = sum(1 for line in bytes(buf[header.data_offset : last_break + 1]).splitlines() if line.strip())
    if rows_before >= header.points:
        return
    token_start = len(buf)
    while token_start > last_break + 1 and buf[token_start - 1] not in _WHITESPACE:
        token_start -= 1
    line = buf.count(b"\n", 0, len(buf)) + 1
    shown = bytes(buf[token_start : token_start + 40]).decode("latin-1")
    raise _fail(
        f"ASCII data ends on line {line} without a line break after the last value of point {header.points} "
        f"({shown!r} at byte {token_start}): the value may be cut off, as in a truncated download. A file "
        "written without a final newline decodes from its path, or with require_final_newline=False"
    )


def _data_stream(buf: bytes | bytearray, start: int) -> io.BytesIO:
    stream = io.BytesIO(buf)
    stream.seek(start)
    return stream


def _ascii_error(buf: bytes | bytearray, header: PCDHeader, exc: Exception | None) -> PlaymentFormatError:
    """Find the first bad line of an ASCII data section (error path only) and describe it."""
    section = bytes(buf[header.data_offset :])
    fields = list(zip(header.fields, header.types, header.sizes, header.counts, strict=True))
    ncols = sum(header.counts)
    first_line = buf.count(b"\n", 0, header.data_offset) + 1
    seen = 0
    last = first_line - 1  # the last line holding data
    for lineno, line in enumerate(section.split(b"\n"), start=first_line):
        tokens = line.split()
        if not tokens:
            continue
        last = lineno
        if seen == header.points:
            break  # rows after POINTS rows are trailing data, ignored
        if len(tokens) != ncols:
            return _fail(f"line {lineno} has {len(tokens)} values, expected {ncols} (one per field value)")
        position = 0
        for name, type_, size, count in fields:
            for token in tokens[position : position + count]:
                if not _ascii_token_fits(token, type_, size):
                    shown = token[:40].decode("latin-1")
                    return _fail(f"line {lineno}: {shown!r} is not a valid {type_}{size} value for field {name!r}")
            position += count
        seen += 1
    if seen < header.points:
        return _fail(f"ASCII data ends on line {last} after {seen} of POINTS {header.points} points")
    return _fail(f"ASCII data starting on line {first_line} does not parse: {exc}")


def _ascii_token_fits(token: bytes, type_: str, size: int) -> bool:
    if type_ == "F":
        return _FLOAT_TOKEN.fullmatch(token) is not None
    if _INT_TOKEN.fullmatch(token) is None or len(token.lstrip(b"+-").lstrip(b"0")) > 20:
        return False  # (the length check also keeps int() away from Python's limit on digit strings)
    value = int(token)
    bits = 8 * size
    if type_ == "U":
        return 0 <= value < 2**bits and not token.startswith(b"-")  # numpy refuses "-0" for unsigned
    return -(2 ** (bits - 1)) <= value < 2 ** (bits - 1)
