"""``mirror-unet push``: publish a checkpoint folder as a Hub model repo with a generated model card, or
(``--dataset DIR``) a data folder as a Hub dataset repo with a dataset card."""

from __future__ import annotations

import argparse

HELP = "publish a checkpoint (--model) or a data folder (--dataset) on the Hugging Face Hub with a generated card"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..hub import DEFAULT_TIMEOUT

    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="checkpoint folder written by save_pretrained (the training output)")
    what.add_argument(
        "--dataset",
        metavar="DIR",
        help="data folder (e.g. phantoms/ or an FDG-PET-CT-Lesions tree) to publish as a dataset repo; "
        "load_mirror_dataset and train.py --data_dir then take the repo id",
    )
    parser.add_argument(
        "--license", default="other", help="--dataset: the data's licence as a Hub licence id (default: other)"
    )
    parser.add_argument("--repo-id", required=True, help="Hub repo to create or update, NAMESPACE/NAME")
    parser.add_argument(
        "--metrics",
        default=None,
        help="metrics.json to publish in the card's evaluation table (default: the folder's own, if any)",
    )
    parser.add_argument(
        "--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)"
    )
    parser.add_argument(
        "--revision", default=None, help="branch to commit to, created from main when missing (default: main)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="publish even when the repo (revision) already holds weights"
    )
    parser.add_argument(
        "--commit-message", default=None, help="commit message (default: 'Upload Mirror U-Net <preset> checkpoint')"
    )
    parser.add_argument(
        "--space",
        metavar="DEMO_DIR",
        default=None,
        help="also publish this demo folder (e.g. demo/) as a Gradio Space serving the pushed model",
    )
    parser.add_argument(
        "--space-id", default=None, help="Space repo for --space, NAMESPACE/NAME (default: <repo-id>-demo)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds one HTTP request may stall before the push fails (default: {DEFAULT_TIMEOUT:g})",
    )


def run(args: argparse.Namespace) -> int:
    from ..errors import UserInputError
    from ..hub import push_checkpoint, push_dataset

    if args.dataset is not None:
        ignored = [
            flag
            for flag, value in (("--metrics", args.metrics), ("--space", args.space), ("--overwrite", args.overwrite))
            if value
        ]
        if ignored:
            raise UserInputError(f"{', '.join(ignored)} only applies to --model, not to --dataset")
        print(
            push_dataset(
                args.dataset,
                args.repo_id,
                license=args.license,
                private=args.private,
                revision=args.revision,
                commit_message=args.commit_message,
                timeout=args.timeout,
            )
        )
        return 0

    url = push_checkpoint(
        args.model,
        args.repo_id,
        metrics_path=args.metrics,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        timeout=args.timeout,
        overwrite=args.overwrite,
    )
    print(url)
    if args.space:
        from ..hub import push_space

        space_url = push_space(
            args.space,
            args.space_id or f"{args.repo_id}-demo",
            model_id=args.repo_id,
            private=args.private,
            timeout=args.timeout,
        )
        print(space_url)
    return 0
