"""Converting published weights into Mirror U-Net checkpoints (`mirror-unet convert`).

Two sources:

- ``monai-unet``: MONAI's ``monai.networks.nets.UNet`` with residual units, the architecture of the AutoPET
  MONAI baseline, into a one-branch preset such as ``autopet-early-fusion``. The baseline feeds PET first
  (``[SUV, CTres]``), so the first convolutions' input channels are reordered to the preset's modalities.
- ``official-mirror-unet``: the authors' ``Mirror_UNet`` (``Zrrr1997/autoPET_challenge_mirrorUNet``) into
  ``autopet-v1`` (transference), ``autopet-v2`` (fission), ``autopet-v3`` (fission + classification, with
  the official flatten head) or ``autopet-decision-fusion``. Their decoders concatenate ``[deeper, skip]``
  where this model concatenates ``[skip, deeper]``: the input channels of each decoder level's transposed
  convolution are swapped accordingly.

Both map state-dict keys block by block (a MONAI ``Convolution`` → ``MirrorUNetConvNormAct``, a MONAI
``ResidualUnit`` → ``MirrorUNetResidualUnit``), so the converted model gives the source network's outputs.
Checkpoints load with ``torch.load(weights_only=True)`` (or safetensors): a file that would need its
pickled code executed is refused, never run.
"""

from __future__ import annotations

import json
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .configuration_mirror_unet import MirrorUNetConfig
from .errors import CONFIG_ERRORS, UserInputError, one_line
from .files import replace_folder

SOURCES = ("monai-unet", "official-mirror-unet")
OFFICIAL_PRESETS = ("autopet-v1", "autopet-v2", "autopet-v3", "autopet-decision-fusion")
# Where Lightning, ignite and DataParallel put a network's state dict inside a checkpoint.
NESTING_KEYS = ("state_dict", "net", "model")
WRAPPER_PREFIXES = ("_model.", "model.", "net.", "module.")
# The authors' model always holds the decision-fusion scalar; other variants never use it.
OFFICIAL_FUSION_KEY = "learnable_th"
SHOWN_KEYS = 5


@dataclass
class Conversion:
    """A converted model with what the conversion did: the source prefix it stripped, source keys it left
    out on purpose, and notes for the user."""

    model: torch.nn.Module
    stripped_prefix: str = ""
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ reading checkpoints


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: a ``.safetensors`` file, or a torch pickle loaded with
    ``weights_only=True``, unwrapped from a ``"state_dict"`` / ``"net"`` / ``"model"`` entry when nested."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"--checkpoint {path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as error:  # safetensors raises its own error types for a corrupt header
            raise UserInputError(f"--checkpoint {path}: not a readable safetensors file ({one_line(error)})") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UserInputError(
            f"--checkpoint {path} holds Python objects that torch.load(weights_only=True) refuses "
            f"({one_line(error)[:200]}); loading it would execute code from the file. Where you trust the file, "
            "save just its tensors, e.g. torch.save(torch.load(F, weights_only=False)['state_dict'], 'weights.pt')"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise UserInputError(f"--checkpoint {path}: not a readable torch checkpoint ({one_line(error)})") from None
    return tensors_of(loaded, path)


def is_state_dict(value) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def tensors_of(loaded, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside what `torch.load` returned."""
    if is_state_dict(loaded):
        return dict(loaded)
    if isinstance(loaded, dict):
        for key in NESTING_KEYS:
            if is_state_dict(loaded.get(key)):
                return dict(loaded[key])
    what = f"a dict with keys {sorted(map(str, loaded))[:8]}" if isinstance(loaded, dict) else type(loaded).__name__
    raise UserInputError(
        f"--checkpoint {path} is {what}; expected a state dict of tensors, or one under "
        + " / ".join(repr(k) for k in NESTING_KEYS)
    )


def strip_wrapper_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    """Remove the prefix a training wrapper added (``_model.``, ``model.``, ``net.``, ``module.``, or two of
    them): the candidate that all keys share and that leaves the most expected keys wins."""
    candidates = [""] + list(WRAPPER_PREFIXES) + [a + b for a in WRAPPER_PREFIXES for b in WRAPPER_PREFIXES]
    best, best_hits = "", -1
    for prefix in candidates:
        if not all(key.startswith(prefix) for key in state):
            continue
        hits = len({key[len(prefix) :] for key in state} & expected)
        if hits > best_hits:
            best, best_hits = prefix, hits
    return {key[len(best) :]: value for key, value in state.items()}, best


# ------------------------------------------------------------------ key maps (source prefix → our prefix)


def convolution_pairs(config: MirrorUNetConfig, source: str, target: str) -> list[tuple[str, str]]:
    """A MONAI ``Convolution`` (conv, ``adn.N``, ``adn.A``) → a ``MirrorUNetConvNormAct`` (0, 1, act)."""
    act = 3 if config.dropout > 0 else 2  # our dropout sits between norm and activation
    return [
        (source + "conv.", target + "0."),
        (source + "adn.N.", target + "1."),
        (source + "adn.A.", f"{target}{act}."),
    ]


def residual_unit_pairs(config: MirrorUNetConfig, source: str, target: str, subunits: int) -> list[tuple[str, str]]:
    """A MONAI ``ResidualUnit`` → a ``MirrorUNetResidualUnit``."""
    pairs = [(source + "residual.", target + "residual.")]
    for i in range(subunits):
        pairs += convolution_pairs(config, f"{source}conv.unit{i}.", f"{target}conv.{i}.")
    return pairs


def up_layer_pairs(config: MirrorUNetConfig, source: str, target: str) -> list[tuple[str, str]]:
    """MONAI's up layer, ``Sequential(transposed Convolution, one-sub-unit ResidualUnit)`` → ``up`` + ``unit``."""
    return convolution_pairs(config, source + "0.", target + "up.") + residual_unit_pairs(
        config, source + "1.", target + "unit.", 1
    )


def level_module(config: MirrorUNetConfig, branch: str, layer: str) -> str:
    """Our state-dict prefix of a level ("encoder.<k>", "bottleneck", "decoder.<j>") of a branch."""
    key = layer.replace(".", "_")
    owner = "shared" if layer in config.shared_layers else f"branches.{branch}.own"
    return f"{owner}.{key}."


def monai_unet_pairs(config: MirrorUNetConfig) -> list[tuple[str, str]]:
    """MONAI ``UNet``: level k's down unit at ``model.`` + ``1.submodule.`` × k + ``0.``, its up layer at
    ... + ``2.``, the bottom unit at ``model.`` + ``1.submodule.`` × levels."""
    branch, levels = config.branches[0]["name"], len(config.strides)
    bottom = "model." + "1.submodule." * levels
    pairs = residual_unit_pairs(
        config, bottom, level_module(config, branch, "bottleneck") + "unit.", config.num_res_units
    )
    for k in range(levels):
        nested = "model." + "1.submodule." * k
        target = level_module(config, branch, f"encoder.{k}") + "unit."
        pairs += residual_unit_pairs(config, nested + "0.", target, config.num_res_units)
        pairs += up_layer_pairs(config, nested + "2.", level_module(config, branch, f"decoder.{levels - 1 - k}"))
    return pairs


def official_pairs(config: MirrorUNetConfig) -> list[tuple[str, str]]:
    """The authors' ``Mirror_UNet``: path n (1 = CT, 2 = PET) has ``down_n.<k>`` and ``up_n.<k>`` (k = 0 is
    the top level), a shared ``bottom_layer``, the bottleneck decoder ``dec.<i>`` and the v3 head
    (``flatten_channels``, ``fc``)."""
    levels = len(config.strides)
    pairs = residual_unit_pairs(config, "bottom_layer.", "shared.bottleneck.unit.", config.num_res_units)
    for n, spec in enumerate(config.branches, start=1):
        for k in range(levels):
            target = level_module(config, spec["name"], f"encoder.{k}") + "unit."
            pairs += residual_unit_pairs(config, f"down_{n}.{k}.", target, config.num_res_units)
            decoder = level_module(config, spec["name"], f"decoder.{levels - 1 - k}")
            pairs += up_layer_pairs(config, f"up_{n}.{k}.", decoder)
    if config.bottleneck_decoder is not None:
        for i in range(levels):
            pairs += up_layer_pairs(config, f"dec.{i}.", f"bottleneck_decoder.blocks.{i}.")
    if config.classification_head is not None:
        pairs += convolution_pairs(config, "flatten_channels.", "classification_head.reduce.")
        pairs += [("fc.1.", "classification_head.mlp.0."), ("fc.4.", "classification_head.mlp.3.")]
    return pairs


def rename(state: dict[str, torch.Tensor], pairs: list[tuple[str, str]]):
    """Source keys renamed by their longest matching source prefix: `(renamed, origin, unmatched)` with
    origin = our key → the source key it came from, and the source keys no prefix matches."""
    ordered = sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)
    renamed, origin, unmatched = {}, {}, []
    for key, value in state.items():
        match = next(((s, t) for s, t in ordered if key.startswith(s)), None)
        if match is None:
            unmatched.append(key)
            continue
        ours = match[1] + key[len(match[0]) :]
        renamed[ours], origin[ours] = value, key
    return renamed, origin, unmatched


def expected_source_keys(model: torch.nn.Module, pairs: list[tuple[str, str]]) -> set[str]:
    """The source keys that would produce `model`'s state dict under `pairs` (for prefix detection)."""
    inverse = sorted(((t, s) for s, t in pairs), key=lambda pair: len(pair[0]), reverse=True)
    keys = set()
    for key in model.state_dict():
        match = next(((t, s) for t, s in inverse if key.startswith(t)), None)
        if match is not None:
            keys.add(match[1] + key[len(match[0]) :])
    return keys


# ------------------------------------------------------------------ tensor fixes


def swap_decoder_concatenation(config: MirrorUNetConfig, state: dict[str, torch.Tensor]) -> None:
    """The authors' decoder levels read ``[deeper, skip]``; ours read ``[skip, deeper]``: rotate the input
    channels (dim 0 of a ConvTranspose3d weight) of each level's transposed convolution."""
    c, levels = config.channels, len(config.strides)
    for spec in config.branches:
        for j in range(levels):
            deeper = c[-1] if j == 0 else c[levels - 1 - j]
            key = level_module(config, spec["name"], f"decoder.{j}") + "up.0.weight"
            if key in state:
                weight = state[key]
                state[key] = torch.cat([weight[deeper:], weight[:deeper]], dim=0)


def reorder_input_channels(config: MirrorUNetConfig, state: dict[str, torch.Tensor], source_order: list[str]) -> None:
    """Permute the input channels of the first encoder level from the source's modality order to the branch's."""
    spec = config.branches[0]
    if list(source_order) == list(spec["inputs"]):
        return
    if sorted(source_order) != sorted(spec["inputs"]):
        raise UserInputError(
            f"--source-modalities {' '.join(source_order)} must name the preset's inputs "
            f"({' '.join(spec['inputs'])}) in the source network's channel order"
        )
    index = [list(source_order).index(m) for m in spec["inputs"]]
    prefix = level_module(config, spec["name"], "encoder.0") + "unit."
    for key in (prefix + "conv.0.0.weight", prefix + "residual.weight"):
        if key in state:
            state[key] = state[key][:, index]


# ------------------------------------------------------------------ configs


def source_config(
    source: str, preset: str, overrides: dict, state: dict[str, torch.Tensor], fusion_weight: float | None
) -> tuple[MirrorUNetConfig, list[str]]:
    """The config the converted model needs, and notes: the preset with `overrides`, plus what the source
    structure fixes (the official v3 flatten head, the decision-fusion scalar)."""
    notes = []
    values = dict(overrides)
    if source == "official-mirror-unet":
        if preset not in OFFICIAL_PRESETS:
            raise UserInputError(
                f"--preset {preset} for --from {source}; expected one of: {', '.join(OFFICIAL_PRESETS)}"
            )
        if preset == "autopet-v3":
            values.setdefault("classification_head", {"branch": "pet", "task": "lesion_presence", "pooling": "flatten"})
        if preset == "autopet-decision-fusion":
            notes += fusion_values(values, state, fusion_weight)
    try:
        config = MirrorUNetConfig.from_preset(preset, **values)
    except (ValueError, *CONFIG_ERRORS) as error:
        raise UserInputError(one_line(error)) from None
    if source == "monai-unet" and len(config.branches) != 1:
        raise UserInputError(
            f"--preset {preset} has {len(config.branches)} branches; a MONAI UNet converts into a one-branch preset "
            "such as autopet-early-fusion or autopet-pet-only"
        )
    return config, notes


def fusion_values(values: dict, state: dict[str, torch.Tensor], fusion_weight: float | None) -> list[str]:
    """Decision fusion as the authors' code computes it: w · CT + (1 − w) · PET with w clamped to [0, 1];
    w is the checkpoint's learnt ``learnable_th`` unless `fusion_weight` fixes it (their ``--mirror_th``)."""
    values.update(fusion_parametrisation="scalar")
    if fusion_weight is not None:
        if not 0.0 <= fusion_weight <= 1.0:
            raise UserInputError(f"--fusion-weight {fusion_weight}; expected a CT weight in [0, 1]")
        values.update(fusion_weights=[fusion_weight, 1.0 - fusion_weight], learnable_fusion_weights=False)
        return [f"decision fusion with the fixed CT weight {fusion_weight:g} (--fusion-weight)"]
    learnt = next((v for k, v in state.items() if k.endswith(OFFICIAL_FUSION_KEY)), None)
    if learnt is None:
        raise UserInputError(f"the checkpoint has no {OFFICIAL_FUSION_KEY!r}; pass the CT weight with --fusion-weight")
    w = float(learnt.reshape(-1)[0])
    values.update(fusion_weights=[w, 1.0 - w], learnable_fusion_weights=True)
    notes = [f"decision fusion with the checkpoint's learnt CT weight {w:g} (clamped to [0, 1] in the forward pass)"]
    if w == 0.5:
        notes.append(
            "learnable_th is 0.5, its initial value: if the run used a fixed --mirror_th instead "
            "(0.1 by default), pass --fusion-weight 0.1"
        )
    return notes


# ------------------------------------------------------------------ conversion


def convert_state_dict(
    source: str,
    state: dict[str, torch.Tensor],
    preset: str,
    *,
    overrides: dict | None = None,
    source_modalities: list[str] | None = None,
    fusion_weight: float | None = None,
) -> Conversion:
    """A `MirrorUNetModel` of `preset` (+ `overrides`) holding the weights of the `source` network `state`.

    `source_modalities` (``monai-unet``): the modality of each input channel of the source, in order (default:
    PET, CT as in the AutoPET baseline when the preset reads both, else the preset's own order).
    `fusion_weight` (``official-mirror-unet``, decision fusion): a fixed CT weight instead of the learnt one.
    Raises `UserInputError` naming missing, unexpected or mis-shaped keys.
    """
    from .modeling_mirror_unet import MirrorUNetModel

    if source not in SOURCES:
        raise UserInputError(f"--from {source!r}; expected one of: {', '.join(SOURCES)}")
    config, notes = source_config(source, preset, overrides or {}, state, fusion_weight)
    model = MirrorUNetModel(config)
    pairs = monai_unet_pairs(config) if source == "monai-unet" else official_pairs(config)
    state, prefix = strip_wrapper_prefix(state, expected_source_keys(model, pairs) | {OFFICIAL_FUSION_KEY})
    conversion = Conversion(model, stripped_prefix=prefix, notes=notes)
    fusion = state.pop(OFFICIAL_FUSION_KEY, None) if source == "official-mirror-unet" else None
    renamed, origin, unmatched = rename(state, pairs)
    if fusion is not None and model.fusion_weights is not None:
        renamed["fusion_weights"], origin["fusion_weights"] = fusion.reshape(1).float(), OFFICIAL_FUSION_KEY
    elif fusion is not None:
        conversion.ignored.append(OFFICIAL_FUSION_KEY)
    check_keys(model, renamed, origin, unmatched, f"--from {source} --preset {preset}")
    if source == "official-mirror-unet":
        swap_decoder_concatenation(config, renamed)
    else:
        reorder_input_channels(config, renamed, source_modalities or default_source_modalities(config))
    model.load_state_dict(renamed, strict=True)
    return conversion


def default_source_modalities(config: MirrorUNetConfig) -> list[str]:
    """The channel order of a MONAI UNet source when none is given: PET, CT as the AutoPET baseline feeds them
    (``ConcatItemsd(["image_pt", "image_ct"])``) when the branch reads both, else the branch's own order."""
    inputs = config.branches[0]["inputs"]
    return ["pet", "ct"] if sorted(inputs) == ["ct", "pet"] else list(inputs)


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")


def check_keys(model, renamed: dict, origin: dict, unmatched: list[str], what: str) -> None:
    """Refuse a checkpoint that does not give every weight of `model` exactly: name the missing keys (ours),
    the unexpected ones and the mis-shaped ones (the source's names)."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in renamed]
    unexpected = unmatched + [origin[key] for key in renamed if key not in expected]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} weights of the model ({_some(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_some(unexpected)})")
    shapes = [
        f"{origin[key]} {list(value.shape)} where {key} is {list(expected[key].shape)}"
        for key, value in renamed.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if shapes:
        hint = "other widths need --model-overrides"
        if "classification_head.mlp.0.weight" in " ".join(shapes):
            hint += "; the flatten head reads prod(patch_size / 16) values: set patch_size (96³ gives 216)"
        problems.append(f"{len(shapes)} shapes differ ({_some(shapes)}; {hint})")
    if problems:
        raise UserInputError(f"the checkpoint does not fit {what}: " + "; ".join(problems))


def write_model(model, out: str | Path, overwrite: bool = False) -> Path:
    """`save_pretrained` into a temporary folder beside `out`, then move it into place."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; expected a folder to write the checkpoint into")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserInputError(f"--out {out} already exists and is not empty; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name[:40]}.", suffix=".tmp", dir=out.parent))
    try:
        model.save_pretrained(staging)
        replace_folder(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out


def parse_overrides(text: str | None) -> dict:
    """`--model-overrides` JSON object of config fields."""
    if not text:
        return {}
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserInputError(f"--model-overrides is not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise UserInputError("--model-overrides must be a JSON object of config fields")
    return values
