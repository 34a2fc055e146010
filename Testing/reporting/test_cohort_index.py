"""results/index.html of a batch: every case with a thumbnail, volumes, predictions and QC flags, sortable, linking
each report; checked in headless Chromium (installed by .ci/run when root; skipped without it)."""
import csv
import re
import shutil
import subprocess

import numpy as np
import pytest

from GliomaAnalysisLib.batch import analyze_folder
from GliomaAnalysisLib.reporting.png import encode_png
from GliomaAnalysisLib.synthetic.phantom import make_phantom, write_phantom

from conftest import SMALL_SIZE, SMALL_SPACING

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("cohort")
    for index in range(3):
        write_phantom(make_phantom(80 + index, SMALL_SIZE, SMALL_SPACING, case_id=f"p{index}"), root)
    (root / "bad").mkdir()
    (root / "bad" / "bad_t2.nii.gz").write_bytes(b"")
    out = tmp_path_factory.mktemp("results")
    analyze_folder(root, out, fast=True, model_dir=tiny_model_dir, classify=False)
    return out


def _dom(url: str) -> str:
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                           "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_png_encoder_writes_a_valid_header():
    import numpy as np

    data = encode_png(np.zeros((3, 5, 3), np.uint8))
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") == 5


def test_every_case_is_listed_with_flags_thumbnail_and_link(results):
    page = (results / "index.html").read_text()
    rows = {r["case"]: r for r in csv.DictReader(open(results / "summary.csv"))}
    assert set(re.findall(r'data-case="([^"]+)"', page)) == set(rows) == {"p0", "p1", "p2", "bad"}
    for case in ("p0", "p1", "p2"):
        assert (results / case / "thumbnail.png").read_bytes()[:4] == b"\x89PNG"
        assert f'href="{case}/report.html"' in page and (results / case / "qc.json").is_file()
    # the tiny random model segments implausibly: the flags must say so, in the summary and on the page
    assert all(rows[c]["qc_flags"] for c in ("p0", "p1", "p2"))
    assert rows["bad"]["status"] == "failed" and "empty" in rows["bad"]["error"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_index_sorts_and_shows_thumbnails_in_chromium(results):
    rows = {r["case"]: r for r in csv.DictReader(open(results / "summary.csv"))}
    for direction in ("desc", "asc"):
        dom = _dom(f"file://{results / 'index.html'}#sort=wt_ml:{direction}")
        assert f'data-sorted="wt_ml:{direction}"' in dom
        order = re.findall(r'<tr class="case[^"]*" data-case="([^"]+)"', dom)
        volumes = [float(rows[c]["wt_ml"]) if rows[c]["wt_ml"] else None for c in order]
        numbers = [v for v in volumes if v is not None]
        assert sorted(order) == ["bad", "p0", "p1", "p2"]
        assert numbers == sorted(numbers, reverse=direction == "desc")
        assert dom.count('data-loaded="1"') == 3  # every thumbnail decoded by the browser
    by_case = _dom(f"file://{results / 'index.html'}#sort=case:asc")
    assert re.findall(r'<tr class="case[^"]*" data-case="([^"]+)"', by_case) == ["bad", "p0", "p1", "p2"]


def test_thumbnail_is_in_lps_orientation_whatever_the_storage_order():
    """A tumor on the patient's left and anterior shows at the right and top of the thumbnail, for an image stored
    in LPS and for the same image stored in RAS order."""
    import io

    import SimpleITK as sitk
    from PIL import Image

    from GliomaAnalysisLib.pipeline.result import AnalysisResult
    from GliomaAnalysisLib.reporting.cohort_index import thumbnail_png

    grey = np.full((20, 40, 40), 100.0, np.float32)  # z, y, x in LPS: x grows to the patient's left
    labels = np.zeros((20, 40, 40), np.uint8)
    labels[8:12, 2:8, 30:38] = 3  # anterior (small y), left (large x)
    pictures = []
    for flip in (False, True):
        image, label_image = sitk.GetImageFromArray(grey), sitk.GetImageFromArray(labels)
        if flip:  # the same physical volume stored right-to-left and posterior-to-anterior (RAS)
            image = sitk.Flip(image, [True, True, False])
            label_image = sitk.Flip(label_image, [True, True, False])
        result = AnalysisResult.__new__(AnalysisResult)
        result.labels, result.images, result.reference = label_image, {"t1ce": image}, "t1ce"
        pictures.append(np.asarray(Image.open(io.BytesIO(thumbnail_png(result, size=40))).convert("RGB"), int))
    for rgb in pictures:
        coloured = np.argwhere(np.abs(rgb[..., 0] - rgb[..., 2]) > 30)
        assert coloured[:, 0].max() < 10 and coloured[:, 1].min() >= 28  # top rows, right-hand columns
    assert np.array_equal(pictures[0], pictures[1])
