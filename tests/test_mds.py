"""MDS export (MosaicML Streaming) and reading it back: identical frames, 2 nodes, mid-epoch resume, the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import fast_client

import playment_torch as pt
from playment_torch.cli import main
from playment_torch.errors import ConfigError, PlaymentError, PlaymentFormatError
from playment_torch.mds import (
    COLUMNS,
    METADATA_FILE,
    ExportedFrame,
    export_mds,
    import_streaming,
    read_metadata,
    record_from_sample,
    sample_from_record,
    snapshot_id,
)
from playment_torch.testing.synthetic import add_synthetic_project

try:
    streaming = import_streaming()
except ConfigError as exc:  # without the [mds] extra (CI installs it)
    pytest.skip(str(exc), allow_module_level=True)

from playment_torch.mds import PlaymentStreamingDataLoader, PlaymentStreamingDataset

POINTS = 10_000
SHARD_BYTES = 400_000  # ~2 frames a shard: several shards from a small project


@pytest.fixture
def project(server):
    jobs = add_synthetic_project(server, n_jobs=2, frames_per_job=3, points_per_frame=POINTS, seed=31)
    # A job without cameras: its intrinsics are (0, 3, 3), which MDS's ndarray encoding refuses.
    jobs += add_synthetic_project(server, n_jobs=1, frames_per_job=2, points_per_frame=POINTS, seed=32, cameras=0)
    return jobs


@pytest.fixture
def dataset(server, project, tmp_path):
    return pt.PlaymentSegmentationDataset(
        server.project_id, client=fast_client(server), cache_dir=tmp_path / "cache", progress=False
    )


@pytest.fixture
def export(dataset, tmp_path):
    out = tmp_path / "export"
    report = export_mds(dataset, out, size_limit=SHARD_BYTES, num_workers=2, progress=False)
    return out, report


def test_export_reads_back_identical_through_the_engines_own_dataset(dataset, export, tmp_path):
    out, report = export
    assert report.frames == len(dataset) == 8 and report.shards >= 3
    assert report.bytes == sum(f.stat().st_size for f in out.glob("shard.*.mds"))
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("shard.")) == ["index.json", METADATA_FILE]
    assert {len(dataset.cameras(i)) for i in range(len(dataset))} == {0, 2}

    engine = streaming.StreamingDataset(local=str(out))  # the engine's own reader, no subclass
    assert len(engine) == len(dataset)
    for i in range(len(dataset)):
        record, expected, ref = engine[i], dataset[i], dataset.frames[i]
        assert (record["job_id"], record["frame_id"], record["sensor_id"], record["item"]) == (
            ref.job_id, ref.frame_id, ref.sensor_id, i,
        )  # fmt: skip
        assert record["digest"] == dataset.index.job_of(i).digest
        sample = sample_from_record(record)
        for got, want in zip(sample, expected, strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape
            assert torch.equal(got, want)
        sample.points[0, 0] = 1.0  # writable: not MDS's read-only buffer

    metadata = read_metadata(out)
    assert metadata["classes"] == list(dataset.classes)
    assert metadata["ignore_index"] == dataset.ignore_index == -100
    assert metadata["point_fields"] == list(dataset.point_fields)
    assert metadata["version"] == 1 and metadata["frames"] == 8
    assert metadata["snapshot"] == report.snapshot == snapshot_id(dataset)


def test_streaming_dataset_yields_samples_that_transforms_collate_and_metrics_take(dataset, export, tmp_path):
    out, _ = export

    def jitter(sample):
        return sample._replace(points=sample.points * 2)

    stream = PlaymentStreamingDataset(local=str(out), transform=jitter, batch_size=2)
    assert stream.classes == dataset.classes and stream.point_fields == dataset.point_fields
    assert stream.frame(5) == ExportedFrame(
        dataset.frames[5].job_id, dataset.frames[5].frame_id, dataset.frames[5].sensor_id,
        dataset.index.job_of(5).digest, 5,
    )  # fmt: skip
    assert torch.equal(stream[3].points, dataset[3].points * 2)
    loader = torch.utils.data.DataLoader(stream, batch_size=2, collate_fn=pt.collate_points)
    metrics = pt.SegmentationMetrics(len(stream.classes), ignore_index=stream.ignore_index)
    batches = list(loader)
    assert len(batches) == 4 and sum(len(b.offsets) - 1 for b in batches) == 8
    for batch in batches:
        metrics.update(batch.labels, batch.labels)
    assert metrics.miou() == pytest.approx(1.0)


def test_empty_clouds_and_no_cameras_round_trip(tmp_path):
    from streaming import MDSWriter

    samples = [
        pt.Sample(torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64), torch.eye(4)[None].double(),
                  torch.zeros((0, 3, 3), dtype=torch.float64)),
        pt.Sample(torch.rand(5, 3), torch.arange(5), torch.rand(3, 4, 4).double(), torch.rand(2, 3, 3).double()),
    ]  # fmt: skip
    with MDSWriter(out=str(tmp_path / "mds"), columns=COLUMNS) as writer:
        for i, sample in enumerate(samples):
            writer.write(record_from_sample(sample, ExportedFrame("job", f"f{i}", "lidar", "d", i)))
    engine = streaming.StreamingDataset(local=str(tmp_path / "mds"))
    for i, sample in enumerate(samples):
        for got, want in zip(sample_from_record(engine[i]), sample, strict=True):
            assert got.shape == want.shape and got.dtype == want.dtype and torch.equal(got, want)


def shard_files(folder) -> dict[str, tuple[int, int]]:
    """Shard files of a node's ``local`` folder, with what changes if one is copied again (inode, mtime)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("shard.*.mds") if p.is_file()}


@pytest.fixture
def one_process_group():
    """A process group of this process alone, so that Streaming does not start one for the simulated world.

    Streaming reads its world (nodes, ranks) from ``WORLD_SIZE``/``RANK``/``LOCAL_WORLD_SIZE``/``LOCAL_RANK``
    and uses ``torch.distributed`` only for barriers, starting a process group itself when none exists. With this
    one its barriers return at once, and the two "nodes" can run one after the other in this process (two
    processes would race for the same shared-memory prefix on one host, which real nodes never share).
    """
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def test_two_nodes_copy_each_shard_once_and_split_every_epoch(export, tmp_path, monkeypatch, one_process_group):
    out, report = export
    seen = {}
    copies = {}
    for epoch in range(2):
        per_node = []
        for node in range(2):
            # Streaming's view of the job: 2 nodes of 1 rank (its World reads these variables).
            for name, value in {"WORLD_SIZE": 2, "RANK": node, "LOCAL_WORLD_SIZE": 1, "LOCAL_RANK": 0}.items():
                monkeypatch.setenv(name, str(value))
            if epoch == 0:
                seen[node] = streaming.StreamingDataset(
                    remote=str(out), local=str(tmp_path / f"node{node}"), shuffle=True, shuffle_seed=7,
                    num_canonical_nodes=2, batch_size=1,
                )  # fmt: skip
            per_node.append([record["item"] for record in seen[node]])
        for node in range(2):
            files = shard_files(tmp_path / f"node{node}")
            if epoch == 0:
                copies[node] = files
            else:  # every shard the node read in epoch 0 is the same file: not copied again
                assert {k: files[k] for k in copies[node]} == copies[node]
        items = per_node[0] + per_node[1]
        assert sorted(items) == list(range(report.frames))  # each frame once per epoch, across the nodes
        assert len(per_node[0]) == len(per_node[1]) == report.frames // 2
    # Each node holds only shards it needed, each once; between them, every shard.
    names = set(copies[0]) | set(copies[1])
    assert names == {f"shard.{i:05d}.mds" for i in range(report.shards)}


def test_mid_epoch_state_dict_resumes_with_exactly_the_rest_of_the_epoch(export, tmp_path):
    out, report = export
    options = {"remote": str(out), "shuffle": True, "shuffle_seed": 3, "batch_size": 1}
    first = PlaymentStreamingDataset(local=str(tmp_path / "a"), **options)
    iterator = iter(first)
    consumed = [next(iterator) for _ in range(3)]
    state = first.state_dict(num_samples=len(consumed), from_beginning=True)
    rest = list(iterator)
    assert len(consumed) + len(rest) == report.frames

    resumed = PlaymentStreamingDataset(local=str(tmp_path / "b"), **options)  # a new process would do this
    resumed.load_state_dict(state)
    again = list(resumed)
    assert len(again) == len(rest) == report.frames - 3
    for got, want in zip(again, rest, strict=True):
        assert torch.equal(got.points, want.points) and torch.equal(got.labels, want.labels)
    assert not any(torch.equal(s.points, c.points) for s in again for c in consumed)


def test_data_loader_state_dict_resumes_mid_epoch_with_collated_batches(export, tmp_path):
    out, report = export
    options = {"remote": str(out), "shuffle": True, "shuffle_seed": 5, "batch_size": 2}

    def loader(local):
        stream = PlaymentStreamingDataset(local=str(tmp_path / local), **options)
        return PlaymentStreamingDataLoader(stream, batch_size=2, collate_fn=pt.collate_points)

    first = loader("a")
    batches = iter(first)
    head = [next(batches), next(batches)]
    state = first.state_dict()
    assert state["sample_in_epoch"] == 4  # frames, not points
    tail = list(batches)
    resumed = loader("b")
    resumed.load_state_dict(state)
    again = list(resumed)
    assert len(head) + len(again) == report.frames // 2 == len(head) + len(tail)
    for got, want in zip(again, tail, strict=True):
        assert torch.equal(got.points, want.points) and torch.equal(got.offsets, want.offsets)


def test_snapshot_path_changes_when_a_job_is_relabelled(server, project, dataset, tmp_path):
    before = snapshot_id(dataset)
    report = export_mds(dataset, tmp_path / "exports" / "{snapshot}", progress=False)
    assert report.out == str(tmp_path / "exports" / before) and (tmp_path / "exports" / before / "index.json").exists()
    job = project[0]
    result = json.loads(json.dumps(job.result))
    result["relabelled"] = True  # any new result has a new digest
    server.replace_result(job.job_id, result)
    relabelled = pt.PlaymentSegmentationDataset(
        server.project_id, client=fast_client(server), cache_dir=tmp_path / "cache", refresh="always", progress=False
    )
    assert snapshot_id(relabelled) != before


def test_export_to_a_remote_uploads_shards_and_metadata_and_the_reader_fetches_both(dataset, tmp_path):
    # Streaming treats a second local folder as a remote (the same uploader and downloader paths as s3://).
    staging, remote = tmp_path / "staging", tmp_path / "remote"
    report = export_mds(dataset, (staging, str(remote)), size_limit=SHARD_BYTES, progress=False)
    assert report.out == str(remote)
    for folder in (staging, remote):  # (local, remote): the local copy is kept
        assert {"index.json", METADATA_FILE} <= {p.name for p in folder.iterdir()}
        assert len(list(folder.glob("shard.*.mds"))) == report.shards
    stream = PlaymentStreamingDataset(remote=str(remote), local=str(tmp_path / "node"), batch_size=1)
    assert (tmp_path / "node" / METADATA_FILE).exists() and stream.classes == dataset.classes
    assert torch.equal(stream[7].labels, dataset[7].labels)


def test_export_refuses_a_folder_in_use_and_writes_no_index_when_a_frame_fails(server, project, tmp_path):
    dataset = pt.PlaymentSegmentationDataset(
        server.project_id, client=fast_client(server), cache_dir=tmp_path / "cold", progress=False
    )
    server.add_fault(route="storage", status=404, times=None)  # every file is gone
    out = tmp_path / "failed"
    with pytest.raises(PlaymentError, match=r"export: item 0 failed: .*HTTP 404") as caught:
        export_mds(dataset, out, size_limit=SHARD_BYTES, num_workers=2, progress=False)
    assert dataset.frames[0].job_id in str(caught.value)
    assert not (out / "index.json").exists() and not (out / METADATA_FILE).exists()
    with pytest.raises(PlaymentFormatError, match="not a playment-torch MDS export"):
        read_metadata(out)

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="cannot export to"):
        export_mds(dataset, busy, progress=False)  # not empty: never written into
    with pytest.raises(ConfigError, match="compression"):
        export_mds(dataset, tmp_path / "x", compression="lzma", progress=False)


def test_cli_export_writes_a_zstd_export_the_reader_takes(server, project, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PLAYMENT_API_KEY", server.api_key)
    out = tmp_path / "cli-export"
    args = ["export", "--project", server.project_id, "--base-url", server.url, "--cache-dir", str(tmp_path / "c")]
    code = main([*args, "--job", project[2].job_id, "--format", "mds", "--out", str(out), "--compression", "zstd",
                 "--point-fields", "x,y,z", "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "2 frames in 1 shards" in capsys.readouterr().out
    assert list(out.glob("shard.*.mds.zstd"))
    stream = PlaymentStreamingDataset(local=str(out))
    assert stream.point_fields == ("x", "y", "z") and stream[0].points.shape == (POINTS, 3)
    assert stream[1].intrinsics.shape == (0, 3, 3)
    assert main([*args, "--format", "mds", "--out", str(out), "--quiet"]) == 1
    assert "cannot export to" in capsys.readouterr().err
    assert os.path.exists(out / METADATA_FILE)


def test_sample_arrays_are_not_shared_with_the_reader(export):
    out, _ = export
    engine = streaming.StreamingDataset(local=str(out), batch_size=1)
    record = engine[0]
    assert not np.frombuffer(record["points"], dtype=np.float32).flags.writeable
    sample = sample_from_record(record)
    assert sample.points.numpy().flags.writeable and sample.points.numpy().flags.owndata is not None
