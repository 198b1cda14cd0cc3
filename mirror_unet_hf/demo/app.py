"""The Mirror U-Net demo (Gradio 6): load a study (a bundled example or uploaded NIfTI files), segment
it, read it in a tri-planar viewer with every branch's output, PET maximum-intensity projections and a
lesion table, and download the mask and the table.

``build_demo(model, examples_dir)`` returns the ``gr.Blocks``; ``launch_demo(demo, ...)`` launches it with
the theme, style and upload limit; ``resolve_model`` says which model to serve. Each browser session
keeps its study in a ``gr.State``; only the model (read-only) is shared. The page is built in
`layout`, what each event does in `handlers` (plain values, no Gradio) and connected in `wiring`;
what a pixel shows is decided in `mirror_unet_hf.viewer`.

Files: each app has one temporary folder with one subfolder per session (see `session`); the app's
folder goes when the process exits, also when a blocking `launch_demo` is stopped with SIGTERM. Gradio's
own cache of uploads, images and downloads is swept of files older than `SESSION_TTL_S` and emptied when
the server stops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

import gradio as gr

from ..errors import UserInputError
from ..inference import load_model
from ..sliding_window import SlidingWindowSettings
from . import session as sessions
from .handlers import MAX_UPLOAD_MB, DemoHandlers, find_examples
from .layout import CSS, build_layout
from .wiring import connect

SESSION_TTL_S = 3600  # a session's study is dropped after this long without use
MAX_SESSIONS = 32  # studies kept in memory at once (the oldest session's is dropped first)
QUEUE_SIZE = 32  # requests waiting at once, all sessions together; more are refused ("Queue is full")
CACHE_SWEEP_S = 600  # how often Gradio deletes its cached files (uploads, images, downloads) older than SESSION_TTL_S
MODEL_ENV = "MIRROR_UNET_MODEL"
REPO_DEMO_DIR = Path(__file__).resolve().parents[2] / "demo"  # only in a source checkout


def resolve_model(requested: str | None, bundled: Path | None = None) -> str:
    """The model to serve: `requested` (--model), else $MIRROR_UNET_MODEL (a Hub id), else the bundled checkpoint."""
    if requested:
        return str(requested)
    if os.environ.get(MODEL_ENV):
        return os.environ[MODEL_ENV]
    if bundled is not None and (Path(bundled) / "config.json").is_file():
        return str(bundled)
    where = f" or put a checkpoint in {bundled}" if bundled is not None else ""
    raise UserInputError(f"no model to serve: pass --model PATH_OR_HUB_ID, set {MODEL_ENV}=org/name{where}")


def build_demo(
    model_path: str | Path,
    examples_dir: str | Path | None = None,
    *,
    max_upload_mb: float = MAX_UPLOAD_MB,
    settings: SlidingWindowSettings | None = None,
    queue_size: int = QUEUE_SIZE,
) -> gr.Blocks:
    """The demo for one model (a save_pretrained folder or a Hub id) and its example studies.

    `examples_dir` holds one folder per example study (``CTres.nii.gz``/``SUV.nii.gz`` or
    ``<modality>.nii.gz``, optional ``SEG.nii.gz``/``label.nii.gz``). `max_upload_mb` limits each uploaded
    file (`launch_demo` also makes the server refuse bigger uploads). `settings`: sliding-window settings.
    `queue_size`: requests that may wait at once (all sessions together); the server refuses more.
    The app's temporary folder is ``demo.sessions_root``.
    """
    model_path = str(model_path)
    model = load_model(model_path)
    settings = settings or SlidingWindowSettings()
    settings.check()
    examples = find_examples(examples_dir, list(model.config.modalities))
    sessions_root = sessions.new_app_folder()
    handlers = DemoHandlers(model, examples, sessions_root, settings=settings, max_upload_mb=max_upload_mb)

    # Gradio keeps a copy of every upload, rendered image and download in its cache (GRADIO_TEMP_DIR) and by
    # default never deletes them: sweep what is older than a session may live, and all of it when the server stops
    sweep = (CACHE_SWEEP_S, SESSION_TTL_S)
    with gr.Blocks(title="Mirror U-Net demo", analytics_enabled=False, delete_cache=sweep) as demo:
        # looked up here, not at import, so that a test can log the callbacks by replacing `session.forget`
        components = build_layout(handlers, model_path, delete_callback=sessions.forget, session_ttl_s=SESSION_TTL_S)
        connect(components, handlers)

    demo.queue(default_concurrency_limit=4, max_size=queue_size)
    demo.upload_limit_mb = max_upload_mb
    demo.sessions_root = sessions_root
    # the sessions' folders go with the app: when it is garbage-collected, at the latest when the process exits
    sessions.remove_with(demo, sessions_root)
    return demo


def launch_demo(demo: gr.Blocks, **launch_kwargs):
    """`demo.launch` with the demo's style, its upload limit (the server refuses bigger files) and at most
    `MAX_SESSIONS` sessions' studies in memory; `launch_kwargs` go to `gr.Blocks.launch` and win.

    A blocking launch (no ``prevent_thread_lock``) in the main thread stops on SIGTERM as on Ctrl+C, so
    the process exits normally and removes the app's temporary folder."""
    options = {
        "theme": gr.themes.Soft(primary_hue="sky", neutral_hue="slate"),
        "css": CSS,
        "max_file_size": f"{getattr(demo, 'upload_limit_mb', MAX_UPLOAD_MB):g}mb",
        "state_session_capacity": MAX_SESSIONS,
        "show_error": True,
    }
    options.update(launch_kwargs)
    with _sigterm_interrupts(not options.get("prevent_thread_lock")):
        return demo.launch(**options)


@contextlib.contextmanager
def _sigterm_interrupts(blocking: bool):
    """While a blocking launch serves, SIGTERM (docker stop, a Space restart, `Popen.terminate`) raises
    KeyboardInterrupt in the main thread: Gradio then closes the server and the process exits through its
    exit handlers. Python's default SIGTERM action ends the process without them, leaving the temporary
    folders behind. Only when SIGTERM still has the default action, and restored afterwards."""
    install = (
        blocking
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    )
    if not install:
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["MAX_UPLOAD_MB", "QUEUE_SIZE", "REPO_DEMO_DIR", "build_demo", "launch_demo", "resolve_model"]
