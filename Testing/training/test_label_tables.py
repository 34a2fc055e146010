"""Label-table readers on rows in the real public formats, and joins across tables and BraTS years."""
import os
from pathlib import Path

import pytest

from training.common.label_tables import (CaseTargets, LabelIndex, LabelTableError, case_key, parse_target, read_labels,
                                   read_table)

TABLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "label-tables"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_case_key_folds_brats_years():
    assert case_key("Brats18_TCIA10_639_1") == case_key("BraTS19_TCIA10_639_1") == "tcia10_639_1"
    assert case_key("BraTS2021_00097") == case_key("97") == case_key("BraTS-GLI-00097-000") == "00097"
    assert case_key("BraTS20_Training_001") == "00001"


def test_parse_target_values():
    assert parse_target("idh", "IDH1 p.R132H") == 1 and parse_target("idh", "mutated (NOS)") == 1
    assert parse_target("idh", "wildtype") == 0
    assert parse_target("codeletion_1p19q", "Co-deletion") == 1
    assert parse_target("codeletion_1p19q", "relative co-deletion") is None
    assert parse_target("mgmt", "positive") == 1 and parse_target("mgmt", "indeterminate") is None
    assert parse_target("grade", "4") == 1 and parse_target("grade", "3") == 0 and parse_target("grade", "GBM") == 1
    with pytest.raises(ValueError):
        parse_target("grade", "purple")


def test_join_across_rsna_ucsf_name_mapping_and_tcga(tmp_path):
    rsna = write(tmp_path / "train_labels.csv", "BraTS21ID,MGMT_value\n00097,1\n00003,0\n")
    ucsf = write(tmp_path / "UCSF-PDGM-metadata.csv",
                 "ID,Sex,Age at MRI,WHO CNS Grade,Final pathologic diagnosis (WHO 2021),MGMT status,MGMT index,"
                 "1p/19q,IDH,1-dead 0-alive,OS,EOR,Biopsy prior to imaging,BraTS21 ID,BraTS21 Segmentation Cohort,"
                 "BraTS21 MGMT Cohort\n"
                 'UCSF-PDGM-004,M,66,4,"Glioblastoma, IDH-wildtype",negative,0,,wildtype,1,1303,STR,No,'
                 "BraTS2021_00097,Training,Training\n"
                 'UCSF-PDGM-010,F,40,2,"Oligodendroglioma",positive,,co-deletion,IDH1 p.R132H,0,,GTR,No,,,\n')
    mapping = write(tmp_path / "name_mapping.csv",
                    "Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,BraTS_2019_subject_ID\n"
                    "LGG,Brats17_TCIA_639_1,Brats18_TCIA10_639_1,TCGA-DU-A5TW,BraTS19_TCIA10_639_1\n")
    tcga = write(tmp_path / "tcga.csv", "\ufeffGrade,Project,Case_ID,IDH1,IDH2\nLGG,TCGA-LGG,TCGA-DU-A5TW,1,0\n")
    index = LabelIndex.from_tables([rsna, ucsf, mapping, tcga])
    # RSNA comes first, so its MGMT wins over UCSF's "negative" for the same patient
    assert index.lookup("BraTS2021_00097") == CaseTargets(grade=1, idh=0, codeletion_1p19q=None, mgmt=1)
    assert index.lookup("UCSF-PDGM-010") == CaseTargets(grade=0, idh=1, codeletion_1p19q=1, mgmt=1)
    # BraTS 2018 case -> name mapping (grade) -> TCGA id -> IDH1
    assert index.lookup("Brats18_TCIA10_639_1") == CaseTargets(grade=0, idh=1)
    assert index.lookup("unknown_case") == CaseTargets()


def test_glioma_analysis_labels_csv(tmp_path):
    path = write(tmp_path / "labels.csv", "case_id,grade,idh1_mutant,age_years\nA,HGG,,60\nB,LGG,1,NA\n")
    table = read_labels(path)
    assert table["A"] == CaseTargets(grade=1) and table["B"] == CaseTargets(grade=0, idh=1)


def test_bad_tables_give_one_line_errors(tmp_path):
    with pytest.raises(LabelTableError, match="unknown label table format"):
        read_table(write(tmp_path / "survival.csv", "Brats20ID,Age\nX,50\n"))
    with pytest.raises(LabelTableError, match=r"line 3: unrecognised grade value 'purple'"):
        read_table(write(tmp_path / "bad.csv", "case_id,grade\nA,HGG\nB,purple\n"))
    with pytest.raises(LabelTableError, match="cannot read"):
        read_table(tmp_path / "missing.csv")
    with pytest.raises(LabelTableError, match="empty"):
        read_table(write(tmp_path / "empty.csv", "case_id,grade\n"))


@pytest.mark.skipif(not TABLES.is_dir(), reason="public label tables (../shared/data/label-tables) not present")
def test_real_public_tables_read_completely():
    counts = {name: len(read_table(TABLES / name)) for name in os.listdir(TABLES)
              if name.endswith(".csv") and "survival" not in name}
    assert counts["RSNA-MICCAI-2021_MGMT_train_labels__gonzo3832.csv"] == 585
    assert counts["UCSF-PDGM-metadata_v2.csv"] == 501
    assert counts["TCGA_GBM_LGG_Mutations_all__UCI759__lilperu.csv"] == 862
    index = LabelIndex.from_tables([TABLES / "UCSF-PDGM-metadata_v2.csv"])
    assert index.lookup("BraTS2021_00097").idh == 0
