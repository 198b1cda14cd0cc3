"""The ``mirror-unet-segmentation`` pipeline: one study in (NIfTI per modality, or a study folder), a mask out.

Travels as Hub remote code with every checkpoint (``custom_pipelines`` in ``config.json``), so that

    segmenter = pipeline("mirror-unet-segmentation", model=repo_or_folder, trust_remote_code=...)
    result = segmenter({"ct": "CTres.nii.gz", "pet": "SUV.nii.gz"})

works where this package is not installed (remote code trusted after reading it). It runs exactly what
``mirror-unet predict`` runs: the image processor (``image_processing_mirror_unet``) and the sliding-window
inference (``sliding_window``) are the package's own modules, shipped beside the weights, with the same defaults
(``precision="auto"``, overlap 0.25, the model's patch size as window, constant blending). The result holds:

- ``mask``: a uint8 ``nibabel.Nifti1Image`` on the grid of the reference modality's input (same shape and
  affine), voxel values in the data set's label map (``label_names`` says which value means what);
- ``classification``: the classification head's probabilities (``{"lesion_presence": p}`` or one per
  diagnosis), None without a head;
- ``lesions``: for models that read a PET in SUV, ``{"summary": {...}, "lesions": [row, ...]}`` with the
  numbers and columns of ``mirror-unet predict --lesions`` (18-connected components, volume, SUVmax/mean,
  TLG, world centroid, voxel bounding box); None otherwise.

A repository saved before the image processor existed has no ``preprocessor_config.json``: the pipeline then
builds the processor from the four preprocessing fields every ``config.json`` carries (the same values the
processor would hold) and warns, naming the repository and the fix (``mirror-unet push`` again, or
``save_pretrained``, which now write the processor).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import ndimage
from transformers import Pipeline

from .image_processing_mirror_unet import MirrorUNetImageProcessor, grids_match, load_volume
from .sliding_window import SlidingWindowSettings, sliding_window_predict

PIPELINE_TASK = "mirror-unet-segmentation"
PIPELINE_CLASS = "MirrorUNetSegmentationPipeline"
# What `mirror-unet predict --lesions` writes per lesion (mirror_unet_hf.lesions.LESION_COLUMNS).
LESION_COLUMNS = (
    "lesion_id",
    "voxel_count",
    "volume_ml",
    "suv_max",
    "suv_mean",
    "tlg",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "bbox_min_i",
    "bbox_min_j",
    "bbox_min_k",
    "bbox_max_i",
    "bbox_max_j",
    "bbox_max_k",
)
SUV_MODALITY = "pet"
WINDOW_SETTINGS = ("precision", "overlap", "window", "window_batch", "workers", "blend")


def custom_pipelines_entry() -> dict:
    """The ``custom_pipelines`` value of a checkpoint's ``config.json`` (what `transformers.pipeline` reads)."""
    return {PIPELINE_TASK: {"impl": f"pipeline_mirror_unet.{PIPELINE_CLASS}", "pt": ["AutoModel"], "type": "image"}}


def lesion_table(mask: np.ndarray, suv: np.ndarray, affine: np.ndarray) -> dict:
    """``{"summary", "lesions"}`` of a final mask: every 18-connected component measured on the SUV image.

    The same numbers, order and columns as ``mirror_unet_hf.lesions.lesion_table`` (which labels with cc3d;
    scipy's labelling here numbers the components differently, which the ordering below makes irrelevant):
    lesions by decreasing voxel count, ties by the lower bounding-box corner.
    """
    affine = np.asarray(affine, dtype=np.float64)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    labels, n = ndimage.label(np.asarray(mask) != 0, structure=ndimage.generate_binary_structure(3, 2))
    rows = []
    if n:
        coords = np.nonzero(labels)
        ids = labels[coords].astype(np.intp)
        values = np.asarray(suv)[coords].astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError("SUV image has non-finite values (NaN/inf) inside the mask; expected finite SUVs")
        counts = np.bincount(ids, minlength=n + 1)
        suv_sum = np.bincount(ids, weights=values, minlength=n + 1)
        suv_max = np.full(n + 1, -np.inf)
        np.maximum.at(suv_max, ids, values)
        centroid = np.stack([np.bincount(ids, weights=axis, minlength=n + 1) for axis in coords], axis=1)
        centroid[1:] /= counts[1:, None]
        centroid = centroid @ affine[:3, :3].T + affine[:3, 3]
        boxes = ndimage.find_objects(labels)
        for label in range(1, n + 1):
            volume = counts[label] * voxel_ml
            mean = suv_sum[label] / counts[label]
            box = boxes[label - 1]
            rows.append(
                [
                    0,
                    int(counts[label]),
                    float(volume),
                    float(suv_max[label]),
                    float(mean),
                    float(mean * volume),
                    *(float(v) for v in centroid[label]),
                    *(int(s.start) for s in box),
                    *(int(s.stop) - 1 for s in box),
                ]
            )
    rows.sort(key=lambda row: (-row[1], tuple(row[9:12])))
    lesions = [dict(zip(LESION_COLUMNS, [rank, *row[1:]], strict=True)) for rank, row in enumerate(rows, start=1)]
    summary = {
        "lesion_count": len(lesions),
        "total_mtv_ml": float(sum(row["volume_ml"] for row in lesions)),
        "total_tlg": float(sum(row["tlg"] for row in lesions)),
        "suv_max": max((row["suv_max"] for row in lesions), default=None),
        "voxel_volume_ml": voxel_ml,
    }
    return {"summary": summary, "lesions": lesions}


def _is_mirror_unet_processor(processor: Any) -> bool:
    # duck-typed: the processor may come from the package or from a repo's remote-code copy (two classes)
    return all(
        hasattr(processor, name) for name in ("study_images", "post_process_semantic_segmentation", "modalities")
    )


class MirrorUNetSegmentationPipeline(Pipeline):
    """Segment one 3D study with a Mirror U-Net (see the module docstring for inputs and outputs).

    Call with a mapping modality -> NIfTI path (or nibabel image), a study folder, or a list of either. Keyword
    arguments (at creation or per call): `precision` (`"auto"`, `"fp32"`, `"bf16"`), `overlap`, `window`,
    `window_batch`, `workers`, `blend` (`"constant"`, `"gaussian"`) as for `mirror-unet predict`, and
    `lesions=False` to skip the lesion table.
    """

    _load_processor = False
    _load_image_processor = None  # optional: loaded when the repo has one, else built from the config
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        config = self.model.config
        if getattr(config, "model_type", None) != "mirror_unet":
            raise ValueError(
                f"the {PIPELINE_TASK} pipeline needs a Mirror U-Net; got a {type(self.model).__name__} "
                f"(model_type {getattr(config, 'model_type', None)!r})"
            )
        if self.image_processor is None or not _is_mirror_unet_processor(self.image_processor):
            name = getattr(config, "_name_or_path", None) or "this model"
            warnings.warn(
                f"{name} has no Mirror U-Net preprocessor_config.json (saved before the image processor "
                "existed); preprocessing with the fields of its config.json instead (modalities, "
                "reference_modality, target_spacing, intensity_windows). To add it, publish the checkpoint "
                "again with `mirror-unet push` or save it again with save_pretrained.",
                UserWarning,
                stacklevel=2,
            )
            self.image_processor = MirrorUNetImageProcessor.from_model_config(config)

    def _sanitize_parameters(self, lesions: bool | None = None, **settings):
        unknown = sorted(set(settings) - set(WINDOW_SETTINGS))
        if unknown:
            raise TypeError(
                f"{PIPELINE_TASK} got unknown argument(s) {', '.join(unknown)}; accepted: lesions, "
                f"{', '.join(WINDOW_SETTINGS)}"
            )
        forward = {key: value for key, value in settings.items() if value is not None}
        postprocess = {} if lesions is None else {"lesions": bool(lesions)}
        return {}, forward, postprocess

    def preprocess(self, inputs: Any) -> dict:
        images = self.image_processor.study_images(inputs)
        features = self.image_processor(images)
        return {"pixel_values": features["pixel_values"][0], "grid": features["grid"], "images": images}

    def _forward(self, model_inputs: dict, **settings) -> dict:
        window = settings.pop("window", None)
        run = SlidingWindowSettings(
            window=tuple(window) if window is not None else None,
            device=str(self.device),
            **{"precision": "auto", **settings},
        )
        config = self.model.config
        parts = ("logits", "classification") if config.classification_head is not None else ("logits",)
        # only the mask is kept: for two classes the sliding window blends one margin channel, as predict does
        result = sliding_window_predict(self.model, model_inputs["pixel_values"], run, parts=parts, keep_logits=False)
        return {
            "labels": result.labels,
            "classification": result.classification,
            "grid": model_inputs["grid"],
            "images": model_inputs["images"],
        }

    def postprocess(self, model_outputs: dict, lesions: bool = True) -> dict:
        config = self.model.config
        mask = self.image_processor.post_process_semantic_segmentation(model_outputs["labels"], model_outputs["grid"])
        classification = None
        if model_outputs["classification"] is not None:
            head = config.classification_head
            names = ["lesion_presence"] if head["task"] == "lesion_presence" else list(head["class_names"])
            classification = {n: float(p) for n, p in zip(names, model_outputs["classification"], strict=True)}
        table = None
        if lesions and SUV_MODALITY in config.modalities:
            suv, suv_affine = load_volume(model_outputs["images"][SUV_MODALITY], SUV_MODALITY)
            # lesions are measured where the mask lies: the PET's own grid (the reference grid of PET models)
            if grids_match(suv.shape, suv_affine, mask.shape, mask.affine):
                table = lesion_table(np.asanyarray(mask.dataobj), suv, mask.affine)
        return {
            "mask": mask,
            "label_names": dict(zip(config.final_label_values, config.final_class_names, strict=True)),
            "classification": classification,
            "lesions": table,
        }


__all__ = ["MirrorUNetSegmentationPipeline", "PIPELINE_TASK", "custom_pipelines_entry", "lesion_table"]
