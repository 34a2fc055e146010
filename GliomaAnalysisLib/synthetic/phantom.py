"""Synthetic glioma phantoms: skull-stripped multimodal brains with a labelled tumor and simulated markers.

For tests and the demo only; never real data. A phantom has white and grey matter (a folded cortical ribbon,
deep grey nuclei), CSF (ventricles, sulci, interhemispheric fissure), a random smooth deformation, a tumor made
of a necrotic / non-enhancing core, an enhancing rim and an edema halo that pushes the anatomy aside (mass
effect), per-modality contrast like real scans, partial-volume blur, a multiplicative bias field and Rician
noise. Markers (grade, IDH, 1p/19q, MGMT) are sampled first from literature-like priors; the tumor's
appearance then depends on them through noisy tendencies, so no marker is perfectly predictable:

* HGG: necrosis and ring enhancement, larger and more edema; LGG: little or no enhancement, no necrosis.
* IDH-mutant: frontal location more often, sharper margins, less enhancement and edema.
* 1p/19q-codeleted: cortical location, heterogeneous texture with dark calcification-like foci.
* MGMT-methylated: slightly less edema (a weak tendency).
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..io.geometry import Geometry
from ..io.labels import from_contiguous
from ..io.modalities import MODALITIES

BRATS_SIZE = (240, 240, 155)
LABELS_CSV_FIELDS = ("case_id", "grade", "idh", "codeletion_1p19q", "mgmt", "source")

# Tissue classes of the intensity model.
_BG, _CSF, _GM, _WM, _DEEP, _NCR, _NET, _ED, _ET = range(9)
# Mean intensity of each tissue per modality (relative units, WM on T1 ~ 1).
_CONTRAST = {
    #         bg   CSF   GM    WM   deepGM necrosis NET  edema  ET
    "t1":    (0.0, 0.25, 0.62, 0.90, 0.72, 0.30, 0.45, 0.55, 0.58),
    "t1ce":  (0.0, 0.28, 0.65, 0.92, 0.75, 0.25, 0.48, 0.58, 1.45),
    "t2":    (0.0, 1.00, 0.58, 0.38, 0.50, 0.92, 0.85, 0.78, 0.68),
    "flair": (0.0, 0.08, 0.62, 0.45, 0.55, 0.50, 0.88, 0.98, 0.80),
}


@dataclass
class Markers:
    """Simulated molecular / histological status of a phantom."""

    grade: str  # "HGG" | "LGG"
    idh: str  # "mutant" | "wildtype"
    codeletion_1p19q: str  # "codeleted" | "intact"
    mgmt: str  # "methylated" | "unmethylated"


@dataclass
class Phantom:
    """One phantom: images (z, y, x) int16 per modality, labels (z, y, x) uint8 in BraTS 2021 convention."""

    case_id: str
    images: Dict[str, np.ndarray]
    labels: np.ndarray
    geometry: Geometry
    markers: Markers

    def image(self, modality: str) -> sitk.Image:
        return self.geometry.image_from_array(self.images[modality])

    def label_image(self) -> sitk.Image:
        return self.geometry.image_from_array(self.labels)


def sample_markers(rng: np.random.Generator) -> Markers:
    """Draw markers from priors loosely following adult diffuse glioma epidemiology."""
    idh_mutant = rng.random() < 0.35
    codeleted = idh_mutant and rng.random() < 0.45
    p_hgg = 0.9 if not idh_mutant else (0.35 if codeleted else 0.45)
    hgg = rng.random() < p_hgg
    methylated = rng.random() < (0.85 if idh_mutant else 0.45)
    return Markers("HGG" if hgg else "LGG", "mutant" if idh_mutant else "wildtype",
                   "codeleted" if codeleted else "intact", "methylated" if methylated else "unmethylated")


def _wave_field(rng: np.random.Generator, coords: Sequence[np.ndarray], wavelength_mm: float, terms: int,
                ) -> np.ndarray:
    """Smooth random field in about [-1, 1]: a sum of ``terms`` random plane waves of about that wavelength."""
    total = 0.0
    for _ in range(terms):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = float(2 * np.pi / (wavelength_mm * rng.uniform(0.7, 1.3)))
        phase = float(rng.uniform(0, 2 * np.pi))
        a, b, c = (float(v * k) for v in direction)
        total = total + np.sin(a * coords[0] + b * coords[1] + c * coords[2] + phase)
    return (total * float(1.0 / np.sqrt(terms / 2.0))).astype(np.float32, copy=False)


def _axis_mm(index_range: Tuple[int, int], n: int, spacing: float) -> np.ndarray:
    """Physical coordinate (mm, centred on the volume) of voxel indices in [lo, hi), float32."""
    return ((np.arange(*index_range) - (n - 1) / 2) * spacing).astype(np.float32)


def _index_range(n: int, spacing: float, half_mm: float) -> Tuple[int, int]:
    """Voxel index range [lo, hi) covering +-half_mm around the volume centre, clipped to [0, n)."""
    centre = (n - 1) / 2
    half = half_mm / spacing
    return max(0, int(np.floor(centre - half))), min(n, int(np.ceil(centre + half)) + 1)


def _ellipsoid(coords: Sequence[np.ndarray], centre: Sequence[float], semi: Sequence[float]) -> np.ndarray:
    return sum(((c - m) / s) ** 2 for c, m, s in zip(coords, centre, semi)) < 1.0


def make_phantom(seed: int, size: Tuple[int, int, int] = BRATS_SIZE, spacing: Tuple[float, float, float] = (1, 1, 1),
                 case_id: Optional[str] = None, markers: Optional[Markers] = None) -> Phantom:
    """Generate one phantom deterministically from ``seed``.

    size: (x, y, z) voxels; spacing: mm. The brain is scaled to the field of view, so small sizes give small,
    fast phantoms with the same structure. Geometry: LPS, identity direction, BraTS-like origin.
    """
    rng = np.random.default_rng(seed)
    markers = markers or sample_markers(rng)
    hgg, idh_mut = markers.grade == "HGG", markers.idh == "mutant"
    codeleted, methylated = markers.codeletion_1p19q == "codeleted", markers.mgmt == "methylated"

    nx, ny, nz = size
    sx, sy, sz = spacing
    fov = np.array([nx * sx, ny * sy, nz * sz])
    scale = min(fov[0] / 240.0, fov[1] / 240.0, fov[2] / 155.0)  # 1.0 at the BraTS field of view
    semi = np.array([68.0, 84.0, 60.0]) * scale * rng.uniform(0.93, 1.07, size=3)

    # Work only inside the box that can hold brain (about a third of the volume): 3x less to compute.
    half = semi * 1.1 + 12 * scale
    box = [_index_range(n, s, h) for n, s, h in zip((nx, ny, nz), spacing, half)]
    x = _axis_mm(box[0], nx, sx)[None, None, :]
    y = _axis_mm(box[1], ny, sy)[None, :, None]
    z = _axis_mm(box[2], nz, sz)[:, None, None]
    shape = (box[2][1] - box[2][0], box[1][1] - box[1][0], box[0][1] - box[0][0])
    x, y, z = (np.broadcast_to(a, shape) for a in (x, y, z))

    # Tumor geometry (in undeformed physical coordinates, mm).
    radius = scale * (rng.uniform(13, 24) if hgg else rng.uniform(10, 20))
    side = rng.choice([-1.0, 1.0])
    frontal = rng.random() < (0.65 if idh_mut else 0.3)
    depth = rng.uniform(0.62, 0.75) if codeleted else rng.uniform(0.3, 0.6)
    lobe_y = rng.uniform(-0.75, -0.4) if frontal else rng.uniform(-0.2, 0.6)
    direction = np.array([side * rng.uniform(0.55, 0.9), lobe_y, rng.uniform(-0.1, 0.6)])
    direction /= np.linalg.norm(direction)
    centre = direction * depth * semi
    centre[0] = side * max(abs(centre[0]), radius * 0.6 + 6 * scale)  # keep it off the midline

    # Mass effect: anatomy is read at q = p - push(p), pushing tissue away from the tumor centre.
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    dist = np.sqrt(dx * dx + dy * dy + dz * dz) + np.float32(1e-3)
    push = (0.45 * radius * np.exp(-(dist / (1.8 * radius)) ** 2) * np.minimum(1.0, dist / radius)) / dist
    warp = 4.0 * scale
    qx = x - push * dx + warp * _wave_field(rng, (x, y, z), 120 * scale, 3)
    qy = y - push * dy + warp * _wave_field(rng, (x, y, z), 120 * scale, 3)
    qz = z - push * dz + warp * _wave_field(rng, (x, y, z), 120 * scale, 3)
    del dx, dy, dz, dist, push

    tissue = _anatomy(rng, (qx, qy, qz), semi, scale)
    del qx, qy, qz
    brain = tissue != _BG
    labels = _tumor(rng, (x, y, z), centre, radius, tissue, hgg, idh_mut, codeleted, methylated, scale)
    images_box = _render(rng, tissue, labels, brain, (x, y, z), codeleted, spacing, scale)

    where = (slice(*box[2]), slice(*box[1]), slice(*box[0]))
    full_labels = np.zeros((nz, ny, nx), dtype=np.uint8)
    full_labels[where] = labels
    labels = full_labels
    images = {}
    for modality, array in images_box.items():
        images[modality] = np.zeros((nz, ny, nx), dtype=np.int16)
        images[modality][where] = array
    file_labels = from_contiguous(labels, "brats2021")
    origin = (0.0, -(ny - 1) * sy, 0.0)
    geometry = Geometry((nx, ny, nz), tuple(float(s) for s in spacing), origin, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return Phantom(case_id or f"Phantom_{seed:05d}", images, file_labels, geometry, markers)


def _anatomy(rng: np.random.Generator, q: Sequence[np.ndarray], semi: np.ndarray, scale: float) -> np.ndarray:
    """Tissue class per voxel (bg, CSF, GM, WM, deep GM) from warped coordinates q (mm)."""
    qx, qy, qz = q
    # Flatten the inferior surface a little and give the frontal lobe a narrower shape.
    shape_factor = 1.0 + 0.12 * np.clip(-qy / semi[1], 0, 1) * (np.abs(qx) / semi[0])
    r = np.sqrt((qx / semi[0] * shape_factor) ** 2 + (qy / semi[1]) ** 2 + (qz / semi[2]) ** 2)
    r = r * (1.0 + 0.025 * _wave_field(rng, q, 45 * scale, 4))
    cerebellum = _ellipsoid(q, (0, 0.5 * semi[1], -0.62 * semi[2]), 0.5 * semi * np.array([1.0, 0.55, 0.55]))
    brain = (r < 1.0) & (qz > -0.85 * semi[2]) | cerebellum

    tissue = np.full(r.shape, _BG, dtype=np.uint8)
    tissue[brain] = _WM
    folds = _wave_field(rng, q, 16 * scale, 6)
    ribbon = 0.07 + 0.12 * np.clip(folds, 0, None) / 2.0
    tissue[brain & (r > 1.0 - ribbon)] = _GM
    tissue[brain & (r > 0.8) & (np.abs(folds) < 0.18)] = _CSF  # sulci
    fissure = (np.abs(qx) < 1.5 * scale) & (qz > -0.25 * semi[2]) & (r > 0.3)
    medial_gm = (np.abs(qx) < 4.0 * scale) & (qz > -0.25 * semi[2]) & (r > 0.35)
    tissue[brain & medial_gm] = _GM
    tissue[brain & fissure] = _CSF
    cerebellar_folds = cerebellum & (np.abs(_wave_field(rng, q, 7 * scale, 3)) < 0.5)
    tissue[cerebellar_folds] = _GM

    for sign in (-1.0, 1.0):  # deep grey nuclei (caudate / thalamus)
        tissue[_ellipsoid(q, (sign * 13 * scale, 4 * scale, 2 * scale), np.array([7, 13, 9]) * scale)] = _DEEP
    bend = 0.012 / scale * qy ** 2
    for sign in (-1.0, 1.0):  # lateral ventricles, bent like a banana
        ventricle = _ellipsoid((qx, qy, qz - bend), (sign * 9 * scale, -2 * scale, 14 * scale),
                               np.array([6.5, 30, 8]) * scale * rng.uniform(0.8, 1.25))
        tissue[ventricle & brain] = _CSF
    tissue[_ellipsoid(q, (0, 4 * scale, 2 * scale), np.array([1.6, 12, 8]) * scale) & brain] = _CSF
    return tissue


def _tumor(rng: np.random.Generator, p: Sequence[np.ndarray], centre: np.ndarray, radius: float,
           tissue: np.ndarray, hgg: bool, idh_mut: bool, codeleted: bool, methylated: bool,
           scale: float) -> np.ndarray:
    """Contiguous tumor labels (0 bg, 1 NCR/NET, 2 ED, 3 ET) from physical coordinates p (mm).

    Fields are evaluated only in the box around the tumor that the edema can reach.
    """
    irregular = 0.08 if idh_mut else 0.2
    extent = (rng.uniform(0.35, 1.0) if hgg else rng.uniform(0.15, 0.5)) * (0.7 if idh_mut else 1.0)
    extent *= 0.85 if methylated else 1.0
    reach = radius * (1 + 2.5 * irregular) * (1 + extent * 2.2) + 2.0
    axes = (p[0][0, 0, :], p[1][0, :, 0], p[2][:, 0, 0])
    ranges = [np.flatnonzero(np.abs(a - c) <= reach) for a, c in zip(axes, centre)]
    labels = np.zeros(tissue.shape, dtype=np.uint8)
    if any(r.size == 0 for r in ranges):
        return labels
    where = tuple(slice(int(r[0]), int(r[-1]) + 1) for r in reversed(ranges))  # (z, y, x)
    p = tuple(a[where] for a in p)
    tissue = tissue[where]
    box_labels = labels[where]

    x, y, z = p
    dist = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    outline = 1.0 + irregular * _wave_field(rng, p, 2.2 * radius, 5)
    rho = dist / (radius * outline)  # < 1 inside the tumor core
    brain = tissue != _BG
    edema_shape = 1.0 + extent * (1.0 + 0.45 * _wave_field(rng, p, 1.5 * radius, 5))
    edema = brain & (rho < edema_shape) & (tissue != _CSF)
    edema &= (tissue != _GM) | (rho < 1.0 + 0.4 * extent)  # edema spreads along white matter
    box_labels[edema] = 2

    core = brain & (rho < 1.0)
    box_labels[core] = 1
    ring = rng.random() < (0.88 if hgg else 0.12) * (0.7 if idh_mut else 1.0)
    if ring:
        necrosis_fraction = rng.uniform(0.45, 0.75) if hgg else rng.uniform(0.0, 0.4)
        patchy = _wave_field(rng, p, 0.8 * radius, 4) > -1.2 + (0.4 if idh_mut else 0.0)
        box_labels[core & (rho >= necrosis_fraction) & patchy] = 3
    elif rng.random() < (0.5 if hgg else 0.25):  # a small enhancing focus instead of a ring
        offset = rng.normal(size=3)
        offset *= 0.5 * radius / np.linalg.norm(offset)
        focus = np.sqrt(sum((c - (m + o)) ** 2 for c, m, o in zip(p, centre, offset)))
        box_labels[core & (focus < rng.uniform(0.2, 0.35) * radius)] = 3
    return labels


def _render(rng: np.random.Generator, tissue: np.ndarray, labels: np.ndarray, brain: np.ndarray,
            p: Sequence[np.ndarray], codeleted: bool, spacing: Sequence[float], scale: float) -> Dict[str, np.ndarray]:
    """Per-modality int16 images (z, y, x) from tissue classes and tumor labels."""
    classes = tissue.copy()
    necrotic = labels == 1
    ring_present = bool(np.any(labels == 3))
    classes[necrotic] = _NCR if ring_present else _NET
    classes[labels == 2] = _ED
    classes[labels == 3] = _ET
    tumor = labels > 0

    texture = _wave_field(rng, p, 9 * scale, 4)
    tumor_texture = _wave_field(rng, p, 5 * scale, 5) * (0.12 if codeleted else 0.05)
    calcification = tumor & (labels != 2) & (_wave_field(rng, p, 4 * scale, 4) > (1.6 if codeleted else 9.0))
    sigma_vox = [0.6 / s for s in reversed(spacing)]
    images = {}
    for modality in MODALITIES:
        table = np.asarray(_CONTRAST[modality], dtype=np.float32) * rng.uniform(0.95, 1.05, size=9).astype(np.float32)
        table[0] = 0.0
        image = table[classes]
        image *= 1.0 + 0.03 * texture
        image[tumor] *= 1.0 + tumor_texture[tumor]
        image[calcification] *= 0.35
        image = ndimage.gaussian_filter(image, sigma_vox, truncate=2.0)
        bias = _bias_field(rng, p, scale)
        image *= bias
        noise = 0.025 * rng.uniform(0.7, 1.3)
        real = image + np.float32(noise) * rng.standard_normal(image.shape, dtype=np.float32)
        imag = np.float32(noise) * rng.standard_normal(image.shape, dtype=np.float32)
        magnitude = np.sqrt(real * real + imag * imag)
        magnitude[~brain] = 0.0
        images[modality] = np.round(magnitude * rng.uniform(400, 900)).astype(np.int16)
    return images


def _bias_field(rng: np.random.Generator, p: Sequence[np.ndarray], scale: float) -> np.ndarray:
    """Smooth multiplicative field around 1 (about +-10 %)."""
    x, y, z = p
    coeffs = rng.normal(0, 0.06, size=3) / (80 * scale)
    return np.exp(coeffs[0] * x + coeffs[1] * y + coeffs[2] * z
                  + 0.04 * _wave_field(rng, p, 200 * scale, 2)).astype(np.float32)


def write_phantom(phantom: Phantom, folder: "str | os.PathLike[str]") -> Path:
    """Write one phantom in BraTS 2021 layout: ``<folder>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``."""
    case_dir = Path(folder) / phantom.case_id
    case_dir.mkdir(parents=True, exist_ok=True)
    for modality in MODALITIES:
        sitk.WriteImage(phantom.image(modality), str(case_dir / f"{phantom.case_id}_{modality}.nii.gz"), True)
    sitk.WriteImage(phantom.label_image(), str(case_dir / f"{phantom.case_id}_seg.nii.gz"), True)
    return case_dir


def iter_phantoms(n: int, seed: int, size: Tuple[int, int, int] = BRATS_SIZE,
                  spacing: Tuple[float, float, float] = (1, 1, 1)) -> Iterator[Phantom]:
    """``n`` phantoms; the i-th is seeded by (seed, i), so a cohort is deterministic and its cases independent."""
    for index in range(n):
        case_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        yield make_phantom(case_seed, size, spacing, case_id=f"Phantom_{seed}_{index:04d}")


def write_cohort(out: "str | os.PathLike[str]", n: int, seed: int, size: Tuple[int, int, int] = BRATS_SIZE,
                 spacing: Tuple[float, float, float] = (1, 1, 1),
                 progress: Optional[Callable[[int, int, str], None]] = None) -> Path:
    """Write ``n`` phantoms and ``labels.csv`` into ``out`` atomically (built in a temporary folder, then moved).

    Existing case folders in ``out`` with other names are left alone; a same-named case is replaced.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".phantoms-", dir=out))
    try:
        rows = []
        for index, phantom in enumerate(iter_phantoms(n, seed, size, spacing)):
            write_phantom(phantom, staging)
            m = phantom.markers
            rows.append((phantom.case_id, m.grade, m.idh, m.codeletion_1p19q, m.mgmt, "synthetic-phantom"))
            if progress:
                progress(index + 1, n, phantom.case_id)
        with open(staging / "labels.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(LABELS_CSV_FIELDS)
            writer.writerows(rows)
        for row in rows:
            target = out / row[0]
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging / row[0], target)
        os.replace(staging / "labels.csv", out / "labels.csv")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
