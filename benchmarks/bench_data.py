"""Data pipeline throughput: patches per second from prepared phantom studies, and whole-body preprocessing time.

Writes AutoPET phantoms to a temporary folder, builds the dataset and the prepared (preprocessed) cache,
then times full epochs of ``MirrorPatchDataset`` through a ``torch.utils.data.DataLoader`` for each worker
count (medians of several epochs after one warm-up epoch). Also times ``preprocess_study`` on a whole-body
sized 400 x 400 x 326 study held in memory. Prints a table and writes JSON (``--out``).

    python benchmarks/bench_data.py --out benchmarks/results/data.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from datasets import concatenate_datasets

from mirror_unet_hf.data import (
    MirrorPatchDataset,
    PreprocessingConfig,
    load_mirror_dataset,
    make_phantoms,
    preprocess_study,
)
from mirror_unet_hf.data.nifti_io import atomic_write_bytes


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/data.json", help="JSON file for the results")
    parser.add_argument("--studies", type=int, default=8, help="phantom studies to generate (default 8)")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=[96, 96, 80], help="phantom shape in voxels (default 96 96 80)"
    )
    parser.add_argument("--patch", type=int, nargs=3, default=[96, 96, 96], help="patch size (default 96 96 96)")
    parser.add_argument("--batch-size", type=int, default=2, help="DataLoader batch size (default 2)")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 2],
        help="DataLoader worker counts to time (default: 0, the DataLoader default, and 2)",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed epochs per worker count after one warm-up (default 5)"
    )
    parser.add_argument(
        "--whole-body-repeats",
        type=int,
        default=3,
        help="timed whole-body preprocessing runs after one warm-up (default 3)",
    )
    return parser.parse_args()


def time_epochs(dataset: MirrorPatchDataset, workers: int, batch_size: int, repeats: int) -> list[float]:
    """Patches per second of each timed epoch (the first epoch, including worker start-up, is a warm-up)."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0
    )
    rates = []
    for epoch in range(repeats + 1):
        dataset.set_epoch(epoch)
        start = time.perf_counter()
        patches = sum(len(batch["case_id"]) for batch in loader)
        elapsed = time.perf_counter() - start
        if epoch > 0:
            rates.append(patches / elapsed)
    return rates


def time_whole_body(repeats: int) -> list[float]:
    """Seconds for ``preprocess_study`` on an in-memory 400x400x326 AutoPET-like study (LAS, 2.0364 mm -> 2 mm)."""
    shape = (400, 400, 326)
    rng = np.random.default_rng(0)
    affine = np.diag([-2.0364, 2.0364, 3.0, 1.0])
    ct = (rng.random(shape, dtype=np.float32) * 1400 - 1000).astype(np.float32)
    pet = (rng.random(shape, dtype=np.float32) * 5).astype(np.float32)
    seg = (rng.random(shape) > 0.999).astype(np.uint8)
    images = {"ct": nib.Nifti1Image(ct, affine), "pet": nib.Nifti1Image(pet, affine)}
    label = nib.Nifti1Image(seg, affine)
    config = PreprocessingConfig.for_dataset("autopet")
    seconds = []
    for run in range(repeats + 1):
        start = time.perf_counter()
        preprocess_study(images, config, label=label)
        if run > 0:
            seconds.append(time.perf_counter() - start)
    return seconds


def main() -> int:
    args = parse_args()
    config = PreprocessingConfig.for_dataset("autopet")
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
    }
    with tempfile.TemporaryDirectory(prefix="bench_data_") as scratch:
        scratch = Path(scratch)
        start = time.perf_counter()
        make_phantoms("autopet", scratch / "raw", n=args.studies, seed=0, shape=tuple(args.shape))
        results["phantoms_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        splits = load_mirror_dataset("autopet", scratch / "raw", fold=0, num_folds=2, cache_dir=scratch / "cache")
        results["build_seconds"] = time.perf_counter() - start
        studies = concatenate_datasets([splits["train"], splits["validation"]])
        start = time.perf_counter()
        dataset = MirrorPatchDataset(studies, config, tuple(args.patch), patches_per_volume=4)
        results["prepare_seconds_per_study"] = (time.perf_counter() - start) / len(studies)
        reads = []
        for index in range(len(dataset.studies)):
            start = time.perf_counter()
            dataset.studies.training_arrays(index)
            reads.append(time.perf_counter() - start)
        results["read_prepared_study_ms_median"] = 1000 * statistics.median(reads)
        results["patches_per_second"] = {}
        for workers in args.workers:
            rates = time_epochs(dataset, workers, args.batch_size, args.repeats)
            results["patches_per_second"][str(workers)] = {"median": statistics.median(rates), "runs": rates}
    whole = time_whole_body(args.whole_body_repeats)
    results["whole_body_preprocess_seconds"] = {"median": statistics.median(whole), "runs": whole}

    print(
        f"phantoms: {args.studies} x {tuple(args.shape)} in {results['phantoms_seconds']:.1f} s; dataset build {results['build_seconds']:.1f} s; "
        f"preprocess {results['prepare_seconds_per_study']:.2f} s/study; read one prepared study {results['read_prepared_study_ms_median']:.1f} ms"
    )
    print(f"{'workers':>8} | {'patches/s (median)':>18} | {'patch':>12} | batch")
    for workers, value in results["patches_per_second"].items():
        print(f"{workers:>8} | {value['median']:>18.1f} | {'x'.join(map(str, args.patch)):>12} | {args.batch_size}")
    print(
        f"whole-body 400x400x326 preprocess_study (in memory): median {results['whole_body_preprocess_seconds']['median']:.2f} s"
    )
    out = Path(args.out)
    atomic_write_bytes(out, (json.dumps(results, indent=2) + "\n").encode())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
