"""Time ``autopet_metrics`` (one labelling pass + bincount) against a per-component loop written the way
the official AutoPET script works (one full-volume mask per component), on a whole-body mask pair,
and check that both give identical numbers.

    python benchmarks/bench_metrics.py [--mask SEG.nii.gz] [--repeats 3] [--out benchmarks/results/metrics.json]

Ground truth: the real AutoPET mask in ../shared/data (400×400×284) when present, else a synthetic one of the
same size. Prediction: a perturbed copy (largest lesion dilated, second dropped, others eroded, false-positive
blobs added). Both implementations get the same in-memory uint8 arrays: file reading is not timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cc3d
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirror_unet_hf.errors import UserInputError  # noqa: E402
from mirror_unet_hf.evaluation import check_outputs_free, load_mask, write_json  # noqa: E402
from mirror_unet_hf.metrics import autopet_metrics, label_components, voxel_volume_ml  # noqa: E402

DEFAULT_MASK = ROOT.parent / "shared" / "data" / "autopet_lesion_mask" / "fdg_04606080a0_SEG.nii.gz"
WHOLE_BODY_SHAPE = (400, 400, 284)
WHOLE_BODY_SPACING = (2.0364, 2.0364, 3.0)


def per_component_metrics(pred: np.ndarray, gt: np.ndarray, spacing) -> dict[str, float | None]:
    """The straightforward version: label, then for every component build its full-volume mask and test it."""

    def isolated_voxels(mask: np.ndarray, other: np.ndarray) -> int:
        labels = cc3d.connected_components(mask, connectivity=18)
        total = 0
        for component_id in range(1, int(labels.max()) + 1):
            component = np.isin(labels, component_id)
            if (component * other).sum() == 0:
                total += int(component.sum())
        return total

    voxel_ml = voxel_volume_ml(spacing)
    pred, gt = (pred != 0).astype(np.uint8), (gt != 0).astype(np.uint8)
    has_lesions = gt.sum() > 0
    dice = 2 * int((pred * gt).sum()) / (int(pred.sum()) + int(gt.sum())) if has_lesions else None
    fnv = isolated_voxels(gt, pred) * voxel_ml if has_lesions else None
    return {"dice": dice, "fpv_ml": isolated_voxels(pred, gt) * voxel_ml, "fnv_ml": fnv}


def fast_metrics(pred: np.ndarray, gt: np.ndarray, spacing) -> dict[str, float | None]:
    m = autopet_metrics(pred, gt, spacing)
    return {"dice": m.dice, "fpv_ml": m.fpv_ml, "fnv_ml": m.fnv_ml}


def synthetic_ground_truth(rng: np.random.Generator) -> np.ndarray:
    gt = np.zeros(WHOLE_BODY_SHAPE, dtype=np.uint8)
    grid = np.ogrid[tuple(slice(0, s) for s in WHOLE_BODY_SHAPE)]
    for _ in range(6):
        centre = rng.integers(60, 220, size=3)
        radius = rng.integers(4, 12)
        gt[sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2] = 1
    return gt


def perturb(gt: np.ndarray, rng: np.random.Generator, fp_blobs: int) -> np.ndarray:
    """Largest lesion dilated by one voxel, second dropped, the rest eroded; ``fp_blobs`` spheres away from lesions."""
    labels, n = label_components(gt != 0)
    sizes = np.bincount(labels[labels > 0], minlength=n + 1)
    order = np.argsort(-sizes[1:]) + 1
    structure = ndimage.generate_binary_structure(3, 2)
    pred = np.zeros_like(gt, dtype=np.uint8)
    for rank, label in enumerate(order):
        lesion = labels == label
        if rank == 0:
            pred |= ndimage.binary_dilation(lesion, structure).astype(np.uint8)
        elif rank >= 2:
            eroded = ndimage.binary_erosion(lesion, structure)
            pred |= (eroded if eroded.any() else lesion).astype(np.uint8)
    near_lesions = ndimage.binary_dilation(gt != 0, iterations=6)
    added = 0
    while added < fp_blobs:
        radius = int(rng.integers(1, 4))
        centre = [int(rng.integers(radius, s - radius)) for s in gt.shape]
        box = tuple(slice(c - radius, c + radius + 1) for c in centre)
        if near_lesions[box].any() or pred[box].any():
            continue
        offsets = np.ogrid[tuple(slice(-radius, radius + 1) for _ in range(3))]
        pred[box] |= (sum(o**2 for o in offsets) <= radius**2).astype(np.uint8)
        added += 1
    return pred


def time_runs(function, repeats: int, *args) -> tuple[list[float], dict]:
    result = function(*args)  # warm-up (page faults, caches, lazy imports)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        runs.append(time.perf_counter() - start)
    return runs, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mask", type=Path, default=DEFAULT_MASK, help="ground-truth NIfTI mask (synthetic if absent)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation after one warm-up")
    parser.add_argument("--fp-blobs", type=int, default=40, help="false-positive spheres added to the prediction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "metrics.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    check_outputs_free([args.out], args.overwrite)

    rng = np.random.default_rng(args.seed)
    if args.mask.exists():
        mask = load_mask(args.mask)
        gt, spacing, source = (mask.data != 0).astype(np.uint8), mask.spacing, str(args.mask.name)
    else:
        print(f"{args.mask} absent: using a synthetic whole-body-size mask", file=sys.stderr)
        gt, spacing, source = synthetic_ground_truth(rng), WHOLE_BODY_SPACING, "synthetic"
    pred = perturb(gt, rng, args.fp_blobs)
    gt_components = label_components(gt)[1]
    pred_components = label_components(pred)[1]

    fast_runs, fast = time_runs(fast_metrics, args.repeats, pred, gt, spacing)
    reference_runs, reference = time_runs(per_component_metrics, args.repeats, pred, gt, spacing)
    identical = fast == reference
    fast_median, reference_median = statistics.median(fast_runs), statistics.median(reference_runs)

    print(
        f"input {source}: shape {gt.shape}, spacing {tuple(round(s, 5) for s in spacing)} mm, "
        f"{gt_components} GT lesions, {pred_components} predicted components"
    )
    print(f"{'implementation':<34}{'median s':>10}  runs (s)")
    rows = (("single pass (label + bincount)", fast_runs), ("per component (official loop)", reference_runs))
    for name, runs in rows:
        print(f"{name:<34}{statistics.median(runs):>10.3f}  {', '.join(f'{r:.3f}' for r in runs)}")
    print(f"speed-up {reference_median / fast_median:.1f}x; identical numbers: {'yes' if identical else 'NO'}")
    print(f"metrics: dice {fast['dice']}, fpv_ml {fast['fpv_ml']}, fnv_ml {fast['fnv_ml']}")

    write_json(
        {
            "input": source,
            "shape": list(gt.shape),
            "spacing_mm": list(spacing),
            "gt_lesions": gt_components,
            "pred_components": pred_components,
            "fp_blobs": args.fp_blobs,
            "seed": args.seed,
            "repeats": args.repeats,
            "single_pass_s": {"median": fast_median, "runs": fast_runs},
            "per_component_s": {"median": reference_median, "runs": reference_runs},
            "speedup": reference_median / fast_median,
            "identical": identical,
            "metrics_single_pass": fast,
            "metrics_per_component": reference,
            "environment": {
                "python": platform.python_version(),
                "numpy": np.__version__,
                "machine": platform.machine(),
                "cpu_count": os.cpu_count(),
            },
        },
        args.out,
        args.overwrite,
    )
    print(f"wrote {args.out}")
    return 0 if identical else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserInputError as error:
        print(f"bench_metrics: error: {error}", file=sys.stderr)
        sys.exit(2)
