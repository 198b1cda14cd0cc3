"""Run every benchmark with settings that fit in about 15 minutes on a 2-core CPU, one after the other.

    python benchmarks/run_all.py            # default sizes (whole-body 400 x 400 x 326, 96³ patches), fewer repeats
                                            # and variants than each script's own defaults
    python benchmarks/run_all.py --quick    # smaller sizes: a smoke run of every script in a few minutes
    python benchmarks/run_all.py --only inference network

Each script prints its own table and writes benchmarks/results/<name>.json; this script adds
benchmarks/results/run_all.json with each script's command, exit code and wall time, and the machine
load before and after (other processes on a shared machine slow every figure: read the ratios).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine, print_table, write_json

HERE = Path(__file__).resolve().parent

# name -> (arguments at default sizes within the budget, arguments for --quick)
PLAN = {
    "metrics": (["--repeats", "1", "--overwrite"], ["--repeats", "1", "--overwrite"]),
    "data": (
        ["--repeats", "2", "--whole-body-repeats", "1"],
        ["--studies", "4", "--repeats", "1", "--whole-body-repeats", "1"],
    ),
    "network": (
        ["--presets", "autopet-v3", "autopet-early-fusion", "--repeats", "2"],
        ["--presets", "autopet-v3", "--side", "64", "--repeats", "1"],
    ),
    "train": (["--steps", "2", "--warmup", "1"], ["--patch", "48", "--steps", "1", "--phantoms", "4"]),
    "inference": (
        ["--repeats", "1", "--reference-repeats", "1", "--variants", "reference", "fp32", "default"],
        ["--shape", "160", "160", "128", "--repeats", "1", "--variants", "reference", "fp32", "default"],
    ),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and single repeats")
    parser.add_argument("--only", nargs="+", choices=list(PLAN), help="run only these benchmarks")
    parser.add_argument(
        "--results", default=str(RESULTS), help="folder for the JSON files (default benchmarks/results)"
    )
    args = parser.parse_args(argv)
    results = Path(args.results)
    summary = {"quick": args.quick, "machine_before": machine(), "scripts": {}}
    failed = []
    for name, (default_args, quick_args) in PLAN.items():
        if args.only and name not in args.only:
            continue
        command = [
            sys.executable,
            str(HERE / f"bench_{name}.py"),
            *(quick_args if args.quick else default_args),
            "--out",
            str(results / f"{name}.json"),
        ]
        print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(command, cwd=str(ROOT))
        seconds = time.perf_counter() - start
        summary["scripts"][name] = {"command": command[1:], "exit_code": code, "seconds": seconds}
        if code != 0:
            failed.append(name)
    summary["machine_after"] = machine()
    summary["total_seconds"] = sum(s["seconds"] for s in summary["scripts"].values())
    print()
    print_table(
        ["benchmark", "exit", "seconds"],
        [[n, s["exit_code"], s["seconds"]] for n, s in summary["scripts"].items()],
        title=f"run_all ({'quick' if args.quick else 'default sizes'}): {summary['total_seconds']:.0f} s; load "
        f"{summary['machine_before']['load_average_1_5_15min']} -> {summary['machine_after']['load_average_1_5_15min']}",
    )
    write_json(summary, results / "run_all.json")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
