"""Memory guard: estimate what a run needs before it starts and refuse with a clear message rather than be killed
by the out-of-memory killer. The network side never grows with the input (2 mm working grid, sliding window above
160^3 voxels), so the estimate is dominated by the arrays on the input (reference) grid."""
from __future__ import annotations

import os
from typing import Optional

from ..errors import GliomaAnalysisError

BYTES_PER_REFERENCE_VOXEL = 44
"""Peak bytes per input-grid voxel besides the loaded images: 4 probability maps (float32) plus their resampling
temporaries, labels, uncertainty and the written copies (measured on 240x240x155 and 512x512x400 cases)."""
BYTES_PER_WORKING_VOXEL_PER_CHANNEL = 4 * 17
"""Network activations per working-grid voxel and first-level channel (float32, ~17 live tensors, inference): a pass
on OpenVINO grew the process by 0.73 GB on Brats18_CBICA_AME_1's 80x104x88 grid at 16 channels (62 bytes), ONNX
Runtime's by 0.38 GB (MC-dropout passes inside analyze). The passes alone (benchmarks/bench_network_pass.py
--mc-dropout, the resident memory above what the process held before them): OpenVINO 477 MiB in float32, 250 MiB in
bfloat16, ONNX Runtime 252 MiB. The guard keeps the float32 figure, which any CPU may run."""
BASELINE_BYTES = 700 * 2 ** 20
"""Python, torch, the model and libraries."""


class MemoryGuardError(GliomaAnalysisError):
    """A run would need more memory than is available."""


def available_bytes() -> Optional[int]:
    """Memory available to new allocations (Linux MemAvailable; elsewhere free physical pages), or None."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def estimate_bytes(reference_voxels: int, working_voxels: int, first_width: int, side_by_side: int = 1) -> int:
    """Peak memory still to be allocated by an analysis whose images are already loaded, with ``side_by_side``
    network passes running at once (each holds its own activations)."""
    network_voxels = min(working_voxels, 160 ** 3)
    return (reference_voxels * BYTES_PER_REFERENCE_VOXEL
            + side_by_side * network_voxels * first_width * BYTES_PER_WORKING_VOXEL_PER_CHANNEL + BASELINE_BYTES)


def check_memory(case_id: str, reference_voxels: int, working_voxels: int, first_width: int,
                 available: Optional[int] = None) -> int:
    """Raise MemoryGuardError when the estimate exceeds 90 % of the available memory; returns the estimate."""
    needed = estimate_bytes(reference_voxels, working_voxels, first_width)
    available = available_bytes() if available is None else available
    if available is not None and needed > 0.9 * available:
        raise MemoryGuardError(
            f"{case_id}: needs about {needed / 2 ** 30:.1f} GiB of memory but {available / 2 ** 30:.1f} GiB are "
            f"available; close other programs, run one case at a time (--jobs 1), or give the input on a "
            f"coarser grid (--reference a lower-resolution modality)")
    return needed


def side_by_side_fits(reference_voxels: int, working_voxels: int, first_width: int, passes: int,
                      available: Optional[int] = None) -> bool:
    """Whether ``passes`` network passes may run at once: the estimate with each pass's activations stays within
    90 % of the available memory (else they run one after another, as :func:`check_memory` assumes). The estimate
    is generous (about 0.6 GB a pass on a 240x240x155 case, where two side by side peaked at 1.15 GB against
    0.89 GB in turn)."""
    needed = estimate_bytes(reference_voxels, working_voxels, first_width, passes)
    available = available_bytes() if available is None else available
    return available is None or needed <= 0.9 * available
