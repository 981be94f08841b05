"""Pictures of frames: bird's-eye views, truth | prediction comparisons and camera overlays (needs Pillow).

Install the optional extra: ``pip install 'playment-torch[viz]'``. The core never imports this module.

Every picture is a :class:`Picture`: the ``PIL.Image`` (``picture.image``, shown inline in Jupyter) plus its
layout, so that code (and tests) can find where a point, a legend swatch or the scale bar was drawn.

**Colours.** Class ``i`` is ``class_colors(n)[i]``: :data:`PALETTE` (18 fixed, distinct colours; Tableau's
*tab20* without its two greys) for the first 18 classes, then colours spaced by the golden angle in hue.
Points whose label is ``ignore_index`` are :data:`IGNORE_COLOR` grey. The colours depend on the class index
only, so a class keeps its colour across frames, runs and pictures as long as the class list is the same.
Intensity and sweep pictures use a viridis-like ramp (:func:`ramp_colors`).

**Bird's-eye view.** The map looks down the z axis of the points' frame (x to the right, y up), centred on the
ego position (``ego_pose[:2, 3]``) unless ``center`` is given, ``extent`` metres from the centre to each edge,
``resolution`` metres per pixel: a map ``round(2 * extent / resolution)`` pixels square. A point ``(x, y)`` lands
in column ``left + floor((x - x_min) / resolution)`` and row ``top + floor((y_max - y) / resolution)``
(:meth:`BEVMapping.pixels`); points outside the square are not drawn. Each point is a ``point_size`` square of
pixels; where points overlap the highest (largest z) is drawn, as one sees from above, except that
labelled points are drawn above ignored ones and the key frame above earlier sweeps. The axes are those of
the points' frame, not rotated to the ego's heading: the ego is a white triangle pointing along its x axis.
A scale bar of a round length (1, 2 or 5 times a power of ten metres, about a fifth of the map) is drawn in the
lower left corner.

**Camera overlay.** Points are projected with :func:`playment_torch.geometry.project_points`; the nearest point
wins where points overlap. The image is drawn at the camera's calibrated size: ``camera.width x camera.height``
when known; otherwise the image's own size when the principal point lies inside it; otherwise (a thumbnail or a
placeholder smaller than the calibration) ``round(2 cx) x round(2 cy)``. An image of another size is resized
(bilinear) to that size, so that projected pixel coordinates apply to it unchanged.

**Camera images** are not in the frame index: :func:`camera_image_urls` reads them from the job's result
(``sensor_data.frames[].sensors[]`` entries whose sensor is a camera in ``sensor_meta``, matched by id, then by
name, as the result parser does; ``data_url``, else ``original_url``). :func:`camera_image` downloads the image
through the dataset's client (like any attachment) and caches the decoded RGB array in the dataset's
:class:`~playment_torch.cache.ArrayCache` under ``cache_key("image", project, job, frame, camera id, url)``; the
table of a job's image URLs is cached too, under the job result's digest, so a warm picture needs no network.
"""

from __future__ import annotations

import argparse
import colorsys
import io
import json
import math
import operator
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from playment_torch.cache import cache_key
from playment_torch.errors import CacheError, ConfigError, FrameError, PlaymentError, PlaymentFormatError, redact_url
from playment_torch.geometry import Camera, project_points

if TYPE_CHECKING:
    from PIL import Image as PILImage
    from PIL import ImageDraw as PILImageDraw

    from playment_torch.client import PlaymentClient
    from playment_torch.dataset import PlaymentSegmentationDataset

__all__ = [
    "AGREE_COLOR",
    "BACKGROUND",
    "COLOR_BY",
    "EGO_COLOR",
    "ERROR_COLOR",
    "IGNORE_COLOR",
    "PALETTE",
    "BEVMapping",
    "LegendEntry",
    "Panel",
    "Picture",
    "bev",
    "camera_image",
    "camera_image_urls",
    "camera_overlay",
    "class_colors",
    "compare_bev",
    "find_frame",
    "frame_picture",
    "load_prediction_classes",
    "load_predictions",
    "ramp_colors",
    "show_command",
]

RGB = tuple[int, int, int]

#: Class colours by class index (Tableau's tab20 without its greys): stable, documented, distinct.
PALETTE: tuple[RGB, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (219, 219, 141),
    (158, 218, 229),
)
#: Points labelled ``ignore_index``.
IGNORE_COLOR: RGB = (128, 128, 128)
#: The map's background.
BACKGROUND: RGB = (16, 16, 16)
#: The ego marker and the scale bar.
EGO_COLOR: RGB = (255, 255, 255)
#: In the comparison's third panel: a labelled point the prediction gets right ...
AGREE_COLOR: RGB = (40, 84, 40)
#: ... and one it gets wrong (drawn on top of the others).
ERROR_COLOR: RGB = (255, 0, 255)

#: What a bird's-eye view can be coloured by.
COLOR_BY = ("class", "intensity", "sweep")

# A viridis-like ramp: 9 evenly spaced anchors, interpolated linearly.
_RAMP = np.array(
    [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    dtype=np.float64,
)

_TITLE_HEIGHT = 24
_MARGIN = 8
_LEGEND_WIDTH = 190
_LEGEND_ROW = 20
_SWATCH = 14
_FONT_SIZE = 13
_TEXT_COLOR: RGB = (235, 235, 235)
_FRAME_COLOR: RGB = (0, 0, 0)


# ------------------------------------------------------------------------------------------------ colours


def class_colors(n: int) -> np.ndarray:
    """The colours of classes ``0 .. n - 1``.

    Args:
        n: Number of classes.

    Returns:
        uint8 ``(n, 3)``: :data:`PALETTE` first, then hues spaced by the golden angle (stable for any ``n``).
    """
    out = np.zeros((max(0, n), 3), dtype=np.uint8)
    for i in range(max(0, n)):
        if i < len(PALETTE):
            out[i] = PALETTE[i]
        else:
            hue = ((i - len(PALETTE)) * 0.618033988749895 + 0.07) % 1.0
            r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.95)
            out[i] = (round(r * 255), round(g * 255), round(b * 255))
    return out


def ramp_colors(values: npt.ArrayLike, value_range: tuple[float, float]) -> np.ndarray:
    """Colours of values on the viridis-like ramp (dark purple at ``value_range[0]``, yellow at its end).

    Args:
        values: Any shape of numbers; NaN gets the low colour.
        value_range: ``(low, high)``: ``low`` gets the dark end, ``high`` the bright end (``high < low``
            reverses the ramp); values beyond are clipped.

    Returns:
        uint8 ``(..., 3)``.
    """
    low, high = float(value_range[0]), float(value_range[1])
    v = np.asarray(values, dtype=np.float64)
    # A reversed range (high < low) runs the ramp backwards; an empty one gives the low colour.
    t = (v - low) / (high - low) if high != low else np.zeros_like(v)
    t = np.clip(np.nan_to_num(t, nan=0.0), 0.0, 1.0) * (len(_RAMP) - 1)
    lower = np.minimum(np.floor(t).astype(np.int64), len(_RAMP) - 2)
    frac = (t - lower)[..., None]
    colors = _RAMP[lower] * (1.0 - frac) + _RAMP[lower + 1] * frac
    return np.rint(colors).astype(np.uint8)


def _unknown(labels: np.ndarray, n_classes: int, ignore_index: int) -> np.ndarray:
    """Points drawn grey: ``ignore_index`` and anything outside ``0..n-1``."""
    return (labels < 0) | (labels >= n_classes) | (labels == ignore_index)


def _label_colors(labels: np.ndarray, n_classes: int, ignore_index: int) -> np.ndarray:
    """Per-point colours of class labels; ``ignore_index`` and anything outside ``0..n-1`` are grey."""
    table = np.concatenate([class_colors(n_classes), np.array([IGNORE_COLOR], dtype=np.uint8)])
    return table[np.where(_unknown(labels, n_classes, ignore_index), n_classes, labels)]


# ------------------------------------------------------------------------------------------------ layout


@dataclass(frozen=True)
class BEVMapping:
    """How metres map to pixels in a bird's-eye-view panel (y up).

    Attributes:
        x_min: The x (metres) of the map's left edge.
        y_max: The y (metres) of the map's top edge.
        resolution: Metres per pixel.
        width: Map width in pixels.
        height: Map height in pixels.
        left: Column of the map's left edge in the picture.
        top: Row of the map's top edge in the picture.
    """

    x_min: float
    y_max: float
    resolution: float
    width: int
    height: int
    left: int = 0
    top: int = 0

    def pixels(self, xy: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Picture pixels of points.

        Args:
            xy: ``(N, 2)`` (or ``(N, C >= 2)``) points, metres.

        Returns:
            ``(columns, rows, inside)``: int64 picture coordinates and whether each point is on the map.
        """
        points = np.asarray(xy, dtype=np.float64).reshape(-1, np.shape(xy)[-1] if np.ndim(xy) > 1 else 2)
        with np.errstate(invalid="ignore"):
            u = np.floor((points[:, 0] - self.x_min) / self.resolution)
            v = np.floor((self.y_max - points[:, 1]) / self.resolution)
            inside = np.isfinite(u) & np.isfinite(v) & (u >= 0) & (u < self.width) & (v >= 0) & (v < self.height)
        u = np.where(inside, u, -1).astype(np.int64)
        v = np.where(inside, v, -1).astype(np.int64)
        return u + np.where(inside, self.left, 0), v + np.where(inside, self.top, 0), inside

    def shifted(self, dx: int, dy: int) -> BEVMapping:
        return replace(self, left=self.left + dx, top=self.top + dy)


@dataclass(frozen=True)
class Panel:
    """One drawn view inside a :class:`Picture`.

    Attributes:
        title: The text above it.
        box: ``(left, top, width, height)`` of the drawn area (map or camera image) in the picture.
        mapping: For bird's-eye views, metres -> pixels; ``None`` for camera overlays (the image's pixel
            ``(u, v)`` of :func:`~playment_torch.geometry.project_points` is at ``(left + u, top + v)``).
        scale_bar: ``(metres, (x0, y0, x1, y1))`` of the scale bar in the picture (bird's-eye views).
        ego_pixel: ``(column, row)`` of the ego position (bird's-eye views, when on the map).
    """

    title: str
    box: tuple[int, int, int, int]
    mapping: BEVMapping | None = None
    scale_bar: tuple[float, tuple[int, int, int, int]] | None = None
    ego_pixel: tuple[int, int] | None = None

    def shifted(self, dx: int, dy: int) -> Panel:
        left, top, width, height = self.box
        bar = None
        if self.scale_bar is not None:
            metres, (x0, y0, x1, y1) = self.scale_bar
            bar = (metres, (x0 + dx, y0 + dy, x1 + dx, y1 + dy))
        return replace(
            self,
            box=(left + dx, top + dy, width, height),
            mapping=None if self.mapping is None else self.mapping.shifted(dx, dy),
            scale_bar=bar,
            ego_pixel=None if self.ego_pixel is None else (self.ego_pixel[0] + dx, self.ego_pixel[1] + dy),
        )


@dataclass(frozen=True)
class LegendEntry:
    """One line of a legend: a colour swatch and its name.

    Attributes:
        name: The text.
        color: The swatch's colour.
        box: ``(x0, y0, x1, y1)`` of the swatch in the picture (``x1``, ``y1`` exclusive).
    """

    name: str
    color: RGB
    box: tuple[int, int, int, int]

    def shifted(self, dx: int, dy: int) -> LegendEntry:
        x0, y0, x1, y1 = self.box
        return replace(self, box=(x0 + dx, y0 + dy, x1 + dx, y1 + dy))


@dataclass(frozen=True)
class Picture:
    """A rendered picture and where things are in it.

    Attributes:
        image: The ``PIL.Image.Image`` (RGB).
        panels: The views, left to right then top to bottom.
        legend: The legend's entries, top to bottom.
    """

    image: PILImage.Image
    panels: tuple[Panel, ...] = ()
    legend: tuple[LegendEntry, ...] = ()

    def save(self, path: str | Path) -> Path:
        """Write the picture as a PNG file.

        Args:
            path: Where to write it (its folder must exist).

        Returns:
            The path written.

        Raises:
            PlaymentError: the file could not be written.
        """
        target = Path(path)
        try:
            self.image.save(target, format="PNG")
        except OSError as exc:
            raise PlaymentError(f"cannot write {target}: {exc}") from exc
        return target

    def to_array(self) -> np.ndarray:
        """The picture as a uint8 ``(H, W, 3)`` array."""
        return np.asarray(self.image.convert("RGB"))

    def _repr_png_(self) -> bytes:
        """Jupyter shows a Picture inline."""
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG")
        return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ Pillow


def _pil() -> tuple[Any, Any, Any]:
    """``(Image, ImageDraw, ImageFont)``, or a ConfigError saying how to install Pillow."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as exc:
        raise ConfigError("pictures need Pillow: pip install 'playment-torch[viz]'") from exc
    return Image, ImageDraw, ImageFont


def _font(size: int = _FONT_SIZE) -> Any:
    _, _, image_font = _pil()
    try:
        return image_font.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return image_font.load_default()


def _numpy(array: Any, what: str) -> np.ndarray:
    """A numpy view of a numpy array or a torch tensor (torch is never imported here)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    try:
        return np.asarray(array)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be an array, got {type(array).__name__}") from exc


def _points_xyz(points: Any) -> np.ndarray:
    array = _numpy(points, "points")
    if array.ndim != 2 or array.shape[1] < 3:
        raise ConfigError(f"points must be (N, C >= 3) with x, y, z first, got shape {array.shape}")
    return array


def _per_point(values: Any, n: int, what: str) -> np.ndarray:
    array = _numpy(values, what).reshape(-1)
    if len(array) != n:
        raise ConfigError(f"{what} has {len(array)} values but there are {n} points")
    return array


def _splat(
    canvas: np.ndarray, columns: np.ndarray, rows: np.ndarray, colors: np.ndarray, order: np.ndarray, size: int
) -> None:
    """Draw points as ``size`` squares; where they overlap, the one with the largest ``order`` wins.

    The winner is chosen explicitly (numpy leaves repeated fancy-index assignment unspecified).
    """
    height, width = canvas.shape[:2]
    offsets = np.arange(size) - (size - 1) // 2
    all_cols, all_rows, all_colors, all_order = [], [], [], []
    for dy in offsets:
        for dx in offsets:
            c, r = columns + dx, rows + dy
            ok = (c >= 0) & (c < width) & (r >= 0) & (r < height)
            all_cols.append(c[ok])
            all_rows.append(r[ok])
            all_colors.append(colors[ok])
            all_order.append(order[ok])
    cols = np.concatenate(all_cols)
    if cols.size == 0:
        return
    pixel = np.concatenate(all_rows) * width + cols
    rank = np.concatenate(all_order)
    chosen = np.lexsort((rank, pixel))  # by pixel, then by order: the last of each pixel run wins
    sorted_pixels = pixel[chosen]
    last = np.ones(len(chosen), dtype=bool)
    last[:-1] = sorted_pixels[1:] != sorted_pixels[:-1]
    winners = chosen[last]
    flat = canvas.reshape(-1, 3)
    flat[pixel[winners]] = np.concatenate(all_colors)[winners]


def _nice_length(span: float) -> float:
    """A round length (1, 2 or 5 times a power of ten) near ``span``, at most ``span``."""
    if span <= 0:
        return 0.0
    power = 10.0 ** math.floor(math.log10(span))
    for step in (5.0, 2.0, 1.0):
        if step * power <= span:
            return step * power
    return power


def _text_width(draw: PILImageDraw.ImageDraw, text: str, font: Any) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def _fit(draw: PILImageDraw.ImageDraw, text: str, font: Any, room: int) -> str:
    """``text``, cut with an ellipsis to ``room`` pixels: a picture's layout never depends on a name's length."""
    if _text_width(draw, text, font) <= room:
        return text
    low, high = 0, len(text)  # the longest prefix that fits with its ellipsis
    while low < high:
        middle = (low + high + 1) // 2
        if _text_width(draw, text[:middle] + "…", font) <= room:
            low = middle
        else:
            high = middle - 1
    return text[:low] + "…" if low else ""


# ------------------------------------------------------------------------------------------------ BEV


@dataclass(frozen=True)
class _BEVLayer:
    """What one BEV panel draws: per-point colours and which points go on top."""

    title: str
    colors: np.ndarray  # (N, 3) uint8
    on_top: np.ndarray | None = None  # (N,) bool: drawn above all others (e.g. errors)
    priority: np.ndarray | None = None  # (N,) small integers: a higher one is drawn above a lower one


def _bev_mapping(
    ego_pose: np.ndarray, center: tuple[float, float] | None, extent: float, resolution: float
) -> BEVMapping:
    if not (extent > 0 and resolution > 0 and math.isfinite(extent) and math.isfinite(resolution)):
        raise ConfigError(f"extent and resolution must be positive, got extent={extent}, resolution={resolution}")
    size = round(2 * extent / resolution)
    if not 1 <= size <= 16384:
        raise ConfigError(f"the map would be {size} pixels wide: choose extent and resolution to give 1..16384")
    cx, cy = (float(ego_pose[0, 3]), float(ego_pose[1, 3])) if center is None else map(float, center)
    if not (math.isfinite(cx) and math.isfinite(cy)):
        cx, cy = 0.0, 0.0  # an unknown ego pose: centre on the frame's origin
    return BEVMapping(x_min=cx - extent, y_max=cy + extent, resolution=resolution, width=size, height=size)


def _as_pose(ego_pose: Any) -> np.ndarray:
    if ego_pose is None:
        return np.eye(4)
    pose = _numpy(ego_pose, "ego_pose").astype(np.float64)
    if pose.shape != (4, 4):
        raise ConfigError(f"ego_pose must be a 4x4 matrix, got shape {pose.shape}")
    return pose


def _draw_bev_panel(
    canvas: np.ndarray,
    xyz: np.ndarray,
    layer: _BEVLayer,
    mapping: BEVMapping,
    ego_pose: np.ndarray,
    point_size: int,
) -> tuple[int, int] | None:
    """Draw one layer's points into ``canvas`` (the whole picture) at ``mapping``; returns the ego pixel."""
    columns, rows, inside = mapping.pixels(xyz[:, :2])
    # Seen from above the highest point shows, within a priority (labelled points above ignored ones, the key
    # frame above earlier sweeps); points put on top (errors) outrank everything.
    height = xyz[:, 2].astype(np.float64)
    order = np.where(np.isfinite(height), np.clip(height, -1e6, 1e6), -1e6)
    if layer.priority is not None:
        order = order + 1e7 * np.clip(layer.priority, -1000, 1000)
    if layer.on_top is not None:
        order = order + np.where(layer.on_top, 1e8, 0.0)
    _splat(canvas, columns[inside], rows[inside], layer.colors[inside], order[inside], point_size)
    ego_cols, ego_rows, ego_inside = mapping.pixels(ego_pose[None, :2, 3])
    return (int(ego_cols[0]), int(ego_rows[0])) if ego_inside[0] else None


def _decorate_bev(
    draw: PILImageDraw.ImageDraw, mapping: BEVMapping, ego_pose: np.ndarray, ego_pixel: tuple[int, int] | None
) -> tuple[float, tuple[int, int, int, int]]:
    """The ego triangle and the scale bar; returns the scale bar's ``(metres, box)``."""
    font = _font()
    if ego_pixel is not None:
        # Heading of the ego's x axis in the map; rows grow downwards, so y flips.
        heading = math.atan2(float(ego_pose[1, 0]), float(ego_pose[0, 0]))
        if not math.isfinite(heading):
            heading = 0.0
        fx, fy = math.cos(heading), -math.sin(heading)
        sx, sy = -fy, fx
        x, y = ego_pixel
        tip = (x + 9 * fx, y + 9 * fy)
        back_left = (x - 6 * fx + 6 * sx, y - 6 * fy + 6 * sy)
        back_right = (x - 6 * fx - 6 * sx, y - 6 * fy - 6 * sy)
        draw.polygon([tip, back_left, back_right], fill=EGO_COLOR, outline=_FRAME_COLOR)
    span = mapping.width * mapping.resolution
    metres = _nice_length(span / 5)
    length = max(1, round(metres / mapping.resolution))
    x0 = mapping.left + 12
    y1 = mapping.top + mapping.height - 12
    box = (x0, y1 - 4, x0 + length, y1)
    draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=EGO_COLOR)
    label = f"{metres:g} m"
    draw.text((x0, y1 - 8 - _FONT_SIZE - 2), label, fill=EGO_COLOR, font=font)
    return metres, box


def _render_bev_panels(
    xyz: np.ndarray,
    layers: Sequence[_BEVLayer],
    legend: Sequence[tuple[str, RGB]],
    *,
    ego_pose: np.ndarray,
    center: tuple[float, float] | None,
    extent: float,
    resolution: float,
    point_size: int,
    legend_title: str,
) -> Picture:
    image_module, image_draw, _ = _pil()
    if not isinstance(point_size, int) or isinstance(point_size, bool) or not 1 <= point_size <= 16:
        raise ConfigError(f"point_size must be an integer in 1..16, got {point_size!r}")
    base = _bev_mapping(ego_pose, center, extent, resolution)
    n = len(layers)
    map_w, map_h = base.width, base.height
    legend_h = _TITLE_HEIGHT + _LEGEND_ROW * len(legend) + _MARGIN
    width = _MARGIN + n * (map_w + _MARGIN) + _LEGEND_WIDTH
    height = max(_TITLE_HEIGHT + map_h + 2 * _MARGIN, legend_h + _MARGIN)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    mappings = []
    for k in range(n):
        mapping = base.shifted(_MARGIN + k * (map_w + _MARGIN), _MARGIN + _TITLE_HEIGHT)
        mappings.append(mapping)
        canvas[mapping.top : mapping.top + map_h, mapping.left : mapping.left + map_w] = BACKGROUND
    ego_pixels = [
        _draw_bev_panel(canvas, xyz, layer, mapping, ego_pose, point_size)
        for layer, mapping in zip(layers, mappings, strict=True)
    ]
    image = image_module.fromarray(canvas, "RGB")
    draw = image_draw.Draw(image)
    font = _font()
    panels = []
    for layer, mapping, ego_pixel in zip(layers, mappings, ego_pixels, strict=True):
        scale_bar = _decorate_bev(draw, mapping, ego_pose, ego_pixel)
        draw.text((mapping.left, _MARGIN + 4), _fit(draw, layer.title, font, map_w), fill=_TEXT_COLOR, font=font)
        panels.append(
            Panel(
                title=layer.title,
                box=(mapping.left, mapping.top, map_w, map_h),
                mapping=mapping,
                scale_bar=scale_bar,
                ego_pixel=ego_pixel,
            )
        )
    entries = _draw_legend(draw, legend, left=_MARGIN + n * (map_w + _MARGIN), top=_MARGIN, title=legend_title)
    return Picture(image=image, panels=tuple(panels), legend=entries)


def _draw_legend(
    draw: PILImageDraw.ImageDraw, items: Sequence[tuple[str, RGB]], *, left: int, top: int, title: str
) -> tuple[LegendEntry, ...]:
    font = _font()
    draw.text((left, top + 4), title, fill=_TEXT_COLOR, font=font)
    entries = []
    for row, (name, color) in enumerate(items):
        y = top + _TITLE_HEIGHT + row * _LEGEND_ROW
        box = (left, y, left + _SWATCH, y + _SWATCH)
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=tuple(color))
        text = _fit(draw, name, font, _LEGEND_WIDTH - _SWATCH - 8 - _MARGIN)
        draw.text((left + _SWATCH + 6, y), text, fill=_TEXT_COLOR, font=font)
        entries.append(LegendEntry(name=name, color=(int(color[0]), int(color[1]), int(color[2])), box=box))
    return tuple(entries)


def _class_legend(classes: Sequence[str]) -> list[tuple[str, RGB]]:
    colors = class_colors(len(classes))
    items: list[tuple[str, RGB]] = [(str(name), _rgb(colors[i])) for i, name in enumerate(classes)]
    items.append(("ignored", IGNORE_COLOR))
    return items


def _rgb(color: np.ndarray) -> RGB:
    return int(color[0]), int(color[1]), int(color[2])


def bev(
    points: Any,
    labels: Any = None,
    *,
    classes: Sequence[str] = (),
    ignore_index: int = -100,
    color_by: str = "class",
    intensity_column: int = 3,
    value_range: tuple[float, float] | None = None,
    ego_pose: Any = None,
    center: tuple[float, float] | None = None,
    extent: float = 40.0,
    resolution: float = 0.1,
    point_size: int = 2,
    title: str | None = None,
) -> Picture:
    """A bird's-eye view of one cloud, coloured by class, intensity or sweep, with a legend, scale and ego.

    Args:
        points: ``(N, C)`` numpy array or tensor, x, y, z first (a :class:`~playment_torch.Sample`'s points).
        labels: ``(N,)`` class indices (needed for ``color_by="class"``).
        classes: Class names by index (``ds.classes``), for the legend and the palette.
        ignore_index: The label drawn grey.
        color_by: ``"class"``, ``"intensity"`` (column ``intensity_column`` of ``points``) or ``"sweep"`` (the
            last column: a dataset with ``sweeps > 1`` puts the sweep index there).
        intensity_column: The intensity column for ``color_by="intensity"``.
        value_range: Intensity range of the colour ramp; default the 1st and 99th percentiles.
        ego_pose: ``(4, 4)`` ego pose in the points' frame (``sample.poses[0]``); default the identity.
        center: ``(x, y)`` of the map's centre in metres; default the ego position.
        extent: Metres from the centre to each edge of the map.
        resolution: Metres per pixel.
        point_size: Pixels per point side.
        title: The panel's title.

    Returns:
        The picture: one panel and a legend.

    Raises:
        ConfigError: bad arguments, or Pillow is not installed.
    """
    xyz = _points_xyz(points)
    pose = _as_pose(ego_pose)
    if color_by not in COLOR_BY:
        raise ConfigError(f"color_by must be one of {', '.join(map(repr, COLOR_BY))}; got {color_by!r}")
    legend: list[tuple[str, RGB]]
    priority = None
    if color_by == "class":
        if labels is None:
            raise ConfigError("color_by='class' needs labels")
        label_array = _per_point(labels, len(xyz), "labels").astype(np.int64)
        colors = _label_colors(label_array, len(classes), ignore_index)
        priority = (~_unknown(label_array, len(classes), ignore_index)).astype(np.float64)
        legend, legend_title = _class_legend(classes), "classes"
    elif color_by == "intensity":
        if not -xyz.shape[1] <= intensity_column < xyz.shape[1]:
            raise ConfigError(f"intensity_column {intensity_column} is not a column of points {xyz.shape}")
        values = xyz[:, intensity_column].astype(np.float64)
        finite = values[np.isfinite(values)]
        if value_range is None:
            value_range = (
                (float(np.percentile(finite, 1)), float(np.percentile(finite, 99))) if finite.size else (0.0, 1.0)
            )
        colors = ramp_colors(values, value_range)
        ticks = np.linspace(value_range[0], value_range[1], 5)
        legend = [(f"{t:.3g}", _rgb(ramp_colors(t, value_range))) for t in ticks[::-1]]
        legend_title = "intensity"
    else:
        if xyz.shape[1] < 4:
            raise ConfigError("color_by='sweep' needs a sweep column (a dataset with sweeps > 1)")
        sweep = np.rint(xyz[:, -1].astype(np.float64))
        count = int(np.nanmax(sweep)) + 1 if len(sweep) else 1
        span = (float(count - 1), 0.0) if count > 1 else (1.0, 0.0)
        # The key frame is the bright end of the ramp; older sweeps fade towards purple.
        colors = ramp_colors(sweep, span)
        priority = -np.nan_to_num(sweep, nan=count)
        legend = [
            (f"sweep {k}" + (" (key frame)" if k == 0 else ""), _rgb(ramp_colors(float(k), span))) for k in range(count)
        ]
        legend_title = "sweeps"
    if title is None:
        title = {"class": "classes", "intensity": "intensity", "sweep": "sweeps"}[color_by]
    return _render_bev_panels(
        xyz,
        [_BEVLayer(title, colors, priority=priority)],
        legend,
        ego_pose=pose,
        center=center,
        extent=extent,
        resolution=resolution,
        point_size=point_size,
        legend_title=legend_title,
    )


def compare_bev(
    points: Any,
    truth: Any,
    prediction: Any,
    *,
    classes: Sequence[str],
    ignore_index: int = -100,
    ego_pose: Any = None,
    center: tuple[float, float] | None = None,
    extent: float = 40.0,
    resolution: float = 0.1,
    point_size: int = 2,
    titles: tuple[str, str] = ("ground truth", "prediction"),
) -> Picture:
    """Ground truth | prediction | disagreement, three bird's-eye views on one map and one legend.

    The third panel colours the labelled points the prediction gets right :data:`AGREE_COLOR` and the ones it
    gets wrong :data:`ERROR_COLOR` (drawn above everything else, so that no error hides under a correct point);
    points the ground truth ignores are grey (they are not scored). A prediction of ``ignore_index`` for a
    labelled point counts as wrong, as :class:`~playment_torch.SegmentationMetrics` counts it.

    Args:
        points: ``(N, C)`` points, x, y, z first.
        truth: ``(N,)`` true class indices.
        prediction: ``(N,)`` predicted class indices.
        classes: Class names by index.
        ignore_index: The label of unscored points.
        ego_pose: See :func:`bev`.
        center: See :func:`bev`.
        extent: See :func:`bev`.
        resolution: See :func:`bev`.
        point_size: See :func:`bev`.
        titles: Titles of the first two panels.

    Returns:
        The picture: three panels, the class legend and the agree/disagree entries.

    Raises:
        ConfigError: bad arguments, or Pillow is not installed.
    """
    xyz = _points_xyz(points)
    true_labels = _per_point(truth, len(xyz), "truth").astype(np.int64)
    predicted = _per_point(prediction, len(xyz), "prediction").astype(np.int64)
    scored = true_labels != ignore_index
    wrong = scored & (predicted != true_labels)
    errors = np.empty((len(xyz), 3), dtype=np.uint8)
    errors[:] = IGNORE_COLOR
    errors[scored] = AGREE_COLOR
    errors[wrong] = ERROR_COLOR
    share = wrong.sum() / scored.sum() if scored.any() else 0.0
    layers = [
        _BEVLayer(
            titles[0],
            _label_colors(true_labels, len(classes), ignore_index),
            priority=(~_unknown(true_labels, len(classes), ignore_index)).astype(np.float64),
        ),
        _BEVLayer(
            titles[1],
            _label_colors(predicted, len(classes), ignore_index),
            priority=(~_unknown(predicted, len(classes), ignore_index)).astype(np.float64),
        ),
        _BEVLayer(
            f"disagree: {int(wrong.sum())} of {int(scored.sum())} ({share:.1%})",
            errors,
            on_top=wrong,
            priority=scored.astype(np.float64),
        ),
    ]
    legend = [*_class_legend(classes), ("agree", AGREE_COLOR), ("disagree", ERROR_COLOR)]
    return _render_bev_panels(
        xyz,
        layers,
        legend,
        ego_pose=_as_pose(ego_pose),
        center=center,
        extent=extent,
        resolution=resolution,
        point_size=point_size,
        legend_title="classes",
    )


# ------------------------------------------------------------------------------------------------ cameras


def _canvas_size(camera: Camera, image_size: tuple[int, int]) -> tuple[int, int]:
    """The calibrated image size (see the module docstring)."""
    if camera.width is not None and camera.height is not None:
        return camera.width, camera.height
    width, height = image_size
    if 0 <= camera.cx < width and 0 <= camera.cy < height:
        return width, height
    return max(1, round(2 * camera.cx)), max(1, round(2 * camera.cy))


def _unfolded_radius(camera: Camera) -> float:
    """The largest undistorted radius ``tan(angle off the optical axis)`` the lens model maps one-to-one.

    Distortion polynomials are calibrated inside the field of view; beyond the radius where the distorted
    radius stops growing they fold distant points back into the image. Points at or past it are not drawn.
    """
    if camera.model == "fisheye":
        k1, k2, k3, k4 = camera.radial
        theta = np.linspace(0.0, math.pi / 2, 4097)[1:]
        t2 = theta * theta
        distorted = theta * (1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
        radii = np.tan(theta)
    else:
        k1, k2, k3, k4, k5, k6 = camera.radial
        radii = np.linspace(0.0, 20.0, 8001)[1:]
        r2 = radii * radii
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            distorted = radii * (1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1.0 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    growing = np.diff(distorted) > 0
    growing &= np.isfinite(distorted[1:]) & (distorted[1:] > 0)
    if growing.all():
        return math.inf
    return float(radii[int(np.argmin(growing))])


def camera_overlay(
    image: Any,
    points: Any,
    labels: Any,
    camera: Camera,
    pose: Any,
    *,
    classes: Sequence[str],
    ignore_index: int = -100,
    point_size: int = 3,
    draw_ignored: bool = True,
    title: str | None = None,
) -> Picture:
    """A camera image with the lidar points projected into it, coloured by class.

    Args:
        image: The camera image: uint8 ``(H, W, 3)`` array or a ``PIL.Image``.
        points: ``(N, C)`` points, x, y, z first, in the frame ``pose`` is expressed in.
        labels: ``(N,)`` class indices.
        camera: The camera (``ds.cameras(i)[k]``).
        pose: The camera's ``(4, 4)`` pose in the points' frame (``sample.poses[1 + k]``).
        classes: Class names by index.
        ignore_index: The label drawn grey.
        point_size: Pixels per point side.
        draw_ignored: Draw ignored points (grey) too.
        title: The panel's title (default the camera's name).

    Returns:
        The picture: one panel whose box's ``(left, top)`` is the image's pixel ``(0, 0)``, and the legend.

    Raises:
        ConfigError: bad arguments, or Pillow is not installed.
        PlaymentFormatError: the pose is not a finite 4x4 matrix (a frame without this camera's pose).
    """
    image_module, image_draw, _ = _pil()
    if not isinstance(point_size, int) or isinstance(point_size, bool) or not 1 <= point_size <= 16:
        raise ConfigError(f"point_size must be an integer in 1..16, got {point_size!r}")
    if isinstance(image, image_module.Image):
        picture = image.convert("RGB")
    else:
        array = _numpy(image, "image")
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise ConfigError(f"image must be (H, W, 3) RGB, got shape {array.shape}")
        picture = image_module.fromarray(np.ascontiguousarray(array[:, :, :3], dtype=np.uint8), "RGB")
    width, height = _canvas_size(camera, picture.size)
    if picture.size != (width, height):
        picture = picture.resize((width, height), image_module.Resampling.BILINEAR)
    xyz = _points_xyz(points)
    label_array = _per_point(labels, len(xyz), "labels").astype(np.int64)
    pose_array = _numpy(pose, "pose").astype(np.float64)
    if pose_array.shape != (4, 4) or not np.all(np.isfinite(pose_array)):
        raise PlaymentFormatError(f"camera {camera.name!r}: the frame has no usable pose for it")
    uv, valid = project_points(xyz[:, :3].astype(np.float64), camera, pose_array)
    columns = np.floor(uv[:, 0])
    rows = np.floor(uv[:, 1])
    valid &= (columns >= 0) & (columns < width) & (rows >= 0) & (rows < height)
    if not draw_ignored:
        valid &= label_array != ignore_index
    # Camera coordinates: depth along the optical axis (the nearest point is the one seen), and the angle off
    # it, to leave out points beyond where the lens model folds back into the image.
    camera_points = (xyz[:, :3].astype(np.float64) - pose_array[:3, 3]) @ pose_array[:3, :3]
    depth = camera_points[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = np.hypot(camera_points[:, 0], camera_points[:, 1]) / depth
    valid &= np.nan_to_num(radius, nan=np.inf) < _unfolded_radius(camera)

    legend = _class_legend(classes)
    out_w = _MARGIN + width + _MARGIN + _LEGEND_WIDTH
    out_h = max(_MARGIN + _TITLE_HEIGHT + height + _MARGIN, _MARGIN + _TITLE_HEIGHT + _LEGEND_ROW * len(legend))
    canvas = np.zeros((out_h, out_w, 3), dtype=np.uint8)
    left, top = _MARGIN, _MARGIN + _TITLE_HEIGHT
    canvas[top : top + height, left : left + width] = np.asarray(picture)
    colors = _label_colors(label_array, len(classes), ignore_index)
    # Splat into a contiguous copy of the image area (a slice of the canvas would be copied by reshape).
    area = np.ascontiguousarray(canvas[top : top + height, left : left + width])
    _splat(
        area,
        columns[valid].astype(np.int64),
        rows[valid].astype(np.int64),
        colors[valid],
        -depth[valid],
        point_size,
    )
    canvas[top : top + height, left : left + width] = area
    out = image_module.fromarray(canvas, "RGB")
    draw = image_draw.Draw(out)
    title = title if title is not None else f"camera {camera.name or camera.sensor_id}"
    draw.text((left, _MARGIN + 4), _fit(draw, title, _font(), width), fill=_TEXT_COLOR, font=_font())
    entries = _draw_legend(draw, legend, left=left + width + _MARGIN, top=_MARGIN, title="classes")
    return Picture(image=out, panels=(Panel(title=title, box=(left, top, width, height)),), legend=entries)


def _stack(pictures: Sequence[Picture]) -> Picture:
    """Pictures one under the other, left-aligned, with their layouts shifted accordingly."""
    image_module, _, _ = _pil()
    width = max(p.image.width for p in pictures)
    height = sum(p.image.height for p in pictures)
    out = image_module.new("RGB", (width, height), _FRAME_COLOR)
    panels: list[Panel] = []
    legend: list[LegendEntry] = []
    y = 0
    for picture in pictures:
        out.paste(picture.image, (0, y))
        panels.extend(panel.shifted(0, y) for panel in picture.panels)
        legend.extend(entry.shifted(0, y) for entry in picture.legend)
        y += picture.image.height
    return Picture(image=out, panels=tuple(panels), legend=tuple(legend))


# ------------------------------------------------------------------------------------------------ camera images


def _sensor_table(metas: Any, job_id: str) -> list[tuple[str, str, str]]:
    """``(id, name, modality)`` of each ``sensor_meta`` entry."""
    if metas is None:
        return []
    if not isinstance(metas, list):
        raise PlaymentFormatError(f"job {job_id}: sensor_data.sensor_meta is not a list")
    table = []
    for k, meta in enumerate(metas):
        if not isinstance(meta, dict):
            raise PlaymentFormatError(f"job {job_id}: sensor_data.sensor_meta[{k}] is not an object")
        table.append((str(meta.get("id") or ""), str(meta.get("name") or ""), str(meta.get("modality") or "").lower()))
    return table


def _camera_of(reference: str, table: Sequence[tuple[str, str, str]]) -> tuple[str, str, str] | None:
    """The camera ``sensor_meta`` entry a frame's sensor entry names: by id, then by name."""
    cameras = [entry for entry in table if entry[2] == "camera"]
    by_id = [entry for entry in cameras if entry[0] and entry[0] == reference]
    if len(by_id) == 1:
        return by_id[0]
    by_name = [entry for entry in cameras if entry[1] and entry[1] == reference]
    return by_name[0] if len(by_name) == 1 else None


def _image_urls(payload: Any, job_id: str) -> dict[str, dict[str, str]]:
    """Frame id -> {camera id (its name when sensor_meta gives no id) -> image URL} of a result object."""
    if not isinstance(payload, dict):
        raise PlaymentFormatError(f"job {job_id}: the result is not a JSON object")
    sensor_data = payload.get("sensor_data")
    if sensor_data is None:
        return {}  # the legacy {legend, url} format has no cameras
    if not isinstance(sensor_data, dict):
        raise PlaymentFormatError(f"job {job_id}: sensor_data is not an object")
    table = _sensor_table(sensor_data.get("sensor_meta"), job_id)
    frames = sensor_data.get("frames")
    if frames is None and "sensors" in sensor_data:
        # Older single-frame results put the sensors directly under sensor_data (as the result parser reads).
        annotation_frames = (payload.get("annotation_data") or {}).get("frames") or [{}]
        frame_id = sensor_data.get("frame_id") or (annotation_frames[0] or {}).get("_id") or "0"
        frames = [{**sensor_data, "frame_id": frame_id}]
    if not isinstance(frames, list):
        return {}
    out: dict[str, dict[str, str]] = {}
    for index, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise PlaymentFormatError(f"job {job_id}: sensor_data.frames[{index}] is not an object")
        frame_id = str(frame.get("frame_id") or frame.get("_id") or index)
        urls: dict[str, str] = {}
        for sensor in frame.get("sensors") or ():
            if not isinstance(sensor, dict):
                continue
            meta = _camera_of(str(sensor.get("sensor_id") or ""), table)
            url = str(sensor.get("data_url") or sensor.get("original_url") or "")
            if meta is not None and url:
                urls[meta[0] or meta[1]] = url
        out[frame_id] = urls
    return out


def camera_image_urls(client: PlaymentClient, project_id: str, job_id: str) -> dict[str, dict[str, str]]:
    """The camera image URLs of a job's frames, read from its result.

    The frame index keeps no image URLs (training never needs them): this asks for the job and downloads its
    result object. Sensor entries of ``sensor_data.frames[]`` are matched to ``sensor_meta`` cameras by id,
    then by name; the URL is ``data_url`` (else ``original_url``).

    Args:
        client: The API client.
        project_id: The project.
        job_id: The job.

    Returns:
        ``{frame_id: {camera id: url}}`` (a camera whose ``sensor_meta`` entry has no id is keyed by its name);
        empty for legacy results, which have no cameras.

    Raises:
        PlaymentError: the job or its result could not be fetched or is malformed.
    """
    return _image_urls(client.get_result_json(client.get_job(project_id, job_id)), job_id)


def _position(ds: PlaymentSegmentationDataset, i: int) -> int:
    i = operator.index(i)
    n = len(ds)
    if not -n <= i < n:
        raise IndexError(f"item {i} out of range for a dataset of {n} frames")
    return i % n


def _find_camera(ds: PlaymentSegmentationDataset, position: int, camera: str | int) -> int:
    """The index ``k`` (``sensor_meta`` order) of a camera named by name, id or index."""
    cameras = ds.cameras(position)
    ref = ds.frames[position]
    if isinstance(camera, int) and not isinstance(camera, bool):
        if 0 <= camera < len(cameras):
            return camera
    else:
        for k, candidate in enumerate(cameras):
            if camera in (candidate.name, candidate.sensor_id):
                return k
    names = ", ".join(c.name or c.sensor_id for c in cameras) or "none"
    raise ConfigError(f"job {ref.job_id}, frame {ref.frame_id}: no camera {camera!r}; the job's cameras: {names}")


def camera_image(ds: PlaymentSegmentationDataset, i: int, camera: str | int) -> np.ndarray:
    """Item ``i``'s image from a camera, downloaded through the dataset's client and cached.

    Args:
        ds: The dataset.
        i: The item.
        camera: The camera's name, ``sensor_meta`` id, or index in ``ds.cameras(i)``.

    Returns:
        uint8 ``(H, W, 3)`` RGB, as the file holds it (see :func:`camera_overlay` for sizes).

    Raises:
        ConfigError: the job has no such camera, or Pillow is not installed.
        CacheError: ``refresh="never"`` and the image (or the job's URL table) is not cached.
        FrameError: the frame names no image for this camera, or the download failed.
        PlaymentFormatError: the image does not decode.
    """
    image_module, _, _ = _pil()
    position = _position(ds, i)
    k = _find_camera(ds, position, camera)
    cam = ds.cameras(position)[k]
    ref = ds.frames[position]
    job = ds.index.job_of(position)
    # A job's image URLs come from its result: cached beside it, keyed by the result's digest.
    table_key = cache_key(f"camera-urls@{job.digest}", project_id=ds.project_id, job_id=ref.job_id)
    table = ds.cache.get_json(table_key)
    if table is None:
        if ds.refresh == "never":
            raise CacheError(f"job {ref.job_id}: the camera image URLs are not cached and refresh='never'")
        table = camera_image_urls(ds.client, ds.project_id, ref.job_id)
        ds.cache.put_json(table_key, table)
    url = (table.get(ref.frame_id) or {}).get(cam.sensor_id or cam.name)
    if not url:
        raise FrameError(f"the frame has no image of camera {cam.name!r}", job_id=ref.job_id, frame_id=ref.frame_id)
    key = cache_key(
        "image", project_id=ds.project_id, job_id=ref.job_id, frame_id=ref.frame_id, sensor_id=cam.sensor_id, url=url
    )
    cached = ds.cache.get_array(key)
    if cached is not None:
        return cached
    if ds.refresh == "never":
        raise CacheError(f"job {ref.job_id}, frame {ref.frame_id}: {redact_url(url)} is not cached and refresh='never'")

    def create() -> np.ndarray:
        try:
            body = ds.client.download(url)
        except PlaymentError as exc:
            raise FrameError(str(exc), job_id=ref.job_id, frame_id=ref.frame_id) from exc
        try:
            with image_module.open(io.BytesIO(body)) as opened:
                return np.array(opened.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError, image_module.DecompressionBombError) as exc:
            raise PlaymentFormatError(
                f"job {ref.job_id}, frame {ref.frame_id}: camera {cam.name!r}: {redact_url(url)} is not an image "
                f"Pillow can read: {exc}"
            ) from exc

    return ds.cache.get_or_create(key, create)


# ------------------------------------------------------------------------------------------------ predictions


def load_prediction_classes(directory: str | Path) -> tuple[tuple[str, ...], int]:
    """The class list of a predictions folder (``DIR/classes.json``).

    Args:
        directory: The folder (see :func:`load_predictions`).

    Returns:
        ``(classes, ignore_index)``.

    Raises:
        PlaymentFormatError: ``classes.json`` is missing or malformed.
    """
    path = Path(directory) / "classes.json"
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlaymentFormatError(f"predictions: cannot read {path}: {exc}") from exc
    except ValueError as exc:
        raise PlaymentFormatError(f"predictions: {path} is not JSON: {exc}") from exc
    classes = payload.get("classes") if isinstance(payload, dict) else None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise PlaymentFormatError(f"predictions: {path} must hold {{'classes': [names...], 'ignore_index': int}}")
    ignore = payload.get("ignore_index", -100)
    if not isinstance(ignore, int) or isinstance(ignore, bool):
        raise PlaymentFormatError(f"predictions: {path}: ignore_index must be an integer, got {ignore!r}")
    return tuple(classes), ignore


def load_predictions(directory: str | Path, job_id: str, frame_id: str) -> np.ndarray:
    """One frame's predicted classes from a predictions folder.

    The folder holds ``classes.json`` (``{"classes": [...], "ignore_index": -100}``) and, per frame,
    ``<quote(job_id)>/<quote(frame_id)>.npy`` (``urllib.parse.quote(..., safe="")``): a 1-D integer array of
    class indices in ``classes`` order, one per point of the frame's cloud.

    Args:
        directory: The folder.
        job_id: The job.
        frame_id: The frame.

    Returns:
        int64 ``(N,)``.

    Raises:
        FrameError: the folder has no prediction for the frame.
        PlaymentFormatError: the file is not a 1-D integer array.
    """
    path = Path(directory) / urllib.parse.quote(job_id, safe="") / (urllib.parse.quote(frame_id, safe="") + ".npy")
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise FrameError(f"no prediction at {path}", job_id=job_id, frame_id=frame_id) from exc
    except (OSError, ValueError) as exc:
        raise PlaymentFormatError(f"job {job_id}, frame {frame_id}: {path} is not a numpy array: {exc}") from exc
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise PlaymentFormatError(
            f"job {job_id}, frame {frame_id}: {path} must be a 1-D integer array, got {array.dtype} {array.shape}"
        )
    return array.astype(np.int64)


# ------------------------------------------------------------------------------------------------ frames


def _untransformed(ds: PlaymentSegmentationDataset) -> PlaymentSegmentationDataset:
    """The dataset without its transform: a random augmentation would move points away from their labels."""
    if ds.transform is None:
        return ds
    import copy

    plain = copy.copy(ds)
    plain.transform = None
    return plain


def find_frame(ds: PlaymentSegmentationDataset, job_id: str, frame_id: str) -> int:
    """The item of a (job, frame) pair.

    Raises:
        FrameError: the dataset has no such frame.
    """
    index = ds.index
    for position in range(len(ds)):
        if index.frame_ids[position] == frame_id and index.job_of(position).job_id == job_id:
            return position
    jobs = {job.job_id for job in index.jobs}
    if job_id not in jobs:
        # A job that is not completed (or failed to resolve) is left out of a dataset with a warning.
        raise FrameError("the dataset has no such job (is it completed?)", job_id=job_id, frame_id=frame_id)
    frames = [index.frame_ids[p] for p in range(len(ds)) if index.job_of(p).job_id == job_id]
    shown = ", ".join(frames[:20]) + (" ..." if len(frames) > 20 else "")
    raise FrameError(f"the job has no such frame; its frames: {shown}", job_id=job_id, frame_id=frame_id)


def frame_picture(
    ds: PlaymentSegmentationDataset,
    i: int,
    *,
    predictions: Any = None,
    camera: str | int | None = None,
    color_by: str = "class",
    extent: float = 40.0,
    resolution: float = 0.1,
    point_size: int = 2,
) -> Picture:
    """The picture of item ``i``: its bird's-eye view (or truth | prediction | disagreement) and a camera.

    The dataset's ``transform`` is not applied. With ``predictions`` the views compare classes (``color_by``
    must be ``"class"``); the camera overlay always shows the ground truth.

    Args:
        ds: The dataset.
        i: The item.
        predictions: ``(N,)`` predicted class indices (``ds.classes`` order) for the frame's points.
        camera: A camera name, id or index: add its image with the points projected, under the views.
        color_by: ``"class"``, ``"intensity"`` (needs ``"intensity"`` in ``ds.point_fields``) or ``"sweep"``
            (needs ``ds.sweeps > 1``).
        extent: See :func:`bev`.
        resolution: See :func:`bev`.
        point_size: See :func:`bev`.

    Returns:
        The picture.

    Raises:
        ConfigError: bad arguments, or Pillow is not installed.
        PlaymentError: the frame or the camera image could not be loaded.
    """
    position = _position(ds, i)
    ref = ds.frames[position]
    sample = _untransformed(ds)[position]
    points = sample.points.numpy()
    labels = sample.labels.numpy()
    ego_pose = sample.poses[0].numpy()
    where = f"job {ref.job_id}, frame {ref.frame_id}"
    if predictions is not None:
        if color_by != "class":
            raise ConfigError("a comparison with predictions is coloured by class; drop color_by")
        predicted = _numpy(predictions, "predictions").reshape(-1)
        # Sweeps put the key frame's points first: predictions cover the key frame only.
        key_points = len(predicted)
        if (ds.sweeps == 1 and key_points != len(points)) or key_points > len(points):
            raise PlaymentFormatError(
                f"{where}: the prediction has {key_points} values but the frame has {len(points)} points"
            )
        top = compare_bev(
            points[:key_points],
            labels[:key_points],
            predicted,
            classes=ds.classes,
            ignore_index=ds.ignore_index,
            titles=(f"ground truth · {where}", "prediction"),
            ego_pose=ego_pose,
            extent=extent,
            resolution=resolution,
            point_size=point_size,
        )
    else:
        column = 3
        if color_by == "intensity":
            names = [f.lower() for f in ds.point_fields]
            if "intensity" not in names:
                raise ConfigError(f"color_by='intensity' needs 'intensity' in point_fields, got {ds.point_fields}")
            column = names.index("intensity")
        if color_by == "sweep" and ds.sweeps == 1:
            raise ConfigError("color_by='sweep' needs a dataset with sweeps > 1")
        top = bev(
            points,
            labels,
            classes=ds.classes,
            ignore_index=ds.ignore_index,
            color_by=color_by,
            intensity_column=column,
            title=f"{color_by} · {where}",
            ego_pose=ego_pose,
            extent=extent,
            resolution=resolution,
            point_size=point_size,
        )
    if camera is None:
        return top
    k = _find_camera(ds, position, camera)
    cam = ds.cameras(position)[k]
    image = camera_image(ds, position, k)
    # Earlier sweeps were seen from elsewhere and at another time: the camera shows the key frame only.
    key = points[:, -1] == 0 if ds.sweeps > 1 else np.ones(len(points), dtype=bool)
    try:
        overlay = camera_overlay(
            image,
            points[key],
            labels[key],
            cam,
            sample.poses[1 + k].numpy(),
            classes=ds.classes,
            ignore_index=ds.ignore_index,
            title=f"camera {cam.name or cam.sensor_id} · ground truth",
        )
    except PlaymentFormatError as exc:
        raise PlaymentFormatError(f"{where}: {exc}") from exc
    return _stack([top, overlay])


# ------------------------------------------------------------------------------------------------ CLI


def show_command(args: argparse.Namespace) -> None:
    """``playment-torch show``: write the picture (PNG) or the export (``.ply``/``.pcd``) of one frame.

    Args:
        args: ``project``, ``job``, ``frame``, ``camera``, ``predictions``, ``color_by``, ``sweeps``,
            ``output``, ``base_url``, ``cache_dir``, ``quiet``, ``extent``, ``resolution``.

    Raises:
        PlaymentError: anything failed (the CLI prints it on one line).
    """
    from playment_torch.client import DEFAULT_BASE_URL, PlaymentClient
    from playment_torch.dataset import PlaymentSegmentationDataset

    output = Path(args.output)
    export = output.suffix.lower() in (".ply", ".pcd")
    classes: Sequence[str] | None = None
    ignore_index = -100
    if args.predictions:
        classes, ignore_index = load_prediction_classes(args.predictions)
    color_by = args.color_by
    sweeps = args.sweeps if args.sweeps is not None else (3 if color_by == "sweep" and not export else 1)
    if sweeps < 1:
        raise ConfigError(f"--sweeps must be at least 1, got {sweeps}")
    if color_by == "sweep" and sweeps == 1 and not export:
        raise ConfigError("--color-by sweep needs --sweeps 2 or more")
    if export and args.camera:
        raise ConfigError("--camera draws a picture; an export (.ply, .pcd) has no camera")
    client = PlaymentClient(base_url=args.base_url or DEFAULT_BASE_URL)

    def dataset(point_fields: tuple[str, ...]) -> PlaymentSegmentationDataset:
        return PlaymentSegmentationDataset(
            args.project,
            job_ids=[args.job],
            client=client,
            cache_dir=args.cache_dir,
            classes=classes,
            ignore_index=ignore_index,
            point_fields=point_fields,
            sweeps=1 if export else sweeps,
            progress=False if args.quiet else None,
        )

    # The training default's fields, so that a frame a training run cached is drawn without a download.
    ds = dataset(("x", "y", "z", "intensity"))
    position = find_frame(ds, args.job, args.frame)
    if color_by != "intensity":
        # Intensity is drawn or exported when the cloud has it: try, and go without when the cloud has none.
        try:
            ds[position]
        except PlaymentFormatError as exc:
            if "no field 'intensity'" not in str(exc):
                raise
            ds = dataset(("x", "y", "z"))
    predicted = load_predictions(args.predictions, args.job, args.frame) if args.predictions else None
    if export:
        from playment_torch.export import export_frame

        export_frame(ds, position, output, predictions=predicted)
    else:
        picture = frame_picture(
            ds,
            position,
            predictions=predicted,
            camera=args.camera,
            color_by=color_by,
            extent=args.extent,
            resolution=args.resolution,
        )
        picture.save(output)
    print(f"wrote {output}")
