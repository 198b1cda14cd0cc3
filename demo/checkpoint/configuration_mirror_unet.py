"""Configuration of Mirror U-Net (Marinov et al., ICCV 2023 Workshops, arXiv 2303.07126).

The config is the single source of truth for a Mirror U-Net: which modalities come in, which branch
sees which modality and learns which task, which layers the branches share, the optional decoder
and classification head on the shared bottleneck, how the final mask is formed, the backbone and the
loss weights. The paper's variants and baselines are presets (``MirrorUNetConfig.from_preset``).

Self-contained (transformers + huggingface_hub only) so that it can travel as Hub remote code.
"""

import copy
import math
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

BRANCH_TASKS = ("segmentation", "reconstruction", "none")
BOTTLENECK_DECODER_TASKS = ("segmentation", "reconstruction")
CLASSIFICATION_TASKS = ("lesion_presence", "diagnosis")
FINAL_MASK_RULES = ("branch", "union", "mean_logits")
NORMS = ("batch", "instance", "group")
ACTIVATIONS = ("prelu", "relu", "leakyrelu", "gelu")
BRANCH_KEYS = ("name", "inputs", "task", "classes", "targets")
BOTTLENECK_DECODER_KEYS = ("task", "classes", "targets")
CLASSIFICATION_HEAD_KEYS = ("branch", "task", "class_names", "hidden_size", "dropout", "pooling")
CLASSIFICATION_POOLINGS = ("global", "flatten")
CLASSIFICATION_TARGETS = ("patch", "study")
BOTTLENECK_DECODER_STYLES = ("light", "official")
DICE_REDUCTIONS = ("sample", "batch")
RECONSTRUCTION_REDUCTIONS = ("sum", "mean")
FUSION_LOSSES = ("branches", "fused")
FUSION_PARAMETRISATIONS = ("per_branch", "scalar")

AUTO_MAP = {
    "AutoConfig": "configuration_mirror_unet.MirrorUNetConfig",
    "AutoModel": "modeling_mirror_unet.MirrorUNetModel",
    "AutoModelForSemanticSegmentation": "modeling_mirror_unet.MirrorUNetModel",
}
AUTOPET_MODALITIES = ["ct", "pet"]
AUTOPET_LABELS = ["background", "lesion"]
AUTOPET_DIAGNOSES = ["negative", "lymphoma", "melanoma", "lung_cancer"]
BRATS_MODALITIES = ["flair", "t1w", "t1gd", "t2w"]
BRATS_LABELS = ["background", "edema", "non-enhancing tumour", "enhancing tumour"]


def _names(values) -> str:
    return ", ".join(str(v) for v in values)


@strict(accept_kwargs=True)
class MirrorUNetConfig(PreTrainedConfig):
    r"""
    Configuration of a [`MirrorUNetModel`]: per-branch tasks, sharing, heads, backbone and losses.

    Args:
        modalities (`list[str]`, defaults to `["ct", "pet"]`):
            Names of the input modalities, in the channel order of `pixel_values` `(B, M, D, H, W)`.
        label_names (`list[str]`, defaults to `["background", "lesion"]`):
            The dataset's label map: `labels` voxel value `i` means `label_names[i]`. Branch targets are
            written in these indices.
        branches (`list[dict]`, *optional*):
            One U-Net branch (encoder + decoder + skip connections) per entry, each a dict with
            - `name` (str): unique branch name, used in outputs and losses;
            - `inputs` (list[str], default `[name]`): the modalities fed to this branch as channels
              (one modality per branch is Mirror U-Net's fission; several is early fusion);
            - `task`: `"segmentation"`, `"reconstruction"` or `"none"` (encoder only, feeds the bottleneck);
            - `classes` (segmentation): list of groups of dataset labels, each group one output class
              (class 0 is everything else). `[[1]]` = lesion vs rest; `[[2, 3]]` = tumour core;
            - `targets` (reconstruction, default = `inputs`): modalities the branch reconstructs.
            Defaults to the AutoPET v1 branches (CT reconstruction, PET lesion segmentation).
        shared_layers (`list[str]`, defaults to `["bottleneck"]`):
            Layers whose weights all branches share: `"bottleneck"`, `"encoder.<k>"` (k = 0 is the
            first, highest-resolution level) and `"decoder.<k>"` (k = 0 is the deepest level). The
            paper's default shares only the bottleneck; the other entries are its sharing ablations.
            `[]` gives independent U-Nets (late fusion). Skip connections never cross branches.
        bottleneck_decoder (`dict`, *optional*):
            A decoder without skips on the concatenation of all branches' bottleneck tensors, with
            `task` (`"reconstruction"` with `targets`, or `"segmentation"` with `classes`).
        bottleneck_decoder_style (`str`, defaults to `"light"`):
            The bottleneck decoder's up-blocks. `"official"` (what the paper presets build): each block is
            a transposed conv + norm + act followed by a one-sub-unit residual unit, and the last block is
            normalised and activated too, as in the authors' code. `"light"`: a transposed conv + norm +
            act per block, the last one emitting raw values — what configs saved without this field build.
        classification_head (`dict`, *optional*):
            A head on one branch's bottleneck tensor: `branch` (name), `task` (`"lesion_presence"`: one
            logit, BCE; `"diagnosis"`: `class_names` logits, cross-entropy on `class_labels`),
            `hidden_size` (256), `dropout` (0.5) and `pooling`: `"global"` (default) averages the
            bottleneck over space, so any patch or window size works; `"flatten"` is the official v3
            head (1×1×1 conv to one channel + norm + act, flatten of the whole map, e.g. 6³ = 216 values
            for 96³ patches), which only accepts inputs of exactly `patch_size`.
        classification_target (`str`, defaults to `"patch"`):
            Target of a lesion-presence head: `"patch"` = 1 when the patch contains any foreground label;
            `"study"` = read from `class_labels` (> 0: a lesion-positive study, 0: negative, -1: unknown and
            left out), e.g. the AutoPET diagnosis index, whose 0 is "negative" (the official code's target).
        final_mask_rule (`str`, defaults to `"branch"`):
            How `logits` is formed: `"branch"` = the one branch in `final_mask_branches`; `"union"` =
            union of the listed segmentation branches (a voxel is foreground when any branch says so;
            the classes are concatenated in branch order and must be disjoint label groups);
            `"mean_logits"` = weighted mean of the listed branches' logits (decision fusion; the
            branches must segment the same classes).
        final_mask_branches (`list[str]`, *optional*):
            Branches the rule reads. Defaults to the last segmentation branch.
        fusion_weights (`list[float]`, *optional*):
            `"mean_logits"` weights, one per listed branch (defaults to equal weights).
        learnable_fusion_weights (`bool`, defaults to `False`):
            Learn the `"mean_logits"` weights (initialised from `fusion_weights`); with `fusion_loss`
            `"branches"` the fused logits then get a segmentation loss of their own so that the weights train.
        fusion_parametrisation (`str`, defaults to `"per_branch"`):
            `"per_branch"`: one weight per branch, clamped to [0, 1] and normalised to sum to 1 when
            learnable. `"scalar"` (two branches, the official code): one weight w for the first branch,
            clamped to [0, 1], and 1 − w for the second; w starts at `fusion_weights[0]`.
        fusion_loss (`str`, defaults to `"branches"`):
            How `"mean_logits"` trains: `"branches"` = each final-mask branch has its own segmentation loss
            (plus one on the fused logits when the weights are learnable); `"fused"` = one segmentation loss
            on the fused logits only (the official decision fusion).
        channels (`list[int]`, defaults to `[16, 32, 64, 128, 256]`):
            Feature widths of the encoder levels; the last entry is the bottleneck width.
        strides (`list[int]`, defaults to `[2, 2, 2, 2]`):
            Down-sampling stride of each encoder level (`len(channels) - 1` entries). Spatial sizes must
            be divisible by their product (16 by default).
        num_res_units (`int`, defaults to 2):
            Sub-units (conv → norm → act) in each encoder residual unit and in the bottleneck; decoder
            levels use one.
        kernel_size (`int`, defaults to 3): Convolution kernel size.
        up_kernel_size (`int`, defaults to 3): Transposed-convolution kernel size.
        norm (`str`, defaults to `"batch"`): `"batch"` (official code), `"instance"` or `"group"`.
            Instance and group norm are per sample: they make multi-process training reproduce
            single-process training exactly, which BatchNorm without SyncBatchNorm does not.
        norm_groups (`int`, defaults to 8): Groups for `"group"` norm (reduced where a width is smaller).
        act (`str`, defaults to `"prelu"`): `"prelu"`, `"relu"`, `"leakyrelu"` or `"gelu"`.
        dropout (`float`, defaults to 0.0): Dropout after each norm in the U-Net units.
        lambda_seg, lambda_rec, lambda_cls (`float`, default 1.0, 0.1, 0.1):
            Loss weights of the paper: L = λ_seg (w_Dice · Dice + w_CE · CE) + λ_rec MSE + λ_cls BCE/CE.
        dice_weight, ce_weight (`float`, default 1.0, 1.0):
            w_Dice and w_CE inside each segmentation term (the official code: 0.5 and 0.5).
        dice_reduction (`str`, defaults to `"sample"`):
            `"sample"`: soft Dice per sample and class, then averaged. `"batch"`: intersection and
            denominator summed over the batch before dividing, as MONAI's `DiceLoss(batch=True)` in the
            official code. In data-parallel training a `"batch"` Dice pools the local batch only, unless
            the training loop sets `MirrorUNetModel.dice_sum_reducer` to a differentiable all-reduce (sum)
            over the processes (train/train.py does), which pools the global batch: two processes then
            train as one with the whole batch.
        include_background (`bool`, defaults to `False`):
            Include the background class in the Dice term (the softmax always spans all classes).
        reconstruction_reduction (`str`, defaults to `"sum"`):
            `"sum"`: each reconstruction output is its own MSE term, the terms are added. `"mean"`: one MSE
            over all reconstruction outputs together (the official code's; each term weighted by its share
            of the reconstructed values, i.e. the mean of the terms for equal sizes).
        reference_modality (`str`, *optional*):
            The modality whose grid the final mask is written on (PET for AutoPET, T1Gd for BrainTumour).
            Defaults to the first input of the first final-mask branch.
        target_spacing (`list[float]`, *optional*):
            Voxel spacing in mm (RAS order) that inputs are resampled to before the network.
        intensity_windows (`dict[str, list[float]]`, *optional*):
            Per modality `[low, high]`: values are clipped and scaled to [0, 1]. Modalities without a
            window are z-scored over their non-zero voxels.
        patch_size (`list[int]`, defaults to `[96, 96, 96]`):
            Training patch and sliding-window size in voxels.
        preset (`str`, *optional*): Name of the preset this config was made from (informational).

    Example:

    ```python
    >>> from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel
    >>> config = MirrorUNetConfig.from_preset("autopet-v3")
    >>> model = MirrorUNetModel(config)
    ```
    """

    model_type = "mirror_unet"

    modalities: list[str] | tuple[str, ...] = ("ct", "pet")
    label_names: list[str] | tuple[str, ...] = ("background", "lesion")
    branches: list[dict] | tuple[dict, ...] | None = None
    shared_layers: list[str] | tuple[str, ...] = ("bottleneck",)
    bottleneck_decoder: dict | None = None
    bottleneck_decoder_style: str = "light"
    classification_head: dict | None = None
    classification_target: str = "patch"
    final_mask_rule: str = "branch"
    final_mask_branches: list[str] | tuple[str, ...] | None = None
    fusion_weights: list[float] | tuple[float, ...] | None = None
    learnable_fusion_weights: bool = False
    fusion_parametrisation: str = "per_branch"
    fusion_loss: str = "branches"
    channels: list[int] | tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 2
    kernel_size: int = 3
    up_kernel_size: int = 3
    norm: str = "batch"
    norm_groups: int = 8
    act: str = "prelu"
    dropout: float | int = 0.0
    lambda_seg: float | int = 1.0
    lambda_rec: float | int = 0.1
    lambda_cls: float | int = 0.1
    dice_weight: float | int = 1.0
    ce_weight: float | int = 1.0
    dice_reduction: str = "sample"
    include_background: bool = False
    reconstruction_reduction: str = "sum"
    reference_modality: str | None = None
    target_spacing: list[float] | tuple[float, ...] | None = None
    intensity_windows: dict | None = None
    patch_size: list[int] | tuple[int, ...] = (96, 96, 96)
    preset: str | None = None

    def __post_init__(self, **kwargs):
        # JSON round trips turn tuples into lists; keep one canonical (list) form so that equality,
        # serialisation and validation see the same thing.
        for key in (
            "modalities",
            "label_names",
            "shared_layers",
            "channels",
            "strides",
            "patch_size",
            "final_mask_branches",
            "fusion_weights",
            "target_spacing",
            "branches",
        ):
            if isinstance(getattr(self, key), tuple):
                setattr(self, key, list(getattr(self, key)))
        if self.branches is None:
            self.branches = [
                {"name": "ct", "inputs": ["ct"], "task": "reconstruction", "targets": ["ct"]},
                {"name": "pet", "inputs": ["pet"], "task": "segmentation", "classes": [[1]]},
            ]
        self.branches = [self._normalise_branch(b) for b in self.branches]
        if self.final_mask_branches is None:
            segmenting = [b["name"] for b in self.branches if b["task"] == "segmentation"]
            self.final_mask_branches = segmenting[-1:]
        if self.final_mask_rule == "mean_logits" and self.fusion_weights is None:
            n = len(self.final_mask_branches)
            self.fusion_weights = [1.0 / n] * n if n else []
        if self.reference_modality is None:
            by_name = {b["name"]: b for b in self.branches}
            first = by_name.get(self.final_mask_branches[0]) if self.final_mask_branches else None
            self.reference_modality = first["inputs"][0] if first else self.modalities[0]
        if getattr(self, "auto_map", None) is None:
            # `save_pretrained` writes only the saved class's own Auto entry; list all three so the
            # checkpoint loads through any of them as remote code.
            self.auto_map = dict(AUTO_MAP)
        if self.intensity_windows is not None:
            self.intensity_windows = {k: [float(x) for x in v] for k, v in self.intensity_windows.items()}
        self._fill_label_maps()
        super().__post_init__(**kwargs)

    def _fill_label_maps(self):
        """`id2label`/`label2id` from the final mask's classes (`final_class_names`), unless the caller gave its own.

        Configs saved before these maps existed have none (transformers would make `LABEL_0`, `LABEL_1`), and
        transformers' own default names are replaced too. An invalid config is left alone: `validate_config`
        then names the problem.
        """
        given = getattr(self, "id2label", None)
        if given and any(str(name) != f"LABEL_{key}" for key, name in given.items()):
            if getattr(self, "label2id", None) is None:
                self.label2id = {name: int(key) for key, name in given.items()}
            return
        try:
            names = self.final_class_names
        except (KeyError, IndexError, TypeError, ValueError):
            return
        self.id2label = dict(enumerate(names))
        self.label2id = {name: index for index, name in self.id2label.items()}

    @staticmethod
    def _normalise_branch(branch: Any) -> dict:
        if not isinstance(branch, dict):
            raise ValueError(f"each entry of `branches` must be a dict with keys {_names(BRANCH_KEYS)}; got {branch!r}")
        unknown = sorted(set(branch) - set(BRANCH_KEYS))
        if unknown:
            raise ValueError(
                f"branch {branch.get('name')!r} has unknown keys {unknown}; accepted: {_names(BRANCH_KEYS)}"
            )
        if not isinstance(branch.get("name"), str) or not branch["name"]:
            raise ValueError(f"every branch needs a non-empty string `name`; got {branch!r}")
        out = {"name": branch["name"], "inputs": list(branch.get("inputs") or [branch["name"]])}
        out["task"] = branch.get("task", "segmentation")
        if out["task"] == "segmentation":
            out["classes"] = [sorted(int(v) for v in group) for group in branch.get("classes") or []]
        elif out["task"] == "reconstruction":
            out["targets"] = list(branch.get("targets") or out["inputs"])
        return out

    # ------------------------------------------------------------------ validation
    # `@strict` runs `validate_*` methods at construction; one entry point fixes the order of the
    # checks (later checks rely on earlier ones). Each check names the offending value.

    def validate_config(self):
        self._check_modalities()
        self._check_branches()
        self._check_backbone()
        self._check_sharing()
        self._check_heads()
        self._check_final_mask()
        self._check_fusion()
        self._check_preprocessing()

    def _check_modalities(self):
        if not self.modalities:
            raise ValueError("`modalities` is empty; expected at least one modality name, e.g. ['ct', 'pet']")
        duplicates = sorted({m for m in self.modalities if self.modalities.count(m) > 1})
        if duplicates:
            raise ValueError(f"modality {duplicates[0]!r} is listed twice in `modalities` {self.modalities}")
        if len(self.label_names) < 2:
            raise ValueError(f"`label_names` {self.label_names} needs a background and at least one foreground label")

    def _check_branches(self):
        if not self.branches:
            raise ValueError("`branches` is empty; expected at least one branch")
        names = [b["name"] for b in self.branches]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"branch {name!r} is named twice in `branches` (names: {_names(names)})")
        n_labels = len(self.label_names)
        for b in self.branches:
            if b["task"] not in BRANCH_TASKS:
                raise ValueError(
                    f"branch {b['name']!r} has task {b['task']!r}; expected one of: {_names(BRANCH_TASKS)}"
                )
            for modality in b["inputs"]:
                if modality not in self.modalities:
                    raise ValueError(
                        f"branch {b['name']!r} reads modality {modality!r}, which is not in `modalities` "
                        f"({_names(self.modalities)})"
                    )
            if b["task"] == "segmentation":
                self._check_classes(f"branch {b['name']!r}", b["classes"], n_labels)
            if b["task"] == "reconstruction":
                for modality in b["targets"]:
                    if modality not in self.modalities:
                        raise ValueError(
                            f"branch {b['name']!r} reconstructs {modality!r}, which is not in `modalities` "
                            f"({_names(self.modalities)})"
                        )

    def _check_classes(self, owner: str, classes: list, n_labels: int):
        if not classes:
            raise ValueError(f"{owner} is a segmentation task without `classes`; e.g. [[1]] for label 1 vs rest")
        seen: set[int] = set()
        for group in classes:
            if not group:
                raise ValueError(f"{owner} has an empty class group in {classes}")
            for label in group:
                if not 1 <= label < n_labels:
                    raise ValueError(
                        f"{owner} uses label {label} in `classes` {classes}; expected foreground labels "
                        f"1..{n_labels - 1} of `label_names` {self.label_names}"
                    )
                if label in seen:
                    raise ValueError(f"{owner} lists label {label} in two class groups of {classes}")
                seen.add(label)

    def _check_backbone(self):
        if len(self.channels) < 2:
            raise ValueError(f"`channels` {self.channels} needs at least two widths (one level + bottleneck)")
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"`strides` {self.strides} must have len(channels) - 1 = {len(self.channels) - 1} entries "
                f"for `channels` {self.channels}"
            )
        if any(c < 1 for c in self.channels) or any(s < 1 for s in self.strides):
            raise ValueError(f"`channels` {self.channels} and `strides` {self.strides} must be positive")
        if self.num_res_units < 1:
            raise ValueError(f"`num_res_units` is {self.num_res_units}; expected at least 1 (residual units)")
        if self.kernel_size % 2 == 0 or self.up_kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` {self.kernel_size} and `up_kernel_size` {self.up_kernel_size} must be odd")
        if self.norm not in NORMS:
            raise ValueError(f"`norm` is {self.norm!r}; expected one of: {_names(NORMS)}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"`act` is {self.act!r}; expected one of: {_names(ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` is {self.dropout}; expected a value in [0, 1)")
        if len(self.patch_size) != 3 or any(p % self.total_stride or p <= 0 for p in self.patch_size):
            raise ValueError(
                f"`patch_size` {self.patch_size} must be three positive multiples of the total stride {self.total_stride}"
            )
        for key in ("lambda_seg", "lambda_rec", "lambda_cls", "dice_weight", "ce_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"`{key}` is {getattr(self, key)}; loss weights must be >= 0")
        self._check_choice("dice_reduction", DICE_REDUCTIONS)
        self._check_choice("reconstruction_reduction", RECONSTRUCTION_REDUCTIONS)

    def _check_choice(self, key: str, choices: tuple[str, ...]):
        if getattr(self, key) not in choices:
            raise ValueError(f"`{key}` is {getattr(self, key)!r}; expected one of: {_names(choices)}")

    def _check_sharing(self):
        levels = len(self.strides)
        accepted = ["bottleneck"] + [f"encoder.{k}" for k in range(levels)] + [f"decoder.{k}" for k in range(levels)]
        for layer in self.shared_layers:
            if layer not in accepted:
                raise ValueError(f"`shared_layers` names {layer!r}; expected any of: {_names(accepted)}")
        if "encoder.0" in self.shared_layers and len({len(b["inputs"]) for b in self.branches}) > 1:
            raise ValueError("`shared_layers` includes 'encoder.0', but the branches take different numbers of inputs")
        if any(layer.startswith("decoder.") for layer in self.shared_layers):
            without = [b["name"] for b in self.branches if b["task"] == "none"]
            if without:
                raise ValueError(
                    f"`shared_layers` shares a decoder level, but branch {without[0]!r} has no decoder (task 'none')"
                )
            if (
                f"decoder.{levels - 1}" in self.shared_layers
                and len({self.branch_out_channels(b) for b in self.branches}) > 1
            ):
                raise ValueError(
                    f"`shared_layers` includes 'decoder.{levels - 1}' (the output level), but the branches emit "
                    "different numbers of channels"
                )

    def _check_heads(self):
        self._check_choice("bottleneck_decoder_style", BOTTLENECK_DECODER_STYLES)
        decoder = self.bottleneck_decoder
        if decoder is not None:
            unknown = sorted(set(decoder) - set(BOTTLENECK_DECODER_KEYS))
            if unknown:
                raise ValueError(
                    f"`bottleneck_decoder` has unknown keys {unknown}; accepted: {_names(BOTTLENECK_DECODER_KEYS)}"
                )
            task = decoder.get("task")
            if task not in BOTTLENECK_DECODER_TASKS:
                raise ValueError(
                    f"`bottleneck_decoder` has task {task!r}; expected one of: {_names(BOTTLENECK_DECODER_TASKS)}"
                )
            if task == "segmentation":
                self._check_classes("`bottleneck_decoder`", decoder.get("classes") or [], len(self.label_names))
            else:
                targets = decoder.get("targets") or []
                if not targets or any(t not in self.modalities for t in targets):
                    raise ValueError(
                        f"`bottleneck_decoder` reconstructs {targets}; expected a non-empty list of modalities from "
                        f"{_names(self.modalities)}"
                    )
        head = self.classification_head
        if head is not None:
            unknown = sorted(set(head) - set(CLASSIFICATION_HEAD_KEYS))
            if unknown:
                raise ValueError(
                    f"`classification_head` has unknown keys {unknown}; accepted: {_names(CLASSIFICATION_HEAD_KEYS)}"
                )
            names = [b["name"] for b in self.branches]
            if head.get("branch") not in names:
                raise ValueError(
                    f"`classification_head` reads branch {head.get('branch')!r}; expected one of: {_names(names)}"
                )
            if head.get("task") not in CLASSIFICATION_TASKS:
                raise ValueError(
                    f"`classification_head` has task {head.get('task')!r}; expected one of: {_names(CLASSIFICATION_TASKS)}"
                )
            if head["task"] == "diagnosis" and len(head.get("class_names") or []) < 2:
                raise ValueError("`classification_head` task 'diagnosis' needs `class_names` with at least two classes")
            if head.get("pooling", "global") not in CLASSIFICATION_POOLINGS:
                raise ValueError(
                    f"`classification_head` has pooling {head.get('pooling')!r}; expected one of: "
                    f"{_names(CLASSIFICATION_POOLINGS)}"
                )
        self._check_choice("classification_target", CLASSIFICATION_TARGETS)
        if self.classification_target == "study" and (head is None or head["task"] != "lesion_presence"):
            raise ValueError(
                "`classification_target` 'study' is the target of a lesion-presence head; this config has "
                + ("no classification head" if head is None else f"a {head['task']!r} head")
            )

    def _check_final_mask(self):
        if self.final_mask_rule not in FINAL_MASK_RULES:
            raise ValueError(
                f"`final_mask_rule` is {self.final_mask_rule!r}; expected one of: {_names(FINAL_MASK_RULES)}"
            )
        by_name = {b["name"]: b for b in self.branches}
        chosen = self.final_mask_branches
        if not chosen:
            raise ValueError("`final_mask_branches` is empty and no branch segments; at least one branch must segment")
        for name in chosen:
            if name not in by_name:
                raise ValueError(f"`final_mask_branches` names branch {name!r}; expected one of: {_names(by_name)}")
            if by_name[name]["task"] != "segmentation":
                raise ValueError(
                    f"`final_mask_branches` names branch {name!r}, whose task is {by_name[name]['task']!r}; "
                    "the final mask needs segmentation branches"
                )
        if self.final_mask_rule == "branch" and len(chosen) != 1:
            raise ValueError(f"`final_mask_rule` 'branch' takes exactly one branch; got {chosen}")
        if self.final_mask_rule == "union":
            labels = [label for name in chosen for group in by_name[name]["classes"] for label in group]
            if len(labels) != len(set(labels)):
                raise ValueError(f"`final_mask_rule` 'union' needs disjoint label groups across {chosen}")
        if self.final_mask_rule == "mean_logits":
            class_sets = {str(by_name[name]["classes"]) for name in chosen}
            if len(class_sets) != 1:
                raise ValueError(f"`final_mask_rule` 'mean_logits' needs branches {chosen} to segment the same classes")
            if len(self.fusion_weights) != len(chosen):
                raise ValueError(
                    f"`fusion_weights` {self.fusion_weights} must have one weight per final-mask branch ({len(chosen)})"
                )

    def _check_fusion(self):
        self._check_choice("fusion_loss", FUSION_LOSSES)
        self._check_choice("fusion_parametrisation", FUSION_PARAMETRISATIONS)
        for key, default in (("fusion_loss", "branches"), ("fusion_parametrisation", "per_branch")):
            if getattr(self, key) != default and self.final_mask_rule != "mean_logits":
                raise ValueError(
                    f"`{key}` {getattr(self, key)!r} is a decision-fusion setting; it needs `final_mask_rule` "
                    f"'mean_logits' (got {self.final_mask_rule!r})"
                )
        if self.fusion_parametrisation == "scalar":
            weights = self.fusion_weights
            if len(weights) != 2 or abs(weights[0] + weights[1] - 1.0) > 1e-6:
                raise ValueError(
                    f"`fusion_parametrisation` 'scalar' takes two final-mask branches weighted w and 1 - w; "
                    f"`fusion_weights` is {weights}"
                )

    def _check_preprocessing(self):
        if self.reference_modality not in self.modalities:
            raise ValueError(
                f"`reference_modality` {self.reference_modality!r} is not one of the modalities ({_names(self.modalities)})"
            )
        classes = len(self.final_label_values)
        if self.id2label is not None and sorted(self.id2label) != list(range(classes)):
            raise ValueError(
                f"`id2label` has keys {sorted(self.id2label)}; expected one name per final-mask class 0..{classes - 1} "
                f"(e.g. {dict(enumerate(self.final_class_names))})"
            )
        if self.target_spacing is not None and (len(self.target_spacing) != 3 or min(self.target_spacing) <= 0):
            raise ValueError(f"`target_spacing` {self.target_spacing} must be three positive spacings in mm")
        for modality, window in (self.intensity_windows or {}).items():
            if modality not in self.modalities:
                raise ValueError(
                    f"`intensity_windows` names {modality!r}; expected modalities from {_names(self.modalities)}"
                )
            if len(window) != 2 or not window[0] < window[1]:
                raise ValueError(f"`intensity_windows[{modality!r}]` is {window}; expected [low, high] with low < high")

    # ------------------------------------------------------------------ derived facts

    @property
    def total_stride(self) -> int:
        return math.prod(self.strides)

    def branch(self, name: str) -> dict:
        for b in self.branches:
            if b["name"] == name:
                return b
        raise KeyError(f"no branch {name!r}; branches: {_names(b['name'] for b in self.branches)}")

    def branch_out_channels(self, branch: dict) -> int:
        """Output channels of a branch's decoder (0 when it has none)."""
        if branch["task"] == "segmentation":
            return len(branch["classes"]) + 1
        if branch["task"] == "reconstruction":
            return len(branch["targets"])
        return 0

    @property
    def final_label_groups(self) -> list[list[int]]:
        """Dataset labels of each foreground class of `logits` (class k + 1 ↔ group k)."""
        if self.final_mask_rule == "union":
            return [g for name in self.final_mask_branches for g in self.branch(name)["classes"]]
        return self.branch(self.final_mask_branches[0])["classes"]

    @property
    def final_label_values(self) -> list[int]:
        """Voxel value written for each class of `logits` (0 for background): the smallest dataset
        label of its group, so that written masks read in the dataset's own label map."""
        return [0] + [min(group) for group in self.final_label_groups]

    @property
    def final_class_names(self) -> list[str]:
        return ["background"] + [
            " + ".join(self.label_names[label] for label in group) for group in self.final_label_groups
        ]

    def describe(self) -> list[dict]:
        """One row per part (branch, bottleneck decoder, head) with its inputs and task, for tables and cards."""
        rows = []
        for b in self.branches:
            task = b["task"]
            if task == "segmentation":
                task += " of " + ", ".join("+".join(self.label_names[label] for label in g) for g in b["classes"])
            elif task == "reconstruction":
                task += " of " + ", ".join(b["targets"])
            rows.append({"part": f"branch `{b['name']}`", "inputs": ", ".join(b["inputs"]), "task": task})
        if self.bottleneck_decoder:
            d = self.bottleneck_decoder
            what = (
                ", ".join("+".join(self.label_names[label] for label in g) for g in d["classes"])
                if d["task"] == "segmentation"
                else ", ".join(d["targets"])
            )
            rows.append({"part": "bottleneck decoder", "inputs": "all bottlenecks", "task": f"{d['task']} of {what}"})
        if self.classification_head:
            h = self.classification_head
            what = (
                "lesion presence"
                if h["task"] == "lesion_presence"
                else "diagnosis (" + ", ".join(h["class_names"]) + ")"
            )
            if h.get("pooling", "global") == "flatten":
                what += (
                    f" (official flatten head, {'×'.join(str(p // self.total_stride) for p in self.patch_size)} map)"
                )
            rows.append({"part": "classification head", "inputs": f"bottleneck of `{h['branch']}`", "task": what})
        return rows

    # ------------------------------------------------------------------ presets

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MirrorUNetConfig":
        """Build the config of a named preset (see `list_presets()`), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of: {_names(PRESETS)}")
        values = copy.deepcopy(PRESETS[name]["config"])
        values.update(copy.deepcopy(overrides))
        values.setdefault("preset", name)
        return cls(**values)


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description."""
    return {name: spec["description"] for name, spec in PRESETS.items()}


_AUTOPET = {
    "modalities": AUTOPET_MODALITIES,
    "label_names": AUTOPET_LABELS,
    "reference_modality": "pet",
    "target_spacing": [2.0, 2.0, 3.0],
    "intensity_windows": {"ct": [-100.0, 250.0], "pet": [0.0, 15.0]},
}
_CT_REC = {"name": "ct", "inputs": ["ct"], "task": "reconstruction", "targets": ["ct"]}
_PET_SEG = {"name": "pet", "inputs": ["pet"], "task": "segmentation", "classes": [[1]]}
_CT_SEG = {"name": "ct", "inputs": ["ct"], "task": "segmentation", "classes": [[1]]}
_PET_REC_DECODER = {"task": "reconstruction", "targets": ["pet"]}
_BRATS = {"label_names": BRATS_LABELS, "reference_modality": "t1gd", "target_spacing": [1.0, 1.0, 1.0]}
_FLAIR_EDEMA = {"name": "flair", "inputs": ["flair"], "task": "segmentation", "classes": [[1]]}
_T1GD_CORE = {"name": "t1gd", "inputs": ["t1gd"], "task": "segmentation", "classes": [[2, 3]]}

PRESETS: dict[str, dict] = {
    "autopet-v1": {
        "description": "AutoPET v1 (transference): CT branch reconstructs CT, PET branch segments lesions",
        "config": {**_AUTOPET, "branches": [_CT_REC, _PET_SEG]},
    },
    "autopet-v2": {
        "description": "AutoPET v2 (fission): v1 + bottleneck decoder reconstructing PET",
        "config": {
            **_AUTOPET,
            "branches": [_CT_REC, _PET_SEG],
            "bottleneck_decoder": _PET_REC_DECODER,
            "bottleneck_decoder_style": "official",
        },
    },
    "autopet-v3": {
        "description": "AutoPET v3 (fission + classification): v2 + lesion-presence head on the PET bottleneck",
        "config": {
            **_AUTOPET,
            "branches": [_CT_REC, _PET_SEG],
            "bottleneck_decoder": _PET_REC_DECODER,
            "bottleneck_decoder_style": "official",
            "classification_head": {"branch": "pet", "task": "lesion_presence"},
        },
    },
    "autopet-v3-diagnosis": {
        "description": "AutoPET v3 with a diagnosis head (negative / lymphoma / melanoma / lung cancer)",
        "config": {
            **_AUTOPET,
            "branches": [_CT_REC, _PET_SEG],
            "bottleneck_decoder": _PET_REC_DECODER,
            "bottleneck_decoder_style": "official",
            "classification_head": {"branch": "pet", "task": "diagnosis", "class_names": AUTOPET_DIAGNOSES},
        },
    },
    "autopet-decision-fusion": {
        "description": "Decision fusion: both branches segment; logits = 0.1·CT + 0.9·PET (learnable with an override)",
        "config": {
            **_AUTOPET,
            "branches": [_CT_SEG, _PET_SEG],
            "final_mask_rule": "mean_logits",
            "final_mask_branches": ["ct", "pet"],
            "fusion_weights": [0.1, 0.9],
        },
    },
    "autopet-early-fusion": {
        "description": "Baseline: one U-Net on the 2-channel CT+PET input",
        "config": {
            **_AUTOPET,
            "branches": [{"name": "fused", "inputs": ["ct", "pet"], "task": "segmentation", "classes": [[1]]}],
        },
    },
    "autopet-late-fusion": {
        "description": "Baseline: two unshared single-modality U-Nets, logits averaged",
        "config": {
            **_AUTOPET,
            "branches": [_CT_SEG, _PET_SEG],
            "shared_layers": [],
            "final_mask_rule": "mean_logits",
            "final_mask_branches": ["ct", "pet"],
            "fusion_weights": [0.5, 0.5],
        },
    },
    "autopet-pet-only": {
        "description": "Baseline: a single U-Net on PET",
        "config": {
            **_AUTOPET,
            "modalities": ["pet"],
            "branches": [_PET_SEG],
            "intensity_windows": {"pet": [0.0, 15.0]},
        },
    },
    "brats-v1": {
        "description": "BrainTumour v1: FLAIR branch segments edema, T1Gd branch tumour core; final = union (whole tumour)",
        "config": {
            **_BRATS,
            "modalities": ["flair", "t1gd"],
            "branches": [_FLAIR_EDEMA, _T1GD_CORE],
            "final_mask_rule": "union",
            "final_mask_branches": ["flair", "t1gd"],
        },
    },
    "brats-v2": {
        "description": "BrainTumour v2: v1 + bottleneck decoder segmenting the whole tumour (a regulariser)",
        "config": {
            **_BRATS,
            "modalities": ["flair", "t1gd"],
            "branches": [_FLAIR_EDEMA, _T1GD_CORE],
            "bottleneck_decoder": {"task": "segmentation", "classes": [[1, 2, 3]]},
            "bottleneck_decoder_style": "official",
            "final_mask_rule": "union",
            "final_mask_branches": ["flair", "t1gd"],
        },
    },
    "brats-v2-rec": {
        "description": "BrainTumour v2-rec: FLAIR reconstruction, T1Gd segments all three tumour classes, bottleneck reconstructs T1Gd",
        "config": {
            **_BRATS,
            "modalities": ["flair", "t1gd"],
            "branches": [
                {"name": "flair", "inputs": ["flair"], "task": "reconstruction", "targets": ["flair"]},
                {"name": "t1gd", "inputs": ["t1gd"], "task": "segmentation", "classes": [[1], [2], [3]]},
            ],
            "bottleneck_decoder": {"task": "reconstruction", "targets": ["t1gd"]},
            "bottleneck_decoder_style": "official",
            "final_mask_branches": ["t1gd"],
        },
    },
    "brats-4branch": {
        "description": "Beyond the paper: FLAIR, T1w, T1Gd, T2w as four branches sharing one bottleneck",
        "config": {
            **_BRATS,
            "modalities": BRATS_MODALITIES,
            "branches": [
                _FLAIR_EDEMA,
                {"name": "t1w", "inputs": ["t1w"], "task": "reconstruction", "targets": ["t1w"]},
                {"name": "t1gd", "inputs": ["t1gd"], "task": "segmentation", "classes": [[2], [3]]},
                {"name": "t2w", "inputs": ["t2w"], "task": "reconstruction", "targets": ["t2w"]},
            ],
            "bottleneck_decoder": {"task": "segmentation", "classes": [[1, 2, 3]]},
            "final_mask_rule": "union",
            "final_mask_branches": ["flair", "t1gd"],
        },
    },
}

__all__ = ["MirrorUNetConfig", "list_presets", "PRESETS"]
