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
