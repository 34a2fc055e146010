"""The training batches of train_segmentation, drawn in this process or by worker processes.

Each step's batch comes from its own generator, seeded by (seed, step, rank): the stream is the same for any number
of workers, and a run resumed at step k sees the batches an uninterrupted run sees from k on. Workers matter where
the network step is cheap (a GPU): a batch of two 64^3 crops with the full augmentation takes about 0.2 s of one CPU
core (``benchmarks/bench_training_crops.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple

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


class _StepBatches:
    """Map-style dataset for torch's DataLoader: item i is the batch of step ``start + i``."""

    def __init__(self, cases: Sequence[TrainingCase], settings: CropSettings, start: int, stop: int) -> None:
        self.cases, self.settings, self.start, self.stop = cases, settings, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int):
        import torch

        return tuple(torch.from_numpy(a) for a in make_batch(self.cases, self.settings, self.start + index))


def batches(cases: List[TrainingCase], settings: CropSettings, start: int, stop: int,
            workers: int = 0) -> Iterator[Batch]:
    """The batches of steps ``start`` .. ``stop - 1`` in order. ``workers`` > 0: drawn by that many forked
    processes of torch's DataLoader (the cases shared copy-on-write, the batches handed over in shared memory, two
    batches per worker prepared ahead)."""
    if workers <= 0:
        for step in range(start, stop):
            yield make_batch(cases, settings, step)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(_StepBatches(cases, settings, start, stop), batch_size=None, shuffle=False,
                        num_workers=workers, prefetch_factor=2, multiprocessing_context="fork")
    for image, soft, presence in loader:
        yield image.numpy(), soft.numpy(), presence.numpy()
