"""``ClassMap``: class names to contiguous training indices, and per-frame label-key lookup tables.

Playment masks store *label keys*, which may be per instance ("MINIVAN # 1" is key 1, "MINIVAN # 2" key 2) and
where 0 may be a real class. A key means something only through the annotation that names it, so every frame
gets its own lookup table: label key -> annotation -> class index (and track -> instance id). Keys no
annotation names, and classes the class map leaves out, become ``ignore_index``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from playment_torch.errors import ConfigError
from playment_torch.models import LabelEntry

__all__ = ["ClassMap", "LabelLookup", "check_known_classes"]


class ClassMap:
    """Class names (label text, or Playment class id) to contiguous indices.

    Args:
        classes: ``None`` for the sorted union of ``available`` names; a sequence of names, indexed in that
            order; or a mapping name -> index, where several names may share an index
            (``{"Car": 0, "Van": 0}``) and a name mapped to ``ignore_index`` is explicitly ignored. Mapping
            indices must cover 0..C-1.
        available: The label names found in the data (used when ``classes`` is ``None``).
        ignore_index: The index of unlabeled points and of classes left out.

    Raises:
        ConfigError: duplicate names, or mapping indices that are not contiguous from 0.
    """

    def __init__(
        self,
        classes: Sequence[str] | Mapping[str, int] | None = None,
        *,
        available: Iterable[str] = (),
        ignore_index: int = -100,
    ) -> None:
        self.ignore_index = int(ignore_index)
        index: dict[str, int] = {}
        if classes is None:
            names = sorted(set(available))
            index = {name: i for i, name in enumerate(names)}
        elif isinstance(classes, Mapping):
            for name, value in classes.items():
                if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                    raise ConfigError(f"class {name!r} maps to {value!r}; indices must be integers")
                index[str(name)] = int(value)
            used = sorted({v for v in index.values() if v != self.ignore_index})
            if used != list(range(len(used))):
                raise ConfigError(f"class indices must be contiguous from 0, got {used}")
        else:
            if isinstance(classes, str):
                raise ConfigError("classes must be a sequence of names, not a single string")
            for i, name in enumerate(classes):
                if name in index:
                    raise ConfigError(f"class {name!r} is listed twice")
                index[str(name)] = i
        count = 1 + max((v for v in index.values() if v != self.ignore_index), default=-1)
        if not isinstance(classes, Mapping) and 0 <= self.ignore_index < count:
            # ignore_index=0 with classes numbered from 0 would silently drop the first class.
            taken = next(name for name, value in index.items() if value == self.ignore_index)
            raise ConfigError(
                f"ignore_index {self.ignore_index} is also the index of class {taken!r}; use a value outside "
                f"0..{count - 1} (e.g. -100), or a dict of classes to ignore a name explicitly"
            )
        self._index = index
        # The display name of an index is the first name given for it.
        names_by_index: list[str] = [""] * count
        for name, value in index.items():
            if value != self.ignore_index and not names_by_index[value]:
                names_by_index[value] = name
        self.names: tuple[str, ...] = tuple(names_by_index)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"ClassMap({list(self.names)!r}, ignore_index={self.ignore_index})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClassMap):
            return False
        return (self._index, self.ignore_index) == (other._index, other.ignore_index)

    def __hash__(self) -> int:
        return hash((tuple(sorted(self._index.items())), self.ignore_index))

    @property
    def mapping(self) -> dict[str, int]:
        """Every name this map knows, with its index."""
        return dict(self._index)

    def index_of(self, entry: LabelEntry) -> int:
        """The training index of an annotation: by its label, then by its class id; else ``ignore_index``."""
        for name in (entry.label, entry.class_id):
            if name and name in self._index:
                return self._index[name]
        return self.ignore_index

    def lookup(self, entries: Sequence[LabelEntry], track_ids: Mapping[str, int]) -> LabelLookup:
        """Build the lookup table of one frame.

        Args:
            entries: The frame's label entries (one per key).
            track_ids: The job's track id -> instance id table.

        Returns:
            A :class:`LabelLookup` with sorted keys.
        """
        ordered = sorted(entries, key=lambda e: e.label_key)
        return LabelLookup(
            keys=np.array([e.label_key for e in ordered], dtype=np.int64),
            classes=np.array([self.index_of(e) for e in ordered], dtype=np.int64),
            instances=np.array([track_ids.get(e.track_id, -1) if e.track_id else -1 for e in ordered], dtype=np.int64),
        )


def check_known_classes(class_map: ClassMap, labels: Iterable[str], class_ids: Iterable[str] = ()) -> None:
    """Refuse class names that nothing in the data uses: a typo would silently make a class ``ignore_index``.

    Args:
        class_map: The user's class map (a list's or a dict's names).
        labels: Every label name the dataset's jobs use (suggested and listed in the message).
        class_ids: Every Playment class id they use (names may be class ids too).

    Raises:
        ConfigError: Some names are unknown; the message suggests close matches (case-insensitively first) and
            lists the names the data has.
    """
    known = sorted(set(labels))
    valid = set(known) | set(class_ids)
    unknown = [name for name in class_map.mapping if name not in valid]
    if not unknown:
        return
    lowered = {name.lower(): name for name in known}
    hints = []
    for name in unknown:
        match = lowered.get(name.lower())
        close = [match] if match else difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    shown = ", ".join(repr(name) for name in known[:40]) + (" ..." if len(known) > 40 else "")
    raise ConfigError(
        f"classes names {len(unknown)} name(s) no job of this dataset uses: {', '.join(hints)}. The jobs use: "
        f"{shown}. Pass allow_unknown_classes=True to keep them anyway (e.g. one class list for several projects)."
    )


@dataclass(frozen=True)
class LabelLookup:
    """A frame's label keys (sorted) and the class index and instance id each stands for."""

    keys: np.ndarray
    classes: np.ndarray
    instances: np.ndarray

    def apply(self, mask: np.ndarray, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Map label keys to class indices and instance ids, vectorised (no Python loop over points).

        Args:
            mask: int64 label keys, one per point.
            ignore_index: The class index of keys no annotation names.

        Returns:
            ``(labels, instances)``: int64 arrays like ``mask``; unknown keys get ``ignore_index`` and -1.
        """
        mask = np.asarray(mask, dtype=np.int64)
        return map_keys(self.keys, self.classes, mask, ignore_index), map_keys(self.keys, self.instances, mask, -1)


_INT64_MIN = int(np.iinfo(np.int64).min)


def map_keys(
    keys: np.ndarray, values: np.ndarray, mask: np.ndarray, fill: int, *, scratch: np.ndarray | None = None
) -> np.ndarray:
    """Map every label key of ``mask`` to its value; keys not in ``keys`` get ``fill``. Vectorised.

    Args:
        keys: Sorted int64 label keys.
        values: The integer value of each key.
        mask: Integer label keys, one per point (any integer dtype; the arithmetic is int64).
        fill: The value of keys that are not in ``keys``.
        scratch: An int64 array like ``mask`` that may be overwritten (saves one allocation on the hot path;
            pass ``mask`` itself when it is not needed afterwards).

    Returns:
        A new int64 array like ``mask``.
    """
    if keys.size == 0:
        return np.full(mask.shape, fill, dtype=np.int64)
    if mask.dtype in (np.uint8, np.int16):
        # Masks are stored in their compact type (nearly always uint8): a table with a slot for every value of
        # that type makes the mapping one gather straight from the mask, no widened copy of it first. An int16
        # mask's negative keys index from the table's end, which is where their two's-complement value puts them.
        span = 256 if mask.dtype == np.uint8 else 65536
        low = 0 if mask.dtype == np.uint8 else -32768
        table = np.full(span, fill, dtype=np.int64)
        inside = (keys >= low) & (keys < low + span)
        table[keys[inside]] = values[inside]
        # Widen, then gather in place: numpy's fancy indexing with small-integer indices is ~2x slower than
        # take() on int64 indices, and take() into its own index array allocates nothing more. Every index is
        # inside the table: a uint8 mask's by construction ("clip", the cheaper mode, then never clips), an
        # int16 mask's once "wrap" sends its negative keys to the table's end, as above.
        positions = mask.astype(np.int64)
        return np.take(table, positions, out=positions, mode="clip" if mask.dtype == np.uint8 else "wrap")
    lo, hi = int(keys[0]), int(keys[-1])
    if hi - lo < 65536 and lo != _INT64_MIN:
        # Keys are small integers in practice: one subtraction and one gather from a dense table whose first
        # and last slots hold `fill`. mode="clip" sends every key below `lo` to the first slot and every key
        # above `hi` to the last; int64 wrap-around of the subtraction can only land outside the table's
        # middle (|key - lo| would have to exceed 2**63 - 65536), so it is clipped the same way.
        table = np.full(hi - lo + 3, fill, dtype=np.int64)
        table[keys - (lo - 1)] = values
        offsets = np.subtract(mask, lo - 1, out=scratch, dtype=np.int64)
        return np.take(table, offsets, mode="clip")
    position = np.searchsorted(keys, mask).clip(0, keys.size - 1)
    return np.where(keys[position] == mask, values[position], fill).astype(np.int64, copy=False)
