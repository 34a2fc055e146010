"""Cross-validation folds: every case validated once, strata spread over the folds, deterministic."""
from collections import Counter

from training.common.folds import CaseInfo, assign_folds, case_source, read_case_infos

from conftest import REAL_DATA


def _cohort():
    cases = [CaseInfo(f"Brats18_CBICA_{i:03d}_1", "HGG", "CBICA") for i in range(10)]
    cases += [CaseInfo(f"Brats18_TCIA01_{i:03d}_1", "HGG", "TCIA") for i in range(9)]
    cases += [CaseInfo(f"Brats18_TCIA10_{i:03d}_1", "LGG", "TCIA") for i in range(2)]
    cases += [CaseInfo(f"BraTS2021_{i:05d}", "LGG", "tcga-lgg") for i in range(3)]
    cases += [CaseInfo(f"Brats18_2013_{i}_1", "HGG", "2013") for i in range(3)]
    return cases


def test_every_case_is_validated_exactly_once_and_strata_are_balanced():
    cases = _cohort()
    folds = assign_folds(cases, 5, seed=0)
    assert sorted(folds) == sorted(c.case_id for c in cases)
    sizes = Counter(folds.values())
    assert sorted(sizes) == [0, 1, 2, 3, 4] and max(sizes.values()) - min(sizes.values()) <= 1
    lgg = Counter(folds[c.case_id] for c in cases if c.grade == "LGG")
    assert sorted(lgg) == [0, 1, 2, 3, 4] and set(lgg.values()) == {1}  # 5 LGGs: one per fold
    for source in ("CBICA", "TCIA", "2013"):
        counts = Counter(folds[c.case_id] for c in cases if c.source == source)
        per_fold = [counts.get(f, 0) for f in range(5)]
        assert max(per_fold) - min(per_fold) <= 2
    assert assign_folds(cases, 5, seed=0) == folds
    assert assign_folds(list(reversed(cases)), 5, seed=0) == folds  # order of discovery does not matter


def test_sources_of_real_case_ids():
    assert case_source("Brats18_TCIA02_135_1") == "TCIA"
    assert case_source("Brats18_2013_11_1") == "2013"
    assert case_source("Brats18_CBICA_AME_1") == "CBICA"
    assert case_source("BraTS2021_01476", "TCGA-LGG") == "tcga-lgg"


def test_real_cases_have_one_lgg_per_fold():
    import pytest
    extra = REAL_DATA.parent / "brats-extra"
    if not (REAL_DATA.is_dir() and extra.is_dir()):
        pytest.skip("the real cases (../shared/data) are not on this machine")
    ids = sorted(p.name for root in (REAL_DATA, extra) for p in root.iterdir() if p.is_dir())
    infos = read_case_infos([REAL_DATA, extra], ids)
    assert len(infos) == 31 and sum(i.grade == "LGG" for i in infos) == 5
    folds = assign_folds(infos, 5)
    assert Counter(folds[i.case_id] for i in infos if i.grade == "LGG") == Counter(range(5))
