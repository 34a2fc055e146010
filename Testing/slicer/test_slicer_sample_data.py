"""The Slicer module's SampleData registration helpers (GliomaAnalysisModuleLib.helpers), tested without Slicer.

The keyword lists below are the parameters of ``SampleData.SampleDataLogic.registerCustomSampleDataSource`` read from
Slicer's ``Modules/Scripted/SampleData/SampleData.py``: the Slicer 5.8-era file (``loadFileType``) and current main
(``loadFileTypes``, ``loadFileType`` kept as a deprecated alias).
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "GliomaAnalysis"))

from GliomaAnalysisModuleLib.helpers import (SAMPLE_CATEGORY, SAMPLE_NAME, assign_nodes,  # noqa: E402
                                             check_hosted_sample, node_name_for_file, registration_keywords,
                                             sample_data_sources, sample_file_names, write_sample_phantom)

SLICER_5_8_PARAMETERS = ("category", "sampleName", "uris", "fileNames", "nodeNames", "customDownloader",
                         "thumbnailFileName", "loadFileType", "loadFiles", "loadFileProperties", "checksums")
SLICER_MAIN_PARAMETERS = ("category", "sampleName", "uris", "fileNames", "nodeNames", "customDownloader",
                          "thumbnailFileName", "loadFileTypes", "loadFiles", "loadFileProperties", "checksums",
                          "loadFileType")
HOSTED = {"uris": [f"https://example.org/case/BraTS-GLI-00000-000-{s}.nii.gz" for s in ("t1n", "t1c", "t2w", "t2f")],
          "fileNames": [f"BraTS-GLI-00000-000-{s}.nii.gz" for s in ("t1n", "t1c", "t2w", "t2f")],
          "checksums": ["SHA256:" + c * 64 for c in "0123"]}


def _same_lengths(keywords):
    """SampleDataSource's own check: every per-file list has the length of ``uris``."""
    lists = [keywords[k] for k in ("uris", "fileNames", "nodeNames", "loadFileType", "loadFileTypes", "checksums")
             if k in keywords]
    return len({len(value) for value in lists}) == 1


def test_sample_node_names_are_what_the_selectors_assign():
    files = sample_file_names()
    assert files == {"t1": "GliomaPhantom_t1.nii.gz", "t1ce": "GliomaPhantom_t1ce.nii.gz",
                     "t2": "GliomaPhantom_t2.nii.gz", "flair": "GliomaPhantom_flair.nii.gz"}
    names = [node_name_for_file(name) for name in files.values()]
    assert names == ["GliomaPhantom_t1", "GliomaPhantom_t1ce", "GliomaPhantom_t2", "GliomaPhantom_flair"]
    assert assign_nodes(names) == {"t1": "GliomaPhantom_t1", "t1ce": "GliomaPhantom_t1ce",
                                   "t2": "GliomaPhantom_t2", "flair": "GliomaPhantom_flair"}
    assert node_name_for_file("case-t2f.NRRD") == "case-t2f" and node_name_for_file("readme") == "readme"


def test_phantom_source_points_at_the_generated_files(tmp_path):
    (phantom,) = sample_data_sources(tmp_path, thumbnail="/icons/GliomaAnalysis.png")
    assert phantom["category"] == SAMPLE_CATEGORY == "GliomaAnalysis" and phantom["sampleName"] == SAMPLE_NAME
    assert phantom["nodeNames"] == ["GliomaPhantom_t1", "GliomaPhantom_t1ce", "GliomaPhantom_t2", "GliomaPhantom_flair"]
    assert phantom["uris"][1] == (tmp_path / "GliomaPhantom" / "GliomaPhantom_t1ce.nii.gz").as_uri()
    assert phantom["thumbnailFileName"] == "/icons/GliomaAnalysis.png" and "checksums" not in phantom
    assert phantom["loadFileTypes"] == ["VolumeFile"] * 4 and "customDownloader" not in phantom  # the module adds it


@pytest.mark.parametrize("parameters,file_type_keyword", [(SLICER_5_8_PARAMETERS, "loadFileType"),
                                                          (SLICER_MAIN_PARAMETERS, "loadFileTypes")])
def test_registration_keywords_follow_the_running_slicer(tmp_path, parameters, file_type_keyword):
    for source in sample_data_sources(tmp_path, None, HOSTED):
        keywords = registration_keywords(dict(source, customDownloader=print), parameters)
        assert set(keywords) <= set(parameters) and keywords[file_type_keyword] == ["VolumeFile"] * 4
        assert _same_lengths(keywords)
    with pytest.raises(ValueError, match="takes no sampleDescription"):
        registration_keywords({"sampleName": "x", "sampleDescription": "y"}, parameters)


def test_hosted_case_is_registered_with_its_checksums(tmp_path):
    phantom, hosted = sample_data_sources(tmp_path, None, dict(HOSTED, sampleName="BraTSCase"))
    assert phantom["sampleName"] == "GliomaPhantom" and hosted["sampleName"] == "BraTSCase"
    assert hosted["uris"] == HOSTED["uris"] and hosted["checksums"] == HOSTED["checksums"]
    assert assign_nodes(hosted["nodeNames"]) == {"t1": "BraTS-GLI-00000-000-t1n", "t1ce": "BraTS-GLI-00000-000-t1c",
                                                 "t2": "BraTS-GLI-00000-000-t2w", "flair": "BraTS-GLI-00000-000-t2f"}
    assert sample_data_sources(tmp_path, None, dict(HOSTED))[1]["sampleName"] == "GliomaCase"


@pytest.mark.parametrize("change,message", [
    ({"checksums": ["SHA256:" + "0" * 64]}, "differ in length"),
    ({"uris": ["http://example.org/" + n for n in HOSTED["fileNames"]]}, "only https"),
    ({"checksums": ["MD5:" + "0" * 32] * 4}, "64 lowercase hex"),
    ({"checksums": ["SHA256:" + "A" * 64] * 4}, "64 lowercase hex"),
    ({"fileNames": ["a.nii.gz", "b_t1ce.nii.gz", "c_t2.nii.gz", "d_flair.nii.gz"]}, "a.nii.gz: no modality"),
    ({"fileNames": ["a_t1.nii.gz", "b_t1.nii.gz", "c_t2.nii.gz", "d_flair.nii.gz"]}, "more than one file for t1"),
    ({"uris": []}, "'uris' must be a non-empty list"),
])
def test_a_malformed_hosted_case_is_a_one_line_error(change, message):
    with pytest.raises(ValueError, match=message) as error:
        check_hosted_sample(dict(HOSTED, **change))
    assert "\n" not in str(error.value) and str(error.value).startswith("HOSTED_SAMPLE: ")


def test_sample_phantom_is_the_demo_case_written_once(tmp_path, monkeypatch):
    from GliomaAnalysisLib.synthetic import phantom as phantom_module
    from GliomaAnalysisLib.cli import DEMO_SEED

    size, spacing = (48, 48, 31), (5.0, 5.0, 5.0)
    paths = write_sample_phantom(tmp_path, size, spacing)
    assert paths == {m: str(tmp_path / "GliomaPhantom" / name) for m, name in sample_file_names().items()}
    demo_case = next(phantom_module.iter_phantoms(1, DEMO_SEED, size, spacing))
    for modality, path in paths.items():
        image = sitk.ReadImage(path)
        assert image.GetSize() == size and image.GetSpacing() == spacing
        assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(demo_case.image(modality)))
    assert [p.name for p in tmp_path.iterdir()] == ["GliomaPhantom"]  # no staging folder left behind

    def no_generation(*args, **kwargs):
        raise AssertionError("a complete sample case must be reused, not generated again")

    monkeypatch.setattr(phantom_module, "iter_phantoms", no_generation)
    assert write_sample_phantom(tmp_path, size, spacing) == paths
    Path(paths["flair"]).unlink()  # an incomplete case is generated again
    with pytest.raises(AssertionError, match="must be reused"):
        write_sample_phantom(tmp_path, size, spacing)
    assert [p.name for p in tmp_path.iterdir()] == ["GliomaPhantom"]
    monkeypatch.undo()
    assert Path(write_sample_phantom(tmp_path, size, spacing)["flair"]).is_file()
