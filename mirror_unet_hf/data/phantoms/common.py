"""Helpers every phantom writer shares: the body-millimetre coordinate space, smooth noise, NIfTI images."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage


def phantom_nifti(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A NIfTI image stored in the array's own dtype, scanner-anatomical qform and sform, millimetres."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return image


class Space:
    """Broadcast voxel coordinates of a study in body millimetres (X: patient right +, Y: anterior +, Z: up from the FOV floor)."""

    def __init__(self, shape, spacing, shift=(0.0, 0.0, 0.0)):
        nx, ny, nz = shape
        sx, sy, sz = spacing
        # the array's first axis runs towards the patient's left, as in AutoPET's LAS files
        self.X = (((nx - 1) / 2.0 - np.arange(nx)) * sx - shift[0]).astype(np.float32)[:, None, None]
        self.Y = ((np.arange(ny) - (ny - 1) / 2.0) * sy - shift[1]).astype(np.float32)[None, :, None]
        self.Z = ((np.arange(nz) + 0.5) * sz - shift[2]).astype(np.float32)[None, None, :]
        self.shape = tuple(shape)
        self.spacing = tuple(spacing)

    def ellipsoid(self, centre, radii):
        """Normalised squared distance to an axis-aligned ellipsoid (<= 1 inside)."""
        return (
            ((self.X - centre[0]) / radii[0]) ** 2
            + ((self.Y - centre[1]) / radii[1]) ** 2
            + ((self.Z - centre[2]) / radii[2]) ** 2
        )


def smooth_noise(rng, shape, sigma):
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return field / max(float(field.std()), 1e-6)
