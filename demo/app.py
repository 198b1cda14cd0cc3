"""Entry point of the Mirror U-Net demo, locally (`python demo/app.py`) and as a Hugging Face Space.

The model is $MIRROR_UNET_MODEL (a Hub id, e.g. set as a Space variable) or else the checkpoint bundled
in `checkpoint/` beside this file; the example studies are the folders in `examples/`. The app itself
lives in `mirror_unet_hf.demo` (`build_demo` is re-exported here for tests and notebooks).
"""

from pathlib import Path

from mirror_unet_hf.demo.app import build_demo, launch_demo, resolve_model

HERE = Path(__file__).resolve().parent
CHECKPOINT = HERE / "checkpoint"
EXAMPLES = HERE / "examples"

__all__ = ["build_demo", "launch_demo", "main"]


def main() -> None:
    demo = build_demo(resolve_model(None, CHECKPOINT), EXAMPLES)
    # Listens on $GRADIO_SERVER_NAME (a Space sets 0.0.0.0), else 127.0.0.1 only.
    launch_demo(demo)


if __name__ == "__main__":
    main()
