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


def comparison_figure(result: Dict) -> bytes:
    """Bar chart of the subregion volumes at A and B, with the bidimensional products in the title."""
    from .figures import _png, _pyplot

    plt = _pyplot()
    regions = list(result["volumes"])
    a = [result["volumes"][r]["a_ml"] for r in regions]
    b = [result["volumes"][r]["b_ml"] for r in regions]
    x = np.arange(len(regions))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(x - 0.2, a, 0.4, label="A", color="#88aacc")
    ax.bar(x + 0.2, b, 0.4, label="B", color="#cc6644")
    ax.set_xticks(x, [r.upper() for r in regions])
    ax.set_ylabel("volume (mL)")
    bi = result["et_bidimensional"]
    ax.set_title(f"ET bidimensional product {bi['a']['product_mm2']:.0f} -> {bi['b']['product_mm2']:.0f} mm^2",
                 fontsize=10)
    ax.legend()
    return _png(fig)
