"""The demo's events: each component event calls a `DemoHandlers` method with plain values and turns
its result into the page's updates (component -> value or Gradio update). A user mistake
(`UserInputError`) shows as a one-line error in the page instead of a traceback.
"""

from __future__ import annotations

import functools

import gradio as gr
import pandas as pd

from ..errors import UserInputError, one_line
from .handlers import Controls, DemoHandlers, LesionMove, Rendered, StudyView
from .layout import Components


def user_errors(fn):
    """Show a user mistake as a one-line error in the page instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserInputError as error:
            raise gr.Error(one_line(error), title="Cannot do that", print_exception=False) from None

    return wrapper


# ------------------------------------------------------------------------------------ updates


def rendered_updates(c: Components, rendered: Rendered) -> dict:
    """The views, the MIPs (PET models only) and the legend."""
    out = {c.views[plane]: image for plane, image in rendered.views.items()}
    out.update({c.mips[plane]: image for plane, image in rendered.mips.items()})
    out[c.legend] = rendered.legend
    return out


def study_updates(c: Components, view: StudyView) -> dict:
    """Every output after a study is loaded or segmented."""
    out = rendered_updates(c, view.rendered)
    for plane, value in view.slider_values.items():
        out[c.sliders[plane]] = gr.Slider(minimum=1, maximum=view.slices[plane], value=value, interactive=True)
    out[c.image] = gr.Radio(choices=view.image_choices, value=view.display.image)
    out[c.overlay] = gr.Radio(choices=view.overlay_choices, value=view.display.overlay)
    out[c.state] = view.session
    out[c.segment_button] = gr.Button(interactive=True)
    out[c.status] = view.status
    out[c.totals] = view.totals
    out[c.go_to] = gr.Dropdown(choices=view.lesion_choices, value=None)
    out[c.timing] = view.timing
    out[c.classification] = view.classification
    if view.segmented:
        out[c.table] = pd.DataFrame(view.rows, columns=list(view.columns))
        out[c.download_mask] = gr.DownloadButton(value=str(view.mask_file), interactive=True)
        out[c.download_table] = gr.DownloadButton(value=str(view.table_file), interactive=True)
    else:
        out[c.table] = pd.DataFrame(columns=list(view.columns))
        out[c.download_mask] = gr.DownloadButton(value=None, interactive=False)
        out[c.download_table] = gr.DownloadButton(value=None, interactive=False)
    return out


def move_updates(c: Components, move: LesionMove) -> dict:
    """The views and the sliders at the lesion, and the lesion chosen in "Go to lesion"."""
    out = rendered_updates(c, move.rendered)
    for plane, value in move.slider_values.items():
        out[c.sliders[plane]] = value
    out[c.go_to] = move.lesion_id
    return out


# ------------------------------------------------------------------------------------- events


def connect(c: Components, handlers: DemoHandlers) -> None:
    """Connect the page's events to the handlers (inside the caller's ``gr.Blocks``)."""

    @user_errors
    def load_example(session, case_id):
        return study_updates(c, handlers.load_example(session, case_id))

    @user_errors
    def load_files(session, *files):
        *images, label = files
        return study_updates(c, handlers.load_files(session, images, label))

    @user_errors
    def segment(
        session,
        axial,
        coronal,
        sagittal,
        image_key,
        overlay_key,
        window_name,
        suv,
        alpha,
        cross,
        progress=gr.Progress(),  # noqa: B008  (Gradio injects progress through this default)
    ):
        controls = Controls(image_key, overlay_key, window_name, suv, alpha, cross)
        return study_updates(c, handlers.segment(session, (axial, coronal, sagittal), controls, progress))

    @user_errors
    def render(session, axial, coronal, sagittal, *controls):
        return rendered_updates(c, handlers.render(session, (axial, coronal, sagittal), Controls(*controls)))

    @user_errors
    def go_to_lesion(session, lesion_id, *controls):
        return move_updates(c, handlers.go_to_lesion(session, lesion_id, Controls(*controls)))

    @user_errors
    def select_row(session, image_key, overlay_key, window_name, suv, alpha, cross, evt: gr.SelectData):
        controls = Controls(image_key, overlay_key, window_name, suv, alpha, cross)
        return move_updates(c, handlers.select_row(session, evt.index, evt.row_value, controls))

    everything, rendered = c.everything, c.rendered
    if c.load_example_button is not None:
        c.load_example_button.click(
            load_example,
            [c.state, c.example],
            everything,
            api_name="load_example",
            concurrency_id="io",
            concurrency_limit=2,
        )
    c.load_files_button.click(
        load_files,
        [c.state, *c.uploads.values(), c.upload_label],
        everything,
        api_name="load_files",
        concurrency_id="io",
        concurrency_limit=2,
    )
    c.segment_button.click(
        segment,
        [c.state, *c.plane_sliders, *c.controls],
        everything,
        api_name="segment",
        concurrency_id="model",
        concurrency_limit=1,
    )
    gr.on(
        [s.input for s in c.plane_sliders] + [control.input for control in c.controls],
        render,
        [c.state, *c.plane_sliders, *c.controls],
        rendered,
        api_name="render",
        trigger_mode="always_last",
        show_progress="hidden",
    )
    moved = [*c.plane_sliders, *rendered, c.go_to]
    c.go_to.input(go_to_lesion, [c.state, c.go_to, *c.controls], moved, api_name="go_to_lesion", show_progress="hidden")
    c.table.select(select_row, [c.state, *c.controls], moved, api_visibility="private", show_progress="hidden")


__all__ = ["connect", "move_updates", "rendered_updates", "study_updates", "user_errors"]
