"""The training batches of train_segmentation, drawn in this process or by worker processes.

Each step's batch comes from its own generator, seeded by (seed, step, rank): the stream is the same for any number
of workers, and a run resumed at step k sees the batches an uninterrupted run sees from k on. Workers matter where
the network step is cheap (a GPU): one 64^3 crop with the full augmentation takes about 0.14 s of one CPU core.
"""
from __future__ import annotations

import multiprocessing
from collections import deque
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..common.distributed import crop_seed
from .augmentation import AugmentationConfig
from .segmentation_data import TrainingCase, sample_training_crop

Batch = Tuple[np.ndarray, np.ndarray, np.ndarray]
"""image float32 (B, 4, S, S, S), soft targets float32 (B, 4, S, S, S), presence float32 (B, 4)."""


@dataclass(frozen=True)
class CropSettings:
    """What a batch depends on besides the cases and the step."""

    batch: int
    crop: int
    foreground_probability: float
    augmentation: AugmentationConfig
    seed: int
    rank: int = 0


def make_batch(cases: Sequence[TrainingCase], settings: CropSettings, step: int) -> Batch:
    """The batch of ``step``: ``settings.batch`` crops of randomly drawn cases."""
    rng = np.random.default_rng(crop_seed(settings.seed, step, settings.rank))
    crops = [sample_training_crop(cases[rng.integers(len(cases))], settings.crop, rng, settings.augmentation,
                                  settings.foreground_probability)
             for _ in range(settings.batch)]
    return tuple(np.stack([c[i] for c in crops]) for i in range(3))  # type: ignore[return-value]


_worker_cases: Optional[List[TrainingCase]] = None
_worker_settings: Optional[CropSettings] = None


def _start_worker(cases: List[TrainingCase], settings: CropSettings) -> None:
    import torch

    torch.set_num_threads(1)  # a forked process must not enter the parent's OpenMP pool (the crop uses grid_sample)
    global _worker_cases, _worker_settings
    _worker_cases, _worker_settings = cases, settings


def _worker_batch(step: int) -> Batch:
    assert _worker_cases is not None and _worker_settings is not None
    return make_batch(_worker_cases, _worker_settings, step)


def batches(cases: List[TrainingCase], settings: CropSettings, start: int, stop: int,
            workers: int = 0) -> Iterator[Batch]:
    """The batches of steps ``start`` .. ``stop - 1`` in order. ``workers`` > 0: drawn by that many forked
    processes (the cases are shared copy-on-write), at most two batches per worker ahead of the consumer."""
    if workers <= 0:
        for step in range(start, stop):
            yield make_batch(cases, settings, step)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_start_worker, initargs=(cases, settings)) as pool:
        pending: deque = deque()
        next_step = start
        while next_step < stop or pending:
            while next_step < stop and len(pending) < 2 * workers:
                pending.append(pool.apply_async(_worker_batch, (next_step,)))
                next_step += 1
            yield pending.popleft().get()
