"""Shared fixtures: small synthetic phantoms written to disk, and the real-data folder when present."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from GliomaAnalysisLib.synthetic.phantom import make_phantom, write_phantom

# The user cache (exported ONNX graphs, downloaded models) of this test session, for every test and the processes
# they start: the suite never writes into the home folder nor reuses what an earlier version left there.
os.environ["GLIOMA_ANALYSIS_CACHE"] = tempfile.mkdtemp(prefix="glioma-analysis-test-cache-")
atexit.register(shutil.rmtree, os.environ["GLIOMA_ANALYSIS_CACHE"], ignore_errors=True)

SMALL_SIZE = (96, 96, 62)  # the BraTS field of view at 2.5 mm: same anatomy, ~0.3 s per phantom
SMALL_SPACING = (2.5, 2.5, 2.5)
REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats18"


@pytest.fixture(scope="session")
def small_phantom():
    """An HGG-like phantom at 2.5 mm (arrays in memory)."""
    return make_phantom(7, SMALL_SIZE, SMALL_SPACING, case_id="Small_0007")


@pytest.fixture
def onnxruntime_engine(monkeypatch):
    """The segmentation network on ONNX Runtime even where OpenVINO is installed (tests of its sessions)."""
    monkeypatch.setenv("GLIOMA_ANALYSIS_ENGINE", "onnxruntime")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A small random-weight model stored like a shipped one: exercises the pipeline, not accuracy."""
    import torch

    from GliomaAnalysisLib.models.model_store import save_model
    from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    net = GliomaSegNet(NetworkConfig(widths=(4, 8, 16, 32), encoder_blocks=(1, 1, 1, 1), transformer_layers=1,
                                     transformer_heads=2))
    save_model(net, {"version": "test", "preprocessing": {"spacing_mm": [2.0, 2.0, 2.0]}}, folder, "glioma_seg")
    return folder


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory, small_phantom) -> Path:
    """The small phantom written in BraTS 2021 layout; returns its case folder. Treat as read-only."""
    root = tmp_path_factory.mktemp("phantom")
    return write_phantom(small_phantom, root)


def write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def random_image(size=(20, 22, 18), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                 direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), seed=0, pixel=np.int16) -> sitk.Image:
    """A smooth positive test image with a zero border (a 'brain' in the middle)."""
    rng = np.random.default_rng(seed)
    array = (rng.random(size[::-1]) * 500 + 100).astype(pixel)
    array[:2], array[-2:], array[:, :2], array[:, -2:], array[:, :, :2], array[:, :, -2:] = 0, 0, 0, 0, 0, 0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def small_phantom_samples(n: int, seed: int):
    """Phantoms at 2.5 mm as in-memory classification samples (z-scored inside the brain, ground-truth labels)."""
    from GliomaAnalysisLib.io.labels import to_contiguous
    from GliomaAnalysisLib.io.modalities import MODALITIES
    from GliomaAnalysisLib.synthetic.phantom import iter_phantoms
    from training.common.classification_data import ClassificationSample

    samples = []
    for phantom in iter_phantoms(n, seed, size=(96, 96, 62), spacing=(2.5, 2.5, 2.5)):
        image = np.stack([phantom.images[m].astype(np.float32) for m in MODALITIES])
        brain = image.any(axis=0)
        for channel in image:
            values = channel[brain]
            channel[brain] = (values - values.mean()) / values.std()
        m = phantom.markers
        targets = {"grade": int(m.grade == "HGG"), "idh": int(m.idh == "mutant"),
                   "codeletion_1p19q": int(m.codeletion_1p19q == "codeleted"), "mgmt": int(m.mgmt == "methylated")}
        samples.append(ClassificationSample(phantom.case_id, "phantom", image, to_contiguous(phantom.labels), targets))
    return samples


# Grids shared by the preprocessing and analysis geometry tests.
def _rotation(ax, ay, az):
    cx, cy, cz, sx, sy, sz = np.cos(ax), np.cos(ay), np.cos(az), np.sin(ax), np.sin(ay), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _restamp(phantom, spacing, direction, origin):
    """The phantom's voxels on a new (oblique / anisotropic / flipped) grid: a different physical layout."""
    images = {}
    for m in ("t1", "t1ce", "t2", "flair"):
        image = phantom.image(m)
        image.SetSpacing(spacing)
        image.SetDirection(tuple(np.asarray(direction).ravel()))
        image.SetOrigin(origin)
        images[m] = image
    seg = phantom.label_image()
    seg.CopyInformation(images["t1"])
    return images, seg


GRIDS = {
    "oblique": ((2.5, 2.5, 2.5), _rotation(0.3, -0.2, 0.5), (10.0, -20.0, 5.0)),
    "anisotropic_flipped": ((2.0, 2.4, 3.3), np.diag([-1.0, 1.0, -1.0]), (100.0, 3.0, 90.0)),
    "oblique_anisotropic_permuted": ((1.7, 3.1, 2.6), _rotation(0.1, 0.2, -0.15) @ np.array(
        [[0, 1, 0], [0, 0, 1], [1, 0, 0]]), (-5.0, 7.0, 2.0)),
}
