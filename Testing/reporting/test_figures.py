"""Report figures drawn with numpy (no matplotlib): pixels of the label overlay and heat maps, physical proportions and
orientation of the panels, the PNG encoder, the longitudinal bar chart, and an analysis path free of matplotlib."""
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays

from GliomaAnalysisLib.reporting.figures import GAP, LABEL_COLOURS, MAX_PANEL, MIN_PANEL, colour_lut, map_figure, \
    overlay_figure, window
from GliomaAnalysisLib.reporting.longitudinal import comparison_figure
from GliomaAnalysisLib.reporting.png import encode_png

ROOT = Path(__file__).resolve().parents[2]
SHAPE, SPACING = (20, 30, 40), (12.0, 6.0, 6.0)  # (z, y, x) mm: drawn at 1 mm pixels, 12 x 6 x 6 per voxel
BLOB = (slice(13, 16), slice(4, 9), slice(25, 30))  # centre (14, 6, 27): superior, anterior, left of the middle


def _decode(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _volumes():
    z, y, x = np.indices(SHAPE)
    background = (50.0 + 2 * x + y + z).astype(np.float32)  # every voxel positive and different: a grey ramp
    labels = np.zeros(SHAPE, np.uint8)
    labels[BLOB] = 3
    return background, labels


def _grey(panel: np.ndarray) -> np.ndarray:
    return (panel[..., 0] == panel[..., 1]) & (panel[..., 1] == panel[..., 2])


def test_png_encoder_round_trips_through_pillow():
    rgb = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    rgb[5:9] = rgb[4]  # repeated rows: the 'Up' filter's zero differences
    assert np.array_equal(_decode(encode_png(rgb)), rgb)


def _px(index: int, size: int = 6) -> int:
    """Display pixel at the middle of voxel ``index`` drawn ``size`` pixels wide."""
    return size * index + size // 2


def test_overlay_is_in_physical_proportions_oriented_and_yellow_only_on_the_enhancing_blob():
    background, labels = _volumes()
    image = _decode(overlay_figure({"t1ce": background}, labels, SPACING))
    # panels side by side at 1 mm: axial 180 x 240, coronal 240 (20 slices of 12 mm) x 240, sagittal 240 x 180
    assert image.shape == (240, 240 + GAP + 240 + GAP + 180, 3)
    assert (image[:, 240:240 + GAP] == 255).all() and (image[:30, :240] == 255).all()  # gaps and margins white
    axial, coronal, sagittal = image[30:210, :240], image[:, 244:484], image[:, 488:]
    superior = _px(19 - 14, 12)  # coronal and sagittal rows run from the top slice down
    et = np.array(LABEL_COLOURS[3]) * 255
    for panel, row, col in ((axial, _px(6), _px(27)), (coronal, superior, _px(27)), (sagittal, superior, _px(6))):
        pixel = panel[row, col]  # anterior (axial) and superior (coronal, sagittal) at the top
        grey = pixel - 0.45 * et  # what lies under the overlay: equal channels
        assert np.ptp(grey) < 2 and pixel[0] > pixel[2] + 60 and pixel[1] > pixel[2] + 60, pixel
    blob = np.zeros(SHAPE[1:], bool)
    blob[BLOB[1], BLOB[2]] = True
    blob = np.kron(blob, np.ones((6, 6), bool))
    assert not _grey(axial)[blob].any() and _grey(axial)[~blob].all()
    assert _grey(coronal).sum() == coronal.shape[0] * coronal.shape[1] - (3 * 12) * (5 * 6)
    assert not _grey(coronal[48:84, 150:180]).any()  # slices 15..13 from the top: rows 4..6 of 12 pixels


def test_small_and_fine_grids_are_drawn_between_min_and_max_panel_pixels_per_side():
    labels = np.zeros((6, 700, 200), np.uint8)
    labels[3, 350, 100] = 1
    image = _decode(overlay_figure({"flair": np.ones(labels.shape, np.float32)}, labels, (2.0, 0.5, 0.5)))
    scale = MAX_PANEL / 350  # the longest extent, 700 x 0.5 mm, becomes MAX_PANEL pixels
    assert image.shape[:2] == (MAX_PANEL, round(100 * scale) + 2 * GAP + round(100 * scale) + MAX_PANEL)
    small = _decode(overlay_figure({"flair": np.ones((10, 12, 12), np.float32)}, np.zeros((10, 12, 12)),
                                   (2.5, 2.5, 2.5)))
    assert small.shape[:2] == (MIN_PANEL, 3 * MIN_PANEL + 2 * GAP)  # 30 mm cubes enlarged to MIN_PANEL


def test_heat_map_blends_the_colour_map_where_the_value_reaches_two_percent():
    background, labels = _volumes()
    probability = np.zeros(SHAPE, np.float32)
    probability[BLOB] = 0.5
    probability[14, 20, 5] = 0.01  # below 2 % of vmax: not drawn
    image = _decode(map_figure(background, {"P(ET)": probability}, labels, SPACING))
    assert image.shape == (240, 668, 3)
    low, high = np.percentile(background, [0.5, 99.5])
    grey = np.clip((background[14, 6, 27] - low) / (high - low), 0, 1) * 255  # axial slice 14, row 6, column 27
    expected = 0.3 * grey + 0.7 * colour_lut("hot")[128]
    pixel = image[30 + _px(6), _px(27)]
    assert np.abs(pixel - expected).max() <= 1 and pixel[0] > pixel[1] > pixel[2]  # orange
    assert _grey(image[30 + _px(20), _px(5)]) and _grey(image[30 + _px(6), _px(20)])  # 0.01 and 0: grey only


def test_colour_maps_run_from_dark_to_bright():
    hot, viridis = colour_lut("hot"), colour_lut("viridis")
    assert hot.shape == viridis.shape == (256, 3)
    assert hot[0].max() < 15 and (hot[255] == 255).all() and hot[128, 0] == 255 and hot[128, 2] == 0
    assert viridis[0, 2] > viridis[0, 1] and viridis[255, 0] > 240 and viridis[255, 2] < 50
    assert (np.diff(hot.sum(axis=1)) >= 0).all() and (np.diff(viridis.sum(axis=1)) > 0).all()


def test_comparison_chart_bars_are_proportional_to_the_volumes():
    volumes = {"ncr": (2.0, 3.0), "ed": (10.0, 5.0), "et": (4.0, 0.0), "tc": (6.0, 3.0), "wt": (16.0, 8.0)}
    result = {"volumes": {k: {"a_ml": a, "b_ml": b} for k, (a, b) in volumes.items()},
              "et_bidimensional": {"a": {"product_mm2": 800.0}, "b": {"product_mm2": 312.0}}}
    image = _decode(comparison_figure(result))
    heights = []
    for colour in ((136, 170, 204), (204, 102, 68)):  # A, B
        mask = (image == colour).all(axis=2)
        mask[-30:] = False  # the legend's swatches
        columns = mask.sum(axis=0)
        runs = np.split(columns, np.flatnonzero(np.diff(columns > 0)) + 1)
        heights.append([run.max() for run in runs if run.max() > 0])
    a = np.array([v[0] for v in volumes.values()])
    b = np.array([v[1] for v in volumes.values() if v[1] > 0])
    scale = heights[0][-1] / 16.0  # WT at A, the largest
    assert np.allclose(heights[0], a * scale, atol=1.5) and np.allclose(heights[1], b * scale, atol=1.5)


def test_analysis_and_report_do_not_import_matplotlib(phantom_dir, tiny_model_dir, tmp_path):
    code = (f"import sys\nfrom GliomaAnalysisLib import analyze, load_case, write_outputs\n"
            f"result = analyze(load_case({str(phantom_dir)!r}), model_dir={str(tiny_model_dir)!r}, fast=True)\n"
            f"write_outputs(result, {str(tmp_path / 'out')!r})\n"
            f"print('matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert 'id="fig-overlay"' in (tmp_path / "out" / "report.html").read_text()


@given(arrays(st.sampled_from([np.int16, np.uint16, np.int32, np.uint64]), st.integers(1, 300),
              elements=st.integers(1, 4000)))
def test_windows_of_integer_images_are_numpys_percentiles(values):
    np.testing.assert_allclose(window(values), [np.percentile(values, 0.5),
                                                max(np.percentile(values, 99.5), np.percentile(values, 0.5) + 1e-6)],
                               rtol=0, atol=1e-9)
    assert window(np.zeros(5, np.int16)) == (0.0, 1.0)
    huge = np.array([1, 2, 2 ** 40], np.int64)  # beyond the histogram's range: sorted instead
    assert window(huge) == (float(np.percentile(huge, 0.5)), float(np.percentile(huge, 99.5)))
