"""Draw an FDG and a PSMA phantom side by side (CT mid slice, PET coronal and sagittal MIPs, lesion outlines).

    python utils/phantom_figure.py --out docs/phantoms_fdg_psma.png

Writes autoPET III/IV phantoms (``mirror-unet make-phantoms --layout autopet3``) into a temporary folder and
shows, per tracer, the positive study with the most lesion voxels. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from mirror_unet_hf.data import make_phantoms


def _volume(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def _pick(root: Path, tracer: str) -> str:
    labels = sorted((root / "labelsTr").glob(f"{tracer}_*.nii.gz"))
    return max(labels, key=lambda path: _volume(path).sum()).name.removesuffix(".nii.gz")


def _draw_row(axes, root: Path, case: str, tracer: str, spacing=(2.0, 2.0, 3.0)) -> None:
    ct = _volume(root / "imagesTr" / f"{case}_0000.nii.gz")
    pet = _volume(root / "imagesTr" / f"{case}_0001.nii.gz")
    seg = _volume(root / "labelsTr" / f"{case}.nii.gz") > 0
    coronal = spacing[2] / spacing[0]
    # array axes run towards the patient's left, anterior and up: index 0 (the patient's right) is drawn on the
    # viewer's left, as radiologists look at coronal images
    views = [
        (ct[:, ct.shape[1] // 2, :].T, "gray", (-200, 400), None, "CT, coronal mid slice (HU)"),
        (pet.max(axis=1).T, "gray_r", (0, 10), seg.max(axis=1).T, "PET coronal MIP (SUV 0-10)"),
        (pet.max(axis=0).T, "gray_r", (0, 10), seg.max(axis=0).T, "PET sagittal MIP (anterior right)"),
    ]
    for ax, (image, cmap, (low, high), outline, title) in zip(axes, views, strict=True):
        ax.imshow(image, cmap=cmap, vmin=low, vmax=high, origin="lower", aspect=coronal, interpolation="nearest")
        if outline is not None and outline.any():
            ax.contour(outline, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(f"{tracer.upper()}: {title}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/phantoms_fdg_psma.png")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as folder:
        root = make_phantoms("autopet3", folder, args.n, args.seed)
        figure, axes = plt.subplots(2, 3, figsize=(9, 6.6))
        for row, tracer in zip(axes, ("fdg", "psma"), strict=True):
            case = _pick(root, tracer)
            _draw_row(row, root, case, tracer)
            row[0].set_ylabel(case, fontsize=7)
        figure.suptitle("autoPET III/IV phantoms (make-phantoms --layout autopet3); red: lesion outlines", fontsize=9)
        figure.tight_layout()
        figure.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
