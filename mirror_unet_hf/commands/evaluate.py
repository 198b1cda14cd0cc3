"""``mirror-unet evaluate``: score a prediction folder against ground truth and write the metrics table.

Exit codes: 0 every study scored; 1 a prediction missing or (with ``--skip-bad``) a study failed, each
listed at the end (an internal error with its traceback); 2 a user mistake (bad folder, unreadable or
mismatched study without ``--skip-bad``, existing output).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..evaluation import EvaluationReport, check_outputs_free, evaluate_folders, write_report
from ..tasks import task_names

HELP = "Score predicted masks against ground truth (AutoPET: Dice/FPV/FNV; BrainTumour: Dice/HD95 per region)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, help="flat folder of predicted masks named <case_id>.nii.gz")
    parser.add_argument(
        "--gt",
        required=True,
        help="ground truth: flat folder of <case_id>.nii.gz, an AutoPET folder (<patient>/<study>/SEG.nii.gz, "
        "case id <patient>_<study>), an MSD folder (labelsTr/BRATS_XXX.nii.gz) or an autoPET III/IV folder "
        "(labelsTr/<case>.nii.gz; FDG and PSMA studies get their own mean rows)",
    )
    parser.add_argument(
        "--task", required=True, choices=task_names(), help="metric set: a task name (autopet, brain_tumour, ...)"
    )
    parser.add_argument("--out", required=True, help="CSV to write: one row per study, then the mean row")
    parser.add_argument("--json", default=None, help="also write the rows, mean and problems as JSON here")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="record unreadable or mismatched studies as errors, go on, and list them at the end (exit code 1) "
        "instead of stopping at the first",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_summary(report: EvaluationReport) -> str:
    """A few lines for the terminal: study counts, then the mean of each metric (and of each group of studies,
    e.g. FDG and PSMA, where the task has groups)."""
    scored = len(report.rows) - len(report.missing) - len(report.failures)
    lines = [
        f"{report.task}: {len(report.rows)} studies, {scored} scored, "
        f"{len(report.missing)} missing prediction(s), {len(report.failures)} failed",
        f"{'metric':<26}{'mean':>12}" + "".join(f"{row['case_id']:>12}" for row in report.group_means),
    ]
    for column in report.columns[2:-1]:
        groups = "".join(f"{_format(row[column]):>12}" for row in report.group_means)
        lines.append(f"{column:<26}{_format(report.mean[column]):>12}{groups}")
    if report.unmatched_predictions:
        lines.append(f"predictions without ground truth (ignored): {', '.join(report.unmatched_predictions)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    json_path = Path(args.json) if args.json else None
    check_outputs_free([out] + ([json_path] if json_path else []), args.overwrite)  # fail before the long part
    report = evaluate_folders(args.pred, args.gt, args.task, skip_bad=args.skip_bad, progress=sys.stderr.isatty())
    write_report(report, out, json_path, overwrite=args.overwrite)
    print(format_summary(report))
    print(f"wrote {out}" + (f" and {json_path}" if json_path else ""))
    for case_id in report.missing:
        print(f"missing prediction: {case_id}", file=sys.stderr)
    for case_id, message in report.failures:
        print(f"failed: {case_id}: {message}", file=sys.stderr)
    for case_id, trace in report.tracebacks.items():  # bugs, not bad files: keep what is needed to fix them
        print(f"traceback of the internal error in {case_id}:\n{trace}", file=sys.stderr)
    return report.exit_code
