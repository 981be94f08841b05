"""The dataset on a user's bad day: typo'd classes, narrowed datasets with sweeps, counters across workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fast_client

from playment_torch.collate import collate_points
from playment_torch.dataset import PlaymentSegmentationDataset
from playment_torch.errors import ConfigError, PlaymentError
from playment_torch.testing.synthetic import add_synthetic_project

POINTS = 10_000


def make_dataset(server, cache_dir, **options):
    options.setdefault("client", fast_client(server))
    options.setdefault("progress", False)
    return PlaymentSegmentationDataset(server.project_id, cache_dir=str(cache_dir), **options)


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (["Road", "car"], r"'Road' \(did you mean 'road'\?\).*The jobs use: 'building', 'car'"),
        (["foo"], r"1 name\(s\) no job of this dataset uses: 'foo'\. The jobs use: 'building'"),
        ({"car": 0, "Vegetaton": 1}, r"'Vegetaton' \(did you mean 'vegetation'\?\)"),
    ],
    ids=["case", "unknown", "dict key"],
)
def test_class_names_no_job_uses_are_errors_with_suggestions(server, tmp_path, classes, message):
    add_synthetic_project(server, n_jobs=1, frames_per_job=1, points_per_frame=POINTS, seed=60)
    with pytest.raises(ConfigError, match=message):
        make_dataset(server, tmp_path, classes=classes)


def test_unknown_class_names_are_allowed_when_asked(server, tmp_path):
    (job,) = add_synthetic_project(server, n_jobs=1, frames_per_job=1, points_per_frame=POINTS, seed=61)
    ds = make_dataset(server, tmp_path, classes=["road", "van"], allow_unknown_classes=True)
    assert ds.classes == ("road", "van")
    labels = ds[0].labels.numpy()
    from playment_torch.testing.synthetic import CLASSES

    road = job.frames[0].class_index == CLASSES.index("road")
    assert np.array_equal(labels == 0, road) and not (labels == 1).any()


def test_class_ids_are_valid_names_too(server, tmp_path):
    (job,) = add_synthetic_project(server, n_jobs=1, frames_per_job=1, points_per_frame=POINTS, seed=62)
    annotation = job.result["annotation_data"]["annotations"][0]
    ds = make_dataset(server, tmp_path, classes=[annotation["class_id"]])
    assert ds.classes == (annotation["class_id"],)


def test_sweeps_merge_only_frames_that_were_adjacent_in_their_job(server, tmp_path):
    (job,) = add_synthetic_project(server, n_jobs=1, frames_per_job=4, points_per_frame=POINTS, seed=63)
    ds = make_dataset(server, tmp_path, sweeps=2, point_fields=("x", "y", "z"))
    sizes = [len(f.points) for f in job.frames]
    full = ds[2]
    assert np.bincount(full.points[:, 3].numpy().astype(int)).tolist() == [sizes[2], sizes[1]]
    narrowed = ds.subset([0, 2, 3])  # frame 1 left out
    assert [f.frame_id for f in narrowed.frames] == ["0", "2", "3"]
    # Item 1 is frame 2: frame 1 is gone, and frame 0 (two frames back) must not stand in for it.
    alone = narrowed[1]
    assert len(alone.points) == sizes[2] and bool((alone.points[:, 3] == 0).all())
    # Item 2 is frame 3, with frame 2 one sweep back, exactly as in the full dataset.
    assert torch.equal(narrowed[2].points, ds[3].points)
    assert len(ds) == 4, "subset does not change the dataset it came from"


def test_stats_add_up_across_dataloader_workers_and_epochs(server, tmp_path):
    add_synthetic_project(server, n_jobs=2, frames_per_job=3, points_per_frame=POINTS, seed=64)
    ds = make_dataset(server, tmp_path)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=2, num_workers=2, collate_fn=collate_points, multiprocessing_context="fork"
    )
    for _ in loader:
        pass
    first = ds.stats()
    assert first.items == len(ds), "items loaded in workers count in the main process"
    assert first.misses == 2 * len(ds) and first.hits == 0 and first.bytes_downloaded > 0
    for _ in loader:
        pass
    epoch = ds.stats() - first
    assert (epoch.items, epoch.misses, epoch.hits, epoch.bytes_downloaded) == (len(ds), 0, 2 * len(ds), 0)
    assert epoch.hit_ratio == 1.0 and "cache hit ratio 100.0%" in str(epoch)
    ds.reset_stats()
    assert ds.stats().items == 0
    other = make_dataset(server, tmp_path)
    assert other.stats().items == 0, "another dataset has counters of its own"


def test_prefetch_failures_keep_messages_not_every_download(server, tmp_path):
    import tracemalloc

    (job,) = add_synthetic_project(server, n_jobs=1, frames_per_job=12, points_per_frame=POINTS, seed=65)
    garbage = b"# not a point cloud\n" + bytes(1_000_000)  # downloads whole, then fails to decode
    for frame in job.result["sensor_data"]["frames"]:
        lidar = next(s for s in frame["sensors"] if s["data_url"].endswith(".pcd"))
        server.put_file(lidar["data_url"], garbage)
    ds = make_dataset(server, tmp_path, on_error="skip")
    tracemalloc.start()
    try:
        report = ds.prefetch(num_threads=4, progress=False)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(report.failures) == 12 and all(isinstance(reason, str) for _, _, reason in report.failures)
    assert isinstance(report.first_error, PlaymentError)
    # 12 MB of bodies were downloaded; the report holds the first failure's exception (whose traceback still
    # sees that one body and what was parsed of it), never one per failure.
    assert held < 5 * len(garbage), f"{held / 2**20:.1f} MiB held after prefetch"
    assert all(len(reason) <= 1000 for _, _, reason in report.failures), "messages quote input, but briefly"
