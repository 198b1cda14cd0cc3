"""Test-only stand-ins for the networks whose weights `mirror-unet convert` reads, built from MONAI blocks.

`OfficialMirrorUNet` follows the structure of the authors' `Mirror_UNet` (Zrrr1997/autoPET_challenge_mirrorUNet,
default sharing: the bottleneck only) as far as the conversion depends on it: attribute names (`down_1`,
`up_1`, `down_2`, `up_2`, `bottom_layer`, `dec`, `flatten_channels`, `fc`, `learnable_th`), MONAI's
`ResidualUnit` / `Convolution` blocks, decoders that concatenate `[deeper, skip]`, a CT branch with one output
channel in the multi-task variants, and w · CT + (1 − w) · PET for decision fusion. Written for these tests;
it is not the authors' code.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

VARIANTS = ("transference", "fission", "fission_classification", "decision_fusion")


def residual_unit(in_channels, out_channels, stride, subunits, last_conv_only=False):
    return ResidualUnit(
        3,
        in_channels,
        out_channels,
        strides=stride,
        kernel_size=3,
        subunits=subunits,
        act="PRELU",
        norm="BATCH",
        last_conv_only=last_conv_only,
    )


def up_layer(in_channels, out_channels, is_top):
    """Transposed conv + norm + act, then a one-sub-unit residual unit (raw output at the top level)."""
    up = Convolution(
        3, in_channels, out_channels, strides=2, kernel_size=3, act="PRELU", norm="BATCH", is_transposed=True
    )
    return nn.Sequential(up, residual_unit(out_channels, out_channels, 1, 1, last_conv_only=is_top))


class OfficialMirrorUNet(nn.Module):
    def __init__(self, variant: str, channels=(16, 32, 64, 128, 256), num_res_units=2, map_size=216):
        super().__init__()
        assert variant in VARIANTS
        self.variant = variant
        self.learnable_th = nn.Parameter(torch.tensor(0.5))
        levels = len(channels) - 1
        inputs = [1, *channels]
        ct_out = 2 if variant == "decision_fusion" else 1
        for n, out in ((1, ct_out), (2, 2)):
            downs, ups = nn.ModuleList(), nn.ModuleList()
            for i in range(levels):
                downs.append(residual_unit(inputs[i], channels[i], 2, num_res_units))
                up_in = channels[i] + channels[i + 1] if i == levels - 1 else 2 * channels[i]
                ups.append(up_layer(up_in, out if i == 0 else channels[i - 1], is_top=i == 0))
            setattr(self, f"down_{n}", downs)
            setattr(self, f"up_{n}", ups)
        self.bottom_layer = residual_unit(channels[-2], channels[-1], 1, num_res_units)
        if variant in ("fission", "fission_classification"):
            widths = [2 * channels[-1], *reversed(channels[: levels - 1]), 1]
            self.dec = nn.ModuleList(up_layer(widths[i], widths[i + 1], is_top=False) for i in range(levels))
        if variant == "fission_classification":
            self.flatten_channels = Convolution(3, channels[-1], 1, strides=1, kernel_size=1, act="PRELU", norm="BATCH")
            self.fc = nn.Sequential(
                nn.Flatten(), nn.Linear(map_size, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 1), nn.Sigmoid()
            )

    def branch(self, n: int, x: torch.Tensor):
        skips = []
        for down in getattr(self, f"down_{n}"):
            x = down(x)
            skips.append(x)
        bottom = self.bottom_layer(x)
        ups = getattr(self, f"up_{n}")
        x = torch.cat([bottom, skips[-1]], dim=1)
        for i in range(len(ups) - 1, 0, -1):
            x = torch.cat([ups[i](x), skips[i - 1]], dim=1)
        return ups[0](x), bottom

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ct, ct_bottom = self.branch(1, x[:, :1])
        pet, pet_bottom = self.branch(2, x[:, 1:2])
        out = {"ct": ct, "pet": pet}
        if hasattr(self, "dec"):
            y = torch.cat([ct_bottom, pet_bottom], dim=1)
            for block in self.dec:
                y = block(y)
            out["bottleneck_decoder"] = y
        if hasattr(self, "fc"):
            out["classification"] = self.fc(self.flatten_channels(pet_bottom))
        if self.variant == "decision_fusion":
            w = self.learnable_th.clamp(0, 1)
            out["fused"] = w * ct + (1 - w) * pet
        return out


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random norm parameters, running statistics, biases and PReLU slopes (convolution weights keep their
    default initialisation, so activations stay in range), so that a wrongly mapped tensor of any kind
    changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point() or tensor.ndim != 1 or "learnable_th" in name:
                continue
            noise = torch.randn(tensor.shape, generator=g) * 0.1
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            elif name.endswith("adn.N.weight"):
                tensor.copy_(1.0 + noise)
            elif name.endswith("adn.A.weight"):
                tensor.copy_(torch.rand(tensor.shape, generator=g) * 0.5)
            else:
                tensor.copy_(noise)
    return module.eval()
