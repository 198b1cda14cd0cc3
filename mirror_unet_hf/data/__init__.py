"""Data for Mirror U-Net: dataset builder, preprocessing, patch sampling and synthetic phantoms.

- ``load_mirror_dataset(name, data_dir, fold, num_folds, cache_dir, skip_bad)`` -> ``DatasetDict`` (train/validation)
- ``preprocess_study(images, config, label)`` -> ``PreprocessedStudy``; ``to_reference_grid`` maps results back
- ``prepare_dataset(name, data_dir, cache_dir, num_proc)`` prepares every study once into a compact cache
  (``mirror-unet prepare``); ``load_prepared_dataset(name, data_dir, config, fold, ...)`` -> its folds, read by
- ``MirrorPatchDataset`` (training patches), ``prepare_studies`` (whole preprocessed studies for validation)
- ``make_phantoms(layout, out_dir, n, seed, shape)`` writes synthetic studies in the real layouts
"""

from .builder import MirrorDatasetBuilder, MirrorDatasetConfig, load_mirror_dataset
from .constants import (
    AUTOPET_FILES,
    AUTOPET_LABEL_FILE,
    AUTOPET_LABEL_NAMES,
    AUTOPET_MODALITIES,
    BRAIN_TUMOUR_LABEL_NAMES,
    BRAIN_TUMOUR_MODALITIES,
    DIAGNOSIS_NAMES,
    UNKNOWN_DIAGNOSIS,
    diagnosis_index,
)
from .phantoms import make_phantoms
from .preparation import load_prepared_dataset, prepare_dataset
from .prepared import PreparedStudies, prepare_studies
from .preprocessing import (
    PreprocessedStudy,
    PreprocessingConfig,
    crop_to_box,
    default_foreground_channels,
    foreground_box,
    preprocess_study,
    to_reference_grid,
)
from .sampling import (
    MirrorPatchDataset,
    extract_patch,
    sample_patch_centres,
    sample_patches,
)
from .splits import assign_folds, split_indices

__all__ = [
    "AUTOPET_FILES",
    "AUTOPET_LABEL_FILE",
    "AUTOPET_LABEL_NAMES",
    "AUTOPET_MODALITIES",
    "BRAIN_TUMOUR_LABEL_NAMES",
    "BRAIN_TUMOUR_MODALITIES",
    "DIAGNOSIS_NAMES",
    "UNKNOWN_DIAGNOSIS",
    "MirrorDatasetBuilder",
    "MirrorDatasetConfig",
    "MirrorPatchDataset",
    "PreparedStudies",
    "PreprocessedStudy",
    "PreprocessingConfig",
    "assign_folds",
    "crop_to_box",
    "default_foreground_channels",
    "diagnosis_index",
    "extract_patch",
    "foreground_box",
    "load_mirror_dataset",
    "load_prepared_dataset",
    "make_phantoms",
    "prepare_dataset",
    "prepare_studies",
    "preprocess_study",
    "sample_patch_centres",
    "sample_patches",
    "split_indices",
    "to_reference_grid",
]
