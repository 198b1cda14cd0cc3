"""Keep the committed copies of the model code byte-equal to the package files.

`configuration_mirror_unet.py`, `modeling_mirror_unet.py` and the image processor's
`image_processing_mirror_unet.py` travel with every checkpoint as Hub remote code, so a checkpoint committed
to this repository carries its own copy of them. Those copies must be the package files, byte for byte, or
the checkpoint would load (and preprocess) with code other than the package's.

    python utils/check_copies.py        # report drifted copies; exit status 1 if any
    python utils/check_copies.py --fix  # rewrite the drifted copies from the package files

Run from anywhere; the repository is the folder above this script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The package files that checkpoints carry as remote code, relative to the repository root.
SOURCE_FOLDER = "mirror_unet_hf"
CODE_FILES = ("configuration_mirror_unet.py", "modeling_mirror_unet.py", "image_processing_mirror_unet.py")
# Committed checkpoint folders that hold copies of CODE_FILES (tests/test_check_copies.py fails on a
# tracked copy elsewhere, so a new one gets added here).
COPY_FOLDERS = ("demo/checkpoint",)
FIX_COMMAND = "python utils/check_copies.py --fix"


def copy_pairs(root: Path = REPO_ROOT) -> list[tuple[Path, Path]]:
    """(package file, copy) for every copy this script guards."""
    return [(root / SOURCE_FOLDER / name, root / folder / name) for folder in COPY_FOLDERS for name in CODE_FILES]


def drifted_copies(root: Path = REPO_ROOT) -> list[tuple[Path, Path]]:
    """The (package file, copy) pairs whose copy is missing or differs from the package file."""
    return [
        (source, copy)
        for source, copy in copy_pairs(root)
        if not copy.is_file() or copy.read_bytes() != source.read_bytes()
    ]


def drift_message(drifted: list[tuple[Path, Path]], root: Path = REPO_ROOT) -> str:
    """One line per drifted copy, then the command that refreshes them."""
    lines = []
    for source, copy in drifted:
        source_name, copy_name = source.relative_to(root).as_posix(), copy.relative_to(root).as_posix()
        if copy.is_file():
            lines.append(f"{copy_name} differs from {source_name}")
        else:
            lines.append(f"{copy_name} is missing (a copy of {source_name})")
    return "\n".join(lines + [f"Run `{FIX_COMMAND}` to copy the package files over them."])


def fix_copies(root: Path = REPO_ROOT) -> list[Path]:
    """Rewrite each drifted copy from its package file (atomically); returns the copies rewritten."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # this checkout's package when run as a script
    from mirror_unet_hf.files import atomic_write_bytes

    rewritten = []
    for source, copy in drifted_copies(root):
        atomic_write_bytes(copy, source.read_bytes())
        rewritten.append(copy)
    return rewritten


def main(argv: list[str] | None = None, root: Path = REPO_ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fix", action="store_true", help="rewrite drifted copies from the package files")
    args = parser.parse_args(argv)
    if args.fix:
        rewritten = fix_copies(root)
        for copy in rewritten:
            print(f"rewrote {copy.relative_to(root).as_posix()}")
        if not rewritten:
            print("all copies of the model code are up to date")
        return 0
    drifted = drifted_copies(root)
    if drifted:
        print(drift_message(drifted, root), file=sys.stderr)
        return 1
    print("all copies of the model code are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
