"""`mirror-unet presets`: every preset with its branch tasks and parameter count."""

from __future__ import annotations

import json

HELP = "list the model presets with their branch tasks and parameter counts"


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")


def preset_summary(name: str) -> dict:
    """Name, description, parts (branch → inputs → task) and parameter count of one preset."""
    import torch

    from ..configuration_mirror_unet import PRESETS, MirrorUNetConfig
    from ..modeling_mirror_unet import MirrorUNetModel

    config = MirrorUNetConfig.from_preset(name)
    with torch.device("meta"):  # counts parameters without allocating them
        model = MirrorUNetModel(config)
    return {
        "name": name,
        "description": PRESETS[name]["description"],
        "modalities": config.modalities,
        "parts": config.describe(),
        "final_mask": f"{config.final_mask_rule}: {', '.join(config.final_mask_branches)}",
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def run(args) -> int:
    from ..configuration_mirror_unet import PRESETS

    summaries = [preset_summary(name) for name in PRESETS]
    if args.json:
        print(json.dumps(summaries, indent=2))
        return 0
    for s in summaries:
        print(f"{s['name']}  ({s['parameters'] / 1e6:.2f} M parameters; inputs: {', '.join(s['modalities'])})")
        print(f"    {s['description']}")
        for part in s["parts"]:
            print(f"    - {part['part']} [{part['inputs']}]: {part['task']}")
        print(f"    - final mask = {s['final_mask']}")
    return 0
