"""Registration with transformers' Auto classes, in-process and as Hub remote code."""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForSemanticSegmentation

from .configuration_mirror_unet import MirrorUNetConfig
from .modeling_mirror_unet import MirrorUNetModel


def register_auto_classes() -> None:
    """Make `AutoConfig`, `AutoModel` and `AutoModelForSemanticSegmentation` know `mirror_unet`, and
    make `save_pretrained` copy the two code files next to the weights (the config's `auto_map`
    names all three Auto classes)."""
    AutoConfig.register(MirrorUNetConfig.model_type, MirrorUNetConfig, exist_ok=True)
    AutoModel.register(MirrorUNetConfig, MirrorUNetModel, exist_ok=True)
    AutoModelForSemanticSegmentation.register(MirrorUNetConfig, MirrorUNetModel, exist_ok=True)
    MirrorUNetConfig.register_for_auto_class()
    MirrorUNetModel.register_for_auto_class("AutoModel")
