"""The supplement's λ grid: λ_rec, λ_cls ∈ {1e-1 … 1e-5}, each cell a normal `train/train.py` run.

    python train/sweep.py --config train/configs/phantoms-cpu.yaml --output_dir outputs/sweep --grid reduced
    python train/sweep.py --config train/configs/autopet-v3.yaml --output_dir outputs/sweep --launcher "accelerate launch"

Runs (or resumes) every cell into `<output_dir>/rec_<λ_rec>_cls_<λ_cls>/`, skips cells that finished,
resumes cells that were interrupted from their latest checkpoint, then writes `sweep.csv` and a Dice
heatmap `sweep.png` (λ_rec rows × λ_cls columns, like the supplement's Figure 1). Extra arguments after
`--` go to every training run.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mirror_unet_hf.errors import OneLineArgumentParser

GRIDS = {
    "full": [1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
    "reduced": [1e-1, 1e-3, 1e-5],
}
TRAIN = Path(__file__).resolve().parent / "train.py"


def parse_args(argv=None):
    parser = OneLineArgumentParser(prog="sweep.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="base training YAML (any train.py settings)")
    parser.add_argument("--output_dir", required=True, help="one sub-folder per cell, plus sweep.csv and sweep.png")
    parser.add_argument(
        "--grid", choices=sorted(GRIDS), default="full", help="full: 5×5 values as the supplement; reduced: 3×3"
    )
    parser.add_argument("--values", type=float, nargs="+", help="explicit λ values for both axes (overrides --grid)")
    parser.add_argument("--metric", default="dice", help="metric of best/metrics.json to plot (default: dice)")
    parser.add_argument(
        "--launcher", default=None, help='command that runs train.py, e.g. "accelerate launch" (default: this python)'
    )
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then extra train.py flags for every cell")
    args = parser.parse_args(argv)
    if args.train_args and args.train_args[0] == "--":
        args.train_args = args.train_args[1:]
    return args


def cell_name(rec: float, cls: float) -> str:
    return f"rec_{rec:.0e}_cls_{cls:.0e}"


def run_cell(args, rec: float, cls: float) -> tuple[Path, int]:
    """Run (or resume, or skip) one cell; returns its folder and the training run's exit code."""
    folder = Path(args.output_dir) / cell_name(rec, cls)
    if (folder / "final" / "metrics.json").is_file():
        print(f"[sweep] {folder.name}: done, skipped")
        return folder, 0
    launcher = shlex.split(args.launcher) if args.launcher else [sys.executable]
    command = [
        *launcher,
        str(TRAIN),
        "--config",
        args.config,
        "--lambda_rec",
        str(rec),
        "--lambda_cls",
        str(cls),
        "--output_dir",
        str(folder),
        *args.train_args,
    ]
    if folder.exists():
        command += ["--resume_from_checkpoint", "latest"]
    print(f"[sweep] {folder.name}: {' '.join(shlex.quote(c) for c in command)}", flush=True)
    return folder, subprocess.run(command, check=False).returncode


def read_metric(folder: Path, metric: str) -> float | None:
    for name in ("best", "final"):
        path = folder / name / "metrics.json"
        if path.is_file():
            value = json.loads(path.read_text())["metrics"].get(metric)
            if value is not None:
                return float(value)
    return None


def write_csv(rows: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, path)


def plot_heatmap(values: list[float], table: dict, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.array([[np.nan if table[(r, c)] is None else table[(r, c)] for c in values] for r in values])
    fig, ax = plt.subplots(figsize=(1.2 * len(values) + 2, 1.0 * len(values) + 1.5))
    image = ax.imshow(grid, cmap="viridis")
    labels = [f"{v:.0e}" for v in values]
    ax.set_xticks(range(len(values)), labels)
    ax.set_yticks(range(len(values)), labels)
    ax.set_xlabel("λ_cls")
    ax.set_ylabel("λ_rec")
    ax.set_title(f"{metric} over the λ grid")
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(len(values)):
        for j in range(len(values)):
            if np.isfinite(grid[i, j]):
                ax.text(
                    j,
                    i,
                    f"{grid[i, j]:.3f}",
                    ha="center",
                    va="center",
                    color="black" if grid[i, j] > middle else "white",
                )
    fig.colorbar(image, ax=ax, label=metric)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not Path(args.config).is_file():
        print(f"sweep.py: error: --config {args.config}: file not found", file=sys.stderr)
        return 2
    values = args.values or GRIDS[args.grid]
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    table, rows, failed = {}, [], []
    for rec in values:
        for cls in values:
            folder, code = run_cell(args, rec, cls)
            if code != 0:  # keep going: one broken cell must not cost the rest of an overnight grid
                failed.append(f"{folder.name} (exit code {code})")
            table[(rec, cls)] = read_metric(folder, args.metric) if code == 0 else None
            rows.append({"lambda_rec": rec, "lambda_cls": cls, args.metric: table[(rec, cls)], "run": folder.name})
    write_csv(rows, output / "sweep.csv")
    plot_heatmap(values, table, args.metric, output / "sweep.png")
    print(f"[sweep] wrote {output / 'sweep.csv'} and {output / 'sweep.png'}")
    if failed:
        print(
            f"sweep.py: {len(failed)} of {len(rows)} cells failed (rerun the same command to resume them): "
            + ", ".join(failed),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
