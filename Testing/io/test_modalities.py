"""File-name and DICOM-description recognition over real-world names: the modality token anywhere in the name, and
names that must never be taken as inputs (masks, labels, probability maps, other tools' predictions)."""
import pytest

from GliomaAnalysisLib.io.modalities import LABEL, SEGMENTATION, classify_name, classify_text, describe_name

FILE_NAMES = {
    # BraTS 2018-2021
    "Brats18_2013_11_1_t1.nii.gz": "t1", "Brats18_2013_11_1_t1ce.nii.gz": "t1ce",
    "Brats18_TCIA05_396_1_flair.nii.gz": "flair", "BraTS2021_00000_t2.nii.gz": "t2",
    "BraTS2021_00000_flair.nii.gz": "flair", "BraTS19_CBICA_AAB_1_t1ce.nii.gz": "t1ce",
    "BraTS20_Training_001_t1.nii.gz": "t1",
    # BraTS 2023+ (glioma, meningioma, metastases, paediatric, sub-Saharan Africa)
    "BraTS-GLI-00000-000-t1n.nii.gz": "t1", "BraTS-GLI-00000-000-t1c.nii.gz": "t1ce",
    "BraTS-GLI-00000-000-t2w.nii.gz": "t2", "BraTS-GLI-00000-000-t2f.nii.gz": "flair",
    "BraTS-MEN-00004-000-t1c.nii.gz": "t1ce", "BraTS-PED-00012-000-t2f.nii.gz": "flair",
    "BraTS-SSA-00002-000-t1n.nii.gz": "t1",
    # BraTS Toolkit / BrainLes preprocessing outputs: the modality token in the middle
    "BraTS2021_00000_fla_bet.nii.gz": "flair", "BraTS2021_00000_t1c_bet.nii.gz": "t1ce",
    "BraTS2021_00000_t1_bet.nii.gz": "t1", "BraTS2021_00000_t2_bet.nii.gz": "t2",
    "patient01_t1c_bet_normalized.nii.gz": "t1ce", "atlas__t1c.nii.gz": "t1ce", "brain_fla.nii.gz": "flair",
    "t1c_skull_stripped.nii.gz": "t1ce", "native__t2.nii.gz": "t2",
    # processing suffixes from FSL, ANTs, FreeSurfer-style pipelines and lab scripts
    "T1_brain.nii.gz": "t1", "T2_bet.nii.gz": "t2", "FLAIR_reg.nii.gz": "flair", "t1ce_registered.nii.gz": "t1ce",
    "T1_n4.nii.gz": "t1", "t2_N4_norm.nii.gz": "t2", "FLAIR_skullstripped.nii.gz": "flair",
    "t1gd_mni.nii.gz": "t1ce", "T2_sri24.nii.gz": "t2", "flair_to_t1ce_Warped.nii.gz": "flair",
    "T2_in_T1CE_space.nii.gz": "t2", "T1_biascorr_brain.nii.gz": "t1", "UPENN-GBM-00001_11_FLAIR_bet.nii.gz": "flair",
    "UPENN-GBM-00001_11_T1GD_unstripped.nii.gz": "t1ce", "UCSF-PDGM-0004_T1c_bias.nii.gz": "t1ce",
    "T1.nii.gz": "t1", "orig_T1w.nii": "t1",
    # BIDS
    "sub-01_T1w.nii.gz": "t1", "sub-01_ses-01_FLAIR.nii.gz": "flair", "sub-01_ce-gadolinium_T1w.nii.gz": "t1ce",
    "sub-01_acq-MPRAGE_T1w.nii.gz": "t1", "sub-01_T2w.nii.gz": "t2",
    # clinical / scanner exports, any case, every supported extension
    "T1Gd.nii.gz": "t1ce", "patient_T1C.mha": "t1ce", "T1_post.nii": "t1ce", "t1_POST_contrast.nrrd": "t1ce",
    "T1+C.nii.gz": "t1ce", "T1C+.nii": "t1ce", "T1W_CE.nii.gz": "t1ce", "FLAIR.nrrd": "flair", "fla.nii.gz": "flair",
    "T2_FLAIR.mha": "flair", "T2.nii.gz": "t2", "T2W.nii": "t2", "T1_pre.nhdr": "t1", "MPRAGE.nii.gz": "t1",
    "MPRAGE_GD.mhd": "t1ce", "t1_pre_contrast.nii.gz": "t1", "T1_KM.nii.gz": "t1ce",
    "t2_tirm_tra_dark-fluid.nii.gz": "flair", "T1_postop.nii.gz": "t1",
    "20190101_AX_T1_POST_GD.nii.gz": "t1ce", "series_3_T2W_TSE.nii.gz": "t2",
}

DESCRIPTIONS = {  # DICOM SeriesDescription, with the words scanners add
    "AX T1 POST GD": "t1ce", "Ax T1 FS +C 3mm": "t1ce", "AX T1 MPRAGE +C SAG REFORMAT": "t1ce",
    "AX FLAIR": "flair", "Ax T2 FLAIR FS (3mm)": "flair", "t2_tse_tra_512": "t2", "AX T2 FSE": "t2",
    "SAG T1 SE": "t1", "T1 FLAIR POST": "t1ce", "SAG T1 FLAIR": "t1", "T1W_3D_TFE": "t1", "T2W_FLAIR SENSE": "flair",
    "sag 3D T1 MPRAGE 1mm iso": "t1", "T1 MPRAGE post-Gd": "t1ce",
}

NOT_INPUTS = {  # (kind): ground-truth candidates are "seg", every other label-like file is "label", else None
    "BraTS2021_00000_seg.nii.gz": SEGMENTATION, "BraTS-GLI-00000-000-seg.nii.gz": SEGMENTATION,
    "case_SEGMENTATION.nii.gz": SEGMENTATION, "ground_truth.nii.gz": SEGMENTATION, "labels.nii.gz": SEGMENTATION,
    "mask.nii.gz": LABEL, "brain_mask.nii.gz": LABEL, "brainmask.nii.gz": LABEL, "T1_brain_mask.nii.gz": LABEL,
    "t1c_bet_mask.nii.gz": LABEL, "hd-bet_mask.nii.gz": LABEL, "tumor_mask.nii.gz": LABEL, "lesion.nii.gz": LABEL,
    "T1_brain_seg.nii.gz": LABEL, "T1_brain_pve_0.nii.gz": LABEL, "aseg.nii.gz": LABEL, "aparc+aseg.nii.gz": LABEL,
    "prob_ncr.nii.gz": LABEL, "prob_et.nii.gz": LABEL, "uncertainty.nii.gz": LABEL,
    "t1ce_probability.nii.gz": LABEL, "flair_softmax.nii.gz": LABEL, "BraTS2021_00000_pred.nii.gz": LABEL,
    "flair_prediction.nii.gz": LABEL, "nnunet_output.nii.gz": LABEL, "WT_label.nii.gz": LABEL,
    "t1ce_tumor_core.nii.gz": LABEL, "posteriors_t1.nii.gz": LABEL,
    "DWI.nii.gz": None, "ADC_map.nii.gz": None, "SWI.nii.gz": None, "Ax T2* GRE.nii.gz": None, "PD_T2.nii.gz": None,
    "t1_t2_ratio.nii.gz": None, "flair_t1ce.nii.gz": None, "brain.nii.gz": None, "BRATS_001.nii.gz": None,
    "c1T1.nii": None, "readme.txt": None, "report.json": None, "T1.png": None, "notes_t1.txt": None,
    "localizer.nii.gz": None, "T1_map.nii.gz": None,
}


def test_the_table_covers_at_least_sixty_real_world_names():
    assert len(FILE_NAMES) + len(DESCRIPTIONS) + len(NOT_INPUTS) >= 60
    assert len(NOT_INPUTS) >= 30


@pytest.mark.parametrize("name,expected", sorted(FILE_NAMES.items()))
def test_modality_token_anywhere_in_a_file_name(name, expected):
    assert classify_name(name) == expected


@pytest.mark.parametrize("description,expected", sorted(DESCRIPTIONS.items()))
def test_dicom_series_descriptions_with_trailing_words(description, expected):
    assert classify_text(description) == expected


@pytest.mark.parametrize("name,expected", sorted(NOT_INPUTS.items(), key=lambda item: item[0]))
def test_label_maps_masks_predictions_and_other_images_are_never_inputs(name, expected):
    match = describe_name(name)
    assert match.kind == expected
    assert match.reason  # the reason shown in `inspect` and the report's warnings
