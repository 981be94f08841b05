"""Pictures: the pixels say what the docs promise (colours under known points, legend, scale, ego, overlays)."""

from __future__ import annotations

import io
import json
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from conftest import fast_client

from playment_torch import viz
from playment_torch.cache import cache_key
from playment_torch.cli import main
from playment_torch.dataset import PlaymentSegmentationDataset
from playment_torch.errors import CacheError, ConfigError, FrameError, PlaymentFormatError
from playment_torch.geometry import project_points
from playment_torch.testing.server import FakePlaymentServer
from playment_torch.testing.synthetic import add_synthetic_project, make_job

Image = pytest.importorskip("PIL.Image")

POINTS = 10_000


@pytest.fixture(scope="module")
def shared_server():
    with FakePlaymentServer() as fake:
        jobs = add_synthetic_project(fake, n_jobs=1, frames_per_job=3, points_per_frame=POINTS, seed=5)
        yield fake, jobs


@pytest.fixture(scope="module")
def ds(shared_server, tmp_path_factory):
    server, _ = shared_server
    cache = tmp_path_factory.mktemp("viz-cache")
    return PlaymentSegmentationDataset(server.project_id, client=fast_client(server), cache_dir=cache, progress=False)


def make_dataset(server: FakePlaymentServer, cache_dir: Path, **options: object) -> PlaymentSegmentationDataset:
    options.setdefault("client", fast_client(server))
    options.setdefault("progress", False)
    return PlaymentSegmentationDataset(server.project_id, cache_dir=str(cache_dir), **options)  # type: ignore[arg-type]


def pixels_of(picture: viz.Picture) -> np.ndarray:
    return np.asarray(picture.image.convert("RGB"))


def expected_bev_winners(
    cols: np.ndarray, rows: np.ndarray, z: np.ndarray, ignored: np.ndarray, on_top: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The documented rule, point_size=1: per pixel, labelled above ignored, then the highest point."""
    rank = z + np.where(ignored, 0.0, 1e7) + (0.0 if on_top is None else np.where(on_top, 1e8, 0.0))
    order = np.lexsort((rank, rows * 100_000 + cols))
    key = (rows * 100_000 + cols)[order]
    last = np.append(key[1:] != key[:-1], True)
    winners = order[last]
    return cols[winners], rows[winners], winners


# --------------------------------------------------------------------------------------------- mapping


def test_bev_mapping_is_exact_and_y_points_up():
    mapping = viz.BEVMapping(x_min=-10.0, y_max=10.0, resolution=0.5, width=40, height=40, left=7, top=30)
    cols, rows, inside = mapping.pixels([[-10.0, 10.0], [-9.76, 9.76], [0.0, 0.0], [9.99, -9.99], [10.0, 0.0]])
    assert inside.tolist() == [True, True, True, True, False]
    assert cols[:4].tolist() == [7, 7, 7 + 20, 7 + 39]
    assert rows[:4].tolist() == [30, 30, 30 + 20, 30 + 39]
    # y up: a larger y is a smaller row.
    _, up, _ = mapping.pixels([[0.0, 5.0]])
    assert up[0] < rows[2]
    assert cols[4] == -1 and rows[4] == -1


# --------------------------------------------------------------------------------------------- BEV


def test_bev_pixel_under_every_point_has_its_class_colour(ds):
    sample = ds[1]
    points, labels = sample.points.numpy(), sample.labels.numpy()
    picture = viz.bev(sample.points, sample.labels, classes=ds.classes, ego_pose=sample.poses[0], point_size=1)
    image = pixels_of(picture)
    mapping = picture.panels[0].mapping
    assert mapping is not None and mapping.resolution == 0.1 and mapping.width == mapping.height == 800
    # Centred on the ego (the identity in lidar coordinates): the map spans [-40, 40) m.
    assert mapping.x_min == -40.0 and mapping.y_max == 40.0
    cols, rows, inside = mapping.pixels(points[:, :2])
    ignored = labels == ds.ignore_index
    c, r, winners = expected_bev_winners(cols[inside], rows[inside], points[inside, 2], ignored[inside])
    palette = np.concatenate([viz.class_colors(len(ds.classes)), [viz.IGNORE_COLOR]]).astype(np.uint8)
    expected = palette[np.where(ignored[inside], len(ds.classes), labels[inside])][winners]
    # The ego triangle and the scale bar are drawn over the points: leave their surroundings out.
    ex, ey = picture.panels[0].ego_pixel
    _, (_, by0, bx1, _) = picture.panels[0].scale_bar
    clear = ~((abs(c - ex) <= 12) & (abs(r - ey) <= 12)) & ~((c < bx1 + 40) & (r > by0 - 30))
    assert clear.sum() > 3000
    np.testing.assert_array_equal(image[r[clear], c[clear]], expected[clear])

    car = ds.classes.index("car")
    car_pixels = np.flatnonzero(clear & (labels[inside][winners] == car))
    assert len(car_pixels) > 20
    k = car_pixels[0]
    assert tuple(image[r[k], c[k]]) == viz.PALETTE[car]
    # Where no point falls, the background shows.
    empty = np.ones(image.shape[:2], dtype=bool)
    empty[rows[inside], cols[inside]] = False
    y, x = mapping.top + 5, mapping.left + mapping.width - 5
    assert empty[y, x] and tuple(image[y, x]) == viz.BACKGROUND


def test_bev_accepts_numpy_and_tensors_alike(ds):
    sample = ds[0]
    from_tensors = viz.bev(sample.points, sample.labels, classes=ds.classes, ego_pose=sample.poses[0])
    from_numpy = viz.bev(
        sample.points.numpy(), sample.labels.numpy(), classes=ds.classes, ego_pose=sample.poses[0].numpy()
    )
    np.testing.assert_array_equal(pixels_of(from_tensors), pixels_of(from_numpy))


def test_legend_lists_every_class_with_its_swatch_and_a_name(ds):
    sample = ds[0]
    picture = viz.bev(sample.points, sample.labels, classes=ds.classes)
    image = pixels_of(picture)
    assert [e.name for e in picture.legend] == [*ds.classes, "ignored"]
    colors = viz.class_colors(len(ds.classes))
    for i, entry in enumerate(picture.legend):
        expected = viz.IGNORE_COLOR if entry.name == "ignored" else tuple(colors[i])
        assert entry.color == expected
        x0, y0, x1, y1 = entry.box
        swatch = image[y0:y1, x0:x1].reshape(-1, 3)
        assert (swatch == expected).all(), entry.name
        # The name is drawn to the right of the swatch: light text pixels on the dark strip.
        text = image[y0 : y1 + 2, x1 + 4 : x1 + 150]
        assert (text.max(axis=2) > 150).sum() > 10, entry.name
    # The legend sits right of the map, never over it.
    left, _, width, _ = picture.panels[0].box
    assert all(e.box[0] >= left + width for e in picture.legend)


def test_class_colours_are_fixed_and_distinct():
    colors = viz.class_colors(40)
    assert [tuple(c) for c in colors[: len(viz.PALETTE)]] == list(viz.PALETTE)
    assert len({tuple(c) for c in colors}) == 40
    assert viz.IGNORE_COLOR not in {tuple(c) for c in colors}
    np.testing.assert_array_equal(viz.class_colors(40), colors)  # stable


def test_ego_marker_and_scale_bar(tmp_path):
    server = FakePlaymentServer()
    with server:
        add_synthetic_project(server, n_jobs=1, frames_per_job=2, points_per_frame=POINTS, seed=8, coordinates="world")
        world = make_dataset(server, tmp_path)
        sample = world[1]
        ego = sample.poses[0].numpy()
        assert abs(ego[0, 3]) > 100  # a map frame far from the origin
        picture = viz.bev(sample.points, sample.labels, classes=world.classes, ego_pose=ego, extent=30, resolution=0.2)
    panel = picture.panels[0]
    image = pixels_of(picture)
    mapping = panel.mapping
    assert mapping is not None and mapping.width == 300
    # Centred on the ego: its pixel is the map's centre, and the marker is drawn there.
    assert panel.ego_pixel == (mapping.left + 150, mapping.top + 150)
    cols, rows, _ = mapping.pixels(ego[None, :2, 3])
    assert (int(cols[0]), int(rows[0])) == panel.ego_pixel
    assert tuple(image[panel.ego_pixel[1], panel.ego_pixel[0]]) == viz.EGO_COLOR
    # The triangle points along the ego's x axis: a pixel 6 px ahead is marker, 6 px behind on the axis is not
    # (the back edge is 6 px behind the centre).
    heading = np.arctan2(ego[1, 0], ego[0, 0])
    ahead = (round(panel.ego_pixel[0] + 6 * np.cos(heading)), round(panel.ego_pixel[1] - 6 * np.sin(heading)))
    behind = (round(panel.ego_pixel[0] - 9 * np.cos(heading)), round(panel.ego_pixel[1] + 9 * np.sin(heading)))
    assert tuple(image[ahead[1], ahead[0]]) == viz.EGO_COLOR
    assert tuple(image[behind[1], behind[0]]) != viz.EGO_COLOR
    # The scale bar: a round number of metres, that many metres long in pixels.
    metres, (x0, y0, x1, y1) = panel.scale_bar
    assert metres == 10.0  # a fifth of the 60 m map is 12 m -> 10 m
    assert x1 - x0 == round(metres / 0.2) == 50
    assert (image[y0:y1, x0:x1] == viz.EGO_COLOR).all()
    assert tuple(image[y0, x1 + 1]) != viz.EGO_COLOR


def test_colour_by_intensity_and_by_sweep():
    points = np.array(
        [[-10.0, 0.0, 0.0, 0.0], [0.0, 10.0, 0.0, 0.5], [10.0, -10.0, 0.0, 1.0], [20.0, 20.0, 0.0, 2.0]],
        dtype=np.float32,
    )
    picture = viz.bev(points, color_by="intensity", value_range=(0.0, 1.0), point_size=1)
    image = pixels_of(picture)
    cols, rows, _ = picture.panels[0].mapping.pixels(points[:, :2])
    assert tuple(image[rows[0], cols[0]]) == (68, 1, 84)  # the low end of the ramp
    assert tuple(image[rows[2], cols[2]]) == (253, 231, 37)  # the high end
    assert tuple(image[rows[3], cols[3]]) == (253, 231, 37)  # clipped
    assert tuple(image[rows[1], cols[1]]) == tuple(viz.ramp_colors(0.5, (0.0, 1.0)))
    assert [e.name for e in picture.legend] == ["1", "0.75", "0.5", "0.25", "0"]

    sweeps = np.column_stack([points[:, :3], [0, 1, 2, 2]]).astype(np.float32)
    picture = viz.bev(sweeps, color_by="sweep", point_size=1)
    image = pixels_of(picture)
    cols, rows, _ = picture.panels[0].mapping.pixels(sweeps[:, :2])
    assert tuple(image[rows[0], cols[0]]) == (253, 231, 37)  # the key frame is the bright end
    assert tuple(image[rows[2], cols[2]]) == (68, 1, 84)  # the oldest sweep the dark end
    assert [e.name for e in picture.legend] == ["sweep 0 (key frame)", "sweep 1", "sweep 2"]
    # The key frame is drawn above earlier sweeps, even below them in height.
    stacked = np.array([[5.0, 5.0, 0.0, 0.0], [5.0, 5.0, 9.0, 1.0]], dtype=np.float32)
    top = viz.bev(stacked, color_by="sweep", point_size=1)
    c, r, _ = top.panels[0].mapping.pixels(stacked[:1, :2])
    assert tuple(pixels_of(top)[r[0], c[0]]) == (253, 231, 37)
    for entry in picture.legend:
        x0, y0, _, _ = entry.box
        assert tuple(image[y0 + 2, x0 + 2]) == entry.color

    with pytest.raises(ConfigError, match="color_by"):
        viz.bev(points, color_by="height")
    with pytest.raises(ConfigError, match="needs labels"):
        viz.bev(points)
    with pytest.raises(ConfigError, match="3 values but there are 4 points"):
        viz.bev(points, [0, 1, 2], classes=("a", "b", "c"))


# --------------------------------------------------------------------------------------------- comparison


def test_truth_prediction_and_disagreement_panels(ds):
    sample = ds[2]
    points, truth = sample.points.numpy(), sample.labels.numpy()
    rng = np.random.default_rng(0)
    prediction = truth.copy()
    scored = np.flatnonzero(truth != ds.ignore_index)
    wrong = rng.choice(scored, size=300, replace=False)
    prediction[wrong] = (truth[wrong] + 1) % len(ds.classes)
    picture = viz.compare_bev(points, truth, prediction, classes=ds.classes, ego_pose=sample.poses[0], point_size=1)
    image = pixels_of(picture)
    assert len(picture.panels) == 3
    assert picture.panels[0].title == "ground truth" and picture.panels[1].title == "prediction"
    assert picture.panels[2].title == f"disagree: 300 of {len(scored)} ({300 / len(scored):.1%})"
    assert [e.name for e in picture.legend][-2:] == ["agree", "disagree"]
    # One map for all: the same point is at the same place in every panel.
    m0, m1, m2 = (p.mapping for p in picture.panels)
    assert (m1.left - m0.left, m1.top) == (m2.left - m1.left, m0.top)

    cols, rows, inside = m2.pixels(points[:, :2])
    ignored = truth == ds.ignore_index
    is_wrong = np.zeros(len(points), dtype=bool)
    is_wrong[wrong] = True
    # Every disagreeing point on the map is magenta: errors are drawn above everything.
    shown = inside[wrong]
    assert shown.sum() > 200
    assert (image[rows[wrong][shown], cols[wrong][shown]] == viz.ERROR_COLOR).all()
    c, r, winners = expected_bev_winners(
        cols[inside], rows[inside], points[inside, 2], ignored[inside], is_wrong[inside]
    )
    kinds = np.where(is_wrong[inside], 2, np.where(ignored[inside], 0, 1))[winners]
    table = np.array([viz.IGNORE_COLOR, viz.AGREE_COLOR, viz.ERROR_COLOR], dtype=np.uint8)
    ego_x, ego_y = picture.panels[2].ego_pixel
    clear = ~((abs(c - ego_x) <= 12) & (abs(r - ego_y) <= 12)) & (r < m2.top + m2.height - 40)
    np.testing.assert_array_equal(image[r[clear], c[clear]], table[kinds[clear]])
    # The prediction panel shows the predicted class under a wrong point that is on top of its pixel.
    cols1, rows1, _ = m1.pixels(points[:, :2])
    c1, r1, winners1 = expected_bev_winners(
        cols1[inside], rows1[inside], points[inside, 2], (prediction == ds.ignore_index)[inside]
    )
    top_wrong = [w for w in range(len(winners1)) if is_wrong[np.flatnonzero(inside)[winners1[w]]]]
    assert top_wrong
    w = top_wrong[0]
    point = np.flatnonzero(inside)[winners1[w]]
    assert tuple(image[r1[w], c1[w]]) == tuple(viz.class_colors(len(ds.classes))[prediction[point]])
    assert tuple(image[r1[w], c1[w]]) != tuple(viz.class_colors(len(ds.classes))[truth[point]])


# --------------------------------------------------------------------------------------------- cameras


def overlay_winners(uv: np.ndarray, valid: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """point_size=1: the nearest point of each pixel."""
    idx = np.flatnonzero(valid)
    cols, rows = np.floor(uv[idx, 0]).astype(np.int64), np.floor(uv[idx, 1]).astype(np.int64)
    order = np.lexsort((-depth[idx], rows * 100_000 + cols))
    key = (rows * 100_000 + cols)[order]
    last = np.append(key[1:] != key[:-1], True)
    chosen = order[last]
    return cols[chosen], rows[chosen], idx[chosen]


@pytest.mark.parametrize("camera", ["front_center_rgb", "left_fisheye"])
def test_overlay_pixel_at_each_projected_point_is_its_class_colour(ds, camera):
    i = 1
    sample = ds[i]
    k = [c.name for c in ds.cameras(i)].index(camera)
    cam = ds.cameras(i)[k]
    image = viz.camera_image(ds, i, camera)
    pose = sample.poses[1 + k].numpy()
    picture = viz.camera_overlay(image, sample.points, sample.labels, cam, pose, classes=ds.classes, point_size=1)
    pixels = pixels_of(picture)
    left, top, width, height = picture.panels[0].box
    # The placeholder image is smaller than the calibration: drawn at round(2 cx) x round(2 cy).
    assert (width, height) == (round(2 * cam.cx), round(2 * cam.cy))
    xyz = sample.points.numpy()[:, :3].astype(np.float64)
    uv, valid = project_points(xyz, cam, pose)
    in_camera = (xyz - pose[:3, 3]) @ pose[:3, :3]
    depth = in_camera[:, 2]
    radius = np.hypot(in_camera[:, 0], in_camera[:, 1]) / np.where(depth > 0, depth, np.nan)
    valid &= (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    valid &= np.nan_to_num(radius, nan=np.inf) < viz._unfolded_radius(cam)
    cols, rows, points = overlay_winners(uv, valid, depth)
    assert len(points) > 1000
    labels = sample.labels.numpy()[points]
    palette = np.concatenate([viz.class_colors(len(ds.classes)), [viz.IGNORE_COLOR]]).astype(np.uint8)
    expected = palette[np.where(labels == ds.ignore_index, len(ds.classes), labels)]
    np.testing.assert_array_equal(pixels[top + rows, left + cols], expected)
    # Elsewhere the camera image shows (resized to the calibrated size).
    resized = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    free = np.ones((height, width), dtype=bool)
    free[rows, cols] = False
    ys, xs = np.nonzero(free)
    np.testing.assert_array_equal(pixels[top + ys, left + xs], resized[ys, xs])


def test_points_the_lens_model_would_fold_back_are_not_drawn(ds):
    cam = ds.cameras(0)[0]  # brown_conrady with k1 = -0.33: r * radial(r) stops growing near r = 1.1
    limit = viz._unfolded_radius(cam)
    assert 0.9 < limit < 1.6
    k1, k2, k3 = cam.radial[:3]
    r = np.linspace(0, limit, 200)
    assert (np.diff(r * (1 + k1 * r**2 + k2 * r**4 + k3 * r**6)) > 0).all()
    # 63 degrees off axis (r = 2) the polynomial folds the point back into the image ...
    pose = np.eye(4)
    point = np.array([[20.0, 0.0, 10.0]])
    uv, valid = project_points(point, cam, pose)
    assert valid[0] and 0 <= uv[0, 0] < 2 * cam.cx and 0 <= uv[0, 1] < 2 * cam.cy
    # ... where the overlay does not draw it.
    image = np.zeros((983, 1633, 3), dtype=np.uint8)
    picture = viz.camera_overlay(image, point, [0], cam, pose, classes=("a",), point_size=1)
    left, top, width, height = picture.panels[0].box
    assert (pixels_of(picture)[top : top + height, left : left + width] == 0).all()
    near_axis = viz.camera_overlay(image, np.array([[1.0, 0.0, 10.0]]), [0], cam, pose, classes=("a",), point_size=1)
    uv, _ = project_points(np.array([[1.0, 0.0, 10.0]]), cam, pose)
    assert tuple(pixels_of(near_axis)[top + int(uv[0, 1]), left + int(uv[0, 0])]) == viz.PALETTE[0]


def test_camera_images_are_downloaded_through_the_client_and_cached(server, tmp_path):
    jobs = add_synthetic_project(server, n_jobs=1, frames_per_job=2, points_per_frame=POINTS, seed=9)
    job = jobs[0]
    ds = make_dataset(server, tmp_path)
    urls = viz.camera_image_urls(fast_client(server), server.project_id, job.job_id)
    sensors = {s["sensor_id"]: s["data_url"] for s in job.result["sensor_data"]["frames"][1]["sensors"]}
    assert urls["1"] == {meta["id"]: sensors[meta["name"]] for meta in job.cameras}

    ds[0], ds[1]  # both frames cached: an offline dataset needs every frame (it checks at construction)
    server.clear_requests()
    image = viz.camera_image(ds, 1, "front_center_rgb")
    url = urls["1"]["18158562"]
    expected = np.asarray(Image.open(io.BytesIO(job.files[url])).convert("RGB"))
    np.testing.assert_array_equal(image, expected)
    routes = [r.route for r in server.requests]
    assert "attachments" in routes and "job" in routes, routes
    key = cache_key(
        "image", project_id=server.project_id, job_id=job.job_id, frame_id="1", sensor_id="18158562", url=url
    )
    assert key in ds.cache

    # Warm: pictures with the camera touch no network at all.
    server.clear_requests()
    viz.frame_picture(ds, 1, camera="front_center_rgb")
    viz.camera_image(ds, 1, "18158562")  # by sensor id too
    assert server.requests == []
    # Offline datasets use what is cached, and say what is missing.
    offline = make_dataset(server, tmp_path, refresh="never")
    np.testing.assert_array_equal(viz.camera_image(offline, 1, 0), image)
    with pytest.raises(CacheError, match="not cached"):
        viz.camera_image(offline, 0, "left_fisheye")


def test_unknown_camera_and_broken_image_errors(server, tmp_path):
    job = make_job(seed=31, n_frames=1, points_per_frame=POINTS)
    broken = job.result["sensor_data"]["frames"][0]["sensors"][1]["data_url"]
    job.files[broken] = b"\xff\xd8 this is not a jpeg"
    server.add_job(job.result, job_id=job.job_id, files=job.files)
    ds = make_dataset(server, tmp_path)
    with pytest.raises(ConfigError, match="no camera 'rear'; the job's cameras: front_center_rgb, left_fisheye"):
        viz.camera_image(ds, 0, "rear")
    with pytest.raises(
        PlaymentFormatError, match=rf"job {job.job_id}, frame 0: camera 'front_center_rgb'.*not an image"
    ):
        viz.frame_picture(ds, 0, camera="front_center_rgb")
    keys = list(ds.cache.keys())
    assert keys and not [k for k in keys if k.startswith("image|")], "nothing half-made enters the cache"


# --------------------------------------------------------------------------------------------- predictions


def write_predictions(directory: Path, classes, ignore_index, job_id: str, frame_id: str, values) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "classes.json").write_text(json.dumps({"classes": list(classes), "ignore_index": ignore_index}))
    folder = directory / urllib.parse.quote(job_id, safe="")
    folder.mkdir(exist_ok=True)
    path = folder / (urllib.parse.quote(frame_id, safe="") + ".npy")
    np.save(path, values)
    return path


def test_predictions_folder_is_read_by_quoted_ids(tmp_path):
    values = np.array([0, 2, -100, 1], dtype=np.int16)
    write_predictions(tmp_path, ["a", "b", "c"], -100, "job/1 x", "frame?2", values)
    assert viz.load_prediction_classes(tmp_path) == (("a", "b", "c"), -100)
    loaded = viz.load_predictions(tmp_path, "job/1 x", "frame?2")
    assert loaded.dtype == np.int64 and loaded.tolist() == values.tolist()
    with pytest.raises(FrameError, match="job job/1 x, frame 3: no prediction"):
        viz.load_predictions(tmp_path, "job/1 x", "3")
    np.save(tmp_path / "job%2F1%20x" / "f.npy", np.zeros(3, dtype=np.float32))
    with pytest.raises(PlaymentFormatError, match="1-D integer array"):
        viz.load_predictions(tmp_path, "job/1 x", "f")
    (tmp_path / "classes.json").write_text("{}")
    with pytest.raises(PlaymentFormatError, match="classes"):
        viz.load_prediction_classes(tmp_path)


# --------------------------------------------------------------------------------------------- CLI


def test_show_command_writes_the_frames_picture(server, tmp_path, monkeypatch, capsys):
    jobs = add_synthetic_project(server, n_jobs=1, frames_per_job=2, points_per_frame=POINTS, seed=12)
    monkeypatch.setenv("PLAYMENT_API_KEY", server.api_key)
    job = jobs[0]
    common = ["--project", server.project_id, "--job", job.job_id, "--base-url", server.url]
    common += ["--cache-dir", str(tmp_path / "cache"), "--quiet"]
    out = tmp_path / "frame.png"
    assert main(["show", *common, "--frame", "1", "--camera", "front_center_rgb", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    written = np.asarray(Image.open(out).convert("RGB"))
    ds = make_dataset(server, tmp_path / "cache", point_fields=("x", "y", "z"))
    expected = viz.frame_picture(ds, 1, camera="front_center_rgb")
    np.testing.assert_array_equal(written, expected.to_array())
    assert len(expected.panels) == 2 and expected.panels[1].title.startswith("camera front_center_rgb")

    # Predictions: the folder's class list orders the classes; the picture compares.
    truth = ds[1].labels.numpy()
    classes = ds.classes
    predicted = truth.copy()
    predicted[::7] = 0
    write_predictions(tmp_path / "pred", classes, -100, job.job_id, "1", predicted)
    out = tmp_path / "compare.png"
    assert main(["show", *common, "--frame", "1", "--predictions", str(tmp_path / "pred"), "-o", str(out)]) == 0
    written = np.asarray(Image.open(out).convert("RGB"))
    expected = viz.frame_picture(ds, 1, predictions=predicted)
    np.testing.assert_array_equal(written, expected.to_array())
    wrong = int(((predicted != truth) & (truth != -100)).sum())
    assert expected.panels[2].title.startswith(f"disagree: {wrong} of ")

    for color_by in ("intensity", "sweep"):
        out = tmp_path / f"{color_by}.png"
        assert main(["show", *common, "--frame", "1", "--color-by", color_by, "-o", str(out)]) == 0
        assert Image.open(out).size[0] > 800
    capsys.readouterr()

    # Errors are one line and exit 1; usage errors exit 2.
    assert main(["show", *common, "--frame", "9", "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"job {job.job_id}, frame 9: the job has no such frame; its frames: 0, 1" in err
    assert main(["show", *common, "--frame", "1", "--camera", "rear", "-o", str(tmp_path / "x.png")]) == 1
    assert "no camera 'rear'" in capsys.readouterr().err
    assert main(["show", *common, "--frame", "1", "--color-by", "sweep", "--sweeps", "1", "-o", "x.png"]) == 1
    assert "--sweeps 2 or more" in capsys.readouterr().err
    assert main(["show", *common, "--frame", "1", "-o", str(tmp_path / "missing" / "x.png")]) == 1
    assert "cannot write" in capsys.readouterr().err
    assert main(["show", *common, "-o", "x.png"]) == 2
    assert main(["show", *common, "--frame", "1", "--color-by", "height", "-o", "x.png"]) == 2
    assert server.api_key not in capsys.readouterr().err


def test_pictures_without_pillow_say_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "PIL", None)  # what an environment without Pillow looks like to import
    with pytest.raises(ConfigError, match=r"pip install 'playment-torch\[viz\]'"):
        viz.bev(np.zeros((3, 3)), [0, 0, 0], classes=("a",))


def test_show_names_a_job_the_dataset_does_not_have(server, tmp_path, monkeypatch, capsys):
    jobs = add_synthetic_project(server, n_jobs=1, frames_per_job=1, points_per_frame=POINTS, pending_jobs=1, seed=4)
    monkeypatch.setenv("PLAYMENT_API_KEY", server.api_key)
    pending = jobs[1].job_id
    argv = ["show", "--project", server.project_id, "--job", pending, "--frame", "0", "--base-url", server.url]
    assert main([*argv, "--cache-dir", str(tmp_path), "--quiet", "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert f"playment-torch: warning: 1 of 1 jobs are not completed and are left out: {pending}" in err
    assert f"job {pending}, frame 0: the dataset has no such job (is it completed?)" in err


def test_long_titles_and_class_names_are_cut_to_their_space():
    points = np.array([[0.0, 1.0, 0.0]], dtype=np.float32)
    long_name = "a class name far too long to fit the legend strip of the picture"
    picture = viz.bev(points, [0], classes=(long_name,), extent=5.0, title="t" * 400)
    short = viz.bev(points, [0], classes=("x",), extent=5.0, title="t")
    assert picture.image.size == short.image.size  # names never change the layout
    assert picture.legend[0].name == long_name
    image = pixels_of(picture)
    left, top, width, _ = picture.panels[0].box
    # The title stops inside its panel: nothing is drawn over the legend's title row.
    legend_left = picture.legend[0].box[0]
    title_row = image[: top - 2, left + width : legend_left - 1]
    assert (title_row.max(axis=2) < 100).all()


def test_image_urls_match_cameras_by_id_or_name_in_every_result_shape(server):
    by_id = make_job(seed=41, n_frames=2, points_per_frame=POINTS, sensor_ref="id", hosting="s3")
    server.add_job(by_id.result, job_id=by_id.job_id, files=by_id.files)
    urls = viz.camera_image_urls(fast_client(server), server.project_id, by_id.job_id)
    assert set(urls) == {"0", "1"}
    assert urls["1"] == {
        "18158562": f"s3://synthetic-bucket/{by_id.job_id}/1_front_center_rgb.jpg",
        "18158563": f"s3://synthetic-bucket/{by_id.job_id}/1_left_fisheye.jpg",
    }
    # Older single-frame results put the sensors under sensor_data; legacy results have no cameras.
    older = {
        "annotation_data": {"frames": [{"_id": "f0"}]},
        "sensor_data": {
            "sensors": [
                {"sensor_id": "lidar", "data_url": "https://x/0.pcd"},
                {"sensor_id": "cam", "data_url": "https://x/0.jpg"},
                {"sensor_id": "nobody", "data_url": "https://x/1.jpg"},
            ],
            "sensor_meta": [
                {"id": "lidar", "name": "lidar", "modality": "lidar"},
                {"id": "c1", "name": "cam", "modality": "camera"},
            ],
        },
    }
    assert viz._image_urls(older, "j") == {"f0": {"c1": "https://x/0.jpg"}}
    assert viz._image_urls({"legend": [], "url": "https://x/0.pcd"}, "j") == {}
    with pytest.raises(PlaymentFormatError, match=r"job j: sensor_data\.sensor_meta is not a list"):
        viz._image_urls({"sensor_data": {"sensor_meta": {}, "frames": []}}, "j")
