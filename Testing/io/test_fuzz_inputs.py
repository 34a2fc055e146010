"""Fuzzing (hypothesis) over image headers and contents: dimension, size, spacing (zero, negative, tiny), direction,
origin, dtype, NaN, constant regions, tiny volumes, file format. Every input either loads / analyses or ends with
a one-line error; never a traceback (any other exception fails the test), never a file written, inputs untouched."""
import hashlib

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, event, given, settings, strategies as st

from GliomaAnalysisLib import GliomaAnalysisError, load_case
from GliomaAnalysisLib.cli import main

DTYPES = (np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64)
FORMATS = (".nii.gz", ".nrrd", ".mha")


@st.composite
def volumes(draw, dimensions=(2, 3, 3, 3, 4), sizes=(1, 12)):
    """(array, spacing, origin, direction, header spacing override or None, format)."""
    dimension = draw(st.sampled_from(dimensions))
    shape = tuple(draw(st.integers(*sizes)) for _ in range(dimension))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    content = draw(st.sampled_from(["noise", "noise", "labels", "constant", "zeros", "nan", "half-constant", "huge"]))
    if content == "labels":
        array = rng.integers(0, 5, shape)
    elif content in ("constant", "zeros"):
        array = np.full(shape, 0 if content == "zeros" else 7)
    elif content == "huge":
        array = rng.random(shape) * (np.finfo(np.float32).max / 2 if np.issubdtype(dtype, np.floating) else 200)
    else:
        array = rng.random(shape) * 500
        if content == "half-constant":
            array[: max(1, shape[0] // 2)] = 3
    array = array.astype(dtype)
    if content == "nan" and np.issubdtype(dtype, np.floating):
        array.flat[rng.integers(0, array.size)] = np.nan
    spatial = min(dimension, 3)
    spacing = tuple(draw(st.floats(0.01, 10.0)) for _ in range(spatial))
    origin = tuple(draw(st.floats(-1e4, 1e4)) for _ in range(spatial))
    angles = draw(st.tuples(*[st.floats(-np.pi, np.pi)] * 3))
    flips = draw(st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3))
    header_spacing = draw(st.sampled_from([None, None, None, "0", "-2.5", "1e-9"]))
    file_format = ".mha" if header_spacing else draw(st.sampled_from(FORMATS))
    return array, spacing, origin, _direction(angles, flips)[:spatial, :spatial], header_spacing, file_format


def _direction(angles, flips) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx @ np.diag(flips)


def _write(volume, path_stem) -> "str":
    array, spacing, origin, direction, header_spacing, file_format = volume
    image = sitk.GetImageFromArray(array)  # numpy (.., z, y, x) -> ITK (x, y, z, ..)
    dimension = image.GetDimension()
    full_direction = np.eye(dimension)
    full_direction[: len(spacing), : len(spacing)] = direction
    image.SetSpacing(spacing + (1.0,) * (dimension - len(spacing)))
    image.SetOrigin(origin + (0.0,) * (dimension - len(origin)))
    image.SetDirection(tuple(full_direction.ravel()))
    path = str(path_stem) + file_format
    sitk.WriteImage(image, path)
    if header_spacing:
        text = open(path, "rb").read()
        start = text.index(b"ElementSpacing = ")
        end = text.index(b"\n", start)
        values = text[start + 17:end].split()
        values[0] = header_spacing.encode()
        open(path, "wb").write(text[:start + 17] + b" ".join(values) + text[end:])
    return path


def _digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(exc: GliomaAnalysisError) -> None:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=volumes(), second=st.one_of(st.none(), volumes()))
def test_load_case_loads_or_refuses_in_one_line(tmp_path_factory, first, second):
    folder = tmp_path_factory.mktemp("case")
    _write(first, folder / "case_t1ce")
    if second is not None:
        _write(second, folder / "case_flair")
    before = _digest(folder)
    try:
        case = load_case(folder)
    except GliomaAnalysisError as exc:
        event("refused: " + str(exc).split(": ")[-1][:40])
        _one_line(exc)
    else:
        event("loaded")
        assert case.present and all(np.isfinite(case.array(m)).all() for m in case.present)
        assert all(case.images[m].GetSize() == case.geometry.size for m in case.present)
    assert _digest(folder) == before


@pytest.fixture(scope="module")
def fuzz_model(tmp_path_factory):
    """The smallest network the pipeline accepts, random weights."""
    import torch

    from GliomaAnalysisLib.models.model_store import save_model
    from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("fuzz-model")
    net = GliomaSegNet(NetworkConfig(widths=(4, 8, 16, 32), encoder_blocks=(1, 1, 1, 1), transformer_layers=1,
                                     transformer_heads=2))
    save_model(net, {"version": "test", "preprocessing": {"spacing_mm": [2.0, 2.0, 2.0]}}, folder, "glioma_seg")
    return folder


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(volume=volumes(dimensions=(3, 3, 3, 3, 2, 4), sizes=(2, 24)))
def test_analyze_fast_analyses_or_refuses_in_one_line(tmp_path_factory, fuzz_model, volume, capsys):
    root = tmp_path_factory.mktemp("analyze")
    (root / "in").mkdir()
    _write(volume, root / "in" / "case_t2")
    before = _digest(root / "in")
    capsys.readouterr()
    code = main(["analyze", str(root / "in"), "--out", str(root / "out"), "--fast", "--no-classify",
                 "--model-dir", str(fuzz_model), "--device", "cpu"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("glioma-analysis:")]
    event("analysed" if code == 0 else "refused: " + errors[0].split(": ")[-1][:40] if errors else "no message")
    if code == 0:
        assert errors == [] and (root / "out" / "report.json").is_file()
        for name in ("prob_ncr", "prob_ed", "prob_et", "uncertainty"):  # no NaN from overflowing intensities
            values = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "out" / f"{name}.nii.gz")))
            assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1, name
    else:
        assert code == 2 and len(errors) == 1 and errors[0].startswith("glioma-analysis: error: "), err
        assert sorted(p.name for p in root.iterdir()) == ["in"]  # no output folder, no staging folder
    assert "Traceback" not in err and _digest(root / "in") == before
