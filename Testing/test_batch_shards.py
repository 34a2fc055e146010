"""Cohorts across machines: ``batch --shard K/N`` partitions the cases deterministically and ``batch --merge``
rebuilds one summary; three shards give exactly the case folders and summary of one run."""
import csv
import hashlib

import pytest

from GliomaAnalysisLib import GliomaAnalysisError
from GliomaAnalysisLib.batch import COMPLETE_MARKER, merge_shards, parse_shard, shard_of
from GliomaAnalysisLib.cli import main
from GliomaAnalysisLib.synthetic.phantom import make_phantom, write_phantom

from conftest import SMALL_SIZE, SMALL_SPACING


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    for index in range(4):
        write_phantom(make_phantom(60 + index, SMALL_SIZE, SMALL_SPACING, case_id=f"case_{index}"), root / "site")
    (root / "site" / "broken").mkdir()
    (root / "site" / "broken" / "broken_t1.nii.gz").write_bytes(b"")  # a failing case is sharded like the rest
    return root


def _rows(path):
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def _folders(out):
    """Every case folder's files; the voxels' digests (the reports hold timings, so only their names)."""
    return {folder.name: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.name.endswith(".nii.gz") else None
                          for p in sorted(folder.iterdir())}
            for folder in sorted(out.iterdir()) if folder.is_dir()}


def test_shards_partition_the_cases():
    names = [f"c{i}" for i in range(10)]
    parts = [shard_of(list(reversed(names)), (k, 3)) for k in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(names) and [len(p) for p in parts] == [4, 3, 3]
    assert parts[0] == ["c0", "c3", "c6", "c9"]
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "x", "1/0", ""):
        with pytest.raises(GliomaAnalysisError, match="expected K/N"):
            parse_shard(bad)


def test_three_shards_give_the_case_folders_and_summary_of_one_run(cohort, tmp_path, tiny_model_dir):
    common = ["--fast", "--no-classify", "--model-dir", str(tiny_model_dir)]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main(["batch", str(cohort), "--out", str(single), *common]) == 1  # the broken case fails
    for k in (1, 2, 3):
        main(["batch", str(cohort), "--out", str(sharded), "--shard", f"{k}/3", *common])
        if k == 2:
            with pytest.raises(GliomaAnalysisError, match="shard"):
                merge_shards(sharded)  # shard 3/3 has not run yet
    assert main(["batch", "--merge", str(sharded)]) == 0
    assert _rows(sharded / "summary.csv") == _rows(single / "summary.csv")
    assert len(_rows(single / "summary.csv")) == 5
    assert _folders(sharded) == _folders(single)
    assert all((sharded / f"site__case_{i}" / COMPLETE_MARKER).is_file() for i in range(4))
    assert sorted(p.name for p in sharded.glob("summary*.csv")) == [
        "summary-shard-1-of-3.csv", "summary-shard-2-of-3.csv", "summary-shard-3-of-3.csv", "summary.csv"]


def test_merge_errors_are_one_line(tmp_path, capsys):
    assert main(["batch", "--merge", str(tmp_path)]) == 2
    assert "no shard summary" in capsys.readouterr().err
    (tmp_path / "summary-shard-1-of-2.csv").write_text("case,status\n")
    (tmp_path / "summary-shard-1-of-3.csv").write_text("case,status\n")
    assert main(["batch", "--merge", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "different runs" in err and err.count("\n") == 1
