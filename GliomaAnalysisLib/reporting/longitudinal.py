"""Longitudinal comparison of two analyses: volume change per subregion and the RANO-style bidimensional product
of the enhancing tumor (longest axial diameter x its longest perpendicular, on the axial slice where the enhancing
tumor is largest)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from scipy.spatial import ConvexHull, QhullError

from ..errors import GliomaAnalysisError
from ..io.image_io import read_image
from ..io.labels import guess_convention, to_contiguous
from .png import draw_text, encode_png, text_width


@dataclass
class Bidimensional:
    """RANO-style measure on one axial slice (mm, mm^2); slice index along the superior axis of the LPS grid."""

    longest_mm: float
    perpendicular_mm: float
    product_mm2: float
    slice_index: Optional[int]


def _diameters(points_mm: np.ndarray, pixel_mm: float) -> Tuple[float, float]:
    """Longest diameter and the extent perpendicular to it of a 2D point set (pixel centres, mm).

    One pixel size is added to centre-to-centre distances so a disc of diameter D measures D.
    """
    if len(points_mm) == 1:
        return pixel_mm, pixel_mm
    try:
        hull = points_mm[ConvexHull(points_mm).vertices]
    except QhullError:  # collinear points
        hull = points_mm
    deltas = hull[:, None, :] - hull[None, :, :]
    distances = np.sqrt((deltas ** 2).sum(-1))
    i, j = np.unravel_index(np.argmax(distances), distances.shape)
    axis = (hull[j] - hull[i]) / max(distances[i, j], 1e-9)
    normal = np.array([-axis[1], axis[0]])
    width = float(np.ptp(points_mm @ normal))
    return float(distances[i, j]) + pixel_mm, width + pixel_mm


def bidimensional_product(labels: sitk.Image, enhancing_label: int = 3) -> Bidimensional:
    """Measure the enhancing tumor of a contiguous label image (any orientation; axial = LPS superior axis)."""
    oriented = sitk.DICOMOrient(labels, "LPS")
    array = sitk.GetArrayViewFromImage(oriented) == enhancing_label  # (z: inferior->superior, y, x)
    if not array.any():
        return Bidimensional(0.0, 0.0, 0.0, None)
    areas = array.sum(axis=(1, 2))
    z = int(np.argmax(areas))
    sx, sy = oriented.GetSpacing()[:2]
    ys, xs = np.nonzero(array[z])
    points = np.stack([xs * sx, ys * sy], axis=1).astype(float)
    longest, perpendicular = (round(d, 2) for d in _diameters(points, float(np.sqrt(sx * sy))))
    return Bidimensional(longest, perpendicular, round(longest * perpendicular, 1), z)


def _load_output(folder: Path) -> Tuple[Dict, sitk.Image]:
    report_path, seg_path = folder / "report.json", folder / "segmentation.nii.gz"
    if not report_path.is_file():
        raise GliomaAnalysisError(f"{folder}: not an analysis output folder (no report.json)")
    try:
        report = json.loads(report_path.read_text())
    except ValueError as exc:
        raise GliomaAnalysisError(f"{report_path}: unreadable report ({exc})") from None
    image = read_image(seg_path)
    array = sitk.GetArrayFromImage(image)
    convention = report.get("label_convention") or guess_convention(array)
    labels = sitk.GetImageFromArray(to_contiguous(array, convention))
    labels.CopyInformation(image)
    return report, labels


def _change(before: float, after: float) -> Optional[float]:
    return None if before == 0 else round(100.0 * (after - before) / before, 1)


def compare(folder_a: Path, folder_b: Path) -> Dict:
    """Volume change (mL, %) per subregion and the bidimensional ET product change between two output folders."""
    report_a, labels_a = _load_output(Path(folder_a))
    report_b, labels_b = _load_output(Path(folder_b))
    volumes = {}
    for region in ("ncr", "ed", "et", "tc", "wt"):
        a, b = report_a["volumes_ml"][region], report_b["volumes_ml"][region]
        volumes[region] = {"a_ml": a, "b_ml": b, "change_ml": round(b - a, 2), "change_percent": _change(a, b)}
    bi_a, bi_b = bidimensional_product(labels_a), bidimensional_product(labels_b)
    return {
        "a": {"folder": str(folder_a), "case_id": report_a.get("case_id")},
        "b": {"folder": str(folder_b), "case_id": report_b.get("case_id")},
        "volumes": volumes,
        "et_bidimensional": {"a": asdict(bi_a), "b": asdict(bi_b),
                             "change_percent": _change(bi_a.product_mm2, bi_b.product_mm2)},
    }


def comparison_text(result: Dict) -> str:
    lines = [f"{'region':<8}{'A (mL)':>10}{'B (mL)':>10}{'change (mL)':>13}{'change (%)':>12}"]
    for region, v in result["volumes"].items():
        pct = "n/a" if v["change_percent"] is None else f"{v['change_percent']:+.1f}"
        lines.append(f"{region.upper():<8}{v['a_ml']:>10.2f}{v['b_ml']:>10.2f}{v['change_ml']:>+13.2f}{pct:>12}")
    bi = result["et_bidimensional"]
    pct = "n/a" if bi["change_percent"] is None else f"{bi['change_percent']:+.1f} %"
    for key in ("a", "b"):
        m = bi[key]
        lines.append(f"ET bidimensional {key.upper()}: {m['longest_mm']:.1f} mm x {m['perpendicular_mm']:.1f} mm = "
                     f"{m['product_mm2']:.1f} mm^2")
    lines.append(f"ET bidimensional product change: {pct}")
    return "\n".join(lines)


def _nice_step(top: float, ticks: int = 4) -> float:
    """A 1, 2 or 5 x 10^k step giving about ``ticks`` ticks up to ``top``."""
    raw = max(top, 1e-9) / ticks
    power = 10.0 ** np.floor(np.log10(raw))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def comparison_figure(result: Dict) -> bytes:
    """PNG bar chart of the subregion volumes (mL) at A (blue) and B (orange), with the ET bidimensional products
    in the title; drawn with numpy and a bitmap font."""
    regions = list(result["volumes"])
    values = np.array([[result["volumes"][r][k] for k in ("a_ml", "b_ml")] for r in regions], float)
    peak = max(float(values.max()), 1.0)
    step = _nice_step(peak)
    top_value = step * int(np.ceil(peak / step - 1e-9))
    width, height, left, top, bottom = 520, 320, 70, 50, 270  # canvas and plot area (pixels)
    canvas = np.full((height, width, 3), 255, np.uint8)
    bi = result["et_bidimensional"]
    draw_text(canvas, f"ET bidimensional product {bi['a']['product_mm2']:.0f} -> {bi['b']['product_mm2']:.0f} mm^2",
              10, left)
    draw_text(canvas, "volume (mL)", 30, 4)
    for tick in np.arange(0, top_value + step / 2, step):
        y = int(round(bottom - (bottom - top) * tick / top_value))
        canvas[y, left:width - 10] = 225  # grid line
        label = f"{tick:g}"
        draw_text(canvas, label, y - 5, left - 6 - text_width(label))
    group = (width - 10 - left) / len(regions)
    colours = {0: (136, 170, 204), 1: (204, 102, 68)}  # A, B
    for index, region in enumerate(regions):
        centre = left + group * (index + 0.5)
        for which, value in enumerate(values[index]):
            x0 = int(round(centre + (which - 1) * group * 0.4))
            y0 = int(round(bottom - (bottom - top) * value / top_value))
            canvas[y0:bottom, x0:x0 + int(group * 0.4)] = colours[which]
        draw_text(canvas, region, bottom + 8, int(centre - text_width(region) / 2))
    canvas[top:bottom + 1, left] = 0
    canvas[bottom, left:width - 10] = 0  # axes
    for which, name in enumerate("AB"):
        x = width - 80 + 36 * which
        canvas[height - 22:height - 12, x:x + 14] = colours[which]
        draw_text(canvas, name, height - 22, x + 18)
    return encode_png(canvas)
