"""``mirror-unet make-phantoms``: write synthetic AutoPET or MSD BrainTumour studies in the real on-disk layout.

An existing dataset folder (or AutoPET metadata CSV) in ``--out`` is refused unless ``--overwrite``; with
it, the new studies are written beside the old ones first and swapped in by renames, so an interrupted
run leaves either the old dataset or the new one, plus at most a hidden ``.make-phantoms.*.tmp`` folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from ..data.phantoms import make_phantoms, phantom_layouts
from ..errors import UserInputError

HELP = "Write synthetic PET/CT (AutoPET, autoPET III/IV layouts) or brain MRI (MSD Task01) studies for tests and demos."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", required=True, choices=phantom_layouts(), help="which dataset layout to write")
    parser.add_argument(
        "--out",
        required=True,
        help="output folder; the dataset folder (FDG-PET-CT-Lesions/, Task01_BrainTumour/, ...) is created in it",
    )
    parser.add_argument("--n", type=int, default=8, help="number of studies (default 8)")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed writes identical files (default 0)"
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="voxels per axis (default 96 96 80 for autopet and autopet3 at 2x2x3 mm, 64 80 64 for brain_tumour at 2 mm)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing phantom dataset in --out")


def outputs(layout: str, out: Path) -> list[Path]:
    """What a run writes in ``out``: the dataset folder, and any file beside it (AutoPET's metadata CSV)."""
    from ..tasks import get_task

    return get_task(layout).phantom_outputs(out)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; expected a folder")
    existing = [path for path in outputs(args.layout, out) if path.exists()]
    if existing and not args.overwrite:
        raise UserInputError(f"--out {out}: {existing[0]} already exists; pass --overwrite to replace it")
    if not existing:
        root = make_phantoms(args.layout, out, args.n, args.seed, shape=args.shape)
    else:
        staging = Path(tempfile.mkdtemp(prefix=".make-phantoms.", suffix=".tmp", dir=out))
        try:
            make_phantoms(args.layout, staging / "new", args.n, args.seed, shape=args.shape)
            (staging / "old").mkdir()
            for path in outputs(args.layout, out):
                if path.exists():
                    os.replace(path, staging / "old" / path.name)
                os.replace(staging / "new" / path.name, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        root = outputs(args.layout, out)[0]
    print(f"wrote {args.n} {args.layout} phantom studies to {root}")
    return 0
