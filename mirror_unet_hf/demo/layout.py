"""The demo page's components (Gradio 6): three views with their sliders, the legend, the PET MIPs and
the lesion results on the left; loading, Segment and the display controls on the right. `build_layout`
only creates them, inside the caller's ``gr.Blocks``; `mirror_unet_hf.demo.wiring` connects their events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gradio as gr
import pandas as pd

from .. import viewer
from . import text
from .handlers import MIP_PLANES, DemoHandlers

CSS = """
.gradio-container {max-width: 100% !important}
#views img {background: #000}
#side {min-width: 300px}
#legend {font-size: 0.9em}
.swatch {display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px; margin: 0 0.35em 0 0.9em; vertical-align: -0.1em}
#status p, #timing p {margin: 0}
"""
NIFTI_TYPES = [".nii", ".nii.gz"]


@dataclass
class Components:
    """The page's components, by role (filled in by `build_layout`; the example chooser only when the
    app has examples)."""

    state: gr.State = None
    views: dict = field(default_factory=dict)  # plane -> gr.Image
    sliders: dict = field(default_factory=dict)  # plane -> gr.Slider
    legend: gr.HTML = None
    mips: dict = field(default_factory=dict)  # plane -> gr.Image (hidden for MRI models)
    totals: gr.Markdown = None
    table: gr.Dataframe = None
    go_to: gr.Dropdown = None
    download_mask: gr.DownloadButton = None
    download_table: gr.DownloadButton = None
    example: gr.Dropdown | None = None
    load_example_button: gr.Button | None = None
    uploads: dict = field(default_factory=dict)  # modality -> gr.File
    upload_label: gr.File = None
    load_files_button: gr.Button = None
    status: gr.Markdown = None
    segment_button: gr.Button = None
    timing: gr.Markdown = None
    classification: gr.Label = None
    image: gr.Radio = None
    overlay: gr.Radio = None
    opacity: gr.Slider = None
    window: gr.Radio = None
    suv_max: gr.Slider = None
    crosshair: gr.Checkbox = None

    @property
    def plane_sliders(self) -> list:
        return [self.sliders[plane] for plane in viewer.PLANES]

    @property
    def controls(self) -> list:
        """The display controls, in the order of `handlers.Controls`."""
        return [self.image, self.overlay, self.window, self.suv_max, self.opacity, self.crosshair]

    @property
    def rendered(self) -> list:
        """What a slider or control redraws."""
        return [*self.views.values(), *self.mips.values(), self.legend]

    @property
    def everything(self) -> list:
        """What loading or segmenting a study updates."""
        return [
            self.state,
            self.status,
            self.segment_button,
            *self.plane_sliders,
            self.image,
            self.overlay,
            *self.rendered,
            self.table,
            self.totals,
            self.go_to,
            self.timing,
            self.classification,
            self.download_mask,
            self.download_table,
        ]


def build_layout(
    handlers: DemoHandlers, model_path: str, *, delete_callback: Callable, session_ttl_s: float
) -> Components:
    """Create the page's components in the current ``gr.Blocks``; each session's `Session` lives in the
    returned ``state``, forgotten (`delete_callback`) after `session_ttl_s` without use."""
    c = Components()
    c.state = gr.State(None, time_to_live=session_ttl_s, delete_callback=delete_callback)
    gr.Markdown(text.header(handlers.model, model_path), elem_id="header")
    with gr.Row(equal_height=False):
        with gr.Column(scale=4):
            _views(c)
            with gr.Row(equal_height=False):
                c.mips = {
                    plane: gr.Image(
                        label=f"PET MIP, {plane}",
                        format="png",
                        type="pil",
                        height=330,
                        interactive=False,
                        buttons=["download", "fullscreen"],
                        elem_id=f"mip-{plane}",
                        min_width=180,
                        visible=handlers.pet_model,
                    )
                    for plane in MIP_PLANES
                }
                _results(c, handlers.pet_model)
        with gr.Column(scale=1, elem_id="side"):
            _loading(c, handlers)
            c.status = gr.Markdown("No study loaded.", elem_id="status")
            c.segment_button = gr.Button("Segment", variant="primary", interactive=False, elem_id="segment")
            c.timing = gr.Markdown("", elem_id="timing")
            head = handlers.config.classification_head
            c.classification = gr.Label(
                label=text.classification_label(head),
                visible=head is not None,
                num_top_classes=4,
                elem_id="classification",
            )
            _display_controls(c, handlers)
            with gr.Accordion("About the model", open=False):
                gr.Markdown(text.model_markdown(handlers.model, model_path))
    return c


def _views(c: Components) -> None:
    """The three planes' images, each over its slider, the legend and the conventions."""
    with gr.Row(elem_id="views"):
        for plane in viewer.PLANES:
            with gr.Column(min_width=220):
                c.views[plane] = gr.Image(
                    label=plane.capitalize(),
                    format="png",
                    type="pil",
                    height=420,
                    interactive=False,
                    buttons=["download", "fullscreen"],
                    placeholder="Load a study (right) to see it here",
                    elem_id=f"view-{plane}",
                )
                c.sliders[plane] = gr.Slider(
                    1, 2, value=1, step=1, label=text.SLIDER_LABELS[plane], interactive=False, elem_id=f"slider-{plane}"
                )
    c.legend = gr.HTML(elem_id="legend")
    gr.Markdown(f"<small>{text.CONVENTIONS}</small>")


def _results(c: Components, pet_model: bool) -> None:
    """The study totals, the lesion table, "Go to lesion" and the downloads."""
    with gr.Column(scale=2, min_width=360, elem_id="results"):
        c.totals = gr.Markdown("No segmentation yet.", elem_id="totals")
        c.table = gr.Dataframe(
            value=pd.DataFrame(columns=text.lesion_columns(pet_model)),
            interactive=False,
            max_height=260,
            label="Lesions, largest first (click a row to go there)",
            show_search="none",
            elem_id="lesions",
        )
        c.go_to = gr.Dropdown([], label="Go to lesion", interactive=True, elem_id="go-to-lesion")
        with gr.Row():
            c.download_mask = gr.DownloadButton(
                "Download mask (.nii.gz)", interactive=False, size="md", elem_id="download-mask"
            )
            c.download_table = gr.DownloadButton(
                "Download lesion table (.csv)", interactive=False, size="md", elem_id="download-table"
            )


def _loading(c: Components, handlers: DemoHandlers) -> None:
    """The example chooser (when there are examples) and the upload panel."""
    examples = handlers.examples
    if examples:
        with gr.Group():
            c.example = gr.Dropdown(list(examples), value=next(iter(examples)), label="Example study")
            c.load_example_button = gr.Button("Load example", variant="secondary", elem_id="load-example")
    with gr.Accordion("Upload a study (NIfTI)", open=not examples, elem_id="upload"):
        c.uploads = {
            m: gr.File(
                label=f"{viewer.modality_title(m)} (.nii / .nii.gz)",
                file_types=NIFTI_TYPES,
                type="filepath",
                elem_id=f"upload-{m}",
            )
            for m in handlers.modalities
        }
        c.upload_label = gr.File(
            label="Ground truth, optional (.nii / .nii.gz)",
            file_types=NIFTI_TYPES,
            type="filepath",
            elem_id="upload-label",
        )
        gr.Markdown(text.upload_note(handlers.max_upload_mb, handlers.config.reference_modality))
        c.load_files_button = gr.Button("Load uploaded files", elem_id="load-files")


def _display_controls(c: Components, handlers: DemoHandlers) -> None:
    """Image and overlay choice, opacity, CT window (CT models), SUV range (PET models), crosshair."""
    with gr.Group():
        c.image = gr.Radio([], label="Image", elem_id="image-choice")
        c.overlay = gr.Radio([], label="Overlay", elem_id="overlay-choice")
        c.opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity", elem_id="opacity")
        c.window = gr.Radio(
            list(viewer.CT_WINDOWS),
            value=viewer.DEFAULT_CT_WINDOW,
            label="CT window",
            info=text.ct_window_info(),
            visible="ct" in handlers.modalities,
            elem_id="ct-window",
        )
        c.suv_max = gr.Slider(
            1,
            30,
            value=viewer.DEFAULT_SUV_MAX,
            step=0.5,
            label="PET display range: SUV 0 to",
            visible=handlers.pet_model,
            elem_id="suv-max",
        )
        c.crosshair = gr.Checkbox(value=True, label="Crosshair (where the other views cut)", elem_id="crosshair")
