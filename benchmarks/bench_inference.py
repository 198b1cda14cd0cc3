"""Whole-body inference: `predict_study` (the `mirror-unet predict` path) against the reference pipeline.

    python benchmarks/bench_inference.py                      # 2 x 400 x 400 x 326 study, autopet-v3, all variants
    python benchmarks/bench_inference.py --shape 200 200 160  # quicker
    python benchmarks/bench_inference.py --model demo/checkpoint --variants reference default

The study is synthetic: a phantom body (`make_phantoms`) of the AutoPET grid size written as CTres/SUV
NIfTI files at 2.0364 x 2.0364 x 3.0 mm (cached under --cache). The model is `--model` (a
save_pretrained folder) or the `autopet-v3` preset with official widths, random-initialised with a
fixed seed. Each variant runs in its own process (so each has its own peak resident memory) and times preprocessing + network + restoring the mask onto the PET grid:

- reference: what a user of the official code runs: the same model in fp32, MONAI
  `sliding_window_inference` (window 96³, window batch 4, overlap 0.25, constant blending) over the
  full forward pass (`model(x).logits`), then argmax, on the volume preprocessed by `preprocess_study`;
- reference-logits: the same with `model(x, parts=["logits"])` (only the branch the mask needs);
- fp32: `predict_study` with `precision="fp32"` (the exact path);
- default: `predict_study` with its defaults (`precision="auto"`: bf16 on CPUs with native bf16);
- bf16-1worker, bf16-window128, bf16-batch4: the default with one change each.

Reported per variant: median wall seconds, network seconds, speed-up over the reference measured in the
same run, achieved GFLOP/s (FlopCounterMode FLOPs of one window x windows / network seconds) and its
share of this CPU's matmul peak measured in the same run, peak resident memory of the variant's process
(VmHWM, read by the process itself; also the peak up to the first finished window, i.e. preprocessing),
and agreement of the mask with the reference mask (fraction of equal voxels, Dice of the foreground).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, matmul_peak, memory_mib, print_table, run_child, summary, write_json

SPACING = (2.0364, 2.0364, 3.0)
VARIANTS = ("reference", "reference-logits", "fp32", "default", "bf16-1worker", "bf16-window128", "bf16-batch4")
DEFAULT_VARIANTS = ("reference", "fp32", "default", "bf16-1worker", "bf16-window128")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=[400, 400, 326],
        help="study shape in voxels (default: AutoPET's 400 400 326)",
    )
    parser.add_argument(
        "--model", help="save_pretrained folder (default: autopet-v3, official widths, random init, seed 0)"
    )
    parser.add_argument(
        "--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS, help="variants to run"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each of our variants (default 3)")
    parser.add_argument(
        "--reference-repeats", type=int, default=1, help="runs of the reference variants (default 1: they are slow)"
    )
    parser.add_argument(
        "--cache", help="folder for the synthetic study and the random model (default: a temporary folder)"
    )
    parser.add_argument("--peak-repeats", type=int, default=5, help="timed matmuls for the peak (default 5)")
    parser.add_argument("--out", default=str(RESULTS / "inference.json"), help="JSON results file")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--study", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------ setup


def make_study(folder: Path, shape: tuple[int, int, int]) -> Path:
    """CTres.nii.gz + SUV.nii.gz (+ SEG) of one phantom study of `shape`, relabelled to AutoPET's spacing."""
    import nibabel as nib

    from mirror_unet_hf.data import make_phantoms
    from mirror_unet_hf.data.nifti_io import atomic_write_bytes, encode_nifti

    study = folder / f"study-{'x'.join(map(str, shape))}"
    if (study / "SUV.nii.gz").is_file():
        return study
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        # seed 1 draws a patient with lesions (lymphoma), so the mask is not empty for a trained model
        root = make_phantoms("autopet", Path(scratch), 1, seed=1, shape=shape)
        source = sorted(root.rglob("SUV.nii.gz"))[0].parent
        study.mkdir(parents=True, exist_ok=True)
        for name in ("CTres.nii.gz", "SUV.nii.gz", "SEG.nii.gz"):
            image = nib.load(source / name)
            affine = image.affine.copy()
            for axis in range(3):
                affine[:3, axis] *= SPACING[axis] / float(np.linalg.norm(affine[:3, axis]))
            data = np.asanyarray(image.dataobj)
            out = nib.Nifti1Image(data, affine)
            out.header.set_data_dtype(data.dtype)
            atomic_write_bytes(study / name, encode_nifti(out, compresslevel=1))
    print(f"made a {shape} phantom study in {time.perf_counter() - start:.0f} s: {study}", file=sys.stderr)
    return study


def make_model(folder: Path) -> Path:
    import torch

    from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel

    path = folder / "autopet-v3-random-seed0"
    if not (path / "model.safetensors").is_file():
        torch.manual_seed(0)
        MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-v3")).eval().save_pretrained(path)
    return path


def window_flops(model_path: Path, window: int) -> dict:
    """FLOPs of one window: the full forward pass and the final-mask branch only."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mirror_unet_hf.inference import load_model

    model = load_model(model_path)
    x = torch.zeros(1, len(model.config.modalities), window, window, window)
    flops = {}
    for name, parts in (("all", None), ("logits", ["logits"])):
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x, parts=parts)
        flops[name] = counter.get_total_flops()
    return flops


# ------------------------------------------------------------------------------------------ child


def child(args) -> int:
    """One variant in this process: time predict_study or the reference pipeline; write JSON + the mask."""
    import torch

    from mirror_unet_hf.data.preprocessing import preprocess_study
    from mirror_unet_hf.inference import load_model, predict_study, study_inputs
    from mirror_unet_hf.sliding_window import SlidingWindowSettings

    variant = args.child
    model = load_model(args.model)
    inputs = study_inputs(args.study, list(model.config.modalities))
    window = tuple(model.config.patch_size)
    # warm-up: one window through the same network path (first-call costs are not per-study costs)
    warm = torch.rand(len(model.config.modalities), *window)
    record: dict = {"variant": variant, "rss_mib_model_loaded": memory_mib()["rss_mib"]}
    if variant.startswith("reference"):
        from monai.inferers import sliding_window_inference

        parts = None if variant == "reference" else ["logits"]

        def predictor(x):
            return model(x, parts=parts).logits

        with torch.no_grad():
            predictor(warm[None])
            start = time.perf_counter()
            study = preprocess_study(inputs, model.config)
            after_preprocess = time.perf_counter()
            record["peak_rss_mib_preprocess"] = memory_mib()["peak_rss_mib"]
            logits = sliding_window_inference(
                torch.from_numpy(study.image)[None], window, 4, predictor, overlap=0.25, mode="constant"
            )[0]
            after_network = time.perf_counter()
            values = np.asarray(model.config.final_label_values, dtype=np.uint8)
            labels = values[logits.argmax(dim=0).numpy()]
            del logits
            mask = np.asanyarray(study.restore_nifti(labels, order=0, dtype=np.uint8).dataobj)
            end = time.perf_counter()
        record.update(
            seconds=end - start,
            stages={
                "preprocess": after_preprocess - start,
                "network": after_network - after_preprocess,
                "restore": end - after_network,
            },
            precision="fp32",
            workers=1,
            window=list(window),
            window_batch=4,
            windows=_monai_windows(study.image.shape[1:], window),
        )
    else:
        settings = {
            "fp32": SlidingWindowSettings(precision="fp32"),
            "default": None,
            "bf16-1worker": SlidingWindowSettings(precision="bf16", workers=1),
            "bf16-window128": SlidingWindowSettings(precision="bf16", window=(128, 128, 128)),
            "bf16-batch4": SlidingWindowSettings(precision="bf16", window_batch=4),
        }[variant]
        from mirror_unet_hf.sliding_window import sliding_window_predict

        sliding_window_predict(model, warm, settings or SlidingWindowSettings(precision="auto"), keep_logits=False)

        def first_window(done, total):
            # the peak up to the end of preprocessing (+ one window): set the moment the first window is in
            record.setdefault("peak_rss_mib_preprocess", memory_mib()["peak_rss_mib"])

        start = time.perf_counter()
        prediction = predict_study(model, inputs, settings, with_classification=False, progress=first_window)
        end = time.perf_counter()
        mask = np.asanyarray(prediction.mask.dataobj)
        used = settings or SlidingWindowSettings(precision="auto")
        from mirror_unet_hf.sliding_window import effective_window

        record.update(
            seconds=end - start,
            stages=prediction.seconds,
            precision=prediction.run["precision"],
            workers=prediction.run["workers"],
            windows=prediction.run["windows"],
            window=list(effective_window(model, prediction.preprocessed.image.shape[1:], used)),
            window_batch=prediction.run["window_batch"],
        )
    record["foreground_fraction"] = float((mask != 0).mean())
    record["peak_rss_mib"] = memory_mib()["peak_rss_mib"]
    np.save(Path(args.result).with_suffix(".npy"), mask)
    Path(args.result).write_text(json.dumps(record))
    return 0


def _monai_windows(shape, window, overlap=0.25) -> int:
    from mirror_unet_hf.sliding_window import window_starts

    count = 1
    for s, w in zip(shape, window):
        # MONAI's scan interval is int(w * (1 - overlap)) with the last window flush: the same tiling
        count *= len(window_starts(s, w, overlap))
    return count


# ------------------------------------------------------------------------------------------ main


def agreement(mask: np.ndarray, reference: np.ndarray) -> dict:
    a, b = mask != 0, reference != 0
    total = int(a.sum()) + int(b.sum())
    return {
        "voxels_equal": float((mask == reference).mean()),
        "dice": (2.0 * int((a & b).sum()) / total) if total else None,
        "foreground_voxels": int(a.sum()),
        "reference_foreground_voxels": int(b.sum()),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    shape = tuple(args.shape)
    temporary = None
    if args.cache:
        cache = Path(args.cache)
        cache.mkdir(parents=True, exist_ok=True)
    else:
        temporary = tempfile.TemporaryDirectory(prefix="bench_inference_")
        cache = Path(temporary.name)
    try:
        study = make_study(cache, shape)
        model_path = Path(args.model) if args.model else make_model(cache)
        from mirror_unet_hf.inference import load_model

        config = load_model(model_path).config
        window = int(config.patch_size[0])
        flops = window_flops(model_path, window)
        # every layer's work is proportional to the voxel count (all sizes are multiples of the stride)
        per_voxel = {name: value / window**3 for name, value in flops.items()}
        peak = matmul_peak(args.peak_repeats)
        results = {
            "benchmark": "whole-body inference",
            "machine_before": machine(),
            "settings": {
                "shape": list(shape),
                "spacing_mm": list(SPACING),
                "model": str(args.model or "autopet-v3 random init, seed 0"),
                "preset_patch": list(config.patch_size),
                "variants": args.variants,
                "repeats": args.repeats,
                "reference_repeats": args.reference_repeats,
            },
            "matmul_peak": peak,
            "window_flops": {"window": window, "all_parts": flops["all"], "logits_only": flops["logits"]},
            "variants": {},
        }
        order = [v for v in VARIANTS if v in args.variants]
        masks = {}
        for variant in order:
            repeats = args.reference_repeats if variant.startswith("reference") else args.repeats
            runs = []
            for index in range(repeats):
                result_file = cache / f"result-{variant}-{index}.json"
                command = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--child",
                    variant,
                    "--study",
                    str(study),
                    "--model",
                    str(model_path),
                    "--result",
                    str(result_file),
                ]
                code, wall, peak_mib = run_child(command)
                if code != 0:
                    raise SystemExit(f"variant {variant} failed with exit code {code}")
                record = json.loads(result_file.read_text())
                record.update(process_seconds=wall, ru_maxrss_mib=peak_mib)
                peak_mib = record["peak_rss_mib"]
                runs.append(record)
                masks[variant] = np.load(result_file.with_suffix(".npy"))
                print(
                    f"  {variant} run {index + 1}/{repeats}: {record['seconds']:.1f} s (network {record['stages']['network']:.1f} s), "
                    f"peak {peak_mib:.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
            seconds = [r["seconds"] for r in runs]
            network = [r["stages"]["network"] for r in runs]
            per_window = per_voxel["all" if variant == "reference" else "logits"] * float(np.prod(runs[0]["window"]))
            gflops = per_window * runs[0]["windows"] / statistics.median(network) / 1e9
            results["variants"][variant] = {
                "seconds": summary(seconds),
                "network_seconds": summary(network),
                "stages_first_run": runs[0]["stages"],
                "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                "peak_rss_mib_until_first_window": max(r["peak_rss_mib_preprocess"] for r in runs),
                "rss_mib_model_loaded": runs[0]["rss_mib_model_loaded"],
                "precision": runs[0]["precision"],
                "workers": runs[0]["workers"],
                "window": runs[0]["window"],
                "window_batch": runs[0]["window_batch"],
                "windows": runs[0]["windows"],
                "flops_per_window": per_window,
                "network_gflops": gflops,
                "percent_of_peak": 100.0 * gflops / peak[runs[0]["precision"]]["peak_gflops"],
                "percent_of_bf16_peak": 100.0 * gflops / peak["bf16"]["peak_gflops"],
                "foreground_fraction": runs[0]["foreground_fraction"],
            }
        reference_name = (
            "reference" if "reference" in masks else next((v for v in order if v.startswith("reference")), None)
        )
        if reference_name is not None:
            reference = results["variants"][reference_name]
            for variant, entry in results["variants"].items():
                entry["speedup_vs_reference"] = reference["seconds"]["median"] / entry["seconds"]["median"]
                entry["network_speedup_vs_reference"] = (
                    reference["network_seconds"]["median"] / entry["network_seconds"]["median"]
                )
                entry["agreement_with_reference"] = agreement(masks[variant], masks[reference_name])
        results["reference_variant"] = reference_name
        results["machine_after"] = machine()
        rows = []
        for variant, e in results["variants"].items():
            agree = e.get("agreement_with_reference") or {}
            rows.append(
                [
                    variant,
                    e["precision"],
                    e["workers"],
                    "x".join(map(str, e["window"])),
                    e["window_batch"],
                    e["windows"],
                    e["seconds"]["median"],
                    e["network_seconds"]["median"],
                    e.get("speedup_vs_reference"),
                    e["network_gflops"],
                    e["percent_of_bf16_peak"],
                    e["peak_rss_mib"],
                    e["peak_rss_mib_until_first_window"],
                    None if not agree else 100.0 * agree["voxels_equal"],
                    agree.get("dice"),
                    100.0 * e["foreground_fraction"],
                ]
            )
        print_table(
            [
                "variant",
                "prec",
                "workers",
                "window",
                "wb",
                "windows",
                "total s",
                "network s",
                "speed-up",
                "GFLOP/s",
                "% bf16 peak",
                "peak MiB",
                "peak MiB to 1st window",
                "% voxels =",
                "Dice vs ref",
                "% fg",
            ],
            rows,
            title=f"whole-body {shape} at {SPACING} mm, model {results['settings']['model']}; matmul peak "
            f"{peak['fp32']['peak_gflops']:.0f} GFLOP/s fp32, {peak['bf16']['peak_gflops']:.0f} bf16; "
            f"load {results['machine_before']['load_average_1_5_15min']} -> {results['machine_after']['load_average_1_5_15min']}",
        )
        print(f"wrote {write_json(results, args.out)}")
        return 0
    finally:
        if temporary is not None:
            temporary.cleanup()


if __name__ == "__main__":
    sys.exit(main())
