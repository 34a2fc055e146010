"""YAML run configurations (training/common/config.py, training/configs/) and the run.json reproducibility record."""
from __future__ import annotations

import argparse
import importlib
import json
import math
from pathlib import Path

import pytest
import torch

from GliomaAnalysisLib.synthetic.phantom import write_cohort
from training.common.config import CONFIG_DIR, apply_config, load_yaml, parse_args
from training.segmentation.train_segmentation import build_parser

TINY_NETWORK = {"widths": [4, 8], "encoder_blocks": [1, 1], "transformer_layers": 1, "transformer_heads": 2}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_config_sets_defaults_and_flags_override(tmp_path):
    path = write(tmp_path, "steps: 7\ndice-weight: 0.25\nlr: 1\nresume: true\nrun_dir: /tmp/from-file\n"
                           "network: {widths: [8, 16], encoder_blocks: [1, 1]}\n")
    args = parse_args(build_parser(), ["--config", str(path), "--steps", "9"])
    assert args.steps == 9  # the flag wins
    assert args.dice_weight == 0.25 and args.lr == 1.0 and isinstance(args.lr, float) and args.resume is True
    assert args.run_dir == "/tmp/from-file"  # a required option may come from the file
    assert json.loads(args.network) == {"widths": [8, 16], "encoder_blocks": [1, 1]}
    assert args.config == str(path) and args.batch == 2  # untouched options keep the script's defaults
    plain = parse_args(build_parser(), ["--run-dir", "x"])
    assert plain.steps == 1500 and plain.config is None


@pytest.mark.parametrize("text, message", [
    ("stepz: 3\n", "unknown key(s) stepz"),
    ("steps: three\n", "steps: expected an integer"),
    ("steps: 2.5\n", "steps: expected an integer"),
    ("resume: 1\n", "resume: expected true or false"),
    ("device: tpu\n", "device: 'tpu' is not one of"),
    ("- steps\n", "must be a mapping"),
    ("steps: [1\n", "not valid YAML"),
])
def test_bad_configs_are_clear_errors(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SystemExit) as stop:
        parse_args(build_parser(), ["--config", str(path), "--run-dir", "x"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err


def test_missing_config_file_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(build_parser(), ["--config", str(tmp_path / "nope.yaml"), "--run-dir", "x"])
    assert "cannot read the configuration" in capsys.readouterr().err


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser captured")
        self.parser = parser


def _script_parser(module_name: str, monkeypatch) -> argparse.ArgumentParser:
    """The real argument parser of a training script, captured when the script calls parse_args."""
    module = importlib.import_module(module_name)

    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    entry = getattr(module, "build_parser", None)
    if entry is not None:
        return entry()
    with pytest.raises(_Captured) as captured:
        (getattr(module, "parse_args", None) or module.main)([])
    return captured.value.parser


@pytest.mark.parametrize("config, module, skip", [
    ("segmentation.yaml", "training.segmentation.train_segmentation", ("config",)),
    ("segmentation_without_flair.yaml", "training.segmentation.train_segmentation", ("config",)),
    ("segmentation_fast.yaml", "training.segmentation.train_segmentation", ("config",)),
    ("adaptation.yaml", "training.advanced.adaptation", ("config",)),
    ("semi_supervised.yaml", "training.advanced.semi_supervised", ("config",)),
    ("multitask.yaml", "training.multitask.train_multitask", ("config",)),
    ("mgmt_fusion.yaml", "training.mgmt.train_mgmt", ()),  # its own --config (JSON) is a key; YAML via --train-config
    ("slice_grade.yaml", "training.slice_grade.train_slice_grade", ("config",)),
])
def test_every_shipped_config_fits_its_script(config, module, skip, monkeypatch):
    path = CONFIG_DIR / config
    values = load_yaml(path)
    assert values, f"{config} is empty"
    try:
        parser = _script_parser(module, monkeypatch)
    except ModuleNotFoundError:
        pytest.skip(f"{module} is not in this checkout")
    defaults = apply_config(parser, values, str(path), skip=skip)
    assert set(defaults) == {k.replace("-", "_") for k in values}


def test_config_files_cover_every_training_script():
    scripts = {p.stem for p in (CONFIG_DIR.parent).glob("train_*.py")}
    expected = {"train_segmentation": "segmentation", "train_multitask": "multitask", "train_mgmt": "mgmt_fusion",
                "train_slice_grade": "slice_grade"}
    configs = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    for script in scripts:
        assert expected.get(script) in configs, f"no YAML config for {script}"


def test_training_run_writes_run_json_with_config_git_split_seed_versions_and_metrics(tmp_path):
    data = tmp_path / "data"
    write_cohort(data, 2, seed=3, size=(64, 64, 48), spacing=(3.0, 3.0, 3.0))
    config = write(tmp_path, f"steps: 2\nbatch: 1\ncrop: 16\nspacing: 4\nseed: 5\n"
                             f"network: {json.dumps(TINY_NETWORK)}\n")
    run = tmp_path / "run"
    from training.segmentation.train_segmentation import main
    assert main(["--config", str(config), "--data", str(data), "--run-dir", str(run),
                 "--cache", str(tmp_path / "cache"), "--device", "cpu"]) == 0
    record = json.loads((run / "run.json").read_text())
    assert record["script"] == "training.segmentation.train_segmentation"
    assert record["config"]["args"]["steps"] == 2 and record["config"]["args"]["seed"] == 5
    assert record["config"]["network"]["widths"] == [4, 8]
    assert record["config_file"]["path"] == str(config) and "steps: 2" in record["config_file"]["text"]
    if (Path(__file__).resolve().parents[2] / ".git").exists():
        assert len(record["git"]["commit"]) == 40 and record["git"]["dirty"] in (True, False)
    assert sorted(record["split"]["train_cases"]) == sorted(p.name for p in data.iterdir() if p.is_dir())
    assert record["split"]["validation_cases"] == []
    assert record["seed"] == 5 and record["versions"]["torch"] == torch.__version__
    assert record["device"] == "cpu" and record["world_size"] == 1
    assert record["metrics"]["steps"] == 2 and record["metrics"]["final_loss"] > 0
    assert record["metrics"]["ranks_in_sync"] is True and record["metrics"]["mixed_precision"] == "float32"
    assert set(record["outputs"]) == {"final.safetensors", "checkpoint.pt"}
    assert all(len(o["sha256"]) == 64 for o in record["outputs"].values()) and record["finished"]


def test_cpu_bf16_trains_in_bfloat16_channels_last_validates_and_resumes_in_float32(tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file
    from training.common.distributed import cpu_computes_bf16
    import training.segmentation.train_segmentation as train_segmentation

    logits_dtypes = []

    class Recording(train_segmentation.GliomaSegNet):
        def forward(self, *args, **kwargs):
            logits = super().forward(*args, **kwargs)
            if self.training:  # the training step's (validation runs in eval mode, in float32)
                logits_dtypes.append(logits.dtype)
            return logits

    monkeypatch.setattr(train_segmentation, "GliomaSegNet", Recording)
    data = tmp_path / "data"
    write_cohort(data, 4, seed=3, size=(64, 64, 48), spacing=(3.0, 3.0, 3.0))
    config = write(tmp_path, f"steps: 2\nbatch: 1\ncrop: 16\nspacing: 4\ncpu_bf16: true\nn_folds: 2\nval_every: 1\n"
                             f"network: {json.dumps(TINY_NETWORK)}\n")
    run = tmp_path / "run"
    common = ["--config", str(config), "--data", str(data), "--run-dir", str(run), "--cache", str(tmp_path / "cache"),
              "--device", "cpu", "--fold", "0"]
    code = train_segmentation.main(common)
    if not cpu_computes_bf16():  # emulated bfloat16: a one-line refusal before anything is written
        assert code == 2 and not run.exists()
        assert "no bfloat16 instructions" in capsys.readouterr().err
        return
    assert code == 0 and logits_dtypes == [torch.bfloat16] * 2
    record = json.loads((run / "run.json").read_text())
    assert record["metrics"]["mixed_precision"] == "bfloat16" and record["config"]["args"]["cpu_bf16"] is True
    assert math.isfinite(record["metrics"]["final_loss"]) and record["metrics"]["final_loss"] > 0
    val_dice = record["metrics"]["val_dice"]  # validated during training, in float32
    assert val_dice and all(0.0 <= v <= 1.0 for v in val_dice.values())
    state = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    convolutions = [w for w in state.values() if w.dim() == 5 and w.shape[-1] > 1]
    assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in convolutions)
    assert all(w.dtype == torch.float32 for w in load_file(str(run / "final.safetensors")).values())
    logits_dtypes.clear()  # resumed in float32: the precision is how a run is carried out, not what it trains
    assert train_segmentation.main(common + ["--resume", "--steps", "3", "--no-cpu-bf16"]) == 0
    assert logits_dtypes == [torch.float32]
    record = json.loads((run / "run.json").read_text())
    assert record["metrics"]["steps"] == 3 and record["metrics"]["mixed_precision"] == "float32"


def test_cpu_bf16_is_refused_in_one_line_where_the_cpu_would_emulate_it(tmp_path, capsys, monkeypatch):
    from training.segmentation.train_segmentation import main

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    data = tmp_path / "data"
    write_cohort(data, 1, seed=3, size=(32, 32, 24), spacing=(3.0, 3.0, 3.0))
    run = tmp_path / "run"
    assert main(["--data", str(data), "--run-dir", str(run), "--cache", str(tmp_path / "cache"), "--device", "cpu",
                 "--steps", "1", "--cpu-bf16"]) == 2
    assert not run.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no bfloat16 instructions" in err[0]


@pytest.mark.parametrize("absent", ["t1", "t1ce"])
def test_t1ce_difference_stem_is_refused_when_the_crops_never_show_t1_or_t1ce(tmp_path, capsys, absent):
    from training.segmentation.train_segmentation import main

    data = tmp_path / "data"
    write_cohort(data, 1, seed=3, size=(32, 32, 24), spacing=(3.0, 3.0, 3.0))
    run = tmp_path / "run"
    network = json.dumps({**TINY_NETWORK, "t1ce_difference": True})
    assert main(["--data", str(data), "--run-dir", str(run), "--cache", str(tmp_path / "cache"), "--device", "cpu",
                 "--steps", "1", "--absent-modalities", absent, "--network", network]) == 2
    assert not run.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its stem would never train" in err[0]
