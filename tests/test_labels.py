"""``ClassMap`` and the per-frame label-key lookup tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from playment_torch.errors import ConfigError
from playment_torch.labels import ClassMap, LabelLookup, map_keys
from playment_torch.models import LabelEntry

INT64_MIN = int(np.iinfo(np.int64).min)
INT64_MAX = int(np.iinfo(np.int64).max)
IGNORE = -100


def entry(key: int, label: str, class_id: str = "", track_id: str = "") -> LabelEntry:
    return LabelEntry(label_key=key, label=label, class_id=class_id, track_id=track_id)


def reference(entries: list[LabelEntry], class_map: ClassMap, tracks: dict[str, int], mask: Any) -> tuple[Any, Any]:
    """The lookup done the slow, obvious way: one dict access per point."""
    by_key = {e.label_key: e for e in entries}
    labels = [class_map.index_of(by_key[k]) if k in by_key else class_map.ignore_index for k in mask]
    instances = [tracks.get(by_key[k].track_id, -1) if k in by_key and by_key[k].track_id else -1 for k in mask]
    return np.array(labels, dtype=np.int64), np.array(instances, dtype=np.int64)


# ------------------------------------------------------------------------------------------- ClassMap


@pytest.mark.parametrize(
    ("classes", "available", "names", "mapping"),
    [
        (None, ["road", "car", "road", "Car"], ("Car", "car", "road"), {"Car": 0, "car": 1, "road": 2}),
        (None, [], (), {}),
        (
            ["Vehicle", "Road", "Person"],
            ["ignored"],
            ("Vehicle", "Road", "Person"),
            {"Vehicle": 0, "Road": 1, "Person": 2},
        ),
        (("b", "a"), (), ("b", "a"), {"b": 0, "a": 1}),
        (
            {"Car": 0, "Van": 0, "Road": 1, "Noise": IGNORE},
            [],
            ("Car", "Road"),
            {"Car": 0, "Van": 0, "Road": 1, "Noise": IGNORE},
        ),
        ({"Road": 1, "Car": 0, "Truck": 1}, [], ("Car", "Road"), {"Road": 1, "Car": 0, "Truck": 1}),
        ({"x": np.int64(0)}, [], ("x",), {"x": 0}),
    ],
)
def test_class_map_orders(classes: Any, available: Any, names: tuple[str, ...], mapping: dict[str, int]) -> None:
    class_map = ClassMap(classes, available=available)
    assert class_map.names == names
    assert len(class_map) == len(names)
    assert class_map.mapping == mapping
    assert class_map.ignore_index == IGNORE


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ({"a": 0, "b": 2}, "contiguous"),
        ({"a": 1}, "contiguous"),
        ({"a": 0, "b": -1}, "contiguous"),  # -1 is not the ignore index here
        ({"a": True}, "integers"),
        ({"a": 0.0}, "integers"),
        ({"a": "0"}, "integers"),
        (["Car", "Road", "Car"], "listed twice"),
        ("Car", "not a single string"),
    ],
)
def test_class_map_refuses(classes: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ClassMap(classes)


def test_explicit_ignore_with_custom_ignore_index() -> None:
    class_map = ClassMap({"ground": 0, "car": 1, "noise": 255}, ignore_index=255)
    assert class_map.names == ("ground", "car")
    assert class_map.index_of(entry(9, "noise")) == 255
    assert class_map.index_of(entry(9, "tree")) == 255


@pytest.mark.parametrize(
    ("classes", "label_entry", "expected"),
    [
        (["Car", "Road"], entry(5, "Road"), 1),
        (["c-car", "c-road"], entry(5, "Car", class_id="c-car"), 0),  # label unknown: class id decides
        (["Car", "c-road"], entry(5, "Car", class_id="c-road"), 0),  # label first
        (["Car"], entry(5, "Person", class_id="c-person"), IGNORE),
        ([""], entry(5, "Person"), IGNORE),  # an empty class id matches nothing
        ({"Car": 0, "Van": 0, "Road": 1}, entry(5, "Van"), 0),
    ],
)
def test_index_of(classes: Any, label_entry: LabelEntry, expected: int) -> None:
    assert ClassMap(classes).index_of(label_entry) == expected


def test_equality_hash_and_repr() -> None:
    a = ClassMap(["x", "y"])
    assert a == ClassMap({"x": 0, "y": 1})
    assert hash(a) == hash(ClassMap({"y": 1, "x": 0}))
    assert a != ClassMap(["y", "x"])
    assert a != ClassMap(["x", "y"], ignore_index=-1)
    assert a != ["x", "y"]
    assert repr(a) == "ClassMap(['x', 'y'], ignore_index=-100)"


# ------------------------------------------------------------------------------------------- lookups


def test_lookup_per_instance_keys_and_key_zero() -> None:
    class_map = ClassMap(["Car", "Road"])
    entries = [
        entry(2, "Car", track_id="t-b"),
        entry(0, "Road"),  # key 0 is a real class
        entry(1, "Car", track_id="t-a"),  # keys 1 and 2: two instances of one class
        entry(7, "Tree", track_id="t-c"),  # a class the map leaves out
    ]
    tracks = {"t-a": 10, "t-b": 11, "t-c": 12}
    lookup = class_map.lookup(entries, tracks)
    assert isinstance(lookup, LabelLookup)
    assert lookup.keys.tolist() == [0, 1, 2, 7]
    assert lookup.classes.tolist() == [1, 0, 0, IGNORE]
    assert lookup.instances.tolist() == [-1, 10, 11, 12]
    mask = np.array([0, 1, 2, 3, 7, -1, 2, 0, 65536, INT64_MAX])
    labels, instances = lookup.apply(mask, IGNORE)
    assert labels.tolist() == [1, 0, 0, IGNORE, IGNORE, IGNORE, 0, 1, IGNORE, IGNORE]
    assert instances.tolist() == [-1, 10, 11, -1, 12, -1, 11, -1, -1, -1]
    assert labels.dtype == np.int64 and instances.dtype == np.int64


def test_empty_lookup_is_all_ignored() -> None:
    lookup = ClassMap(["Car"]).lookup([], {})
    labels, instances = lookup.apply(np.array([0, 1, 2]), IGNORE)
    assert labels.tolist() == [IGNORE] * 3 and instances.tolist() == [-1] * 3
    labels, _ = lookup.apply(np.array([], dtype=np.int64), IGNORE)
    assert labels.shape == (0,)


@pytest.mark.parametrize(
    "keys",
    [
        [INT64_MIN, 0, INT64_MAX],  # spans the whole range: the search path
        [INT64_MIN, INT64_MIN + 3],  # dense, at the bottom edge: differences must not wrap
        [INT64_MAX - 3, INT64_MAX],  # dense, at the top edge
        [-1, 0, 65535],  # hi - lo == 65536: the first sparse width
        [-1, 0, 65534],  # the last dense width
    ],
)
def test_extreme_int64_keys(keys: list[int]) -> None:
    entries = [entry(k, f"class{i}") for i, k in enumerate(keys)]
    class_map = ClassMap(None, available=[e.label for e in entries])
    probes = sorted(
        {
            *keys,
            *(k + d for k in keys for d in (-2, -1, 1, 2) if INT64_MIN <= k + d <= INT64_MAX),
            0,
            INT64_MIN,
            INT64_MAX,
        }
    )
    mask = np.array(probes, dtype=np.int64)
    labels, instances = class_map.lookup(entries, {}).apply(mask, IGNORE)
    expected, _ = reference(entries, class_map, {}, probes)
    np.testing.assert_array_equal(labels, expected)
    assert (instances == -1).all()
    assert sum(labels != IGNORE) == len(keys)


@pytest.mark.parametrize(
    ("low", "high", "n_keys"),
    [
        (0, 32, 10),  # small dense keys, the common case
        (-500, 60_000, 200),  # dense but wide
        (0, 2**40, 300),  # large sparse keys: searchsorted path
        (INT64_MIN, INT64_MAX, 300),  # anything
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_and_sparse_paths_agree_with_python(low: int, high: int, n_keys: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(low, high, size=n_keys, dtype=np.int64, endpoint=True))
    names = [f"c{i}" for i in range(7)]
    entries = [
        entry(int(k), names[int(rng.integers(0, 7))] if rng.random() < 0.8 else "unlisted", track_id=f"t{i % 5}")
        for i, k in enumerate(keys)
    ]
    tracks = {"t0": 0, "t1": 1, "t3": 3}  # t2 and t4 have no instance id
    class_map = ClassMap(names[:5])
    # Half the points carry a known key, half arbitrary values (mostly unknown keys).
    mask = np.where(
        rng.random(5000) < 0.5,
        rng.choice(keys, size=5000),
        rng.integers(low, high, size=5000, dtype=np.int64, endpoint=True),
    )
    labels, instances = class_map.lookup(entries, tracks).apply(mask, IGNORE)
    expected_labels, expected_instances = reference(entries, class_map, tracks, mask.tolist())
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_array_equal(instances, expected_instances)
    assert (labels != IGNORE).any() and (labels == IGNORE).any()


@settings(max_examples=150, deadline=None)
@given(
    keys=st.lists(st.integers(INT64_MIN, INT64_MAX), min_size=0, max_size=8, unique=True),
    extra=st.lists(st.integers(INT64_MIN, INT64_MAX), max_size=8),
    ignore_index=st.sampled_from([-100, -1, 255]),
)
def test_apply_lookup_matches_python(keys: list[int], extra: list[int], ignore_index: int) -> None:
    ordered = sorted(keys)
    classes = np.arange(len(ordered), dtype=np.int64)
    instances = np.arange(len(ordered), dtype=np.int64) + 1000
    mask = np.array(ordered + extra + [k + 1 for k in ordered if k < INT64_MAX], dtype=np.int64)
    labels, found_instances = LabelLookup(np.array(ordered, dtype=np.int64), classes, instances).apply(
        mask, ignore_index
    )
    position = {k: i for i, k in enumerate(ordered)}
    assert labels.tolist() == [position.get(int(k), ignore_index) for k in mask]
    assert found_instances.tolist() == [position[int(k)] + 1000 if int(k) in position else -1 for k in mask]


def test_lookup_keeps_mask_shape() -> None:
    lookup = ClassMap(["a", "b"]).lookup([entry(0, "a"), entry(3, "b")], {})
    labels, _ = lookup.apply(np.array([[0, 3], [1, 0]]), IGNORE)
    assert labels.tolist() == [[0, 1], [IGNORE, 0]]


@pytest.mark.parametrize(("dtype", "low", "high"), [(np.uint8, 0, 256), (np.int16, -32768, 32768)])
def test_compact_masks_map_like_int64_masks(dtype, low, high):
    rng = np.random.default_rng(5)
    keys = np.unique(np.concatenate([rng.integers(low, high, 300), [low, high - 1, -(2**40), 2**40]])).astype(np.int64)
    values = rng.integers(0, 9, len(keys)).astype(np.int64)
    mask = rng.integers(low, high, 20_000).astype(dtype)
    mask[:4] = [low, high - 1, 0, low + 1]
    assert np.array_equal(map_keys(keys, values, mask, -100), map_keys(keys, values, mask.astype(np.int64), -100))
