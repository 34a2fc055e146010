"""Report figures without a plotting library: orthogonal slices with the label overlay and probability / uncertainty
heat maps as PNG bytes (uint8 RGB arrays), probability bars as inline SVG. Arrays are (z, y, x) on the LPS reference
grid; slices are drawn in physical proportions. Titles, legends and colour bars are HTML, written by report_html."""
from __future__ import annotations

import html
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .png import encode_png

LABEL_COLOURS = {1: (0.85, 0.2, 0.2), 2: (0.2, 0.75, 0.3), 3: (1.0, 0.85, 0.1)}  # NCR red, ED green, ET yellow
LABEL_NAMES = {1: "NCR", 2: "ED", 3: "ET"}
VIEWS = ("axial", "coronal", "sagittal")
LABEL_ALPHA, MAP_ALPHA = 0.45, 0.7
MAP_THRESHOLD = 0.02
"""Map values below this fraction of vmax are not drawn."""
GAP = 4
"""White pixels between panels."""
MIN_PANEL, MAX_PANEL = 240, 320
"""Range of the longest panel side in pixels: coarser grids are enlarged, finer ones reduced, to fit it."""
COLOUR_MAPS = {  # anchors (position, RGB 0-1), linearly interpolated: close to matplotlib's 'hot' and 'viridis'
    "hot": ((0.0, (0.04, 0.0, 0.0)), (0.365, (1.0, 0.0, 0.0)), (0.746, (1.0, 1.0, 0.0)), (1.0, (1.0, 1.0, 1.0))),
    "viridis": ((0.0, (0.267, 0.005, 0.329)), (0.25, (0.231, 0.322, 0.545)), (0.5, (0.129, 0.569, 0.553)),
                (0.75, (0.369, 0.788, 0.384)), (1.0, (0.992, 0.906, 0.145))),
}


def colour_lut(name: str) -> np.ndarray:
    """(256, 3) float RGB (0-255) lookup table of the colour map ``name``."""
    positions = [p for p, _ in COLOUR_MAPS[name]]
    colours = np.array([c for _, c in COLOUR_MAPS[name]]) * 255
    steps = np.linspace(0, 1, 256)
    return np.stack([np.interp(steps, positions, colours[:, channel]) for channel in range(3)], axis=1)


def tumor_centre(labels: np.ndarray) -> Tuple[int, int, int]:
    """Voxel (z, y, x) at the tumor's centre of mass (the volume centre without a tumor)."""
    tumor = labels > 0
    count = int(tumor.sum())
    if count == 0:
        return tuple(n // 2 for n in labels.shape)
    centre = []
    for axis in range(3):  # the mean index along each axis, from the per-slice counts (no list of all voxels)
        per_slice = tumor.sum(axis=tuple(a for a in range(3) if a != axis))
        centre.append(int(round(float(np.dot(np.arange(len(per_slice)), per_slice)) / count)))
    return tuple(centre)


def _slice(volume: np.ndarray, view: str, centre: Sequence[int]) -> np.ndarray:
    """A 2D slice oriented for display: axial anterior at the top, coronal and sagittal superior at the top."""
    z, y, x = centre
    if view == "axial":
        return volume[z]
    if view == "coronal":
        return volume[::-1, y, :]
    return volume[::-1, :, x]


def _view_spacing(view: str, spacing_zyx: Sequence[float]) -> Tuple[float, float]:
    """(row, column) spacing in mm of a slice of ``view``."""
    sz, sy, sx = spacing_zyx
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[view]


def _pixel_mm(shape: Sequence[int], spacing_zyx: Sequence[float]) -> float:
    """One pixel size (mm) for all panels: the finest spacing, within what keeps the longest side (the largest
    physical extent) between MIN_PANEL and MAX_PANEL pixels."""
    extent = max(n * s for n, s in zip(shape, spacing_zyx))
    return float(np.clip(min(spacing_zyx), extent / MAX_PANEL, extent / MIN_PANEL))


def _resample(panel: np.ndarray, spacing_rc: Tuple[float, float], pixel_mm: float) -> np.ndarray:
    """Nearest-neighbour resampling of a 2D (or 2D x channels) panel to square pixels of ``pixel_mm``."""
    index = []
    for n, spacing in zip(panel.shape[:2], spacing_rc):
        size = max(1, int(round(n * spacing / pixel_mm)))
        index.append(np.minimum(((np.arange(size) + 0.5) * pixel_mm / spacing).astype(int), n - 1))
    return panel[index[0]][:, index[1]]


HISTOGRAM_LIMIT = 1 << 20
"""Integer images whose largest value is below this are windowed from a histogram (at most 8 MB of counts)."""


def window(image: np.ndarray) -> Tuple[float, float]:
    """0.5 and 99.5 percentiles of the positive voxels (``np.percentile``'s linear interpolation; for integer
    images read from a histogram, 5x faster than sorting them)."""
    values = image[image > 0]
    if values.size == 0:
        return 0.0, 1.0
    if np.issubdtype(values.dtype, np.integer) and values.max() < HISTOGRAM_LIMIT:
        low, high = _integer_percentiles(values, (0.5, 99.5))
    else:
        low, high = np.percentile(values, [0.5, 99.5])
    return float(low), float(max(high, low + 1e-6))


def _integer_percentiles(values: np.ndarray, percents: Sequence[float]) -> List[float]:
    """``np.percentile(values, percents)`` of positive integers, from their cumulative histogram: the k-th smallest
    value (0-based) is the first v whose cumulative count exceeds k."""
    cumulative = np.cumsum(np.bincount(values.astype(np.intp, copy=False)))  # uint64 too
    out = []
    for percent in percents:
        rank = percent / 100 * (values.size - 1)
        below = int(np.floor(rank))
        a, b = np.searchsorted(cumulative, [below + 1, min(below + 2, values.size)], side="left")
        out.append(float(a + (b - a) * (rank - below)))
    return out


def _grey(image: np.ndarray, window: Tuple[float, float]) -> np.ndarray:
    """(h, w, 3) float RGB 0-255 of a slice windowed to ``window``."""
    low, high = window
    grey = np.clip((image.astype(np.float32) - low) / (high - low), 0, 1) * 255
    return np.repeat(grey[..., None], 3, axis=2)


def _grid(panels: List[List[np.ndarray]]) -> np.ndarray:
    """Panels (rows of (h, w, 3) uint8 arrays) on white, GAP pixels apart, each centred vertically in its row."""
    heights = [max(p.shape[0] for p in row) for row in panels]
    widths = [max(row[c].shape[1] for row in panels) for c in range(len(panels[0]))]
    canvas = np.full((sum(heights) + GAP * (len(heights) - 1), sum(widths) + GAP * (len(widths) - 1), 3), 255,
                     np.uint8)
    top = 0
    for row, height in zip(panels, heights):
        left = 0
        for panel, width in zip(row, widths):
            r, c = top + (height - panel.shape[0]) // 2, left + (width - panel.shape[1]) // 2
            canvas[r:r + panel.shape[0], c:c + panel.shape[1]] = panel
            left += width + GAP
        top += height + GAP
    return canvas


def _panel(rgb: np.ndarray, view: str, spacing_zyx: Sequence[float], pixel_mm: float) -> np.ndarray:
    """A float RGB slice of ``view`` as uint8 with square pixels of ``pixel_mm``."""
    return _resample(np.round(rgb).astype(np.uint8), _view_spacing(view, spacing_zyx), pixel_mm)


def overlay_figure(images: Dict[str, np.ndarray], labels: np.ndarray, spacing_zyx: Sequence[float],
                   centre: Optional[Tuple[int, int, int]] = None,
                   windows: Optional[Dict[str, Tuple[float, float]]] = None) -> bytes:
    """Axial, coronal and sagittal slices through the tumor centre, one row per background image, with the label
    overlay (NCR red, ED green, ET yellow; alpha LABEL_ALPHA). ``centre`` (:func:`tumor_centre`) and ``windows``
    (:func:`window` per image) when the caller has them already."""
    centre = tumor_centre(labels) if centre is None else centre
    pixel = _pixel_mm(labels.shape, spacing_zyx)
    colours = np.zeros((4, 3), np.float32)
    for label, colour in LABEL_COLOURS.items():
        colours[label] = np.array(colour) * 255
    rows = []
    for name, image in images.items():
        grey_window = windows[name] if windows and name in windows else window(image)
        row = []
        for view in VIEWS:
            grey = _grey(_slice(image, view, centre), grey_window)
            shown = np.clip(_slice(labels, view, centre), 0, 3).astype(int)
            mixed = np.where((shown > 0)[..., None], (1 - LABEL_ALPHA) * grey + LABEL_ALPHA * colours[shown], grey)
            row.append(_panel(mixed, view, spacing_zyx, pixel))
        rows.append(row)
    return encode_png(_grid(rows))


def map_figure(background: np.ndarray, maps: Dict[str, np.ndarray], labels: np.ndarray,
               spacing_zyx: Sequence[float], cmap: str = "hot", vmax: float = 1.0,
               centre: Optional[Tuple[int, int, int]] = None,
               background_window: Optional[Tuple[float, float]] = None) -> bytes:
    """One row per map (probability or uncertainty), three views, coloured with ``cmap`` (0 to ``vmax``, alpha
    MAP_ALPHA where the value is at least MAP_THRESHOLD * vmax) over ``background`` in grey. ``centre`` and
    ``background_window`` when the caller has them already."""
    centre = tumor_centre(labels) if centre is None else centre
    pixel = _pixel_mm(labels.shape, spacing_zyx)
    grey_window = window(background) if background_window is None else background_window
    lut = colour_lut(cmap)
    greys = {view: _grey(_slice(background, view, centre), grey_window) for view in VIEWS}
    rows = []
    for volume in maps.values():
        row = []
        for view in VIEWS:
            values = _slice(volume, view, centre).astype(np.float32)
            colour = lut[np.clip(np.round(values / vmax * 255), 0, 255).astype(int)]
            mixed = np.where((values >= MAP_THRESHOLD * vmax)[..., None],
                             (1 - MAP_ALPHA) * greys[view] + MAP_ALPHA * colour, greys[view])
            row.append(_panel(mixed, view, spacing_zyx, pixel))
        rows.append(row)
    return encode_png(_grid(rows))


def css_gradient(cmap: str) -> str:
    """The colour map as a CSS ``linear-gradient`` (left = 0, right = vmax), for an HTML colour bar."""
    stops = ", ".join(f"rgb({', '.join(str(round(255 * v)) for v in colour)}) {100 * p:g}%"
                      for p, colour in COLOUR_MAPS[cmap])
    return f"linear-gradient(to right, {stops})"


BAR_AXIS = (110, 20, 420)
"""SVG probability bars: x of probability 0, top margin, width of the [0, 1] axis (pixels)."""
BAR_ROW = 24
"""Height of one bar's row (pixels)."""


def probability_bars(entries: List[Tuple[str, float, Optional[float]]], title: str) -> str:
    """Inline SVG: horizontal bars of probabilities in [0, 1] (top to bottom in ``entries`` order) with their names
    and values, each with an optional +- uncertainty whisker, and a dotted line at 0.5."""
    left, top, width = BAR_AXIS
    height = BAR_ROW * len(entries)

    def x(p: float) -> float:
        return round(left + width * min(max(p, 0.0), 1.0), 1)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 50}" height="{top + height + 20}" '
             f'role="img" font-family="sans-serif" font-size="12"><title>{html.escape(title)}</title>',
             f'<text x="{left}" y="13">{html.escape(title)}</text>',
             f'<rect class="axis" x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#999"/>']
    for row, (name, value, error) in enumerate(entries):
        y = top + BAR_ROW * row
        parts.append(f'<text x="{left - 6}" y="{y + 16}" text-anchor="end">{html.escape(name)}</text>'
                     f'<rect class="bar" x="{left}" y="{y + 5}" width="{x(value) - left:.1f}" height="14" '
                     f'fill="#4477aa"/><text x="{left + width + 6}" y="{y + 16}">{value:.2f}</text>')
        if error:
            parts.append(f'<line class="whisker" x1="{x(value - error)}" x2="{x(value + error)}" y1="{y + 12}" '
                         f'y2="{y + 12}" stroke="#222" stroke-width="1.5"/>')
    parts.append(f'<line class="half" x1="{x(0.5)}" x2="{x(0.5)}" y1="{top}" y2="{top + height}" stroke="grey" '
                 f'stroke-dasharray="2,3"/>')
    parts += [f'<text x="{x(p)}" y="{top + height + 15}" text-anchor="middle">{p:g}</text>' for p in (0, 0.5, 1)]
    return "".join(parts) + "</svg>"
