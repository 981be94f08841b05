"""PredictionWriter, reading predictions back, and the export in Playment's own result format."""

from __future__ import annotations

import json
import urllib.parse

import numpy as np
import pytest
import torch
from conftest import fast_client

import playment_torch as pt
from playment_torch.dataset import PlaymentSegmentationDataset
from playment_torch.errors import ConfigError, FrameError, PlaymentFormatError
from playment_torch.predictions import (
    PredictionWriter,
    load_predictions,
    prediction_path,
    read_prediction,
    write_playment_results,
)
from playment_torch.testing.synthetic import add_synthetic_project

CLASSES = ("car", "road", "tree")


def test_folder_format_is_exactly_the_documented_one(tmp_path):
    writer = PredictionWriter(tmp_path / "run", classes=CLASSES, ignore_index=-100)
    path = writer.write("job/1 é", "frame 0?", np.array([0, 2, -100, 1]))
    q = lambda s: urllib.parse.quote(s, safe="")  # noqa: E731
    assert path == tmp_path / "run" / q("job/1 é") / (q("frame 0?") + ".npy")
    assert path == prediction_path(tmp_path / "run", "job/1 é", "frame 0?")
    stored = np.load(path)
    assert stored.ndim == 1 and stored.dtype.kind == "i" and stored.tolist() == [0, 2, -100, 1]
    assert json.loads((tmp_path / "run" / "classes.json").read_text()) == {
        "classes": ["car", "road", "tree"],
        "ignore_index": -100,
        "format": 1,
    }
    # Nothing half-written or temporary is left behind.
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == sorted(["classes.json", q("job/1 é"), path.name])


def test_dotted_ids_stay_inside_the_folder(tmp_path):
    writer = PredictionWriter(tmp_path / "run", classes=CLASSES)
    for job, frame in [(".hidden", ".x"), ("a", ".."), ("a", ".")]:
        path = writer.write(job, frame, np.array([1]))
        assert path.parent.parent == tmp_path / "run"
    assert sorted(load_predictions(tmp_path / "run").keys()) == [(".hidden", ".x"), ("a", "."), ("a", "..")]
    for job, frame in [("..", "0"), (".", "0"), ("", "0"), ("a", "")]:
        with pytest.raises(ConfigError, match="cannot name prediction files"):
            writer.write(job, frame, np.array([1]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_logits_tensors_and_replacing(tmp_path):
    writer = PredictionWriter(tmp_path, classes=CLASSES)
    logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 0.0, 0.0], [0.0, 0.0, 0.5]], requires_grad=True)
    writer.write("j", "f", logits)
    assert read_prediction(tmp_path, "j", "f").tolist() == [1, 0, 2]
    writer.write("j", "f", torch.tensor([2, 2]))  # a rerun replaces the frame's file
    assert read_prediction(tmp_path, "j", "f").tolist() == [2, 2]
    writer.write("j", "empty", np.zeros((0, 3), dtype=np.float32))
    assert read_prediction(tmp_path, "j", "empty").tolist() == []


@pytest.mark.parametrize(
    ("predicted", "message"),
    [
        (np.array([0.0, 1.0]), r"job j, frame f: class indices must be integers"),
        (np.array([0, 3]), r"job j, frame f: predicted class 3 is outside \[0, 3\)"),
        (np.array([-1, 0]), r"predicted class -1 is outside"),
        (np.zeros((4, 2)), r"scores have 2 columns for 3 classes"),
        (np.zeros((2, 2, 3)), r"\(N,\) class indices or \(N, C\) scores"),
    ],
)
def test_bad_predictions_are_refused(tmp_path, predicted, message):
    writer = PredictionWriter(tmp_path, classes=CLASSES)
    with pytest.raises(PlaymentFormatError, match=message):
        writer.write("j", "f", predicted)
    assert not (tmp_path / "j").exists()


def test_classes_are_fixed_per_folder(tmp_path):
    PredictionWriter(tmp_path, classes=CLASSES)
    PredictionWriter(tmp_path, classes=list(CLASSES))  # the same classes: fine (every rank makes one)
    with pytest.raises(ConfigError, match="holds predictions over classes"):
        PredictionWriter(tmp_path, classes=("road", "car", "tree"))
    with pytest.raises(ConfigError, match="holds predictions over classes"):
        PredictionWriter(tmp_path, classes=CLASSES, ignore_index=255)
    with pytest.raises(ConfigError, match="ignore_index 1 is the index of class 'road'"):
        PredictionWriter(tmp_path / "other", classes=CLASSES, ignore_index=1)
    with pytest.raises(ConfigError, match="class names"):
        PredictionWriter(tmp_path / "other", classes=())


def test_default_folder_is_inside_the_cache_dir(tmp_path):
    writer = PredictionWriter(classes=CLASSES, name="run-7", cache_dir=tmp_path)
    assert writer.directory == tmp_path / "predictions" / "run-7"
    assert (tmp_path / "predictions" / "run-7" / "classes.json").is_file()
    with pytest.raises(ConfigError):
        PredictionWriter(classes=CLASSES, name="../x", cache_dir=tmp_path)


def test_write_batch_splits_by_offsets(tmp_path):
    writer = PredictionWriter(tmp_path, classes=CLASSES)
    samples = [
        pt.Sample(torch.zeros(n, 3), torch.zeros(n, dtype=torch.int64), torch.eye(4)[None], torch.zeros(0, 3, 3))
        for n in (3, 0, 2)
    ]
    batch = pt.collate_points(samples)
    predicted = torch.tensor([0, 1, 2, 2, 1])
    writer.write_batch([("a", "0"), ("a", "1"), ("b", "0")], predicted, batch.offsets)
    opened = load_predictions(tmp_path)
    assert opened.get("a", "0").tolist() == [0, 1, 2]
    assert opened.get("a", "1").tolist() == []
    assert opened.get("b", "0").tolist() == [2, 1]
    assert list(opened.keys()) == [("a", "0"), ("a", "1"), ("b", "0")] and len(opened) == 3
    assert ("a", "0") in opened and ("c", "0") not in opened
    with pytest.raises(PlaymentFormatError, match="2 frames but 4 offsets"):
        writer.write_batch([("a", "0"), ("a", "1")], predicted, batch.offsets)
    with pytest.raises(PlaymentFormatError, match="4 predicted rows, offsets end at 5"):
        writer.write_batch([("a", "0"), ("a", "1"), ("b", "0")], predicted[:4], batch.offsets)


def test_reading_back_failures(tmp_path):
    with pytest.raises(ConfigError, match=r"no classes\.json"):
        load_predictions(tmp_path)
    writer = PredictionWriter(tmp_path, classes=CLASSES)
    with pytest.raises(FrameError, match="job j, frame 9: no prediction") as caught:
        read_prediction(tmp_path, "j", "9")
    assert caught.value.job_id == "j" and caught.value.frame_id == "9"
    path = writer.write("j", "1", np.arange(3))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(PlaymentFormatError, match="job j, frame 1: damaged prediction file"):
        read_prediction(tmp_path, "j", "1")
    (tmp_path / "classes.json").write_text('{"classes": ["a"], "ignore_index": -1, "format": 99}')
    with pytest.raises(PlaymentFormatError, match="unknown predictions format 99"):
        load_predictions(tmp_path)


class _Frames(torch.utils.data.Dataset):
    """Items whose loading writes a prediction, as a model running inside DataLoader workers would."""

    def __init__(self, writer: PredictionWriter) -> None:
        self.writer = writer

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> int:
        self.writer.write(f"job {i % 3}", str(i), np.full(100 + i, i % 3))
        return i


def test_workers_write_concurrently(tmp_path):
    writer = PredictionWriter(tmp_path, classes=CLASSES)
    loader = torch.utils.data.DataLoader(_Frames(writer), batch_size=4, num_workers=2)
    assert sorted(int(i) for batch in loader for i in batch) == list(range(24))
    opened = load_predictions(tmp_path)
    assert len(opened) == 24
    for i in range(24):
        assert opened.get(f"job {i % 3}", str(i)).tolist() == [i % 3] * (100 + i)
    assert not list(tmp_path.rglob("*.tmp"))


# ----------------------------------------------------------------------------------------- Playment format


@pytest.fixture
def project(server):
    return add_synthetic_project(server, n_jobs=2, frames_per_job=3, points_per_frame=10_000, seed=5, legacy_jobs=1)


def _dataset(server, cache_dir, **options):
    options.setdefault("client", fast_client(server))
    return PlaymentSegmentationDataset(server.project_id, cache_dir=str(cache_dir), progress=False, **options)


def _predict(ds, directory, rng):
    """Predictions that differ from the labels: a third of the points get a random class, some abstain."""
    writer = PredictionWriter(directory, classes=ds.classes, ignore_index=ds.ignore_index)
    made = {}
    for i, ref in enumerate(ds.frames):
        labels = ds[i].labels.numpy()
        predicted = np.where(labels == ds.ignore_index, 0, labels)
        changed = rng.random(len(labels)) < 0.33
        predicted[changed] = rng.integers(0, len(ds.classes), int(changed.sum()))
        predicted[rng.random(len(labels)) < 0.01] = ds.ignore_index
        if i == 1:
            predicted[:] = ds.classes.index("road")  # a frame predicting one class only
        writer.write(ref.job_id, ref.frame_id, predicted)
        made[(ref.job_id, ref.frame_id)] = predicted
    return made


@pytest.mark.parametrize("prefix", [None, "s3://predictions/run 1/"])
def test_playment_format_loads_back_with_the_predicted_labels(server, project, tmp_path, prefix):
    ds = _dataset(server, tmp_path / "cache", point_fields=("x", "y", "z"))
    made = _predict(ds, tmp_path / "preds", np.random.default_rng(0))
    results = write_playment_results(ds, tmp_path / "preds", tmp_path / "out", url_prefix=prefix)
    assert set(results.result_urls) == {job.job_id for job in project}
    assert results.frames == len(ds)
    if prefix is not None:
        assert results.url_prefix == prefix and all(u.startswith(prefix) for u in results.result_urls.values())
    else:
        assert results.url_prefix.startswith("file:///")

    # The result object: one annotation per predicted class, sensor_data copied from the source.
    source_job = project[0]
    written = json.loads(
        (results.directory / urllib.parse.quote(source_job.job_id, safe="") / "result.json").read_text()
    )
    assert written["sensor_data"] == source_job.result["sensor_data"]
    predicted_in_job = sorted(
        {int(c) for (job, _), p in made.items() if job == source_job.job_id for c in p if c != ds.ignore_index}
    )
    annotations = written["annotation_data"]["annotations"]
    assert [a["label"] for a in annotations] == [ds.classes[c] for c in predicted_in_job]
    assert [a["label_key"] for a in annotations] == [c + 1 for c in predicted_in_job]
    source_ids = {a["label"]: a["class_id"] for a in source_job.result["annotation_data"]["annotations"]}
    assert all(a["class_id"] == source_ids[a["label"]] for a in annotations if a["label"] in source_ids)
    assert len(written["annotation_data"]["masks"]) == 3

    # Jobs whose result URL is the written result, read through local_roots.
    copies = {
        job: server.add_job_with_result_url(url, job_id=f"pred-{job}") for job, url in results.result_urls.items()
    }
    client = fast_client(server, local_roots=results.local_roots)
    back = _dataset(
        server,
        tmp_path / "cache2",
        client=client,
        job_ids=list(copies.values()),
        classes=ds.classes,
        point_fields=("x", "y", "z"),
    )
    assert len(back) == len(ds)
    originals = {(ref.job_id, ref.frame_id): i for i, ref in enumerate(ds.frames)}
    for i, ref in enumerate(back.frames):
        source = ref.job_id.removeprefix("pred-")
        sample = back[i]
        expected = made[(source, ref.frame_id)]
        np.testing.assert_array_equal(sample.labels.numpy(), expected)
        original = ds[originals[(source, ref.frame_id)]]
        np.testing.assert_array_equal(sample.points.numpy(), original.points.numpy())
        np.testing.assert_array_equal(sample.poses.numpy(), original.poses.numpy())
    # The one-class frame came back as one class.
    one_class = [
        i
        for i, r in enumerate(back.frames)
        if r.frame_id == ds.frames[1].frame_id and r.job_id == f"pred-{ds.frames[1].job_id}"
    ]
    assert set(back[one_class[0]].labels.tolist()) <= {ds.classes.index("road"), ds.ignore_index}


def test_playment_format_skips_frames_without_predictions(server, project, tmp_path):
    ds = _dataset(server, tmp_path / "cache", point_fields=("x", "y", "z"))
    writer = PredictionWriter(tmp_path / "preds", classes=ds.classes, ignore_index=ds.ignore_index)
    ref = ds.frames[0]
    writer.write(ref.job_id, ref.frame_id, np.zeros(len(ds[0].labels), dtype=np.int64))
    results = write_playment_results(ds, tmp_path / "preds", tmp_path / "out")
    assert list(results.result_urls) == [ref.job_id] and results.frames == 1
    job = server.add_job_with_result_url(results.result_urls[ref.job_id])
    back = _dataset(
        server, tmp_path / "cache2", client=fast_client(server, local_roots=results.local_roots), job_ids=[job]
    )
    assert [r.frame_id for r in back.frames] == [ref.frame_id]
    assert back.classes == (ds.classes[0],) and set(back[0].labels.tolist()) == {0}
