"""The prepared cache on full-size phantoms: bytes per study before and after, studies/s at 1 and 2 processes,
patch and whole-study read times, the rounding against the exact path, and a projection for autoPET III/IV.

"Before" is what the previous cache stored per study: the builder's Arrow with the NIfTI bytes embedded
(measured here with ``load_mirror_dataset``) plus the float32 rows of the old ``prepare_studies`` (whole volume
float32, label uint8, positives int64: computed from the shapes; checked against the old code once, see the
README). "After" is the size of each study's prepared file. The target: after <= 25 % of the float32 size of the
preprocessed volumes (channels x voxels x 4 bytes).

    python benchmarks/bench_prepare.py                                  # 4 phantoms of 400 x 400 x 326 (~4 min to make)
    python benchmarks/bench_prepare.py --phantoms /tmp/full --studies 4 # reuse a phantom folder
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, print_table, write_json

from mirror_unet_hf.data import (
    PreprocessingConfig,
    extract_patch,
    load_mirror_dataset,
    make_phantoms,
    prepare_studies,
    preprocess_study,
)
from mirror_unet_hf.data.preparation import load_prepared_dataset, prepare_dataset
from mirror_unet_hf.tasks import get_task

RELEASE_STUDIES = 1611  # autoPET III/IV: 1,014 FDG + 597 PSMA


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "prepare.json"), help="JSON file for the results")
    parser.add_argument("--phantoms", default=None, help="an AutoPET phantom folder to use (default: make one)")
    parser.add_argument("--studies", type=int, default=4, help="phantom studies to make (default 4)")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=[400, 400, 326], help="phantom shape (default 400 400 326)"
    )
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="--num_proc values to time (default 1 2)")
    parser.add_argument("--patch", type=int, default=96, help="patch side for the read timing (default 96)")
    parser.add_argument("--patch-reads", type=int, default=40, help="patches timed per study (default 40)")
    parser.add_argument("--scratch", default=None, help="folder for the caches (default: a temporary folder)")
    return parser.parse_args()


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its finished children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def prepare_runs(raw: Path, scratch: Path, procs: list[int]) -> dict:
    """Wall time, studies/s and CPU seconds per study of a fresh ``prepare_dataset`` per process count.

    On a machine whose cores are busy with other work the wall time cannot show the scaling; the CPU seconds per
    study can: when they stay the same with more processes, the work is spread without a serial part."""
    runs = {}
    for count in procs:
        cpu, start = cpu_seconds(), time.perf_counter()
        index = prepare_dataset("autopet", raw, scratch / f"cache-{count}", num_proc=count, progress=False)
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        studies = len(index.rows)
        runs[str(count)] = {
            "seconds": seconds,
            "studies": studies,
            "studies_per_second": studies / seconds,
            "cpu_seconds_per_study": cpu / studies,
            "cpu_bound_studies_per_second": count * studies / cpu,
            "load_average_after": os.getloadavg(),
        }
        if count == 1:  # the study is prepared in this process: its peak is one worker's
            runs[str(count)]["peak_rss_mib_per_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"num_proc {count}: {studies} studies in {seconds:.1f} s ({studies / seconds:.3f} studies/s), "
            f"{cpu / studies:.1f} CPU s per study, load {os.getloadavg()[0]:.1f}"
        )
    return runs


def sizes(raw: Path, scratch: Path, index_rows: list[dict], shapes: list[tuple]) -> dict:
    """Bytes per study: the builder's Arrow (measured), the old float32 rows (from the shapes), the new files."""
    splits = load_mirror_dataset("autopet", raw, fold=0, num_folds=2, cache_dir=scratch / "builder")
    files = {f["filename"] for split in splits.values() for f in split.cache_files}
    n = len(index_rows)
    builder = sum(os.path.getsize(f) for f in files) / n
    old_rows = statistics.mean(
        s[0] * int(np.prod(s[1:])) * 4 + int(np.prod(s[1:])) + 8 * row["label_voxels"]
        for s, row in zip(shapes, index_rows)
    )
    float32 = statistics.mean(s[0] * int(np.prod(s[1:])) * 4 for s in shapes)
    after = statistics.mean(row["bytes"] for row in index_rows)
    return {
        "raw_nifti_bytes_per_study": sum(p.stat().st_size for p in raw.rglob("*.nii.gz")) / n,
        "before_builder_arrow_bytes_per_study": builder,
        "before_prepared_float32_bytes_per_study": old_rows,
        "before_total_bytes_per_study": builder + old_rows,
        "float32_preprocessed_bytes_per_study": float32,
        "after_bytes_per_study": after,
        "after_fraction_of_float32": after / float32,
        "after_fraction_of_before": after / (builder + old_rows),
    }


def read_times(splits, config, patch: int, reads: int, scratch: Path) -> dict:
    """ms per patch from the cache, and from a memory-mapped float32 array (how the old cache was read)."""
    studies = prepare_studies(splits, config)
    rng = np.random.default_rng(0)
    cached, mapped, whole = [], [], []
    for index in range(len(studies)):
        start = time.perf_counter()
        study = studies[index]
        whole.append(time.perf_counter() - start)
        path = scratch / "float32.npy"
        np.save(path, study.image)
        array = np.load(path, mmap_mode="r")
        del study
        arrays = studies.training_arrays(index)
        centres = [[int(rng.integers(0, n)) for n in arrays["image"].shape[1:]] for _ in range(reads)]
        for source, times in ((arrays["image"], cached), (array, mapped)):
            for centre in centres:
                start = time.perf_counter()
                extract_patch(source, centre, (patch,) * 3)
                times.append(time.perf_counter() - start)
        del array
        path.unlink()
    return {
        "patch_ms_cache_median": 1000 * statistics.median(cached),
        "patch_ms_float32_memmap_median": 1000 * statistics.median(mapped),
        "whole_study_read_seconds_median": statistics.median(whole),
        "patch": patch,
        "patches_timed": len(cached),
    }


def rounding(raw: Path, splits, config) -> dict:
    """Largest difference between a cached study and ``preprocess_study`` on the raw files, per channel."""
    task = get_task("autopet")
    by_case = {study.case_id: study for study in task.discover(raw / task.folder)}
    studies = prepare_studies(splits, config)
    worst = dict.fromkeys(config.modalities, 0.0)
    for index, case_id in enumerate(splits["case_id"][:2]):
        record = task.read_study(by_case[case_id])
        images = {name: record[name]["bytes"] for name in config.modalities}
        exact = preprocess_study(images, config, label=record["label"]["bytes"]).image
        got = studies[index].image
        for channel, name in enumerate(config.modalities):
            worst[name] = max(worst[name], float(np.abs(got[channel] - exact[channel]).max()))
    return {"max_abs_difference_normalised": worst, "bound_ct": 0.5 / 350, "bound_pet": 2.0**-11}


def main() -> int:
    args = parse_args()
    results: dict = {"machine": machine(), "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    with tempfile.TemporaryDirectory(prefix="bench_prepare_", dir=args.scratch) as scratch:
        scratch = Path(scratch)
        raw = Path(args.phantoms) if args.phantoms else scratch / "raw"
        if not args.phantoms:
            start = time.perf_counter()
            make_phantoms("autopet", raw, n=args.studies, seed=0, shape=tuple(args.shape))
            results["phantoms_seconds"] = time.perf_counter() - start
        results["prepare"] = prepare_runs(raw, scratch, args.procs)
        config = PreprocessingConfig.for_dataset("autopet")
        cache = scratch / f"cache-{args.procs[0]}"
        splits = load_prepared_dataset("autopet", raw, config, fold=0, num_folds=2, cache_dir=cache)
        table = [*splits["train"], *splits["validation"]]
        shapes = [
            (2, *prepare_studies(splits[s], config).open(i).meta["shape"])
            for s in splits
            for i in range(len(splits[s]))
        ]
        results["bytes"] = sizes(raw, scratch, table, shapes)
        results["reads"] = read_times(splits["train"], config, args.patch, args.patch_reads, scratch)
        results["rounding"] = rounding(raw, splits["train"], config)
    best = max(results["prepare"].values(), key=lambda run: run["studies_per_second"])
    per_study = results["bytes"]["after_bytes_per_study"]
    results["projection_autopet3"] = {
        "studies": RELEASE_STUDIES,
        "disk_bytes_after": RELEASE_STUDIES * per_study,
        "disk_bytes_before": RELEASE_STUDIES * results["bytes"]["before_total_bytes_per_study"],
        "hours": {
            count: RELEASE_STUDIES / run["studies_per_second"] / 3600 for count, run in results["prepare"].items()
        },
        "hours_best": RELEASE_STUDIES / best["studies_per_second"] / 3600,
        # on free cores: the CPU seconds per study shared by the processes
        "hours_cpu_bound": {
            count: RELEASE_STUDIES / run["cpu_bound_studies_per_second"] / 3600
            for count, run in results["prepare"].items()
        },
    }
    results["machine"]["load_average_after"] = os.getloadavg()
    write_json(results, args.out)
    b = results["bytes"]
    print_table(
        ["", "MB per study", "of float32"],
        [
            ["before: builder Arrow (NIfTI bytes)", b["before_builder_arrow_bytes_per_study"] / 1e6, ""],
            ["before: prepared float32 rows", b["before_prepared_float32_bytes_per_study"] / 1e6, ""],
            ["float32 preprocessed volumes", b["float32_preprocessed_bytes_per_study"] / 1e6, "100 %"],
            ["after: prepared file", b["after_bytes_per_study"] / 1e6, f"{100 * b['after_fraction_of_float32']:.1f} %"],
        ],
        title="Bytes per study",
    )
    p = results["projection_autopet3"]
    print(
        f"projection for {RELEASE_STUDIES} studies: {p['disk_bytes_after'] / 1e9:.0f} GB "
        f"(before {p['disk_bytes_before'] / 1e12:.2f} TB), "
        + ", ".join(f"{h:.1f} h at {c} process(es)" for c, h in p["hours"].items())
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
