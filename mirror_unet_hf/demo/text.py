"""The demo's words: the header and model description, slider labels, the study line, the lesion
choices, the classification head's labels and the overlay legend, as plain strings (Markdown or HTML)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from .. import viewer
from ..lesions import Lesion

CONVENTIONS = (
    "Radiological convention: the patient's right is on the image's left "
    "(axial from the feet, coronal from the front); "
    "coronal and sagittal images are head up, sagittal with the face on the left. Pixels are square in mm."
)
SLIDER_LABELS = {
    "axial": "Axial slice (feet → head)",
    "coronal": "Coronal slice (back → front)",
    "sagittal": "Sagittal slice (left → right)",
}


def header(model, model_path: str) -> str:
    """The title, the three steps and the model line."""
    pet_model = "pet" in model.config.modalities
    return (
        "## Mirror U-Net — "
        + ("PET/CT lesion segmentation" if pet_model else "brain tumour segmentation (MRI)")
        + "\n**1** load a study (the example, or your NIfTI files) · **2** press **Segment** · **3** scroll through "
        "the slices, switch the image and overlay on the right, click a lesion to jump to it · download the results."
        + f"\n\n<small>{model_line(model, model_path)}</small>"
    )


def model_line(model, model_path: str) -> str:
    """One line under the title: which model, and whether its weights mean anything."""
    preset = getattr(model.config, "preset", None) or "custom"
    line = f"Model: <code>{html.escape(model_path)}</code> (preset {html.escape(preset)})"
    if phantom_trained(model_path):
        line += " · <b>trained on synthetic phantoms only: its output on real scans means nothing</b>"
    return line + " · research code, not a medical device."


def phantom_trained(model_path: str) -> bool:
    """Whether a local checkpoint's training arguments say it learnt from synthetic phantoms only."""
    args_file = Path(model_path) / "training_args.json"
    if not args_file.is_file():
        return False
    from ..hub import read_training_args, trained_on_phantoms

    return trained_on_phantoms(read_training_args(args_file))


def model_markdown(model, model_path: str) -> str:
    """The "About the model" text: preset, inputs, final mask rule and each part's task."""
    config = model.config
    rows = "\n".join(f"| {row['part']} | {row['inputs']} | {row['task']} |" for row in config.describe())
    phantom = ""
    if phantom_trained(model_path):
        phantom = "\n\n**Trained on synthetic phantoms only**: its outputs on real scans mean nothing."
    return (
        f"Model `{model_path}` — preset `{getattr(config, 'preset', None) or 'custom'}`, inputs "
        f"{', '.join(viewer.modality_title(m) for m in config.modalities)}; final mask: {config.final_mask_rule}.\n\n"
        f"| part | inputs | task |\n|---|---|---|\n{rows}{phantom}\n\nResearch code, not a medical device."
    )


def upload_note(max_upload_mb: float, reference: str) -> str:
    """What the upload panel accepts."""
    return (
        f"<small>One 3D file per image, up to {max_upload_mb:g} MB each; the mask is "
        f"written on the {viewer.modality_title(reference)} grid.</small>"
    )


def ct_window_info() -> str:
    """The CT window presets' width and level, in one line."""
    return " · ".join(f"{name.lower()} W{width:g} / L{level:g}" for name, (width, level) in viewer.CT_WINDOWS.items())


def classification_label(head: dict | None) -> str:
    """The title of the classification head's output."""
    if head and head["task"] == "lesion_presence":
        return "Lesion presence (classification head)"
    return "Diagnosis (classification head)"


def classification_value(probabilities: dict | None, head: dict | None) -> dict | None:
    """The classification head's probabilities as the page lists them (label -> probability), or None."""
    if not probabilities:
        return None
    if head and head["task"] == "lesion_presence":
        p = probabilities["lesion_presence"]
        return {"lesion present": p, "no lesion": 1.0 - p}
    return {name.replace("_", " "): p for name, p in probabilities.items()}


def study_status(study: viewer.ViewerStudy) -> str:
    """The loaded study in one line: case id, size in voxels and mm, ground truth or not."""
    shape = " × ".join(str(n) for n in study.shape)
    spacing = " × ".join(f"{s:g}" for s in study.spacing)
    truth = "with ground truth" if viewer.GROUND_TRUTH in study.overlays else "no ground truth"
    return f"**{html.escape(study.case_id)}** · {shape} voxels · {spacing} mm · {truth}"


def lesion_columns(pet_model: bool) -> tuple[str, ...]:
    """The lesion table's column names (SUV columns only for PET models)."""
    return viewer.PET_LESION_COLUMNS if pet_model else viewer.MRI_LESION_COLUMNS


def lesion_choices(lesions: Sequence[Lesion], pet_model: bool) -> list[tuple[str, int]]:
    """(title, lesion id) of each lesion for "Go to lesion"."""
    choices = []
    for lesion in lesions:
        suv = f", SUVmax {lesion.suv_max:.1f}" if pet_model else ""
        choices.append((f"Lesion {lesion.lesion_id}: {lesion.volume_ml:.2f} ml{suv}", lesion.lesion_id))
    return choices


def legend_html(entries: Sequence[tuple[tuple[int, int, int], str]]) -> str:
    """A colour swatch and its meaning for each of `viewer.legend`'s entries."""
    if not entries:
        return "<span>No overlay.</span>"
    parts = [
        f'<span class="swatch" style="background: rgb{tuple(colour)}"></span>{html.escape(text)}'
        for colour, text in entries
    ]
    return "<div>" + "".join(parts) + "</div>"
