"""What the demo does on each event, on plain values and without Gradio: load an example or uploaded
files, segment, move a slider or change a display control, go to a lesion (from the list or a table row).

`DemoHandlers` holds what all sessions share (the model, read-only; the example studies; the app's
temporary folder). Each method takes a browser session's `Session` (None before its first study), the
slider values (1-based, axial / coronal / sagittal) and the display controls (`Controls`) as the page
sends them, and returns a plain result: `StudyView` after a study is loaded or segmented, `Rendered`
after a slider or control moves, `LesionMove` after going to a lesion; images are PIL images, the mask
and lesion table are files in the session's folder. A user mistake raises `UserInputError` with a
one-line message. `mirror_unet_hf.demo.wiring` turns these results into the page's updates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from .. import viewer
from ..data.constants import AUTOPET_LABEL_FILE
from ..data.nifti_io import save_nifti
from ..errors import UserInputError
from ..inference import predict_study, study_inputs
from ..lesions import write_lesion_table
from ..sliding_window import SlidingWindowSettings
from . import text
from .session import Session, new_session

MAX_UPLOAD_MB = 512  # per file, checked by the server before a byte is processed
LISTED_LESIONS = 200  # rows in the table and entries in "Go to lesion": the largest lesions
LABEL_FILES = (AUTOPET_LABEL_FILE, "label.nii.gz", "seg.nii.gz", "label.nii", "seg.nii")
MIP_PLANES = ("coronal", "sagittal")

# called as Gradio's progress tracker is: progress(fraction or (done, total), desc=..., unit=...)
Progress = Callable[..., object]


# ------------------------------------------------------------------------------------- examples


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
    """The ground truth file of an example study folder, if it has one."""
    return next((folder / name for name in LABEL_FILES if (folder / name).is_file()), None)


# --------------------------------------------------------------------------------- plain values


class Controls(NamedTuple):
    """The display controls' values as the page sends them: image and overlay keys, CT window preset, SUV
    display maximum, overlay opacity, crosshair."""

    image: str | None = None
    overlay: str | None = viewer.NO_OVERLAY
    window: str | None = viewer.DEFAULT_CT_WINDOW
    suv_max: float = viewer.DEFAULT_SUV_MAX
    opacity: float = 0.5
    crosshair: bool = True

    def display(self, **changes) -> viewer.Display:
        """The viewer's `Display` of these values (`changes` replace fields first)."""
        values = self._replace(**changes)
        return viewer.Display(
            image=values.image,
            overlay=values.overlay,
            ct_window=values.window or viewer.DEFAULT_CT_WINDOW,
            suv_max=float(values.suv_max),
            opacity=float(values.opacity),
            crosshair=bool(values.crosshair),
        )


def position_of(sliders: Sequence, study: viewer.ViewerStudy) -> tuple[int, int, int]:
    """Slider values (1-based; axial, coronal, sagittal) → RAS voxel (x, y, z), 0-based."""
    position = [0, 0, 0]
    for plane, value in zip(viewer.PLANES, sliders):
        axis = viewer.PLANE_AXIS[plane]
        if value is None or not 1 <= int(value) <= study.shape[axis]:
            raise UserInputError(f"{plane} slice {value} is outside 1..{study.shape[axis]}")
        position[axis] = int(value) - 1
    return tuple(position)


def slider_values(position: Sequence[int]) -> dict[str, int]:
    """plane -> its slider's value (1-based) at a RAS voxel position (0-based)."""
    return {plane: int(position[viewer.PLANE_AXIS[plane]]) + 1 for plane in viewer.PLANES}


def lesion_of_row(index, row_value: Sequence | None) -> int:
    """The lesion id of a clicked table row: its first cell, else the row number (index or (row, column))."""
    row = index[0] if isinstance(index, (list, tuple)) else index
    return int(row_value[0] if row_value else int(row) + 1)


def require_study(session: Session | None) -> viewer.ViewerStudy:
    """The session's study; a user error when none is loaded yet."""
    if session is None or session.study is None:
        raise UserInputError("no study loaded yet: load the example or upload the study's files first")
    return session.study


@dataclass
class Rendered:
    """What a slider or display control redraws: plane -> slice, plane -> PET MIP (none without a PET
    image) and the overlay's legend (HTML)."""

    views: dict[str, Image.Image]
    mips: dict[str, Image.Image]
    legend: str


@dataclass
class StudyView:
    """Everything the page shows after a study is loaded or segmented. Before segmenting: no rows, no
    lesion choices, no timing, classification or files."""

    session: Session
    position: tuple[int, int, int]  # RAS voxel, 0-based
    display: viewer.Display
    rendered: Rendered
    slices: dict[str, int]  # plane -> slice count (the slider's maximum)
    image_choices: list[tuple[str, str]]
    overlay_choices: list[tuple[str, str]]
    status: str
    columns: tuple[str, ...]
    rows: list[list]  # the listed (largest) lesions
    totals: str
    lesion_choices: list[tuple[str, int]]
    timing: str = ""
    classification: dict | None = None
    mask_file: Path | None = None
    table_file: Path | None = None

    @property
    def segmented(self) -> bool:
        return self.mask_file is not None

    @property
    def slider_values(self) -> dict[str, int]:
        return slider_values(self.position)


@dataclass
class LesionMove:
    """The views moved to a lesion."""

    lesion_id: int
    position: tuple[int, int, int]  # RAS voxel, 0-based, inside the lesion
    rendered: Rendered

    @property
    def slider_values(self) -> dict[str, int]:
        return slider_values(self.position)


# ------------------------------------------------------------------------------------- handlers


class DemoHandlers:
    """The demo's events for one model (read-only, shared by all sessions) and its example studies.

    `examples`: case id -> study folder (`find_examples`); `sessions_root`: the app's temporary folder,
    where each session gets its own folder; `settings`: sliding-window settings; `max_upload_mb`: the
    largest uploaded file accepted.
    """

    def __init__(
        self,
        model,
        examples: Mapping[str, Path],
        sessions_root: Path,
        *,
        settings: SlidingWindowSettings | None = None,
        max_upload_mb: float = MAX_UPLOAD_MB,
    ):
        self.model = model
        self.config = model.config
        self.modalities = list(self.config.modalities)
        self.pet_model = "pet" in self.modalities
        self.settings = settings or SlidingWindowSettings()
        self.settings.check()
        self.examples = dict(examples)
        self.sessions_root = Path(sessions_root)
        self.max_upload_mb = max_upload_mb
        self.limit_bytes = int(max_upload_mb * 1024 * 1024)

    # ------------------------------------------------------------------------------ loading

    def load_example(self, session: Session | None, case_id: str) -> StudyView:
        """Open the example study `case_id` (with its ground truth when it has one)."""
        if case_id not in self.examples:
            raise UserInputError(f"example {case_id!r} does not exist; choose one of: {', '.join(self.examples)}")
        folder = self.examples[case_id]
        study = viewer.load_study(
            study_inputs(folder, self.modalities),
            self.config.reference_modality,
            label=example_label(folder),
            label_names=self.config.label_names,
            case_id=case_id,
        )
        return self.open_study(session, study)

    def load_files(self, session: Session | None, images: Sequence[str | None], label: str | None) -> StudyView:
        """Open uploaded files: `images` in the model's modality order (None where missing), `label` optional."""
        chosen = {m: path for m, path in zip(self.modalities, images) if path}
        missing = [viewer.modality_title(m) for m in self.modalities if m not in chosen]
        if missing:
            raise UserInputError(
                f"upload the {' and '.join(missing)} file{'s' if len(missing) > 1 else ''} first "
                f"(this model reads {', '.join(viewer.modality_title(m) for m in self.modalities)})"
            )
        named = {**chosen, **({"label": label} if label else {})}
        for path in named.values():
            size = Path(path).stat().st_size
            if size > self.limit_bytes:
                raise UserInputError(
                    f"file {Path(path).name!r} is {size / 2**20:.1f} MB; "
                    f"the limit is {self.max_upload_mb:g} MB per file"
                )
        names = {key: Path(path).name for key, path in named.items()}
        reference = self.config.reference_modality
        study = viewer.load_study(
            chosen,
            reference,
            label=label or None,
            label_names=self.config.label_names,
            case_id=Path(chosen[reference]).name.split(".nii")[0],
            file_names=names,
        )
        return self.open_study(session, study)

    def open_study(self, session: Session | None, study: viewer.ViewerStudy) -> StudyView:
        """Put a loaded study in the session (a new one for a first study), centred, with the ground truth."""
        session = session if isinstance(session, Session) else new_session(self.sessions_root)
        session.start(study)
        first_image = viewer.FUSION if self.pet_model and "ct" in self.modalities else self.modalities[-1]
        first_overlay = viewer.GROUND_TRUTH if viewer.GROUND_TRUTH in study.overlays else viewer.NO_OVERLAY
        return self.study_view(session, study.centre(), viewer.Display(first_image, first_overlay))

    # ---------------------------------------------------------------------------- segmenting

    def segment(
        self, session: Session | None, sliders: Sequence, controls: Controls, progress: Progress | None = None
    ) -> StudyView:
        """Segment the session's study: its layers gain the final mask and branch outputs, the session its
        lesion table and classification, its folder the mask and the table; the final mask is shown."""
        progress = progress or _no_progress
        study = require_study(session)
        position = position_of(sliders, study)
        progress(0.0, desc="Preparing the study")

        def windows_done(done: int, total: int) -> None:
            progress((done, total), desc="Sliding window", unit="windows")

        start = time.perf_counter()
        prediction = predict_study(
            self.model, study.sources, self.settings, with_branches=True, case_id=study.case_id, progress=windows_done
        )
        progress(1.0, desc="Measuring lesions")
        viewer.clear_prediction(study)
        viewer.add_prediction(study, prediction, self.config)
        session.table = viewer.measure_lesions(study, prediction.mask)
        session.classification = prediction.classification
        session.workdir.mkdir(parents=True, exist_ok=True)  # in case the session expired while this ran
        save_nifti(prediction.mask, session.mask_file)  # atomic: temporary name, then rename
        write_lesion_table(session.table, session.table_file, overwrite=True)
        session.seconds = time.perf_counter() - start
        images = [key for _, key in study.image_choices()]
        keep_image = controls.image if controls.image in images else images[0]
        return self.study_view(session, position, controls.display(image=keep_image, overlay=viewer.FINAL_MASK))

    # ------------------------------------------------------------------------------- viewing

    def render(self, session: Session | None, sliders: Sequence, controls: Controls) -> Rendered:
        """Redraw the views after a slider or a display control moved."""
        study = require_study(session)
        return self.render_all(study, position_of(sliders, study), controls.display())

    def go_to_lesion(self, session: Session | None, lesion_id: int | None, controls: Controls) -> LesionMove:
        """Move the three views into lesion `lesion_id` of the final mask."""
        study = require_study(session)
        if session.table is None:
            raise UserInputError("segment the study first: the lesions come from the final mask")
        lesions = {lesion.lesion_id: lesion for lesion in session.table.lesions}
        if lesion_id is None or int(lesion_id) not in lesions:
            raise UserInputError(f"lesion {lesion_id} does not exist; this study has {len(lesions)}")
        position = viewer.lesion_position(study, lesions[int(lesion_id)])
        return LesionMove(int(lesion_id), position, self.render_all(study, position, controls.display()))

    def select_row(self, session: Session | None, index, row_value: Sequence | None, controls: Controls) -> LesionMove:
        """Go to the lesion of a clicked lesion-table row (`index`: its row number, or (row, column))."""
        return self.go_to_lesion(session, lesion_of_row(index, row_value), controls)

    def render_all(self, study: viewer.ViewerStudy, position: Sequence[int], display: viewer.Display) -> Rendered:
        """The three slices through `position`, the PET MIPs (PET models) and the legend."""
        views = {plane: viewer.render_slice(study, plane, position, display) for plane in viewer.PLANES}
        mips = {}
        if self.pet_model:
            mips = {plane: viewer.render_mip(study, plane, display, position) for plane in MIP_PLANES}
        return Rendered(views, mips, text.legend_html(viewer.legend(study, display.overlay)))

    def study_view(self, session: Session, position: Sequence[int], display: viewer.Display) -> StudyView:
        """Everything shown after the session's study was loaded or segmented."""
        study = session.study
        view = StudyView(
            session=session,
            position=tuple(position),
            display=display,
            rendered=self.render_all(study, position, display),
            slices={plane: study.shape[viewer.PLANE_AXIS[plane]] for plane in viewer.PLANES},
            image_choices=study.image_choices(),
            overlay_choices=study.overlay_choices(),
            status=text.study_status(study),
            columns=text.lesion_columns(self.pet_model),
            rows=[],
            totals="No segmentation yet: press **Segment**.",
            lesion_choices=[],
        )
        if session.table is not None:
            columns, rows = viewer.lesion_rows(session.table, self.pet_model)
            listed = ""
            if len(rows) > LISTED_LESIONS:
                listed = f" (the {LISTED_LESIONS} largest are listed; the CSV has all)"
            view.columns, view.rows = tuple(columns), rows[:LISTED_LESIONS]
            view.totals = f"**Study:** {viewer.lesion_summary(session.table, self.pet_model)}{listed}"
            view.lesion_choices = text.lesion_choices(session.table.lesions[:LISTED_LESIONS], self.pet_model)
            view.timing = f"Segmented in **{session.seconds:.1f} s**"
            view.classification = text.classification_value(session.classification, self.config.classification_head)
            view.mask_file, view.table_file = session.mask_file, session.table_file
        return view


def _no_progress(*args, **kwargs) -> None:
    return None
