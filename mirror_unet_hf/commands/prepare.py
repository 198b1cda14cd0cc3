"""``mirror-unet prepare``: preprocess a dataset folder once into the compact cache that ``train.py`` reads.

One file per study (``mirror_unet_hf.data.prepared``), ``--num_proc`` studies at a time, with a progress bar and a
summary line. Interrupted (Ctrl-C, a kill), it continues where it stopped when run again; edited studies are
prepared again, the others reused. ``train.py --cache_dir`` with the same folder finds the studies prepared.
"""

from __future__ import annotations

import argparse

from ..errors import UserInputError

HELP = "Preprocess a dataset once into the compact cache train.py reads (resumable, several processes)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..tasks import task_names

    parser.add_argument("--dataset", required=True, help=f"the dataset's task: {', '.join(task_names())}")
    parser.add_argument(
        "--data_dir", "--data-dir", required=True, help="the dataset folder (or its parent), or a Hub dataset id"
    )
    parser.add_argument(
        "--cache_dir", "--cache-dir", required=True, help="cache folder (give train.py the same --cache_dir)"
    )
    parser.add_argument(
        "--num_proc", "--num-proc", type=int, default=1, help="studies prepared at a time, one process each (default 1)"
    )
    parser.add_argument(
        "--skip-bad",
        "--skip_bad",
        dest="skip_bad",
        action="store_true",
        help="leave out unreadable studies (each is listed) instead of stopping at the first",
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="prepare for this preset's preprocessing (default: the dataset's; the standard presets share it)",
    )


def run(args: argparse.Namespace) -> int:
    from ..data.preparation import prepare_dataset

    if args.num_proc < 1:
        raise UserInputError(f"--num_proc must be at least 1, got {args.num_proc}")
    config = None
    if args.preset is not None:
        from ..configuration_mirror_unet import PRESETS, MirrorUNetConfig

        if args.preset not in PRESETS:
            raise UserInputError(f"--preset {args.preset!r} is not a preset; expected one of: {', '.join(PRESETS)}")
        config = MirrorUNetConfig.from_preset(args.preset)
    index = prepare_dataset(
        args.dataset, args.data_dir, args.cache_dir, config, num_proc=args.num_proc, skip_bad=args.skip_bad
    )
    for message in index.skipped:
        print(f"skipped: {message}")
    print(index.summary())
    return 0
