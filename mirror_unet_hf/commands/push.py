"""``mirror-unet push``: publish a checkpoint folder as a Hub model repo with a generated model card."""

from __future__ import annotations

import argparse

HELP = "publish a checkpoint folder on the Hugging Face Hub with a generated model card (one commit)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..hub import DEFAULT_TIMEOUT

    parser.add_argument("--model", required=True, help="checkpoint folder written by save_pretrained (the training output)")
    parser.add_argument("--repo-id", required=True, help="Hub repo to create or update, NAMESPACE/NAME")
    parser.add_argument(
        "--metrics", default=None, help="metrics.json to publish in the card's evaluation table (default: the folder's own, if any)"
    )
    parser.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    parser.add_argument("--revision", default=None, help="branch to commit to, created from main when missing (default: main)")
    parser.add_argument("--overwrite", action="store_true", help="publish even when the repo (revision) already holds weights")
    parser.add_argument("--commit-message", default=None, help="commit message (default: 'Upload Mirror U-Net <preset> checkpoint')")
    parser.add_argument(
        "--space", metavar="DEMO_DIR", default=None,
        help="also publish this demo folder (e.g. demo/) as a Gradio Space serving the pushed model",
    )
    parser.add_argument("--space-id", default=None, help="Space repo for --space, NAMESPACE/NAME (default: <repo-id>-demo)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds one HTTP request may stall before the push fails (default: {DEFAULT_TIMEOUT:g})",
    )


def run(args: argparse.Namespace) -> int:
    from ..hub import push_checkpoint

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
            args.space, args.space_id or f"{args.repo_id}-demo", model_id=args.repo_id, private=args.private,
            timeout=args.timeout,
        )
        print(space_url)
    return 0
