"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample images in ``../shared/data`` (next to the repository); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (a fresh clone has no ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def autopet_phantoms(tmp_path_factory) -> Path:
    """Six small AutoPET phantom studies (48x48x40 voxels, one patient with two studies); returns their parent folder."""
    from mirror_unet_hf.data import make_phantoms

    out = tmp_path_factory.mktemp("autopet_phantoms")
    make_phantoms("autopet", out, n=6, seed=7, shape=(48, 48, 40))
    return out


@pytest.fixture(scope="session")
def brain_phantoms(tmp_path_factory) -> Path:
    """Three small MSD BrainTumour phantom cases (32x40x32 voxels); returns their parent folder."""
    from mirror_unet_hf.data import make_phantoms

    out = tmp_path_factory.mktemp("brain_phantoms")
    make_phantoms("brain_tumour", out, n=3, seed=7, shape=(32, 40, 32))
    return out


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A tiny `autopet-v3` checkpoint (channels 4..64, 32³ patches, seed 0) saved with save_pretrained; read-only."""
    import torch

    from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "tiny"
    config = MirrorUNetConfig.from_preset("autopet-v3", channels=[4, 8, 16, 32, 64], patch_size=[32, 32, 32])
    MirrorUNetModel(config).save_pretrained(folder)
    return folder
