"""``mirror-unet make-phantoms``: write synthetic AutoPET or MSD BrainTumour studies in the real on-disk layout."""

from __future__ import annotations

import argparse

from ..data.phantoms import make_phantoms

HELP = "Write synthetic PET/CT (AutoPET layout) or brain MRI (MSD Task01 layout) studies for tests and demos."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", required=True, choices=("autopet", "brain_tumour"), help="which dataset layout to write")
    parser.add_argument("--out", required=True, help="output folder; FDG-PET-CT-Lesions/ or Task01_BrainTumour/ is created in it")
    parser.add_argument("--n", type=int, default=8, help="number of studies (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes identical files (default 0)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="voxels per axis (default 96 96 80 for autopet at 2x2x3 mm, 64 80 64 for brain_tumour at 2 mm)",
    )


def run(args: argparse.Namespace) -> int:
    root = make_phantoms(args.layout, args.out, args.n, args.seed, shape=args.shape)
    print(f"wrote {args.n} {args.layout} phantom studies to {root}")
    return 0
