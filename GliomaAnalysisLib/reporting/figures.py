"""Report figures as PNG bytes: orthogonal slices with the label overlay, probability heat maps, uncertainty map,
and probability bars. Arrays are (z, y, x) on the reference grid; slices are drawn in physical proportions."""
from __future__ import annotations

import io
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

LABEL_COLOURS = {1: (0.85, 0.2, 0.2), 2: (0.2, 0.75, 0.3), 3: (1.0, 0.85, 0.1)}  # NCR red, ED green, ET yellow
LABEL_NAMES = {1: "NCR", 2: "ED", 3: "ET"}
VIEWS = ("axial", "coronal", "sagittal")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tumor_centre(labels: np.ndarray) -> Tuple[int, int, int]:
    """Voxel (z, y, x) at the tumor's centre of mass (the volume centre without a tumor)."""
    points = np.argwhere(labels > 0)
    if points.size == 0:
        return tuple(n // 2 for n in labels.shape)
    return tuple(int(round(v)) for v in points.mean(axis=0))


def _slice(volume: np.ndarray, view: str, centre: Sequence[int]) -> np.ndarray:
    """A 2D slice oriented for display (rows top to bottom, columns left to right of the image)."""
    z, y, x = centre
    if view == "axial":
        return volume[z]
    if view == "coronal":
        return volume[::-1, y, :]
    return volume[::-1, :, x]


def _aspect(view: str, spacing_zyx: Sequence[float]) -> float:
    sz, sy, sx = spacing_zyx
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[view]


def _window(image: np.ndarray) -> Tuple[float, float]:
    values = image[image > 0]
    if values.size == 0:
        return 0.0, 1.0
    return float(np.percentile(values, 0.5)), float(np.percentile(values, 99.5))


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight", facecolor="white")
    _pyplot().close(fig)
    return buffer.getvalue()


def overlay_figure(images: Dict[str, np.ndarray], labels: np.ndarray, spacing_zyx: Sequence[float]) -> bytes:
    """Axial, coronal and sagittal slices through the tumor centre: each background image (rows) plain and with the
    label overlay (NCR red, ED green, ET yellow)."""
    plt = _pyplot()
    centre = tumor_centre(labels)
    names = list(images)
    fig, axes = plt.subplots(len(names), 3, figsize=(10, 3.4 * len(names)), squeeze=False)
    colours = np.zeros((4, 4))
    for label, colour in LABEL_COLOURS.items():
        colours[label] = (*colour, 0.45)
    for row, name in enumerate(names):
        low, high = _window(images[name])
        for col, view in enumerate(VIEWS):
            ax = axes[row, col]
            ax.imshow(_slice(images[name], view, centre), cmap="gray", vmin=low, vmax=high,
                      aspect=_aspect(view, spacing_zyx), interpolation="nearest")
            ax.imshow(colours[_slice(labels, view, centre)], aspect=_aspect(view, spacing_zyx),
                      interpolation="nearest")
            ax.set_title(f"{name.upper()} {view}", fontsize=9)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in LABEL_COLOURS.values()]
    fig.legend(handles, list(LABEL_NAMES.values()), loc="lower center", ncol=3, frameon=False)
    return _png(fig)


def map_figure(background: np.ndarray, maps: Dict[str, np.ndarray], labels: np.ndarray,
               spacing_zyx: Sequence[float], cmap: str = "hot", vmax: float = 1.0) -> bytes:
    """One row per map (probability or uncertainty), three views, as a colour overlay on ``background``."""
    plt = _pyplot()
    centre = tumor_centre(labels)
    low, high = _window(background)
    fig, axes = plt.subplots(len(maps), 3, figsize=(10, 3.4 * len(maps)), squeeze=False)
    for row, (name, volume) in enumerate(maps.items()):
        for col, view in enumerate(VIEWS):
            ax = axes[row, col]
            aspect = _aspect(view, spacing_zyx)
            ax.imshow(_slice(background, view, centre), cmap="gray", vmin=low, vmax=high, aspect=aspect)
            shown = np.ma.masked_less(_slice(volume, view, centre), 0.02 * vmax)
            image = ax.imshow(shown, cmap=cmap, vmin=0, vmax=vmax, alpha=0.7, aspect=aspect)
            ax.set_title(f"{name} {view}", fontsize=9)
            ax.axis("off")
        fig.colorbar(image, ax=list(axes[row]), fraction=0.02, pad=0.01)
    return _png(fig)


def probability_bars(entries: List[Tuple[str, float, Optional[float]]], title: str) -> bytes:
    """Horizontal bars of probabilities in [0, 1], each with an optional +- uncertainty whisker."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(entries)))
    names = [e[0] for e in entries]
    values = [e[1] for e in entries]
    errors = [e[2] or 0.0 for e in entries]
    ax.barh(names, values, xerr=errors, color="#4477aa", capsize=3)
    ax.axvline(0.5, color="grey", linestyle=":")
    ax.set_xlim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.invert_yaxis()
    return _png(fig)
