"""Mirror U-Net (multimodal fission + multi-task learning) as a Hugging Face transformers model.

``MirrorUNetConfig.from_preset(name)`` builds the paper's variants and baselines; ``MirrorUNetModel``
is a ``PreTrainedModel`` (``save_pretrained`` / ``from_pretrained`` / Hub remote code).
"""

from .configuration_mirror_unet import PRESETS, MirrorUNetConfig, list_presets
from .modeling_mirror_unet import MirrorUNetModel, MirrorUNetOutput, MirrorUNetPreTrainedModel
from .registration import register_auto_classes

__version__ = "0.1.0"

register_auto_classes()

__all__ = [
    "MirrorUNetConfig",
    "MirrorUNetModel",
    "MirrorUNetOutput",
    "MirrorUNetPreTrainedModel",
    "PRESETS",
    "list_presets",
    "register_auto_classes",
    "__version__",
]
