"""collate_points and Batch: concatenation order, offsets, batch index, stacking, devices, pinned memory."""

from __future__ import annotations

import warnings
from collections import namedtuple
from typing import Any

import numpy as np
import pytest
import torch
import torch.utils.data._utils.pin_memory as pinning
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

from playment_torch.collate import Batch, collate_points
from playment_torch.errors import PlaymentFormatError
from playment_torch.sample import Sample

PlainSample = namedtuple("PlainSample", "points labels poses intrinsics")


def make_sample(n: int, cameras: int = 2, channels: int = 4, seed: int = 0) -> Sample:
    """A sample whose every value is recognisable: point i of sample `seed` starts with seed * 1000 + i."""
    points = torch.arange(n * channels, dtype=torch.float32).reshape(n, channels) + seed * 1000
    points[:, 0] = seed * 1000 + torch.arange(n, dtype=torch.float32)
    labels = torch.arange(n, dtype=torch.int64) % 5 + seed * 10
    poses = torch.eye(4, dtype=torch.float64).repeat(1 + cameras, 1, 1)
    poses[:, 0, 3] = torch.arange(1 + cameras, dtype=torch.float64) + seed
    intrinsics = torch.eye(3, dtype=torch.float64).repeat(cameras, 1, 1) * (seed + 2)
    return Sample(points, labels, poses, intrinsics)


def test_values_of_a_mixed_batch() -> None:
    samples = [make_sample(5, seed=0), make_sample(0, seed=1), make_sample(3, seed=2)]
    batch = collate_points(samples)
    assert len(batch) == 3
    assert batch.offsets.tolist() == [0, 5, 5, 8]
    assert batch.batch_index.tolist() == [0, 0, 0, 0, 0, 2, 2, 2]
    assert torch.equal(batch.points, torch.cat([s.points for s in samples]))
    assert batch.points[:, 0].tolist() == [0, 1, 2, 3, 4, 2000, 2001, 2002]
    assert batch.labels.tolist() == [0, 1, 2, 3, 4, 20, 21, 22]
    assert batch.points.dtype == torch.float32 and batch.labels.dtype == torch.int64
    assert batch.offsets.dtype == torch.int64 and batch.batch_index.dtype == torch.int64
    assert isinstance(batch.poses, torch.Tensor) and batch.poses.shape == (3, 3, 4, 4)
    assert isinstance(batch.intrinsics, torch.Tensor) and batch.intrinsics.shape == (3, 2, 3, 3)
    for b, sample in enumerate(samples):
        assert torch.equal(batch.poses[b], sample.poses)
        assert torch.equal(batch.intrinsics[b], sample.intrinsics)
        rows = slice(int(batch.offsets[b]), int(batch.offsets[b + 1]))
        assert torch.equal(batch.points[rows], sample.points)
        assert torch.equal(batch.labels[rows], sample.labels)


@pytest.mark.parametrize("n", [0, 1, 7])
def test_single_sample(n: int) -> None:
    sample = make_sample(n, cameras=1, seed=3)
    batch = collate_points([sample])
    assert len(batch) == 1
    assert batch.offsets.tolist() == [0, n]
    assert batch.batch_index.tolist() == [0] * n
    assert torch.equal(batch.points, sample.points) and batch.points.shape == (n, 4)
    assert isinstance(batch.poses, torch.Tensor) and isinstance(batch.intrinsics, torch.Tensor)
    assert torch.equal(batch.poses, sample.poses.unsqueeze(0))
    assert torch.equal(batch.intrinsics, sample.intrinsics.unsqueeze(0))


def test_all_empty_samples() -> None:
    batch = collate_points([make_sample(0, seed=1), make_sample(0, seed=2)])
    assert batch.points.shape == (0, 4) and batch.labels.shape == (0,)
    assert batch.offsets.tolist() == [0, 0, 0]
    assert batch.batch_index.shape == (0,)


def test_camera_counts_that_differ_give_lists() -> None:
    samples = [make_sample(2, cameras=2, seed=0), make_sample(3, cameras=0, seed=1), make_sample(1, cameras=1, seed=2)]
    batch = collate_points(samples)
    assert isinstance(batch.poses, list) and isinstance(batch.intrinsics, list)
    assert [p.shape[0] for p in batch.poses] == [3, 1, 2]
    assert [k.shape[0] for k in batch.intrinsics] == [2, 0, 1]
    for b, sample in enumerate(samples):
        assert torch.equal(batch.poses[b], sample.poses)
        assert torch.equal(batch.intrinsics[b], sample.intrinsics)
    assert batch.offsets.tolist() == [0, 2, 5, 6]  # the points are concatenated as usual


def test_no_cameras_anywhere_stacks_to_empty_axis() -> None:
    batch = collate_points([make_sample(2, cameras=0), make_sample(1, cameras=0, seed=1)])
    assert isinstance(batch.intrinsics, torch.Tensor) and batch.intrinsics.shape == (2, 0, 3, 3)
    assert isinstance(batch.poses, torch.Tensor) and batch.poses.shape == (2, 1, 4, 4)


@pytest.mark.parametrize(
    "convert",
    [
        lambda s: s,
        lambda s: PlainSample(*s),
        lambda s: tuple(s),
        lambda s: [x.numpy() for x in s],
    ],
    ids=["Sample", "other namedtuple", "plain tuple", "numpy arrays in a list"],
)
def test_duck_typed_samples(convert: Any) -> None:
    samples = [make_sample(2, seed=0), make_sample(3, seed=1)]
    batch = collate_points([convert(s) for s in samples])
    reference = collate_points(samples)
    for name in ("points", "labels", "offsets", "batch_index", "poses", "intrinsics"):
        assert torch.equal(getattr(batch, name), getattr(reference, name)), name


def test_labels_become_int64() -> None:
    sample = make_sample(4)
    batch = collate_points([sample._replace(labels=sample.labels.to(torch.int32))])
    assert batch.labels.dtype == torch.int64 and batch.labels.tolist() == sample.labels.tolist()


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        ([], "at least one sample"),
        ([make_sample(2), make_sample(2, channels=3)], "sample 1: 3 point columns where sample 0 has 4"),
        ([make_sample(2)._replace(labels=torch.zeros(3, dtype=torch.int64))], "sample 0: labels of shape"),
        ([make_sample(2)._replace(points=torch.zeros(6))], "sample 0: points must be"),
        ([make_sample(2), make_sample(2)._replace(poses=torch.zeros(2, 3, 3))], "sample 1: poses must be"),
        ([make_sample(2, cameras=2)._replace(intrinsics=torch.zeros(1, 3, 3))], "K = 2"),
        ([(1, 2)], "sample 0 is not"),
    ],
    ids=["empty", "columns", "labels", "points 1-D", "poses", "intrinsics K", "not a sample"],
)
def test_malformed_samples(samples: list[Any], message: str) -> None:
    with pytest.raises(PlaymentFormatError, match=message):
        collate_points(samples)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 20), min_size=1, max_size=6))
def test_offsets_and_index_property(sizes: list[int]) -> None:
    samples = [make_sample(n, seed=b) for b, n in enumerate(sizes)]
    batch = collate_points(samples)
    assert batch.offsets.tolist() == [0, *np.cumsum(sizes).tolist()]
    assert batch.batch_index.tolist() == [b for b, n in enumerate(sizes) for _ in range(n)]
    for b, sample in enumerate(samples):
        rows = batch.batch_index == b
        assert torch.equal(batch.points[rows], sample.points)


# --- devices and pinned memory ---------------------------------------------------------------------------------


def _tensors(batch: Batch) -> list[torch.Tensor]:
    out = [batch.points, batch.labels, batch.offsets, batch.batch_index]
    for value in (batch.poses, batch.intrinsics):
        out.extend(value if isinstance(value, list) else [value])
    return out


@pytest.mark.parametrize("cameras", [(2, 2), (2, 1)], ids=["stacked", "lists"])
def test_to_moves_every_tensor(cameras: tuple[int, int]) -> None:
    batch = collate_points([make_sample(3, cameras=cameras[0]), make_sample(2, cameras=cameras[1], seed=1)])
    moved = batch.to("meta")
    assert all(t.device.type == "meta" for t in _tensors(moved))
    assert [t.shape for t in _tensors(moved)] == [t.shape for t in _tensors(batch)]
    assert [t.dtype for t in _tensors(moved)] == [t.dtype for t in _tensors(batch)]
    assert all(t.device.type == "cpu" for t in _tensors(batch))  # the original is untouched
    back = batch.to(torch.device("cpu"), non_blocking=True)
    assert all(torch.equal(a, b) for a, b in zip(_tensors(back), _tensors(batch), strict=True))


def _real_pinning_works() -> bool:
    try:
        return bool(torch.zeros(1).pin_memory().is_pinned())
    except RuntimeError:
        return False


@pytest.mark.parametrize("cameras", [(1, 1), (1, 0)], ids=["stacked", "lists"])
def test_dataloader_pinning_calls_batch_pin_memory(monkeypatch: pytest.MonkeyPatch, cameras: tuple[int, int]) -> None:
    batch = collate_points([make_sample(3, cameras=cameras[0]), make_sample(2, cameras=cameras[1], seed=1)])
    pinned_ids: list[int] = []
    if not _real_pinning_works():
        # No accelerator here, so torch cannot pin: stand in for Tensor.pin_memory and record what gets pinned.
        def fake_pin(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            copy = self.clone()
            pinned_ids.append(id(copy))
            return copy

        monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    # The function DataLoader's pinning thread applies to every batch.
    pinned = pinning.pin_memory(batch)
    assert isinstance(pinned, Batch)
    assert all(torch.equal(a, b) for a, b in zip(_tensors(pinned), _tensors(batch), strict=True))
    if pinned_ids:
        assert sorted(pinned_ids) == sorted(id(t) for t in _tensors(pinned))
    else:
        assert all(t.is_pinned() for t in _tensors(pinned))


class _Clouds(Dataset[Sample]):
    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index: int) -> Sample:
        return make_sample(self.sizes[index], seed=index)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_dataloader_with_pin_memory(num_workers: int) -> None:
    sizes = [4, 0, 6, 1, 3]
    loader = DataLoader(
        _Clouds(sizes), batch_size=2, collate_fn=collate_points, pin_memory=True, num_workers=num_workers
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")  # "no accelerator": pinning is skipped
        batches = list(loader)
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [b.offsets.tolist() for b in batches] == [[0, 4, 4], [0, 6, 7], [0, 3]]
    assert torch.equal(batches[1].points[:, 0], torch.tensor([2000, 2001, 2002, 2003, 2004, 2005, 3000.0]))
    assert torch.equal(batches[2].labels, make_sample(3, seed=4).labels)
    assert all(isinstance(b, Batch) and isinstance(b.poses, torch.Tensor) for b in batches)
