"""What the demo's viewer shows, without any UI: a study on a RAS display grid, windowed slices with
overlays, PET maximum-intensity projections and the lesion rows, as numpy arrays and PIL images.

The Gradio app (`mirror_unet_hf.demo`) only wires these functions to controls, so everything that
decides what a pixel means is tested here without a browser. The parts:

- `study`: loading a study's files (checked, named in messages) and the layers it holds: images, ground
  truth, and after segmenting the final mask and each branch's output;
- `rendering`: the display controls (`Display`) and the slices, projections and legend drawn from them;
- `lesion_view`: the lesion table's rows, the study totals and where a lesion lies in the views.

Display conventions (stated in the app too):

- Every volume lies on the grid of the model's reference modality (the PET, or T1Gd for brain models),
  brought to RAS+ (array axes run towards the patient's right, anterior and head) by flips and axis
  swaps only, never resampled. Oblique scans are shown on their closest axis-aligned grid.
- Radiological convention: the patient's right is on the left of axial and coronal images; the viewer
  looks at axial slices from the feet. Coronal and sagittal images are head up; sagittal images have the
  face (anterior) on the left.
- Pixels are square in millimetres: each image's width and height follow the voxel spacing, with one
  scale (pixels per mm) for all views of a study.
"""

from .lesion_view import (
    MRI_LESION_COLUMNS,
    PET_LESION_COLUMNS,
    lesion_position,
    lesion_rows,
    lesion_summary,
    location_text,
    measure_lesions,
)
from .rendering import (
    COMPARE_CODES,
    CROSSHAIR_ALPHA,
    CROSSHAIR_COLOUR,
    CT_WINDOWS,
    DEFAULT_CT_WINDOW,
    DEFAULT_SUV_MAX,
    EDGE_LETTERS,
    LABEL_COLOURS,
    PLANE_AXIS,
    PLANES,
    PROBABILITY_COLOUR,
    PROBABILITY_FLOOR,
    Display,
    ct_grey,
    hot,
    image_size,
    legend,
    plane_axes,
    project_max,
    render_mip,
    render_slice,
    take_slice,
    to_image_orientation,
)
from .study import (
    COMPARE,
    DISPLAY_PX,
    FINAL_MASK,
    FUSION,
    GROUND_TRUTH,
    MODALITY_TITLES,
    NO_OVERLAY,
    Layer,
    ViewerStudy,
    add_prediction,
    clear_prediction,
    image_kind,
    load_study,
    modality_title,
)

__all__ = [
    "COMPARE",
    "COMPARE_CODES",
    "CROSSHAIR_ALPHA",
    "CROSSHAIR_COLOUR",
    "CT_WINDOWS",
    "DEFAULT_CT_WINDOW",
    "DEFAULT_SUV_MAX",
    "DISPLAY_PX",
    "EDGE_LETTERS",
    "FINAL_MASK",
    "FUSION",
    "GROUND_TRUTH",
    "LABEL_COLOURS",
    "MODALITY_TITLES",
    "MRI_LESION_COLUMNS",
    "NO_OVERLAY",
    "PET_LESION_COLUMNS",
    "PLANES",
    "PLANE_AXIS",
    "PROBABILITY_COLOUR",
    "PROBABILITY_FLOOR",
    "Display",
    "Layer",
    "ViewerStudy",
    "add_prediction",
    "clear_prediction",
    "ct_grey",
    "hot",
    "image_kind",
    "image_size",
    "legend",
    "lesion_position",
    "lesion_rows",
    "lesion_summary",
    "load_study",
    "location_text",
    "measure_lesions",
    "modality_title",
    "plane_axes",
    "project_max",
    "render_mip",
    "render_slice",
    "take_slice",
    "to_image_orientation",
]
