"""report.html, narrative, DICOM in/out and the longitudinal comparison."""
import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from GliomaAnalysisLib import load_case
from GliomaAnalysisLib.pipeline.analysis import analyze
from GliomaAnalysisLib.cli import main
from GliomaAnalysisLib.io.dicom_io import synthetic_source
from GliomaAnalysisLib.reporting.longitudinal import bidimensional_product
from GliomaAnalysisLib.reporting.writers import write_outputs

FIGURES = ("fig-overlay", "fig-probability", "fig-uncertainty", "fig-3d")


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.figures, self.numbers, self.statements, self.ids = {}, [], [], set()
        self.shown, self.texts, self.svgs, self.keys = [], [], {}, {}
        self._figure, self._json, self._statement = None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "figure":
            self._figure = attrs.get("id")
        if tag == "img" and self._figure:
            self.figures[self._figure] = attrs["src"]
        if tag == "svg" and self._figure:
            self.svgs[self._figure] = []
        if tag in ("rect", "line") and self._figure in self.svgs:  # SVG shapes: (class, attributes)
            self.svgs[self._figure].append((attrs.get("class"), attrs))
        if tag == "span" and self._figure and "class" in attrs:  # legend swatches and colour bars
            self.keys.setdefault(self._figure, []).append(attrs)
        if tag == "td" and "data-json" in attrs:
            self._json = (attrs["data-json"], attrs.get("data-value"))
        if tag == "p" and "data-values" in attrs:
            self._statement = [json.loads(attrs["data-values"]), ""]

    def handle_data(self, data):
        if self._json:
            path, value = self._json
            if value is not None:  # a number: full precision in data-value, rounded for reading in the text
                self.numbers.append((path, json.loads(value)))
                self.shown.append((path, data))
            else:
                self.texts.append((path, data))
            self._json = None
        if self._statement is not None:
            self._statement[1] += data

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None
        if tag == "p" and self._statement is not None:
            self.statements.append(tuple(self._statement))
            self._statement = None


def _lookup(report, path):
    value = report
    for key in path.split("."):
        value = value[key]
    return value


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, phantom_dir, tiny_model_dir):
    out = tmp_path_factory.mktemp("report")
    result = analyze(load_case(phantom_dir), model_dir=tiny_model_dir, fast=True)
    write_outputs(result, out, dicom_seg=True)
    return out, result


def test_html_has_every_figure_and_none_is_blank(analysed):
    from PIL import Image

    out, _ = analysed
    page = _Page()
    page.feed((out / "report.html").read_text())
    assert set(FIGURES) <= set(page.figures)
    for name, src in page.figures.items():
        assert src.startswith("data:image/png;base64,")  # self-contained
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("L"), float)
        assert pixels.shape[0] > 100 and pixels.std() > 5, name
    assert {"disclaimer", "narrative"} <= page.ids
    swatches = [k["style"] for k in page.keys["fig-overlay"] if k["class"] == "swatch"]
    assert swatches == ["background:rgb(217, 51, 51)", "background:rgb(51, 191, 76)", "background:rgb(255, 217, 26)"]
    for figure, cmap in (("fig-probability", "hot"), ("fig-uncertainty", "viridis")):
        (bar,) = page.keys[figure]
        assert bar["data-cmap"] == cmap and bar["style"].startswith("background:linear-gradient(to right, rgb(")


def _bars(shapes):
    """Probabilities drawn by an SVG bar chart, as fractions of its axis: bar lengths, whisker ends (left, right, ...)
    and the dotted line."""
    (axis,) = [a for kind, a in shapes if kind == "axis"]
    left, width = float(axis["x"]), float(axis["width"])
    bars = [float(a["width"]) / width for kind, a in shapes if kind == "bar"]
    assert all(float(a["x"]) == left for kind, a in shapes if kind == "bar")
    whiskers = [(float(a[end]) - left) / width for kind, a in shapes if kind == "whisker" for end in ("x1", "x2")]
    (half,) = [(float(a["x1"]) - left) / width for kind, a in shapes if kind == "half"]
    return bars, whiskers, half


def test_every_number_in_the_html_equals_report_json(analysed):
    out, _ = analysed
    report = json.loads((out / "report.json").read_text())
    page = _Page()
    page.feed((out / "report.html").read_text())
    paths = {p for p, _ in page.numbers}
    assert {f"volumes_ml.{k}" for k in ("ncr", "ed", "et", "tc", "wt")} <= paths
    for path, value in page.numbers:
        assert value == _lookup(report, path), path
    for path, text in page.shown:
        value = _lookup(report, path)
        decimals = 1 if path.startswith("volumes_ml.") else 2
        assert text == (str(value) if isinstance(value, int) else f"{value:.{decimals}f}"), path
    assert len(page.statements) >= 4
    _assert_statements_match(report, page)
    assert "not a diagnosis" in (out / "report.html").read_text()


def _assert_statements_match(report, page):
    """Each sentence's data-values equal report.json, and every number it prints is one of them."""
    for values, text in page.statements:
        for path, value in values.items():
            if not path.startswith("inputs.n_"):
                assert value == _lookup(report, path), path
        text = re.sub(r"1p/19q|WHO CNS grade \d-\d", "", text)  # names, not numbers
        printed = [float(x) for x in re.findall(r"\d+\.\d+|\d+", text)]
        allowed = [v for v in values.values()] + [100 * v for v in values.values()]
        for number in printed:
            assert any(abs(number - a) <= 0.051 or abs(number - round(a)) < 1e-9 for a in allowed), (number, text)


def test_dicom_seg_of_non_dicom_input_matches_the_label_map(analysed):
    import highdicom as hd

    out, result = analysed
    seg = hd.seg.segread(out / "segmentation.seg.dcm")
    files = sorted((out / "dicom_source").glob("*.dcm"))
    assert len(files) == result.labels.GetSize()[2]
    import pydicom
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(files[0]).SeriesInstanceUID
    _assert_seg_matches(seg, result.labels)


def _dciodvfy_errors(path: Path):
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.skipif(not shutil.which("dciodvfy"), reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_source_seg_and_sr_pass_dciodvfy(analysed):
    out, _ = analysed
    sources = sorted((out / "dicom_source").glob("*.dcm"))
    for path in [sources[0], sources[len(sources) // 2], sources[-1], out / "segmentation.seg.dcm",
                 out / "measurements.sr.dcm"]:
        assert _dciodvfy_errors(path) == [], path


@pytest.mark.skipif(not shutil.which("dciodvfy"), reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_oblique_signed_source_passes_dciodvfy_and_keeps_zero(tmp_path):
    import pydicom

    array = np.linspace(-30.0, 70.0, 6 * 10 * 12).reshape(6, 10, 12).astype(np.float32)
    array[0, 0, 0] = 0.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.9375, 0.9375, 1.2345678901234))
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    files = synthetic_source(image, tmp_path, "AX T1 oblique")
    first = pydicom.dcmread(files[0])
    assert first.PixelRepresentation == 1 and first.ScanningSequence == "RM" and first.SequenceVariant == "NONE"
    assert "RescaleSlope" not in first and all(len(str(v)) <= 16 for v in first.ImageOrientationPatient)
    assert _dciodvfy_errors(Path(files[0])) == []
    loaded = sitk.GetArrayFromImage(sitk.ReadImage(files))
    assert np.corrcoef(loaded.ravel(), sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS")).ravel())[0, 1] > 0.999


def test_sr_holds_each_subregion_volume_referencing_its_seg_segment(analysed):
    import highdicom as hd
    import pydicom

    out, result = analysed
    seg = pydicom.dcmread(out / "segmentation.seg.dcm")
    sr = hd.sr.srread(out / "measurements.sr.dcm")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    keys = {"Necrotic / non-enhancing tumor core": "ncr", "Peritumoral edema": "ed", "Enhancing tumor": "et"}
    segments = {int(s.SegmentNumber): keys[s.SegmentLabel] for s in seg.SegmentSequence}
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(segments)
    found = {}
    for group in groups:
        reference = group.referenced_segment
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        (volume,) = group.get_measurements()
        assert volume.name.meaning == "Volume" and volume.unit.value == "mL"
        found[segments[reference.referenced_segment_numbers[0]]] = volume.value
    assert found == {key: pytest.approx(result.volumes_ml[key]) for key in segments.values()}


def _assert_seg_matches(seg, labels):
    volume = seg.get_volume(combine_segments=True, relabel=False)
    numbers = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
    name_to_label = {"Necrotic / non-enhancing tumor core": 1, "Peritumoral edema": 2, "Enhancing tumor": 3}
    lut = np.zeros(max(numbers) + 1, dtype=np.uint8)
    for number, name in numbers.items():
        lut[number] = name_to_label[name]
    decoded = sitk.GetImageFromArray(lut[volume.array])  # place it in space with the SEG's own affine
    axes = [volume.affine[:3, a] for a in (2, 1, 0)]  # sitk axis order (x, y, z) = array axes (2, 1, 0)
    decoded.SetSpacing([float(np.linalg.norm(a)) for a in axes])
    decoded.SetDirection(tuple(np.stack([a / np.linalg.norm(a) for a in axes], axis=1).ravel()))
    decoded.SetOrigin(tuple(float(v) for v in volume.affine[:3, 3]))
    on_labels = sitk.Resample(decoded, labels, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    assert np.array_equal(sitk.GetArrayFromImage(on_labels), sitk.GetArrayFromImage(labels))


def test_dicom_series_input_is_read_and_referenced_by_the_seg(tmp_path, small_phantom, tiny_model_dir):
    import highdicom as hd

    descriptions = {"t1": "AX T1 pre", "t1ce": "AX T1 POST GD", "t2": "AX T2W", "flair": "AX FLAIR"}
    for modality, description in descriptions.items():
        synthetic_source(small_phantom.image(modality), tmp_path / "dicom" / modality, description)
    case = load_case(tmp_path / "dicom")
    assert case.present == ["t1", "t1ce", "t2", "flair"] and case.reference == "t1ce"
    assert len(case.dicom_files["t1ce"]) == small_phantom.geometry.size[2]
    original = small_phantom.images["t1ce"].astype(float)
    loaded = case.array("t1ce")
    assert np.corrcoef(original.ravel(), loaded.ravel())[0, 1] > 0.999  # 12-bit rescaled copy
    result = analyze(case, model_dir=tiny_model_dir, fast=True)
    if not sitk.GetArrayViewFromImage(result.labels).any():
        pytest.skip("the random test model segmented nothing")
    out = tmp_path / "out"
    write_outputs(result, out, dicom_seg=True, figures=False)
    assert not (out / "dicom_source").exists()
    seg = hd.seg.segread(out / "segmentation.seg.dcm")
    import pydicom
    source_series = pydicom.dcmread(case.dicom_files["t1ce"][0]).SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series
    _assert_seg_matches(seg, result.labels)
    sr = hd.sr.srread(out / "measurements.sr.dcm")
    group = sr.content.get_volumetric_roi_measurement_groups()[0]
    assert group.referenced_segment.source_series_for_segmentation.value == source_series
    if shutil.which("dciodvfy"):  # the DICOM input's own series is the source here
        for path in (case.dicom_files["t1ce"][0], out / "segmentation.seg.dcm", out / "measurements.sr.dcm"):
            assert _dciodvfy_errors(Path(path)) == [], path


def _ellipse_labels(a_mm, b_mm, angle, spacing=(0.8, 0.8, 2.0)):
    size = (160, 160, 12)
    image = sitk.Image(size, sitk.sitkUInt8)
    image.SetSpacing(spacing)
    x = (np.arange(size[0]) - size[0] / 2 + 0.5) * spacing[0]
    y = (np.arange(size[1]) - size[1] / 2 + 0.5) * spacing[1]
    xx, yy = np.meshgrid(x, y)
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * xx + s * yy, -s * xx + c * yy
    disc = (u / a_mm) ** 2 + (v / b_mm) ** 2 <= 1
    array = np.zeros(size[::-1], dtype=np.uint8)
    array[5][disc] = 3
    array[6][(u / (0.5 * a_mm)) ** 2 + (v / (0.5 * b_mm)) ** 2 <= 1] = 3  # a smaller slice above
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    return labels


@pytest.mark.parametrize("a,b,angle", [(20.0, 10.0, 0.0), (25.0, 8.0, 0.6), (15.0, 15.0, 0.0)])
def test_bidimensional_measure_of_known_diameters(a, b, angle):
    measure = bidimensional_product(_ellipse_labels(a, b, angle))
    assert measure.slice_index == 5
    assert measure.longest_mm == pytest.approx(2 * a, abs=1.6)
    assert measure.perpendicular_mm == pytest.approx(2 * b, abs=1.6)
    assert measure.product_mm2 == pytest.approx(measure.longest_mm * measure.perpendicular_mm, abs=0.1)


def _fake_output(folder: Path, labels: sitk.Image, volumes):
    folder.mkdir(parents=True)
    sitk.WriteImage(labels, str(folder / "segmentation.nii.gz"))
    (folder / "report.json").write_text(json.dumps({"case_id": folder.name, "label_convention": "brats2023",
                                                    "volumes_ml": volumes}))


def test_compare_reports_volume_change_and_bidimensional_change(tmp_path, capsys):
    before = {"ncr": 2.0, "ed": 10.0, "et": 4.0, "tc": 6.0, "wt": 16.0}
    after = {"ncr": 3.0, "ed": 5.0, "et": 0.0, "tc": 3.0, "wt": 8.0}
    _fake_output(tmp_path / "a", _ellipse_labels(20, 10, 0), before)
    _fake_output(tmp_path / "b", _ellipse_labels(10, 10, 0), after)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]) == 0
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert result["volumes"]["wt"]["change_percent"] == -50.0 and result["volumes"]["ncr"]["change_ml"] == 1.0
    bi = result["et_bidimensional"]
    expected = 100 * (bi["b"]["product_mm2"] - bi["a"]["product_mm2"]) / bi["a"]["product_mm2"]
    assert bi["change_percent"] == pytest.approx(expected, abs=0.1) and -60 < expected < -40
    assert "ET bidimensional product change" in capsys.readouterr().out
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000


def test_compare_refuses_a_folder_that_is_not_an_output(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["compare", str(tmp_path / "x"), str(tmp_path / "x"), "--out", str(tmp_path / "c")]) == 2
    assert "not an analysis output folder" in capsys.readouterr().err


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(analysed, tmp_path):
    from PIL import Image

    out, _ = analysed
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1000,2000",
                    (out / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"), float)
    assert pixels.shape == (2000, 1000) and pixels.std() > 10


def test_predictions_show_with_bars_and_numbers_from_the_report(analysed, tmp_path):
    import copy

    _, result = analysed
    result = copy.copy(result)
    result.predictions = {"grade": {"label": "HGG", "probability": 0.83, "uncertainty": 0.07},
                          "idh": {"label": "wildtype", "probability": 0.71, "uncertainty": 0.12},
                          "codeletion_1p19q": None, "mgmt": {"label": "methylated", "probability": 0.58,
                                                             "uncertainty": 0.2}}
    result.mgmt_late_fusion = {"per_modality": {"t1ce": 0.61, "flair": 0.52}, "weights": {"t1ce": 0.6, "flair": 0.4},
                               "fused": 0.574}
    result.slice_grade = {"majority": 1.0, "soft": 0.77, "attention": 0.81, "n_slices": 23}
    write_outputs(result, tmp_path, figures=True)
    report = json.loads((tmp_path / "report.json").read_text())
    page = _Page()
    page.feed((tmp_path / "report.html").read_text())
    assert {"fig-predictions", "fig-mgmt"} <= set(page.svgs)
    bars, whiskers, half = _bars(page.svgs["fig-predictions"])
    assert bars == pytest.approx([0.83, 0.71, 0.58], abs=0.001) and half == pytest.approx(0.5, abs=0.001)
    assert whiskers == pytest.approx([0.76, 0.90, 0.59, 0.83, 0.38, 0.78], abs=0.001)  # p -+ uncertainty
    bars, whiskers, _ = _bars(page.svgs["fig-mgmt"])
    assert bars == pytest.approx([0.61, 0.52, 0.574], abs=0.001) and whiskers == []  # t1ce, flair, fused
    paths = dict(page.numbers)
    assert paths["predictions.grade.probability"] == 0.83 and paths["mgmt_late_fusion.fused"] == 0.574
    assert paths["slice_grade.attention"] == 0.81 and paths["slice_grade.n_slices"] == 23
    for path, value in page.numbers:
        assert value == _lookup(report, path)
    text = " ".join(t for _, t in page.statements)
    assert "IDH-wildtype" in text and "high grade" in text and "0.83" in text


def test_html_rounds_for_reading_and_report_json_keeps_full_precision(analysed, tmp_path):
    import copy

    from GliomaAnalysisLib.models.evidence import task_evidence

    _, result = analysed
    result = copy.copy(result)
    card = {"name": "test_card", "evidence": {"grade": {"value": 0.55, "n": 42, "positives": 33, "negatives": 9,
                                                        "source": "held-out"},
                                              "mgmt": {"reason": "never validated on a real MGMT label"}}}
    result.volumes_ml = {"ncr": 10.04, "ed": 30.06, "et": 5.25, "tc": 15.29, "wt": 45.35}
    result.ratios = {"ncr": 0.2214, "ed": 0.6628, "et": 0.1158}
    result.predictions = {"grade": {"label": "HGG", "probability": 0.6234, "uncertainty": 0.0571,
                                    **task_evidence(card, "grade")},
                          "idh": None, "codeletion_1p19q": None, "mgmt": None}
    result.mgmt_late_fusion = {"per_modality": {"t1ce": 0.6512390971183777, "flair": 0.5249},
                               "weights": {"t1ce": 0.19731968807767940, "flair": 0.8026803119223206},
                               "fused": 0.5523418, "uncertainty": 0.0, **task_evidence(card, "mgmt")}
    result.slice_grade = {"majority": 1.0, "soft": 0.7712345, "attention": 0.812345, "n_slices": 23,
                          **task_evidence(card, "grade")}
    write_outputs(result, tmp_path, figures=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["mgmt_late_fusion"]["per_modality"]["t1ce"] == 0.6512390971183777  # full precision
    page = _Page()
    page.feed((tmp_path / "report.html").read_text())
    shown = dict(page.shown)
    assert shown["mgmt_late_fusion.per_modality.t1ce"] == "0.65" and shown["mgmt_late_fusion.fused"] == "0.55"
    assert shown["mgmt_late_fusion.weights.flair"] == "0.80" and shown["slice_grade.soft"] == "0.77"
    assert shown["predictions.grade.probability"] == "0.62" and shown["predictions.grade.uncertainty"] == "0.06"
    assert shown["volumes_ml.wt"] == "45.4" and shown["volumes_ml.et"] == "5.2" and shown["ratios.et"] == "0.12"
    assert shown["slice_grade.n_slices"] == "23"
    assert "0.6512390971183777" not in "".join(text for _, text in page.shown)
    texts = dict(page.texts)
    assert texts["predictions.grade.evidence"] == "not assessable"
    assert texts["mgmt_late_fusion.evidence"] == "not assessable" and texts["slice_grade.evidence"] == "not assessable"
    _assert_statements_match(report, page)
    evidence_sentences = [text for values, text in page.statements if "evidence on real cases" in text]
    assert len(evidence_sentences) == 3  # grade, slice grade, MGMT fusion
    html_text = (tmp_path / "report.html").read_text()
    assert "AUC 0.55 (0.34-0.76, n 42)" in html_text and "never validated on a real MGMT label" in html_text
