"""A large input (512x512x400 voxels at 0.5 mm, four modalities) analysed end to end: wall time, peak memory,
and the memory guard's estimate.

    /usr/bin/time -v python benchmarks/bench_large_input.py [--model-dir DIR] [--quality]

The case is a phantom resampled to 0.5 mm, written as NIfTI into a temporary folder.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from GliomaAnalysisLib.synthetic.phantom import make_phantom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--quality", action="store_true", help="the default quality passes instead of --fast")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        phantom = make_phantom(2024)
        grid = sitk.Image([512, 512, 400], sitk.sitkInt16)
        grid.SetSpacing((0.5, 0.5, 0.5))
        grid.SetOrigin((-8.0, -248.0, -22.0))
        for modality in ("t1", "t1ce", "t2", "flair"):
            big = sitk.Resample(phantom.image(modality), grid, sitk.Transform(), sitk.sitkLinear, 0, sitk.sitkInt16)
            sitk.WriteImage(big, str(out / f"big_{modality}.nii.gz"))
        del phantom, big
        from GliomaAnalysisLib import analyze
        from GliomaAnalysisLib.reporting.writers import write_outputs

        start = time.perf_counter()
        result = analyze(out, fast=not args.quality, model_dir=args.model_dir)
        write_outputs(result, out / "result", figures=False)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    estimate = next(line for line in result.log if "memory estimate" in line).split("memory estimate")[1]
    print(f"512x512x400 at 0.5 mm: {seconds:.1f} s (load + analyze + write), peak RSS {peak:.0f} MB, "
          f"guard estimate (after loading) {estimate.strip()}, WT {result.volumes_ml['wt']} mL")


if __name__ == "__main__":
    main()
