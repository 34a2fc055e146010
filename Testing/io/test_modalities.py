import pytest

from GliomaAnalysisLib.io.modalities import classify_name

NAMES = {
    # BraTS 2018-2021
    "Brats18_2013_11_1_t1.nii.gz": "t1", "Brats18_2013_11_1_t1ce.nii.gz": "t1ce",
    "BraTS2021_00000_t2.nii.gz": "t2", "BraTS2021_00000_flair.nii.gz": "flair",
    "BraTS2021_00000_seg.nii.gz": "seg",
    # BraTS 2023+
    "BraTS-GLI-00000-000-t1n.nii.gz": "t1", "BraTS-GLI-00000-000-t1c.nii.gz": "t1ce",
    "BraTS-GLI-00000-000-t2w.nii.gz": "t2", "BraTS-GLI-00000-000-t2f.nii.gz": "flair",
    "BraTS-GLI-00000-000-seg.nii.gz": "seg",
    # clinical, any case, every supported extension
    "T1Gd.nii.gz": "t1ce", "patient_T1C.mha": "t1ce", "T1_post.nii": "t1ce", "t1_POST_contrast.nrrd": "t1ce",
    "T1+C.nii.gz": "t1ce", "T1W_CE.nii.gz": "t1ce", "FLAIR.nrrd": "flair", "fla.nii.gz": "flair",
    "T2_FLAIR.mha": "flair", "sub-01_FLAIR.nii.gz": "flair", "T2.nii.gz": "t2", "T2W.nii": "t2",
    "T1.nii.gz": "t1", "sub-01_T1w.nii.gz": "t1", "T1_pre.nhdr": "t1", "MPRAGE.nii.gz": "t1",
    "case_SEGMENTATION.nii.gz": "seg",
}


@pytest.mark.parametrize("name,expected", sorted(NAMES.items()))
def test_every_naming_style_is_recognised(name, expected):
    assert classify_name(name) == expected


@pytest.mark.parametrize("name", ["readme.txt", "report.json", "T1.png", "brain.nii.gz", "notes_t1.txt"])
def test_non_modality_files_are_ignored(name):
    assert classify_name(name) is None
