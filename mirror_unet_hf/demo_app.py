"""The Mirror U-Net demo (Gradio 6): load a study (a bundled example or uploaded NIfTI files), segment
it, read it in a tri-planar viewer with every branch's output, PET maximum-intensity projections and a
lesion table, and download the mask and the table.

``build_demo(model, examples_dir)`` returns the ``gr.Blocks``; ``launch_demo(demo, ...)`` launches it with
the theme, style and upload limit. Each browser session keeps its study in a ``gr.State``; only the
model (read-only) is shared. What a pixel shows is decided in `mirror_unet_hf.viewer`.

Files: each app has one temporary folder (``mirror-unet-demo-*`` under the system temp folder) with one
subfolder per session (its mask and lesion table). A session's subfolder goes when Gradio forgets the
session (time to live, closed tab) or drops it for a newer one (`MAX_SESSIONS`); the app's folder goes
when the process exits, also when a blocking `launch_demo` is stopped with SIGTERM. Gradio's own cache of
uploads, images and downloads is swept of files older than `SESSION_TTL_S` and emptied when the server stops.
"""

from __future__ import annotations

import contextlib
import functools
import html
import os
import shutil
import signal
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from . import viewer
from .data.constants import AUTOPET_LABEL_FILE
from .data.nifti_io import save_nifti
from .errors import UserInputError, one_line
from .inference import load_model, predict_study, study_inputs
from .lesions import LesionTable, write_lesion_table
from .sliding_window import SlidingWindowSettings

MAX_UPLOAD_MB = 512  # per file, checked by the server before a byte is processed
LISTED_LESIONS = 200  # rows in the table and entries in "Go to lesion": the largest lesions
SESSION_TTL_S = 3600  # a session's study is dropped after this long without use
MAX_SESSIONS = 32  # studies kept in memory at once (the oldest session's is dropped first)
QUEUE_SIZE = 32  # requests waiting at once, all sessions together; more are refused ("Queue is full")
APP_DIR_PREFIX = "mirror-unet-demo-"  # the app's temporary folder, one per build_demo
CACHE_SWEEP_S = 600  # how often Gradio deletes its cached files (uploads, images, downloads) older than SESSION_TTL_S
LABEL_FILES = (AUTOPET_LABEL_FILE, "label.nii.gz", "seg.nii.gz", "label.nii", "seg.nii")
NIFTI_TYPES = [".nii", ".nii.gz"]
MODEL_ENV = "MIRROR_UNET_MODEL"
REPO_DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"  # only in a source checkout

CSS = """
.gradio-container {max-width: 100% !important}
#views img {background: #000}
#side {min-width: 300px}
#legend {font-size: 0.9em}
.swatch {display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px; margin: 0 0.35em 0 0.9em; vertical-align: -0.1em}
#status p, #timing p {margin: 0}
"""
CONVENTIONS = (
    "Radiological convention: the patient's right is on the image's left (axial from the feet, coronal from the front); "
    "coronal and sagittal images are head up, sagittal with the face on the left. Pixels are square in mm."
)


# ---------------------------------------------------------------------------------------- model & files


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


def find_examples(examples_dir: str | Path | None, modalities: list[str]) -> dict[str, Path]:
    """case id -> study folder, for every folder under `examples_dir` holding all the model's modalities."""
    if examples_dir is None or not Path(examples_dir).is_dir():
        return {}
    found = {}
    for folder in sorted(p for p in Path(examples_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            study_inputs(folder, modalities)
        except UserInputError:
            continue  # an example for another kind of model
        found[folder.name] = folder
    return found


def example_label(folder: Path) -> Path | None:
    return next((folder / name for name in LABEL_FILES if (folder / name).is_file()), None)


def _model_line(model, model_path: str) -> str:
    """One line under the title: which model, and whether its weights mean anything."""
    preset = getattr(model.config, "preset", None) or "custom"
    line = f"Model: <code>{html.escape(model_path)}</code> (preset {html.escape(preset)})"
    if _phantom_trained(model_path):
        line += " · <b>trained on synthetic phantoms only: its output on real scans means nothing</b>"
    return line + " · research code, not a medical device."


def _phantom_trained(model_path: str) -> bool:
    args_file = Path(model_path) / "training_args.json"
    if not args_file.is_file():
        return False
    from .hub import read_training_args, trained_on_phantoms

    return trained_on_phantoms(read_training_args(args_file))


def _model_markdown(model, model_path: str) -> str:
    config = model.config
    rows = "\n".join(f"| {row['part']} | {row['inputs']} | {row['task']} |" for row in config.describe())
    phantom = "\n\n**Trained on synthetic phantoms only**: its outputs on real scans mean nothing." if _phantom_trained(model_path) else ""
    return (
        f"Model `{model_path}` — preset `{getattr(config, 'preset', None) or 'custom'}`, inputs "
        f"{', '.join(viewer.modality_title(m) for m in config.modalities)}; final mask: {config.final_mask_rule}.\n\n"
        f"| part | inputs | task |\n|---|---|---|\n{rows}{phantom}\n\nResearch code, not a medical device."
    )


# -------------------------------------------------------------------------------------------- session


@dataclass
class Session:
    """One browser session's study and results; files go to its own temporary folder, which is removed
    by `close` or, at the latest, when the session is garbage-collected."""

    workdir: Path
    study: viewer.ViewerStudy | None = None
    table: LesionTable | None = None  # of the final mask
    classification: dict | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        # Gradio calls the State's delete callback when a session's time to live runs out (also an hour
        # after its tab closed), but not when it drops the least recently used session beyond
        # `state_session_capacity`: then only garbage collection tells, so the folder goes with the object.
        self._remove_folder = weakref.finalize(self, shutil.rmtree, self.workdir, True)

    def close(self) -> None:
        """Remove the session's files (idempotent)."""
        self._remove_folder()


def _new_session(root: Path) -> Session:
    return Session(Path(tempfile.mkdtemp(prefix="session-", dir=root)))


def _forget(session: Session | None) -> None:
    """State deletion callback: remove the session's files."""
    if isinstance(session, Session):
        session.close()


def _user_errors(fn):
    """Show a user mistake as a one-line error in the page instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserInputError as error:
            raise gr.Error(one_line(error), title="Cannot do that", print_exception=False) from None

    return wrapper


def _require_study(session: Session | None) -> viewer.ViewerStudy:
    if session is None or session.study is None:
        raise UserInputError("no study loaded yet: load the example or upload the study's files first")
    return session.study


# ------------------------------------------------------------------------------------------- the app


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
    config = model.config
    modalities = list(config.modalities)
    pet_model = "pet" in modalities
    settings = settings or SlidingWindowSettings()
    settings.check()
    examples = find_examples(examples_dir, modalities)
    limit_bytes = int(max_upload_mb * 1024 * 1024)
    head = config.classification_head
    sessions_root = Path(tempfile.mkdtemp(prefix=APP_DIR_PREFIX))

    def display_of(image, overlay, window, suv_max, opacity, crosshair) -> viewer.Display:
        return viewer.Display(image=image, overlay=overlay, ct_window=window or viewer.DEFAULT_CT_WINDOW,
                              suv_max=float(suv_max), opacity=float(opacity), crosshair=bool(crosshair))

    # Gradio keeps a copy of every upload, rendered image and download in its cache (GRADIO_TEMP_DIR) and by
    # default never deletes them: sweep what is older than a session may live, and all of it when the server stops
    with gr.Blocks(title="Mirror U-Net demo", analytics_enabled=False, delete_cache=(CACHE_SWEEP_S, SESSION_TTL_S)) as demo:
        state = gr.State(None, time_to_live=SESSION_TTL_S, delete_callback=_forget)
        gr.Markdown(
            "## Mirror U-Net — " + ("PET/CT lesion segmentation" if pet_model else "brain tumour segmentation (MRI)")
            + "\n**1** load a study (the example, or your NIfTI files) · **2** press **Segment** · **3** scroll through "
            "the slices, switch the image and overlay on the right, click a lesion to jump to it · download the results."
            + f"\n\n<small>{_model_line(model, model_path)}</small>",
            elem_id="header",
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                with gr.Row(elem_id="views"):
                    views, sliders = {}, {}
                    for plane in viewer.PLANES:
                        with gr.Column(min_width=220):
                            views[plane] = gr.Image(label=plane.capitalize(), format="png", type="pil", height=420,
                                                    interactive=False, buttons=["download", "fullscreen"],
                                                    placeholder="Load a study (right) to see it here",
                                                    elem_id=f"view-{plane}")
                            sliders[plane] = gr.Slider(1, 2, value=1, step=1, label=_slider_label(plane),
                                                       interactive=False, elem_id=f"slider-{plane}")
                legend = gr.HTML(elem_id="legend")
                gr.Markdown(f"<small>{CONVENTIONS}</small>")
                with gr.Row(equal_height=False):
                    mips = {plane: gr.Image(label=f"PET MIP, {plane}", format="png", type="pil", height=330,
                                            interactive=False, buttons=["download", "fullscreen"],
                                            elem_id=f"mip-{plane}", min_width=180, visible=pet_model)
                            for plane in ("coronal", "sagittal")}
                    with gr.Column(scale=2, min_width=360, elem_id="results"):
                        totals = gr.Markdown("No segmentation yet.", elem_id="totals")
                        table = gr.Dataframe(value=pd.DataFrame(columns=_columns(pet_model)), interactive=False,
                                             max_height=260, label="Lesions, largest first (click a row to go there)",
                                             show_search="none", elem_id="lesions")
                        go_to = gr.Dropdown([], label="Go to lesion", interactive=True, elem_id="go-to-lesion")
                        with gr.Row():
                            download_mask = gr.DownloadButton("Download mask (.nii.gz)", interactive=False, size="md",
                                                              elem_id="download-mask")
                            download_table = gr.DownloadButton("Download lesion table (.csv)", interactive=False, size="md",
                                                               elem_id="download-table")
            with gr.Column(scale=1, elem_id="side"):
                if examples:
                    with gr.Group():
                        example = gr.Dropdown(list(examples), value=next(iter(examples)), label="Example study")
                        load_example_button = gr.Button("Load example", variant="secondary", elem_id="load-example")
                with gr.Accordion("Upload a study (NIfTI)", open=not examples, elem_id="upload"):
                    uploads = {m: gr.File(label=f"{viewer.modality_title(m)} (.nii / .nii.gz)", file_types=NIFTI_TYPES,
                                          type="filepath", elem_id=f"upload-{m}") for m in modalities}
                    upload_label = gr.File(label="Ground truth, optional (.nii / .nii.gz)", file_types=NIFTI_TYPES,
                                           type="filepath", elem_id="upload-label")
                    gr.Markdown(f"<small>One 3D file per image, up to {max_upload_mb:g} MB each; the mask is "
                                f"written on the {viewer.modality_title(config.reference_modality)} grid.</small>")
                    load_files_button = gr.Button("Load uploaded files", elem_id="load-files")
                status = gr.Markdown("No study loaded.", elem_id="status")
                segment_button = gr.Button("Segment", variant="primary", interactive=False, elem_id="segment")
                timing = gr.Markdown("", elem_id="timing")
                classification = gr.Label(label="Lesion presence (classification head)" if head and head["task"] == "lesion_presence"
                                          else "Diagnosis (classification head)", visible=head is not None,
                                          num_top_classes=4, elem_id="classification")
                with gr.Group():
                    image = gr.Radio([], label="Image", elem_id="image-choice")
                    overlay = gr.Radio([], label="Overlay", elem_id="overlay-choice")
                    opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity", elem_id="opacity")
                    window = gr.Radio(list(viewer.CT_WINDOWS), value=viewer.DEFAULT_CT_WINDOW, label="CT window",
                                      info=" · ".join(f"{name.lower()} W{w:g} / L{l:g}" for name, (w, l) in viewer.CT_WINDOWS.items()),
                                      visible="ct" in modalities, elem_id="ct-window")
                    suv_max = gr.Slider(1, 30, value=viewer.DEFAULT_SUV_MAX, step=0.5, label="PET display range: SUV 0 to",
                                        visible=pet_model, elem_id="suv-max")
                    crosshair = gr.Checkbox(value=True, label="Crosshair (where the other views cut)", elem_id="crosshair")
                with gr.Accordion("About the model", open=False):
                    gr.Markdown(_model_markdown(model, model_path))

        controls = [image, overlay, window, suv_max, opacity, crosshair]
        plane_sliders = [sliders[p] for p in viewer.PLANES]
        rendered = [*views.values(), *mips.values(), legend]

        # -------------------------------------------------------------- rendering

        def render_all(session: Session, position, display: viewer.Display) -> dict:
            study = session.study
            out = {views[p]: viewer.render_slice(study, p, position, display) for p in viewer.PLANES}
            if pet_model:
                out.update({mips[p]: viewer.render_mip(study, p, display, position) for p in mips})
            out[legend] = _legend_html(viewer.legend(study, display.overlay))
            return out

        def position_of(axial, coronal, sagittal, study) -> tuple[int, int, int]:
            """Slider values (1-based, one per plane) → RAS voxel (x, y, z), 0-based."""
            values = {"axial": axial, "coronal": coronal, "sagittal": sagittal}
            position = [0, 0, 0]
            for plane, value in values.items():
                axis = viewer.PLANE_AXIS[plane]
                if value is None or not 1 <= int(value) <= study.shape[axis]:
                    raise UserInputError(f"{plane} slice {value} is outside 1..{study.shape[axis]}")
                position[axis] = int(value) - 1
            return tuple(position)

        def refresh(session: Session, position, display: viewer.Display) -> dict:
            """Every output after a study is loaded or segmented."""
            study = session.study
            out = render_all(session, position, display)
            for plane in viewer.PLANES:
                axis = viewer.PLANE_AXIS[plane]
                out[sliders[plane]] = gr.Slider(minimum=1, maximum=study.shape[axis], value=position[axis] + 1, interactive=True)
            out[image] = gr.Radio(choices=study.image_choices(), value=display.image)
            out[overlay] = gr.Radio(choices=study.overlay_choices(), value=display.overlay)
            out[state] = session
            out[segment_button] = gr.Button(interactive=True)
            shape = " × ".join(str(n) for n in study.shape)
            spacing = " × ".join(f"{s:g}" for s in study.spacing)
            truth = "with ground truth" if viewer.GROUND_TRUTH in study.overlays else "no ground truth"
            out[status] = f"**{html.escape(study.case_id)}** · {shape} voxels · {spacing} mm · {truth}"
            segmented = session.table is not None
            if segmented:
                columns, rows = viewer.lesion_rows(session.table, pet_model)
                out[table] = pd.DataFrame(rows[:LISTED_LESIONS], columns=list(columns))
                listed = "" if len(rows) <= LISTED_LESIONS else f" (the {LISTED_LESIONS} largest are listed; the CSV has all)"
                out[totals] = f"**Study:** {viewer.lesion_summary(session.table, pet_model)}{listed}"
                out[go_to] = gr.Dropdown(choices=_lesion_choices(session.table, pet_model), value=None)
                out[timing] = f"Segmented in **{session.seconds:.1f} s**"
                out[classification] = _classification_value(session.classification, head)
                out[download_mask] = gr.DownloadButton(value=str(session.workdir / "mask.nii.gz"), interactive=True)
                out[download_table] = gr.DownloadButton(value=str(session.workdir / "lesions.csv"), interactive=True)
            else:
                out[table] = pd.DataFrame(columns=list(_columns(pet_model)))
                out[totals] = "No segmentation yet: press **Segment**."
                out[go_to] = gr.Dropdown(choices=[], value=None)
                out[timing] = ""
                out[classification] = None
                out[download_mask] = gr.DownloadButton(value=None, interactive=False)
                out[download_table] = gr.DownloadButton(value=None, interactive=False)
            return out

        everything = [state, status, segment_button, *plane_sliders, image, overlay, *rendered, table, totals, go_to,
                      timing, classification, download_mask, download_table]

        def open_study(session: Session | None, study: viewer.ViewerStudy) -> dict:
            session = session if isinstance(session, Session) else _new_session(sessions_root)
            for stale in ("mask.nii.gz", "lesions.csv"):
                (session.workdir / stale).unlink(missing_ok=True)
            session.study, session.table, session.classification, session.seconds = study, None, None, None
            first_image = viewer.FUSION if pet_model and "ct" in modalities else modalities[-1]
            first_overlay = viewer.GROUND_TRUTH if viewer.GROUND_TRUTH in study.overlays else viewer.NO_OVERLAY
            return refresh(session, study.centre(), viewer.Display(first_image, first_overlay))

        # ---------------------------------------------------------------- handlers

        @_user_errors
        def load_example(session, case_id):
            if case_id not in examples:
                raise UserInputError(f"example {case_id!r} does not exist; choose one of: {', '.join(examples)}")
            folder = examples[case_id]
            study = viewer.load_study(study_inputs(folder, modalities), config.reference_modality, label=example_label(folder),
                                      label_names=config.label_names, case_id=case_id)
            return open_study(session, study)

        @_user_errors
        def load_files(session, *files):
            *images, label = files
            chosen = {m: path for m, path in zip(modalities, images) if path}
            missing = [viewer.modality_title(m) for m in modalities if m not in chosen]
            if missing:
                raise UserInputError(f"upload the {' and '.join(missing)} file{'s' if len(missing) > 1 else ''} first "
                                     f"(this model reads {', '.join(viewer.modality_title(m) for m in modalities)})")
            named = {**chosen, **({"label": label} if label else {})}
            for path in named.values():
                size = Path(path).stat().st_size
                if size > limit_bytes:
                    raise UserInputError(f"file {Path(path).name!r} is {size / 2**20:.1f} MB; the limit is {max_upload_mb:g} MB per file")
            names = {key: Path(path).name for key, path in named.items()}
            study = viewer.load_study(chosen, config.reference_modality, label=label or None, label_names=config.label_names,
                                      case_id=Path(chosen[config.reference_modality]).name.split(".nii")[0], file_names=names)
            return open_study(session, study)

        @_user_errors
        def segment(session, axial, coronal, sagittal, image_key, overlay_key, window_name, suv, alpha, cross,
                    progress=gr.Progress()):  # noqa: B008 - Gradio finds the progress tracker by this default
            study = _require_study(session)
            position = position_of(axial, coronal, sagittal, study)
            progress(0.0, desc="Preparing the study")

            def windows_done(done: int, total: int) -> None:
                progress((done, total), desc="Sliding window", unit="windows")

            start = time.perf_counter()
            prediction = predict_study(model, study.sources, settings, with_branches=True, case_id=study.case_id,
                                       progress=windows_done)
            progress(1.0, desc="Measuring lesions")
            viewer.clear_prediction(study)
            viewer.add_prediction(study, prediction, config)
            session.table = viewer.measure_lesions(study, prediction.mask)
            session.classification = prediction.classification
            session.workdir.mkdir(parents=True, exist_ok=True)  # in case the session expired while this ran
            save_nifti(prediction.mask, session.workdir / "mask.nii.gz")  # atomic: temporary name, then rename
            write_lesion_table(session.table, session.workdir / "lesions.csv", overwrite=True)
            session.seconds = time.perf_counter() - start
            keep_image = image_key if image_key in {k for _, k in study.image_choices()} else study.image_choices()[0][1]
            display = display_of(keep_image, viewer.FINAL_MASK, window_name, suv, alpha, cross)
            return refresh(session, position, display)

        @_user_errors
        def render(session, axial, coronal, sagittal, *display_values):
            study = _require_study(session)
            return render_all(session, position_of(axial, coronal, sagittal, study), display_of(*display_values))

        def move_to(session, lesion_id, display_values) -> dict:
            study = _require_study(session)
            if session.table is None:
                raise UserInputError("segment the study first: the lesions come from the final mask")
            lesions = {lesion.lesion_id: lesion for lesion in session.table.lesions}
            if lesion_id is None or int(lesion_id) not in lesions:
                raise UserInputError(f"lesion {lesion_id} does not exist; this study has {len(lesions)}")
            position = viewer.lesion_position(study, lesions[int(lesion_id)])
            out = render_all(session, position, display_of(*display_values))
            for plane in viewer.PLANES:
                out[sliders[plane]] = position[viewer.PLANE_AXIS[plane]] + 1
            out[go_to] = int(lesion_id)
            return out

        @_user_errors
        def go_to_lesion(session, lesion_id, *display_values):
            return move_to(session, lesion_id, display_values)

        @_user_errors
        def select_row(session, image_key, overlay_key, window_name, suv, alpha, cross, evt: gr.SelectData):
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            lesion_id = evt.row_value[0] if evt.row_value else int(row) + 1  # column 0 holds the lesion id
            return move_to(session, int(lesion_id), (image_key, overlay_key, window_name, suv, alpha, cross))

        # ------------------------------------------------------------------ events

        if examples:
            load_example_button.click(load_example, [state, example], everything, api_name="load_example",
                                      concurrency_id="io", concurrency_limit=2)
        load_files_button.click(load_files, [state, *uploads.values(), upload_label], everything, api_name="load_files",
                                concurrency_id="io", concurrency_limit=2)
        segment_button.click(segment, [state, *plane_sliders, *controls], everything, api_name="segment",
                             concurrency_id="model", concurrency_limit=1)
        gr.on([s.input for s in plane_sliders] + [c.input for c in controls], render, [state, *plane_sliders, *controls],
              rendered, api_name="render", trigger_mode="always_last", show_progress="hidden")
        moved = [*plane_sliders, *rendered, go_to]
        go_to.input(go_to_lesion, [state, go_to, *controls], moved, api_name="go_to_lesion", show_progress="hidden")
        table.select(select_row, [state, *controls], moved, api_visibility="private", show_progress="hidden")

    demo.queue(default_concurrency_limit=4, max_size=queue_size)
    demo.upload_limit_mb = max_upload_mb
    demo.sessions_root = sessions_root
    # the sessions' folders go with the app: when it is garbage-collected, at the latest when the process exits
    weakref.finalize(demo, shutil.rmtree, sessions_root, True)
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
    install = (blocking and threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
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


# -------------------------------------------------------------------------------------------- helpers


def _slider_label(plane: str) -> str:
    return {"axial": "Axial slice (feet → head)", "coronal": "Coronal slice (back → front)",
            "sagittal": "Sagittal slice (left → right)"}[plane]


def _columns(pet_model: bool) -> tuple[str, ...]:
    return viewer.PET_LESION_COLUMNS if pet_model else viewer.MRI_LESION_COLUMNS


def _lesion_choices(table, pet_model: bool) -> list[tuple[str, int]]:
    choices = []
    for lesion in table.lesions[:LISTED_LESIONS]:
        suv = f", SUVmax {lesion.suv_max:.1f}" if pet_model else ""
        choices.append((f"Lesion {lesion.lesion_id}: {lesion.volume_ml:.2f} ml{suv}", lesion.lesion_id))
    return choices


def _classification_value(probabilities: dict | None, head) -> dict | None:
    if not probabilities:
        return None
    if head and head["task"] == "lesion_presence":
        p = probabilities["lesion_presence"]
        return {"lesion present": p, "no lesion": 1.0 - p}
    return {name.replace("_", " "): p for name, p in probabilities.items()}


def _legend_html(entries) -> str:
    if not entries:
        return "<span>No overlay.</span>"
    parts = [
        f'<span class="swatch" style="background: rgb{tuple(colour)}"></span>{html.escape(text)}' for colour, text in entries
    ]
    return "<div>" + "".join(parts) + "</div>"


__all__ = ["MAX_UPLOAD_MB", "QUEUE_SIZE", "build_demo", "find_examples", "launch_demo", "resolve_model"]
