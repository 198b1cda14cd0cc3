"""`mirror-unet demo`: serve the Gradio demo (tri-planar viewer, branch outputs, lesion table) on this machine."""

from __future__ import annotations

import argparse

HELP = "serve the interactive demo (Gradio): load or upload a study, segment it, read it slice by slice"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="save_pretrained folder or Hub id (default: $MIRROR_UNET_MODEL, else the bundled demo/checkpoint)",
    )
    parser.add_argument(
        "--examples", default=None, help="folder of example studies (default: the bundled demo/examples)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument(
        "--share", action="store_true", help="also open a temporary public gradio.live link (needs internet)"
    )
    parser.add_argument(
        "--max-upload-mb", type=float, default=None, help="largest accepted upload per file in MB (default 512)"
    )


def run(args: argparse.Namespace) -> int:
    from ..errors import UserInputError

    if not 1 <= args.port <= 65535:
        raise UserInputError(f"--port {args.port} is not a port number (1-65535)")
    if args.max_upload_mb is not None and not args.max_upload_mb > 0:
        raise UserInputError(f"--max-upload-mb {args.max_upload_mb:g} must be positive")
    try:
        from ..demo.app import (
            MAX_UPLOAD_MB,
            REPO_DEMO_DIR,
            build_demo,
            launch_demo,
            resolve_model,
        )
    except ModuleNotFoundError as error:
        if error.name not in ("gradio", "PIL", "pandas"):
            raise
        raise UserInputError(
            f"the demo needs the demo extra ({error.name} is missing): pip install 'mirror-unet-hf[demo]'"
        ) from None

    model = resolve_model(args.model, REPO_DEMO_DIR / "checkpoint")
    examples = args.examples if args.examples is not None else REPO_DEMO_DIR / "examples"
    demo = build_demo(model, examples, max_upload_mb=args.max_upload_mb or MAX_UPLOAD_MB)
    launch_demo(demo, server_name=args.host, server_port=args.port, share=args.share)
    return 0
