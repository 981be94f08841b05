"""Frame export: PLY read back by plyfile (a real reader), PCD read back with its label fields."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import fast_client

from playment_torch.dataset import PlaymentSegmentationDataset
from playment_torch.errors import ConfigError, PlaymentError
from playment_torch.export import export_frame, frame_table, write_ply
from playment_torch.formats.pcd import read_pcd
from playment_torch.testing.server import FakePlaymentServer
from playment_torch.testing.synthetic import add_synthetic_project

plyfile = pytest.importorskip("plyfile")

POINTS = 10_000


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    with FakePlaymentServer() as server:
        jobs = add_synthetic_project(server, n_jobs=1, frames_per_job=3, points_per_frame=POINTS, seed=17)
        yield server, jobs, tmp_path_factory.mktemp("export-cache")


def make_dataset(project, **options: object) -> PlaymentSegmentationDataset:
    server, _, cache = project
    options.setdefault("progress", False)
    return PlaymentSegmentationDataset(server.project_id, client=fast_client(server), cache_dir=cache, **options)  # type: ignore[arg-type]


def test_ply_export_loads_in_plyfile_with_labels_and_instances(project, tmp_path):
    ds = make_dataset(project)
    _, jobs, _ = project
    path = export_frame(ds, 1, tmp_path / "frame.ply")
    raw = path.read_bytes()
    assert raw.startswith(b"ply\nformat binary_little_endian 1.0\ncomment playment_torch export: project ")
    ply = plyfile.PlyData.read(str(path))
    assert ply.text is False and ply.byte_order == "<"
    vertex = ply["vertex"]
    assert [p.name for p in vertex.properties] == ["x", "y", "z", "intensity", "label", "instance"]
    assert vertex["x"].dtype == np.float32 and vertex["label"].dtype == np.int32
    sample = ds[1]
    assert vertex.count == len(sample.points) == POINTS
    for k, name in enumerate(("x", "y", "z", "intensity")):
        np.testing.assert_array_equal(vertex[name], sample.points[:, k].numpy())
    np.testing.assert_array_equal(vertex["label"], sample.labels.numpy())
    np.testing.assert_array_equal(vertex["instance"], ds.instances(1).numpy())
    # Instances are the synthetic scene's objects: every point of one instance has one class.
    frame = jobs[0].frames[1]
    labelled = frame.instance >= 0
    track_of = {t: i for i, t in enumerate(ds.index.job_of(1).tracks)}
    expected = np.array([track_of[frame.track_ids[j]] for j in frame.instance[labelled]])
    np.testing.assert_array_equal(vertex["instance"][labelled], expected)
    assert (vertex["instance"][~labelled] == -1).all() and (vertex["label"][~labelled] == -100).all()
    comments = ply.comments
    assert f"job {jobs[0].job_id}, frame 1" in comments[0]
    classes_line = next(c for c in comments if c.startswith("classes "))
    assert json.loads(classes_line[len("classes ") :]) == list(ds.classes)
    assert "ignore_index -100" in comments


def test_pcd_export_has_label_fields(project, tmp_path):
    ds = make_dataset(project)
    predictions = ds[2].labels.numpy().copy()
    predictions[::5] = 0
    path = export_frame(ds, 2, tmp_path / "frame.pcd", predictions=predictions)
    header = path.read_bytes().split(b"DATA binary\n", 1)[0].decode()
    assert "FIELDS x y z intensity label instance prediction\n" in header
    assert "SIZE 4 4 4 4 4 4 4\n" in header and "TYPE F F F F I I I\n" in header
    cloud = read_pcd(path)
    sample = ds[2]
    np.testing.assert_array_equal(cloud.data["x"], sample.points[:, 0].numpy())
    np.testing.assert_array_equal(cloud.data["intensity"], sample.points[:, 3].numpy())
    np.testing.assert_array_equal(cloud.data["label"], sample.labels.numpy())
    np.testing.assert_array_equal(cloud.data["instance"], ds.instances(2).numpy())
    np.testing.assert_array_equal(cloud.data["prediction"], predictions)
    # The same frame as PLY carries the prediction too.
    ply = plyfile.PlyData.read(str(export_frame(ds, 2, tmp_path / "frame.ply", predictions=predictions)))
    np.testing.assert_array_equal(ply["vertex"]["prediction"], predictions)


def test_export_without_intensity_and_with_sweeps_keeps_the_key_frame(project, tmp_path):
    xyz = make_dataset(project, point_fields=("x", "y", "z"))
    ply = plyfile.PlyData.read(str(export_frame(xyz, 0, tmp_path / "a.ply")))
    assert [p.name for p in ply["vertex"].properties] == ["x", "y", "z", "label", "instance"]
    swept = make_dataset(project, sweeps=3)
    assert len(swept[2].points) > POINTS  # three frames' points
    ply = plyfile.PlyData.read(str(export_frame(swept, 2, tmp_path / "b.ply")))
    assert ply["vertex"].count == POINTS
    np.testing.assert_array_equal(ply["vertex"]["x"], xyz[2].points[:, 0].numpy())


def test_export_ignores_the_datasets_transform(project, tmp_path):
    def scramble(sample):
        return sample._replace(points=sample.points.flip(0) + 1.0)

    plain = make_dataset(project)
    transformed = make_dataset(project, transform=scramble)
    a = plyfile.PlyData.read(str(export_frame(plain, 0, tmp_path / "a.ply")))
    b = plyfile.PlyData.read(str(export_frame(transformed, 0, tmp_path / "b.ply")))
    np.testing.assert_array_equal(a["vertex"].data, b["vertex"].data)
    assert transformed.transform is scramble  # the caller's dataset is untouched


def test_write_ply_round_trips_any_table_through_plyfile():
    points = np.array([[1.5, -2.25, 3.0], [0.0, 1e-7, -1e6]], dtype=np.float32)
    table = frame_table(points, np.array([3, -100]), instances=np.array([-1, 7]))
    buffer = io.BytesIO()
    write_ply(buffer, table, comments=["hello world"])
    buffer.seek(0)
    ply = plyfile.PlyData.read(buffer)
    assert ply.comments == ["hello world"]
    np.testing.assert_array_equal(ply["vertex"]["label"], [3, -100])
    np.testing.assert_array_equal(ply["vertex"]["instance"], [-1, 7])
    np.testing.assert_array_equal(np.column_stack([ply["vertex"][a] for a in "xyz"]), points)


def test_export_errors(project, tmp_path):
    ds = make_dataset(project)
    with pytest.raises(ConfigError, match="export format must be one of ply, pcd; got 'las'"):
        export_frame(ds, 0, tmp_path / "frame.las")
    with pytest.raises(ConfigError, match="3 predictions for 10000 points"):
        export_frame(ds, 0, tmp_path / "frame.ply", predictions=[1, 2, 3])
    with pytest.raises(PlaymentError, match="cannot write"):
        export_frame(ds, 0, tmp_path / "no" / "such" / "frame.ply")
    with pytest.raises(ConfigError, match="one ASCII line"):
        write_ply(io.BytesIO(), frame_table(np.zeros((1, 3)), [0]), comments=["two\nlines"])
    with pytest.raises(ConfigError, match="labels must be integers"):
        frame_table(np.zeros((1, 3)), [0.5])
    fields = make_dataset(project, point_fields=("intensity", "x", "y", "z"))
    with pytest.raises(ConfigError, match="starting with x, y, z"):
        export_frame(fields, 0, Path(tmp_path / "f.ply"))


def test_show_command_exports_by_suffix(project, tmp_path, monkeypatch, capsys):
    from playment_torch.cli import main

    server, jobs, _ = project
    monkeypatch.setenv("PLAYMENT_API_KEY", server.api_key)
    argv = ["show", "--project", server.project_id, "--job", jobs[0].job_id, "--frame", "1", "--quiet"]
    argv += ["--base-url", server.url, "--cache-dir", str(tmp_path / "cache")]
    assert main([*argv, "-o", str(tmp_path / "f.ply")]) == 0
    assert main([*argv, "-o", str(tmp_path / "f.pcd")]) == 0
    ply = plyfile.PlyData.read(str(tmp_path / "f.ply"))
    cloud = read_pcd(tmp_path / "f.pcd")
    np.testing.assert_array_equal(ply["vertex"]["label"], cloud.data["label"])
    np.testing.assert_array_equal(ply["vertex"]["intensity"], jobs[0].frames[1].points["intensity"])
    assert main([*argv, "--camera", "front_center_rgb", "-o", str(tmp_path / "g.ply")]) == 1
    assert "an export (.ply, .pcd) has no camera" in capsys.readouterr().err
