import csv

import numpy as np
import pytest

from GliomaAnalysisLib import load_case
from GliomaAnalysisLib.synthetic.phantom import Markers, iter_phantoms, make_phantom

from conftest import SMALL_SIZE, SMALL_SPACING

HGG_RING = Markers("HGG", "wildtype", "intact", "unmethylated")


def test_same_seed_gives_identical_phantoms_and_other_seeds_differ():
    a = make_phantom(3, SMALL_SIZE, SMALL_SPACING)
    b = make_phantom(3, SMALL_SIZE, SMALL_SPACING)
    c = make_phantom(4, SMALL_SIZE, SMALL_SPACING)
    assert a.markers == b.markers
    assert np.array_equal(a.labels, b.labels)
    assert all(np.array_equal(a.images[m], b.images[m]) for m in a.images)
    assert not np.array_equal(a.images["t1"], c.images["t1"])


@pytest.fixture(scope="module")
def cohort():
    return list(iter_phantoms(24, seed=11, size=SMALL_SIZE, spacing=SMALL_SPACING))


def _mean(phantom, modality, mask):
    return float(phantom.images[modality][mask].mean())


def test_contrast_follows_real_scans():
    p = make_phantom(21, (160, 160, 104), (1.5, 1.5, 1.5), markers=HGG_RING)
    ncr, ed, et = (p.labels == 1), (p.labels == 2), (p.labels == 4)
    assert ncr.any() and ed.any() and et.any(), "an HGG phantom with a ring must have all three subregions"
    brain = p.images["t1"] > 0
    normal = brain & (p.labels == 0)
    assert _mean(p, "t1ce", et) > 1.5 * _mean(p, "t1ce", ed)  # ET bright on T1CE
    assert _mean(p, "t1ce", ncr) < 0.6 * _mean(p, "t1ce", et)  # necrosis dark on T1CE
    assert _mean(p, "flair", ed) > 1.3 * _mean(p, "flair", normal)  # edema bright on FLAIR
    assert _mean(p, "t2", ed) > 1.3 * _mean(p, "t2", normal)  # ... and on T2
    # CSF (bright on T2) is dark on FLAIR
    csf = normal & (p.images["t2"] > np.percentile(p.images["t2"][normal], 97))
    assert _mean(p, "flair", csf) < 0.5 * _mean(p, "flair", normal)
    # skull-stripped: zero outside the brain, identical brain support on every modality
    assert all(np.array_equal(p.images[m] > 0, brain) or np.mean((p.images[m] > 0) != brain) < 1e-3
               for m in p.images)


def test_background_is_zero_and_labels_are_inside_the_brain(small_phantom):
    brain = small_phantom.images["t1"] > 0
    assert set(np.unique(small_phantom.labels).tolist()) <= {0, 1, 2, 4}
    assert np.mean(brain[small_phantom.labels > 0]) > 0.99
    assert 0.05 < brain.mean() < 0.5


def test_markers_shape_the_images_but_do_not_determine_them(cohort):
    hgg = [p for p in cohort if p.markers.grade == "HGG"]
    lgg = [p for p in cohort if p.markers.grade == "LGG"]
    assert hgg and lgg

    def et_fraction(p):
        return np.sum(p.labels == 4) / max(1, np.sum(p.labels > 0))

    assert np.mean([et_fraction(p) for p in hgg]) > 2 * np.mean([et_fraction(p) for p in lgg])
    # noisy: some HGG lack a ring or some LGG enhance, i.e. ET presence does not decide the grade
    has_et = [bool(np.any(p.labels == 4)) for p in cohort]
    is_hgg = [p.markers.grade == "HGG" for p in cohort]
    assert has_et != is_hgg
    # biology: a 1p/19q codeletion only occurs in IDH-mutant tumors
    assert all(p.markers.idh == "mutant" for p in cohort if p.markers.codeletion_1p19q == "codeleted")


def test_idh_mutant_tumors_sit_frontal_more_often():
    rng_cases = list(iter_phantoms(60, seed=5, size=(48, 48, 31), spacing=(5.0, 5.0, 5.0)))
    def is_frontal(p):
        ys = np.nonzero(p.labels)[1]
        return ys.size and ys.mean() < p.labels.shape[1] * 0.42  # anterior = low y index in LPS
    mutant = [is_frontal(p) for p in rng_cases if p.markers.idh == "mutant"]
    wildtype = [is_frontal(p) for p in rng_cases if p.markers.idh == "wildtype"]
    assert np.mean(mutant) > np.mean(wildtype)


def test_cli_writes_cases_the_loader_reads_back(tmp_path):
    from GliomaAnalysisLib.cli import main
    out = tmp_path / "cohort"
    code = main(["phantom", "--out", str(out), "--n", "3", "--seed", "9",
                 "--size", *map(str, SMALL_SIZE), "--spacing", *map(str, SMALL_SPACING)])
    assert code == 0
    with open(out / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case_id"] for r in rows] == [f"Phantom_9_{i:04d}" for i in range(3)]
    expected = list(iter_phantoms(3, 9, SMALL_SIZE, SMALL_SPACING))
    for row, phantom in zip(rows, expected):
        assert row["grade"] == phantom.markers.grade and row["idh"] == phantom.markers.idh
        assert row["codeletion_1p19q"] == phantom.markers.codeletion_1p19q and row["mgmt"] == phantom.markers.mgmt
        assert row["source"] == "synthetic-phantom"
        case = load_case(out / row["case_id"])
        assert case.present == ["t1", "t1ce", "t2", "flair"]
        assert np.array_equal(case.array("t2"), phantom.images["t2"].astype(np.float32))
        import SimpleITK as sitk
        assert np.array_equal(sitk.GetArrayFromImage(case.segmentation), phantom.labels)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind
