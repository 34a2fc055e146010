"""Data-parallel training: two CPU processes (gloo) end with identical weights; rank 0 alone writes the run."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from GliomaAnalysisLib.synthetic.phantom import write_cohort
from training.common.distributed import (PrecisionError, autocast, backend_for, crop_seed, grad_scaler,
                                         mixed_precision, setup)

TINY_NETWORK = {"widths": [4, 8], "encoder_blocks": [1, 1], "transformer_layers": 1, "transformer_heads": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, argv: list, out: str) -> None:
    """One torchrun-like process: the environment torchrun would set, then the real training entry point."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    from training.segmentation.train_segmentation import build_parser, train

    model = train(build_parser().parse_args(argv))
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, Path(out) / f"rank{rank}.pt")


def test_two_cpu_processes_end_with_identical_weights_and_one_checkpoint(tmp_path):
    data = tmp_path / "data"
    write_cohort(data, 2, seed=3, size=(64, 64, 48), spacing=(3.0, 3.0, 3.0))
    run = tmp_path / "run"
    argv = ["--data", str(data), "--run-dir", str(run), "--cache", str(tmp_path / "cache"), "--crop", "16",
            "--batch", "1", "--checkpoint-every", "2", "--spacing", "4", "--steps", "3",
            "--device", "cpu", "--network", json.dumps(TINY_NETWORK)]
    mp.spawn(_worker, args=(2, _free_port(), argv, str(tmp_path)), nprocs=2, join=True)

    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 3
    assert all(torch.equal(checkpoint["model"][k], weights[0][k]) for k in weights[0])
    assert (run / "final.safetensors").is_file()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]  # one writer: no duplicated lines
    record = json.loads((run / "run.json").read_text())
    assert record["world_size"] == 2 and record["device"] == "cpu"
    assert record["metrics"]["ranks_in_sync"] is True and record["metrics"]["steps"] == 3
    assert json.loads((run / "config.json").read_text())["world_size"] == 2


def test_crop_streams_differ_between_ranks_and_rank0_is_the_one_process_stream():
    draws = [np.random.default_rng(crop_seed(5, 10, rank)).random(4) for rank in (0, 1, 2)]
    assert not np.allclose(draws[0], draws[1]) and not np.allclose(draws[1], draws[2])
    assert np.array_equal(draws[0], np.random.default_rng([5, 10]).random(4))
    assert np.array_equal(np.random.default_rng(crop_seed(5, 10, 1)).random(4), draws[1])  # reproducible


def test_without_torchrun_everything_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = setup("cpu")
    assert (context.rank, context.world_size, context.backend, context.is_main) == (0, 1, None, True)
    assert context.mean(3.5) == 3.5 and context.in_sync(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError):
        setup("tpu")


def test_mixed_precision_float16_on_cuda_bfloat16_on_the_cpu_only_when_asked(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert backend_for(cpu) == "gloo" and backend_for(cuda) == "nccl"
    assert mixed_precision(cuda, amp=True) is torch.float16 and mixed_precision(cuda, amp=False) is None
    assert mixed_precision(cuda, amp=False, cpu_bf16=True) is None  # the CPU option does not act on CUDA
    assert mixed_precision(cpu, amp=True) is None  # --amp alone never changes the CPU's float32
    layer = torch.nn.Linear(4, 4)
    with autocast(cpu, None):
        assert layer(torch.ones(1, 4)).dtype == torch.float32
    with autocast(cpu, torch.bfloat16):
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.raises(PrecisionError, match="no bfloat16 instructions"):
        mixed_precision(cpu, cpu_bf16=True)  # emulated bf16 is 100x slower: refused
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert mixed_precision(cpu, cpu_bf16=True) is torch.bfloat16
    for dtype in (None, torch.bfloat16):
        scaler = grad_scaler(dtype)
        assert not scaler.is_enabled()  # bfloat16 has float32's exponent range: nothing to scale
        loss = layer(torch.ones(1, 4)).sum()
        assert torch.equal(scaler.scale(loss), loss)  # disabled scaler passes values through
