"""Registration with transformers' Auto classes and pipelines, in-process and as Hub remote code."""

from __future__ import annotations

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_mirror_unet import MirrorUNetConfig
from .image_processing_mirror_unet import MirrorUNetImageProcessor
from .modeling_mirror_unet import MirrorUNetModel
from .pipeline_mirror_unet import PIPELINE_TASK, MirrorUNetSegmentationPipeline


def study_file_names() -> dict[str, list[str]]:
    """Modality -> the file names the registered data sets give it in a study folder (e.g. ``pet`` ->
    ``SUV.nii.gz``), for the image processor's study-folder inputs."""
    from .tasks import list_tasks  # imported when a processor is made: the task modules load `datasets`

    names: dict[str, list[str]] = {}
    for task in list_tasks():
        for modality in task.modalities:
            for name in task.modality_file_names(modality):
                names.setdefault(modality, [])
                if name not in names[modality]:
                    names[modality].append(name)
    return names


def register_auto_classes() -> None:
    """Make `AutoConfig`, `AutoModel`, `AutoModelForSemanticSegmentation` and `AutoImageProcessor` know
    `mirror_unet`, register the ``mirror-unet-segmentation`` pipeline task, and make `save_pretrained` copy
    the code files next to the weights (the config's `auto_map` names the three model Auto classes; the
    processor's and the pipeline's files are written by `MirrorUNetModel.save_pretrained`)."""
    AutoConfig.register(MirrorUNetConfig.model_type, MirrorUNetConfig, exist_ok=True)
    AutoModel.register(MirrorUNetConfig, MirrorUNetModel, exist_ok=True)
    AutoModelForSemanticSegmentation.register(MirrorUNetConfig, MirrorUNetModel, exist_ok=True)
    AutoImageProcessor.register(
        MirrorUNetConfig, image_processor_classes={"pil": MirrorUNetImageProcessor}, exist_ok=True
    )
    MirrorUNetConfig.register_for_auto_class()
    MirrorUNetModel.register_for_auto_class("AutoModel")
    MirrorUNetImageProcessor.default_study_file_names = staticmethod(study_file_names)
    if PIPELINE_TASK not in PIPELINE_REGISTRY.supported_tasks:
        # checkpoints saved before the pipeline existed have no `custom_pipelines`: with the package, the
        # task still resolves (their config's preprocessing fields stand in for the processor)
        PIPELINE_REGISTRY.register_pipeline(
            PIPELINE_TASK, pipeline_class=MirrorUNetSegmentationPipeline, pt_model=AutoModel, type="image"
        )
