"""Mirror U-Net: multimodal fission with multi-task learning (Marinov et al., ICCV 2023 Workshops).

Each modality gets its own 3D residual U-Net branch (encoder, decoder and skip connections, the
AutoPET MONAI baseline's architecture); the branches share only the bottleneck by default, and each
branch, an optional decoder on the concatenated bottlenecks and an optional classification head
get an explicit task (segmentation, reconstruction, classification). Everything is driven by
`MirrorUNetConfig`.

Read top to bottom: building blocks, the encoder/decoder levels, the heads, the losses, the
pretrained base class, then `MirrorUNetModel`. Module classes are prefixed `MirrorUNet` as in
transformers; their attribute names are the state-dict keys, which saved checkpoints depend on.
Self-contained (torch + transformers + the configuration file) so that it can travel as Hub remote
code. `MirrorUNetModel.save_pretrained` also writes the image processor and the pipeline beside the weights
(`companion_module`), without the model needing them to load.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.dynamic_module_utils import custom_object_save
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput, logging
from transformers.utils.generic import can_return_tuple

from .configuration_mirror_unet import MirrorUNetConfig

logger = logging.get_logger(__name__)

# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def make_norm(config: MirrorUNetConfig, channels: int) -> nn.Module:
    if config.norm == "batch":
        return nn.BatchNorm3d(channels)
    if config.norm == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    return nn.GroupNorm(math.gcd(config.norm_groups, channels), channels)


def make_act(config: MirrorUNetConfig) -> nn.Module:
    return {
        "prelu": lambda: nn.PReLU(),
        "relu": lambda: nn.ReLU(),
        "leakyrelu": lambda: nn.LeakyReLU(0.01),
        "gelu": lambda: nn.GELU(),
    }[config.act]()


class MirrorUNetConvNormAct(nn.Sequential):
    """Conv3d (or ConvTranspose3d) → norm → dropout → activation; `conv_only` keeps just the convolution."""

    def __init__(self, config, in_channels, out_channels, kernel_size, stride=1, transposed=False, conv_only=False):
        padding = kernel_size // 2
        if transposed:
            # output_padding = stride - 1 makes the output exactly `stride` times larger
            conv = nn.ConvTranspose3d(
                in_channels, out_channels, kernel_size, stride, padding, output_padding=stride - 1
            )
        else:
            conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride, padding)
        layers = [conv]
        if not conv_only:
            layers.append(make_norm(config, out_channels))
            if config.dropout > 0:
                layers.append(nn.Dropout3d(config.dropout))
            layers.append(make_act(config))
        super().__init__(*layers)


class MirrorUNetResidualUnit(nn.Module):
    """`subunits` × MirrorUNetConvNormAct (the first one strided) plus a residual path.

    The residual path is a strided k×k×k convolution when the unit down-samples, a 1×1×1
    convolution when only the width changes, and the identity otherwise.
    """

    def __init__(self, config, in_channels, out_channels, stride=1, subunits=2, last_conv_only=False):
        super().__init__()
        k = config.kernel_size
        units = []
        for i in range(subunits):
            units.append(
                MirrorUNetConvNormAct(
                    config,
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    k,
                    stride=stride if i == 0 else 1,
                    conv_only=last_conv_only and i == subunits - 1,
                )
            )
        self.conv = nn.Sequential(*units)
        if stride != 1:
            self.residual = nn.Conv3d(in_channels, out_channels, k, stride, k // 2)
        elif in_channels != out_channels:
            self.residual = nn.Conv3d(in_channels, out_channels, 1)
        else:
            self.residual = nn.Identity()

    def forward(self, x):
        return self.conv(x) + self.residual(x)


# ---------------------------------------------------------------------------------------------
# U-Net levels. Channel flow with the default widths (16, 32, 64, 128, 256), per branch:
#   encoder.0 1→16 (1/2), encoder.1 16→32 (1/4), encoder.2 32→64 (1/8), encoder.3 64→128 (1/16)
#   bottleneck 128→256 (1/16, stride 1)
#   decoder.0 [128 ⊕ 256]→64 (1/8), decoder.1 [64 ⊕ 64]→32, decoder.2 [32 ⊕ 32]→16, decoder.3 [16 ⊕ 16]→out
# Each decoder level concatenates the branch's own skip with the deeper features, then up-samples.
# ---------------------------------------------------------------------------------------------


class MirrorUNetEncoderLevel(GradientCheckpointingLayer):
    """One down-sampling residual unit."""

    def __init__(self, config, in_channels, out_channels, stride):
        super().__init__()
        self.unit = MirrorUNetResidualUnit(config, in_channels, out_channels, stride, subunits=config.num_res_units)

    def forward(self, x):
        return self.unit(x)


class MirrorUNetBottleneck(GradientCheckpointingLayer):
    """The deepest residual unit (stride 1). Shared by all branches by default: the same weights
    are applied to each branch's deepest encoder features, giving one bottleneck tensor per branch."""

    def __init__(self, config):
        super().__init__()
        self.unit = MirrorUNetResidualUnit(
            config, config.channels[-2], config.channels[-1], 1, subunits=config.num_res_units
        )

    def forward(self, x):
        return self.unit(x)


class MirrorUNetDecoderLevel(GradientCheckpointingLayer):
    """Concatenate skip and deeper features → transposed conv (up-sample) → one-sub-unit residual unit.
    The output level emits raw values (no norm or activation after its last convolution)."""

    def __init__(self, config, in_channels, out_channels, stride, is_output):
        super().__init__()
        self.up = MirrorUNetConvNormAct(
            config, in_channels, out_channels, config.up_kernel_size, stride, transposed=True
        )
        self.unit = MirrorUNetResidualUnit(config, out_channels, out_channels, 1, subunits=1, last_conv_only=is_output)

    def forward(self, skip, deeper):
        return self.unit(self.up(torch.cat([skip, deeper], dim=1)))


def encoder_widths(config: MirrorUNetConfig, in_channels: int) -> list[tuple[int, int, int]]:
    """(in, out, stride) of each encoder level."""
    c = config.channels
    return [(in_channels if k == 0 else c[k - 1], c[k], s) for k, s in enumerate(config.strides)]


def decoder_widths(config: MirrorUNetConfig, out_channels: int) -> list[tuple[int, int, int]]:
    """(in, out, stride) of each decoder level, deepest first."""
    c, levels = config.channels, len(config.strides)
    widths = []
    for j in range(levels):
        k = levels - 1 - j  # the encoder level whose skip this decoder level takes
        deeper = c[-1] if j == 0 else c[k]
        out = c[k - 1] if k > 0 else out_channels
        widths.append((c[k] + deeper, out, config.strides[k]))
    return widths


def make_level(config: MirrorUNetConfig, layer: str, branch: dict) -> nn.Module:
    """Build the level named `layer` ("encoder.<k>", "bottleneck" or "decoder.<k>") for `branch`."""
    kind, _, index = layer.partition(".")
    if kind == "bottleneck":
        return MirrorUNetBottleneck(config)
    if kind == "encoder":
        cin, cout, s = encoder_widths(config, len(branch["inputs"]))[int(index)]
        return MirrorUNetEncoderLevel(config, cin, cout, s)
    cin, cout, s = decoder_widths(config, config.branch_out_channels(branch))[int(index)]
    return MirrorUNetDecoderLevel(config, cin, cout, s, is_output=int(index) == len(config.strides) - 1)


def module_key(layer: str) -> str:
    return layer.replace(".", "_")  # torch module names cannot contain dots


class MirrorUNetBranch(nn.Module):
    """One modality's U-Net: encoder levels, bottleneck, decoder levels with the branch's own skips.

    Levels listed in `config.shared_layers` are owned once by `MirrorUNetModel` (registering a module
    under two parents breaks `save_pretrained`); the branch keeps only its own levels and is handed
    the shared ones at call time.
    """

    def __init__(self, config: MirrorUNetConfig, branch: dict):
        super().__init__()
        self.levels = len(config.strides)
        self.out_channels = config.branch_out_channels(branch)
        layers = [f"encoder.{k}" for k in range(self.levels)] + ["bottleneck"]
        if self.out_channels:
            layers += [f"decoder.{j}" for j in range(self.levels)]
        self.own = nn.ModuleDict(
            {
                module_key(layer): make_level(config, layer, branch)
                for layer in layers
                if layer not in config.shared_layers
            }
        )

    def _level(self, layer: str, shared: nn.ModuleDict) -> nn.Module:
        key = module_key(layer)
        return self.own[key] if key in self.own else shared[key]

    def encode(self, x: torch.Tensor, shared: nn.ModuleDict) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Returns the skips (one per encoder level) and this branch's bottleneck tensor."""
        skips = []
        for k in range(self.levels):
            x = self._level(f"encoder.{k}", shared)(x)
            skips.append(x)
        return skips, self._level("bottleneck", shared)(x)

    def decode(self, skips: list[torch.Tensor], bottleneck: torch.Tensor, shared: nn.ModuleDict) -> torch.Tensor | None:
        if not self.out_channels:
            return None
        x = bottleneck
        for j in range(self.levels):
            x = self._level(f"decoder.{j}", shared)(skips[self.levels - 1 - j], x)
        return x


# ---------------------------------------------------------------------------------------------
# Heads on the shared bottleneck
# ---------------------------------------------------------------------------------------------


class MirrorUNetBottleneckDecoderBlock(nn.Module):
    """One up-block of the official bottleneck decoder: transposed conv → norm → act, then a one-sub-unit
    residual unit (normalised and activated in every block, the last one included)."""

    def __init__(self, config, in_channels, out_channels, stride):
        super().__init__()
        self.up = MirrorUNetConvNormAct(
            config, in_channels, out_channels, config.up_kernel_size, stride, transposed=True
        )
        self.unit = MirrorUNetResidualUnit(config, out_channels, out_channels, 1, subunits=1)

    def forward(self, x):
        return self.unit(self.up(x))


class MirrorUNetBottleneckDecoder(nn.Module):
    """Decoder without skips on the concatenated bottleneck tensors of all branches
    (N × 256 → 64 → 32 → 16 → out with the default widths).

    `config.bottleneck_decoder_style` `"official"`: `MirrorUNetBottleneckDecoderBlock`s, as the authors' code;
    `"light"`: one transposed conv + norm + act per block, the last block emitting raw values.
    """

    def __init__(self, config: MirrorUNetConfig, out_channels: int):
        super().__init__()
        c, levels = config.channels, len(config.strides)
        widths = [len(config.branches) * c[-1]] + [c[k - 1] for k in range(levels - 1, 0, -1)] + [out_channels]
        blocks = []
        for i in range(levels):
            stride = config.strides[levels - 1 - i]
            if config.bottleneck_decoder_style == "official":
                blocks.append(MirrorUNetBottleneckDecoderBlock(config, widths[i], widths[i + 1], stride))
            else:
                blocks.append(
                    MirrorUNetConvNormAct(
                        config,
                        widths[i],
                        widths[i + 1],
                        config.up_kernel_size,
                        stride,
                        transposed=True,
                        conv_only=i == levels - 1,
                    )
                )
        self.blocks = nn.Sequential(*blocks)

    def forward(self, bottlenecks: list[torch.Tensor]) -> torch.Tensor:
        return self.blocks(torch.cat(bottlenecks, dim=1))


class MirrorUNetClassificationHead(nn.Module):
    """One branch's bottleneck → features → Linear → ReLU → Dropout → Linear.

    `pooling` `"global"` (default): the features are the bottleneck averaged over space, so the head takes
    any patch or window size. `"flatten"` (the official v3 head): a 1×1×1 conv to one channel + norm + act,
    flattened — `prod(patch_size / total_stride)` features (216 for 96³), so only inputs of exactly
    `config.patch_size` fit.
    """

    def __init__(self, config: MirrorUNetConfig):
        super().__init__()
        head = config.classification_head
        out = 1 if head["task"] == "lesion_presence" else len(head["class_names"])
        hidden = int(head.get("hidden_size", 256))
        self.map_shape = None
        self.total_stride = config.total_stride
        features = config.channels[-1]
        if head.get("pooling", "global") == "flatten":
            self.map_shape = tuple(p // config.total_stride for p in config.patch_size)
            self.reduce = MirrorUNetConvNormAct(config, config.channels[-1], 1, 1)
            features = math.prod(self.map_shape)
        self.mlp = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Dropout(float(head.get("dropout", 0.5))),
            nn.Linear(hidden, out),
        )

    def forward(self, bottleneck: torch.Tensor) -> torch.Tensor:
        if self.map_shape is None:
            return self.mlp(bottleneck.mean(dim=(2, 3, 4)))
        if tuple(bottleneck.shape[2:]) != self.map_shape:

            def size(shape):
                return "×".join(str(n * self.total_stride) for n in shape)

            raise ValueError(
                f"the classification head (pooling 'flatten') takes inputs of config.patch_size "
                f"{size(self.map_shape)}; got {size(bottleneck.shape[2:])}. Run it on patch_size windows, leave "
                "'classification' out of `parts`, or use a head with pooling 'global'"
            )
        return self.mlp(self.reduce(bottleneck).flatten(1))


# ---------------------------------------------------------------------------------------------
# Losses. Per-sample means by default, so that data-parallel training with averaged gradients
# reproduces single-process training; a batch-pooled Dice does so through `dice_sum_reducer`.
# ---------------------------------------------------------------------------------------------


def class_targets(labels: torch.Tensor, classes: list[list[int]]) -> torch.Tensor:
    """Map dataset labels (B, D, H, W) onto a head's classes: group k → k + 1, everything else → 0."""
    target = torch.zeros_like(labels)
    for k, group in enumerate(classes):
        target[torch.isin(labels, torch.tensor(group, device=labels.device))] = k + 1
    return target


def dice_sums(logits: torch.Tensor, target: torch.Tensor, include_background: bool = False):
    """Soft-Dice statistics per sample and class: `(intersection, denominator)`, each `(B, C)`, with
    C the foreground classes (all classes with `include_background`). The softmax spans all classes."""
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    dims = tuple(range(2, logits.ndim))
    return (probs * onehot).sum(dims), probs.sum(dims) + onehot.sum(dims)


def dice_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    smooth: float = 1e-5,
    *,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    reduction: str = "sample",
    include_background: bool = False,
    sum_reducer=None,
) -> torch.Tensor:
    """`dice_weight` · soft Dice + `ce_weight` · cross-entropy.

    `reduction` `"sample"`: Dice per sample and class, then the mean. `"batch"`: intersection and denominator
    summed over the batch first (MONAI's `DiceLoss(batch=True)`), then passed through `sum_reducer` — e.g. a
    differentiable all-reduce (sum) over data-parallel processes, so the Dice pools the global batch.
    """
    logits = logits.float()
    intersection, denominator = dice_sums(logits, target, include_background)
    if reduction == "batch":
        sums = torch.stack([intersection.sum(0), denominator.sum(0)])
        if sum_reducer is not None:
            sums = sum_reducer(sums)
        intersection, denominator = sums[0], sums[1]
    dice = 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)
    return dice_weight * dice.mean() + ce_weight * F.cross_entropy(logits, target)


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


@dataclass
class MirrorUNetOutput(ModelOutput):
    """
    Outputs of [`MirrorUNetModel`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            λ_seg · Σ segmentation losses + λ_rec · Σ reconstruction losses + λ_cls · classification loss.
        logits (`torch.FloatTensor` of shape `(B, K, D, H, W)`):
            Final segmentation logits, formed by `config.final_mask_rule`; class k > 0 stands for
            the dataset labels `config.final_label_groups[k - 1]`.
        branch_outputs (`dict[str, torch.FloatTensor]`):
            Each branch's decoder output by branch name: segmentation logits `(B, classes + 1, D, H, W)`
            or reconstructions `(B, targets, D, H, W)`. Branches with task `"none"` are absent.
        bottleneck_decoder_output (`torch.FloatTensor` of shape `(B, C, D, H, W)`, *optional*):
            Output of the decoder on the shared bottleneck.
        classification_logits (`torch.FloatTensor` of shape `(B, 1)` or `(B, num_classes)`, *optional*):
            Lesion-presence logit (sigmoid → probability) or diagnosis logits (softmax).
        loss_terms (`dict[str, torch.FloatTensor]`, *optional*):
            The unweighted loss terms, keyed `"<branch>/<task>"`, `"bottleneck_decoder/<task>"`, `"classification"`,
            and `"final/segmentation"` (on the fused logits, when the fusion weights are learnable).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    branch_outputs: dict[str, torch.FloatTensor] | None = None
    bottleneck_decoder_output: torch.FloatTensor | None = None
    classification_logits: torch.FloatTensor | None = None
    loss_terms: dict[str, torch.FloatTensor] | None = None


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


PARTS = ("logits", "branches", "bottleneck_decoder", "classification")


def companion_module(name: str):
    """The module ``name`` beside this file (the image processor, the pipeline), or None where it is absent.

    Imported by name rather than with an import statement: transformers requires every file a remote-code
    module imports, and the model must load from a folder or repo that has only the configuration and
    modeling files (checkpoints saved before the processor and pipeline existed).
    """
    package = __name__.rpartition(".")[0]
    if not package:
        return None
    try:
        return importlib.import_module(f"{package}.{name}")
    except ImportError:
        logger.warning(f"{name}.py is not beside {__name__}; the checkpoint is saved without it")
        return None


def reject_unknown_kwargs(method, kwargs: dict) -> None:
    """Raise `TypeError` for keyword arguments that `method` does not take, listing the ones it does.

    `forward` keeps `**kwargs` only to name a typo (`label=` for `labels=`) instead of ignoring it.
    `return_dict` is listed too: `can_return_tuple` takes it before `method` sees the call.
    """
    if not kwargs:
        return
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    parameters = inspect.signature(method).parameters.values()
    accepted = [p.name for p in parameters if p.name != "self" and p.kind not in variadic] + ["return_dict"]
    unknown = list(kwargs)
    what = "an unexpected keyword argument" if len(unknown) == 1 else "unexpected keyword arguments"
    close = {name: difflib.get_close_matches(name, accepted, n=1) for name in unknown}
    hints = [repr(m[0]) if len(unknown) == 1 else f"{m[0]!r} for {name!r}" for name, m in close.items() if m]
    raise TypeError(
        f"{method.__qualname__}() got {what} {', '.join(map(repr, unknown))}; expected one of: {', '.join(accepted)}"
        + (f" (did you mean {', '.join(hints)}?)" if hints else "")
    )


class MirrorUNetPreTrainedModel(PreTrainedModel):
    config_class = MirrorUNetConfig
    config: MirrorUNetConfig
    base_model_prefix = "mirror_unet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    # The loss is a per-batch mean, so Trainer must not hand `forward` a `num_items_in_batch` to normalise by.
    accepts_loss_kwargs = False
    _no_split_modules = ["MirrorUNetEncoderLevel", "MirrorUNetBottleneck", "MirrorUNetDecoderLevel"]

    @torch.no_grad()
    def _init_weights(self, module):
        """PyTorch's default initialisation (what the official MONAI code trains from), written with
        `transformers.initialization` so that weights loaded from a checkpoint are left alone."""
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d, nn.Linear)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.BatchNorm3d, nn.InstanceNorm3d, nn.GroupNorm)):
            if getattr(module, "weight", None) is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.PReLU):
            init.constant_(module.weight, 0.25)
        elif isinstance(module, MirrorUNetModel) and module.fusion_weights is not None:
            init.copy_(module.fusion_weights, initial_fusion_weights(self.config))


def initial_fusion_weights(config: MirrorUNetConfig) -> torch.Tensor:
    """The learnable decision-fusion parameter at initialisation: one weight per branch, or (with
    `fusion_parametrisation` `"scalar"`) the first branch's weight w alone (the second gets 1 − w)."""
    weights = config.fusion_weights[:1] if config.fusion_parametrisation == "scalar" else config.fusion_weights
    return torch.tensor(weights, dtype=torch.float32)


class MirrorUNetModel(MirrorUNetPreTrainedModel):
    r"""
    Mirror U-Net for multimodal 3D segmentation (PET/CT, multi-sequence MRI).

    `pixel_values` is `(B, M, D, H, W)` with the M modalities in `config.modalities` order, already
    normalised (see `config.intensity_windows`); D, H, W must be multiples of `config.total_stride`
    (16 by default) — the model raises otherwise, and `mirror_unet_hf.inference` pads for you.
    `labels` is `(B, D, H, W)` with integer values of the dataset's label map (`config.label_names`);
    the model maps them to each branch's own target (e.g. BrainTumour edema = label 1, tumour core =
    labels 2 and 3), and reconstruction targets are the inputs themselves. `class_labels` `(B,)` are
    diagnosis indices for a diagnosis head; a lesion-presence head derives its target from `labels` (or, with
    `config.classification_target="study"`, from `class_labels`). `dice_sum_reducer` (default None) is the hook
    a data-parallel training loop sets to a differentiable all-reduce (sum) so that a `dice_reduction="batch"`
    Dice pools the global batch.

    Example:

    ```python
    >>> import torch
    >>> from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel
    >>> model = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-v3"))
    >>> out = model(torch.rand(1, 2, 32, 32, 32), labels=torch.zeros(1, 32, 32, 32, dtype=torch.long))
    >>> out.logits.shape, sorted(out.branch_outputs), out.classification_logits.shape
    (torch.Size([1, 2, 32, 32, 32]), ['ct', 'pet'], torch.Size([1, 1]))
    ```
    """

    def __init__(self, config: MirrorUNetConfig):
        super().__init__(config)
        # Shared levels are built from the first branch; the config has checked that the others match.
        self.shared = nn.ModuleDict(
            {module_key(layer): make_level(config, layer, config.branches[0]) for layer in config.shared_layers}
        )
        self.branches = nn.ModuleDict({spec["name"]: MirrorUNetBranch(config, spec) for spec in config.branches})
        self.bottleneck_decoder = None
        if config.bottleneck_decoder is not None:
            d = config.bottleneck_decoder
            out = len(d["classes"]) + 1 if d["task"] == "segmentation" else len(d["targets"])
            self.bottleneck_decoder = MirrorUNetBottleneckDecoder(config, out)
        self.classification_head = MirrorUNetClassificationHead(config) if config.classification_head else None
        self.fusion_weights = None
        if config.final_mask_rule == "mean_logits" and config.learnable_fusion_weights:
            self.fusion_weights = nn.Parameter(initial_fusion_weights(config))
        self._input_index = {m: i for i, m in enumerate(config.modalities)}
        # Set by a data-parallel training loop to a differentiable all-reduce (sum), so that a
        # `dice_reduction="batch"` Dice pools the global batch; None pools the local batch.
        self.dice_sum_reducer = None
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the checkpoint's companions: the image processor
        (``preprocessor_config.json`` and its code) and the ``mirror-unet-segmentation`` pipeline (its code and
        ``custom_pipelines`` in ``config.json``), so that `AutoImageProcessor` and `transformers.pipeline` load
        the folder or its Hub repo as remote code."""
        if getattr(self, "_folded_for_inference", False):
            raise ValueError(
                "this is an inference copy with BatchNorm folded into the convolutions (fold_batch_norm); "
                "save the original model instead"
            )
        if kwargs.pop("push_to_hub", False):
            # transformers uploads only the files its own save_pretrained wrote; push_to_hub saves through this
            # method into a temporary folder and uploads all of it, companions included
            hub_keys = ("repo_id", "commit_message", "create_pr", "token", "private", "revision")
            hub_kwargs = {key: kwargs.pop(key) for key in hub_keys if key in kwargs}
            self.save_pretrained(save_directory, *args, **kwargs)
            repo_id = hub_kwargs.pop("repo_id", os.path.basename(os.path.normpath(os.fspath(save_directory))))
            return self.push_to_hub(repo_id, **hub_kwargs)
        processor_module = companion_module("image_processing_mirror_unet")
        pipeline_module = companion_module("pipeline_mirror_unet")
        if pipeline_module is not None:
            self.config.custom_pipelines = pipeline_module.custom_pipelines_entry()
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            if processor_module is not None:
                processor_module.MirrorUNetImageProcessor.from_model_config(self.config).save_pretrained(save_directory)
            if pipeline_module is not None:
                custom_object_save(getattr(pipeline_module, pipeline_module.PIPELINE_CLASS), save_directory)
        return result

    # ------------------------------------------------------------------ input checks

    def _check_inputs(self, pixel_values, labels, class_labels):
        config = self.config
        if pixel_values.ndim != 5:
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)} (rank {pixel_values.ndim}); expected "
                f"(B, M, D, H, W) with M = {len(config.modalities)} modalities ({', '.join(config.modalities)})"
            )
        if pixel_values.shape[1] != len(config.modalities):
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} channels; expected {len(config.modalities)}, "
                f"one per modality in order: {', '.join(config.modalities)}"
            )
        stride = config.total_stride
        spatial = tuple(pixel_values.shape[2:])
        if any(s % stride for s in spatial):
            raise ValueError(
                f"pixel_values spatial shape {spatial} is not divisible by the network's total stride {stride}; "
                f"pad or crop each side to a multiple of {stride} (mirror_unet_hf.inference pads automatically)"
            )
        if labels is not None:
            if tuple(labels.shape) != (pixel_values.shape[0], *spatial):
                raise ValueError(
                    f"labels has shape {tuple(labels.shape)}; expected (B, D, H, W) = {(pixel_values.shape[0], *spatial)}"
                )
            if labels.is_floating_point():
                raise ValueError(f"labels has dtype {labels.dtype}; expected integer class indices")
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= len(config.label_names):
                bad = low if low < 0 else high
                raise ValueError(
                    f"labels contain value {bad}; the label map has values 0..{len(config.label_names) - 1} "
                    f"({', '.join(config.label_names)})"
                )
        head = config.classification_head
        study_target = class_labels is not None and config.classification_target == "study"
        if study_target and (class_labels.shape != (pixel_values.shape[0],) or bool((class_labels < -1).any())):
            raise ValueError(
                f"class_labels {class_labels.tolist()} must have shape ({pixel_values.shape[0]},) with values > 0 "
                "(lesion-positive study), 0 (negative) or -1 (unknown)"
            )
        if class_labels is not None and head is not None and head["task"] == "diagnosis":
            n = len(head["class_names"])
            if class_labels.shape != (pixel_values.shape[0],):
                raise ValueError(
                    f"class_labels has shape {tuple(class_labels.shape)}; expected ({pixel_values.shape[0]},)"
                )
            if bool(((class_labels < -1) | (class_labels >= n)).any()):
                raise ValueError(
                    f"class_labels {class_labels.tolist()} must be in 0..{n - 1} ({', '.join(head['class_names'])}) "
                    "or -1 for unknown"
                )

    # ------------------------------------------------------------------ final mask

    def combine_final_logits(self, branch_outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Form the final segmentation logits from branch outputs by `config.final_mask_rule`.

        Public so that sliding-window inference can blend branch outputs first and combine after.
        """
        config = self.config
        chosen = [branch_outputs[name] for name in config.final_mask_branches]
        if config.final_mask_rule == "branch":
            return chosen[0]
        if config.final_mask_rule == "mean_logits":
            return sum(w * logits for w, logits in zip(self.fusion_weight_values(chosen[0]), chosen, strict=True))
        # union: background score 0, class c of branch i scores log p_i(c) - log p_i(background);
        # the argmax is foreground exactly when some branch's own argmax is foreground.
        scores = [torch.zeros_like(chosen[0][:, :1])]
        for logits in chosen:
            log_p = logits.float().log_softmax(dim=1)
            scores.append((log_p[:, 1:] - log_p[:, :1]).to(logits.dtype))
        return torch.cat(scores, dim=1)

    def fusion_weight_values(self, like: torch.Tensor) -> list[torch.Tensor]:
        """The `"mean_logits"` weight of each final-mask branch as it enters the forward pass."""
        config = self.config
        if self.fusion_weights is None:
            fixed = torch.tensor(config.fusion_weights, dtype=like.dtype, device=like.device)
            return list(fixed)
        w = self.fusion_weights.clamp(0.0, 1.0)
        if config.fusion_parametrisation == "scalar":
            return [w[0], 1.0 - w[0]]
        w = w / w.sum().clamp_min(1e-6)
        return list(w)

    # ------------------------------------------------------------------ forward

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        class_labels: torch.LongTensor | None = None,
        *,
        parts: tuple[str, ...] | list[str] | None = None,
        **kwargs,
    ) -> MirrorUNetOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(B, M, D, H, W)`):
            Normalised input volumes, one channel per modality in `config.modalities` order.
        labels (`torch.LongTensor` of shape `(B, D, H, W)`, *optional*):
            Dataset label map values; when given, the loss and its terms are returned.
        class_labels (`torch.LongTensor` of shape `(B,)`, *optional*):
            Diagnosis index per sample for a diagnosis head (-1 = unknown, left out of the loss).
        parts (`list[str]`, *optional*):
            Compute only these outputs, from `"logits"`, `"branches"`, `"bottleneck_decoder"`,
            `"classification"` (default: all). With `["logits"]` only the final-mask branches run —
            branches meet only at the bottleneck, so the others cannot change the final mask. Inference
            uses this; training (with `labels`) always computes everything.
        return_dict (`bool`, *optional*):
            `False` returns `MirrorUNetOutput.to_tuple()` (the fields that are not `None`, in order);
            default `config.return_dict`. Handled by `can_return_tuple`.

        Any other keyword argument raises `TypeError` rather than being ignored.
        """
        reject_unknown_kwargs(MirrorUNetModel.forward, kwargs)
        config = self.config
        self._check_inputs(pixel_values, labels, class_labels)
        parts = set(PARTS if parts is None or labels is not None else parts)
        unknown = parts - set(PARTS)
        if unknown:
            raise ValueError(f"parts {sorted(unknown)} are unknown; expected any of: {', '.join(PARTS)}")
        decode = set(config.final_mask_branches) if "logits" in parts else set()
        if "branches" in parts:
            decode |= {b["name"] for b in config.branches}
        encode = set(decode)
        if "bottleneck_decoder" in parts and self.bottleneck_decoder is not None:
            encode |= {b["name"] for b in config.branches}
        if "classification" in parts and self.classification_head is not None:
            encode.add(config.classification_head["branch"])

        skips, bottlenecks, branch_outputs = {}, {}, {}
        for spec in config.branches:
            name = spec["name"]
            if name in encode:
                x = pixel_values[:, [self._input_index[m] for m in spec["inputs"]]]
                skips[name], bottlenecks[name] = self.branches[name].encode(x, self.shared)
        for spec in config.branches:
            name = spec["name"]
            if name in decode:
                out = self.branches[name].decode(skips[name], bottlenecks[name], self.shared)
                if out is not None:
                    branch_outputs[name] = out

        bottleneck_out = None
        if self.bottleneck_decoder is not None and "bottleneck_decoder" in parts:
            bottleneck_out = self.bottleneck_decoder([bottlenecks[b["name"]] for b in config.branches])
        cls_logits = None
        if self.classification_head is not None and "classification" in parts:
            cls_logits = self.classification_head(bottlenecks[config.classification_head["branch"]])
        logits = self.combine_final_logits(branch_outputs) if "logits" in parts else None

        loss, terms = None, None
        if labels is not None:
            loss, terms = self._loss(pixel_values, labels, class_labels, branch_outputs, bottleneck_out, cls_logits)

        return MirrorUNetOutput(
            loss=loss,
            logits=logits,
            branch_outputs=branch_outputs,
            bottleneck_decoder_output=bottleneck_out,
            classification_logits=cls_logits,
            loss_terms=terms,
        )

    def segmentation_loss(self, logits: torch.Tensor, labels: torch.Tensor, classes: list[list[int]]) -> torch.Tensor:
        """Dice + CE of `logits` against the dataset `labels` mapped onto `classes`, as the config asks
        (`dice_weight`, `ce_weight`, `dice_reduction`, `include_background`)."""
        config = self.config
        return dice_ce_loss(
            logits,
            class_targets(labels, classes),
            dice_weight=config.dice_weight,
            ce_weight=config.ce_weight,
            reduction=config.dice_reduction,
            include_background=config.include_background,
            sum_reducer=self.dice_sum_reducer,
        )

    def _loss(self, pixel_values, labels, class_labels, branch_outputs, bottleneck_out, cls_logits):
        config = self.config
        terms: dict[str, torch.Tensor] = {}
        weighted = []
        reconstructions = []  # (term key, number of reconstructed values), for `reconstruction_reduction`

        def reconstruction(key, output, targets):
            target = pixel_values[:, [self._input_index[m] for m in targets]]
            terms[key] = F.mse_loss(output.float(), target.float())
            reconstructions.append((key, output.numel()))
            if config.reconstruction_reduction == "sum":
                weighted.append(config.lambda_rec * terms[key])

        fused_only = config.final_mask_rule == "mean_logits" and config.fusion_loss == "fused"
        for spec in config.branches:
            name = spec["name"]
            if spec["task"] == "segmentation":
                terms[f"{name}/segmentation"] = self.segmentation_loss(branch_outputs[name], labels, spec["classes"])
                if not (fused_only and name in config.final_mask_branches):
                    weighted.append(config.lambda_seg * terms[f"{name}/segmentation"])
            elif spec["task"] == "reconstruction":
                reconstruction(f"{name}/reconstruction", branch_outputs[name], spec["targets"])
        if self.fusion_weights is not None or fused_only:
            # Learnable decision-fusion weights only receive gradients through the fused logits.
            fused = self.combine_final_logits(branch_outputs)
            terms["final/segmentation"] = self.segmentation_loss(fused, labels, config.final_label_groups)
            weighted.append(config.lambda_seg * terms["final/segmentation"])
        if bottleneck_out is not None:
            d = config.bottleneck_decoder
            if d["task"] == "segmentation":
                terms["bottleneck_decoder/segmentation"] = self.segmentation_loss(bottleneck_out, labels, d["classes"])
                weighted.append(config.lambda_seg * terms["bottleneck_decoder/segmentation"])
            else:
                reconstruction("bottleneck_decoder/reconstruction", bottleneck_out, d["targets"])
        if config.reconstruction_reduction == "mean" and reconstructions:
            # one MSE over all reconstructed values: each term weighted by its share of them
            total = sum(n for _, n in reconstructions)
            weighted.append(config.lambda_rec * sum(terms[key] * (n / total) for key, n in reconstructions))
        if cls_logits is not None:
            classification = self._classification_loss(cls_logits, labels, class_labels)
            if classification is not None:
                terms["classification"] = classification
                weighted.append(config.lambda_cls * classification)
        return torch.stack(weighted).sum(), terms

    def _classification_loss(self, cls_logits, labels, class_labels) -> torch.Tensor | None:
        """BCE of a lesion-presence head (patch target from `labels`, or study target from `class_labels`) or
        cross-entropy of a diagnosis head; None when the targets it needs are not given."""
        config = self.config
        if config.classification_head["task"] == "lesion_presence" and config.classification_target == "patch":
            target = (labels > 0).flatten(1).any(dim=1).to(cls_logits.dtype)
            return F.binary_cross_entropy_with_logits(cls_logits[:, 0].float(), target.float())
        if class_labels is None:
            return None
        if config.classification_head["task"] == "lesion_presence":
            target = (class_labels > 0).float()
            per_sample = F.binary_cross_entropy_with_logits(cls_logits[:, 0].float(), target, reduction="none")
        else:
            per_sample = F.cross_entropy(cls_logits.float(), class_labels.clamp_min(0), reduction="none")
        # -1 (unknown) is left out; an all-unknown batch contributes zero.
        known = (class_labels >= 0).float()
        return (per_sample * known).sum() / labels.shape[0]


# ---------------------------------------------------------------------------------------------
# Inference-only helpers
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with each BatchNorm3d folded into the convolution before it.

    In eval mode BatchNorm is the per-channel affine map `y = (x - mean) / sqrt(var + eps) * gamma + beta`
    with fixed running statistics, so `conv → BatchNorm` equals one convolution with scaled weights and
    a shifted bias; the BatchNorm becomes `nn.Identity`. This saves one full memory pass per
    convolution at inference and changes results only by float rounding (about 1e-6 relative).
    Instance/group norms depend on the input and are left as they are. `model` itself is not changed.
    The copy is for inference only: it cannot be trained further or saved (`save_pretrained` refuses).
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, MirrorUNetConvNormAct) or len(module) < 2:
            continue
        conv, norm = module[0], module[1]
        if not isinstance(norm, nn.BatchNorm3d) or norm.running_mean is None:
            continue
        scale = torch.rsqrt(norm.running_var.double() + norm.eps)
        shift = -norm.running_mean.double() * scale
        if norm.affine:
            scale = scale * norm.weight.double()
            shift = shift * norm.weight.double() + norm.bias.double()
        # Conv3d weights are (out, in, k, k, k); ConvTranspose3d weights are (in, out, k, k, k)
        axis = 1 if isinstance(conv, nn.ConvTranspose3d) else 0
        view = [1] * conv.weight.ndim
        view[axis] = -1
        conv.weight.copy_((conv.weight.double() * scale.view(view)).to(conv.weight.dtype))
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        new_bias = (bias * scale + shift).to(conv.weight.dtype)
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)
        module[1] = nn.Identity()
    for parameter in folded.parameters():
        parameter.requires_grad_(False)
    folded._folded_for_inference = True
    return folded


__all__ = ["MirrorUNetModel", "MirrorUNetPreTrainedModel", "MirrorUNetOutput", "fold_batch_norm"]
