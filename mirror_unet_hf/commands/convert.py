"""``mirror-unet convert``: published weights (MONAI's UNet, the authors' Mirror U-Net) → a checkpoint folder."""

from __future__ import annotations

import argparse

HELP = "convert published weights (MONAI UNet, the authors' Mirror U-Net) into a Mirror U-Net checkpoint folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..convert import OFFICIAL_PRESETS, SOURCES

    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        choices=SOURCES,
        help="monai-unet: monai.networks.nets.UNet (the AutoPET MONAI baseline); official-mirror-unet: the "
        f"authors' Mirror_UNet ({', '.join(OFFICIAL_PRESETS)})",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="state dict file (.pt/.pth/.ckpt loaded with weights_only=True, or .safetensors); a Lightning or "
        "ignite checkpoint with the weights under 'state_dict' / 'net' works too",
    )
    parser.add_argument("--preset", required=True, help="the preset to build, e.g. autopet-early-fusion or autopet-v2")
    parser.add_argument("--out", required=True, help="folder to write the checkpoint to (save_pretrained)")
    parser.add_argument(
        "--source-modalities",
        nargs="+",
        default=None,
        metavar="MODALITY",
        help="monai-unet: the modality of each input channel of the source, in order "
        "(default: pet ct, as the AutoPET baseline, when the preset reads both)",
    )
    parser.add_argument(
        "--fusion-weight",
        type=float,
        default=None,
        help="official decision fusion: a fixed CT weight (the run's --mirror_th) instead of the learnt learnable_th",
    )
    parser.add_argument(
        "--model-overrides",
        default=None,
        help="JSON object of config fields that differ from the preset, e.g. '{\"channels\": [8, 16, 32, 64, 128]}'",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def run(args: argparse.Namespace) -> int:
    from ..convert import convert_state_dict, load_checkpoint, parse_overrides, write_model

    overrides = parse_overrides(args.model_overrides)
    state = load_checkpoint(args.checkpoint)
    conversion = convert_state_dict(
        args.source,
        state,
        args.preset,
        overrides=overrides,
        source_modalities=args.source_modalities,
        fusion_weight=args.fusion_weight,
    )
    out = write_model(conversion.model, args.out, overwrite=args.overwrite)
    parameters = sum(p.numel() for p in conversion.model.parameters())
    print(f"{out}: {args.preset} ({parameters:,} parameters) from {args.checkpoint}")
    if conversion.stripped_prefix:
        print(f"  stripped the key prefix {conversion.stripped_prefix!r}")
    for key in conversion.ignored:
        print(f"  left out {key} (unused by {args.preset})")
    for note in conversion.notes:
        print(f"  {note}")
    return 0
