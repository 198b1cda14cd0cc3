"""`mirror-unet predict`: segment one study or a whole dataset folder with a Mirror U-Net checkpoint."""

from __future__ import annotations

import glob
import json
import sys
import traceback
from pathlib import Path

from ..errors import UserInputError

HELP = "segment studies (NIfTI) with a checkpoint folder or Hub id; writes a uint8 mask on the reference grid"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="save_pretrained folder or Hub id (org/name)")
    source = parser.add_argument_group("input (one of)")
    source.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="one modality file, named as in the model config (repeat: --input ct=CTres.nii.gz --input pet=SUV.nii.gz)",
    )
    source.add_argument("--study", help="an AutoPET study folder (CTres/SUV.nii.gz) or an MSD 4D image")
    source.add_argument(
        "--input-dir", help="a dataset folder (AutoPET, MSD or autoPET III/IV nnU-Net layout): every study"
    )
    output = parser.add_argument_group("output")
    output.add_argument("--out", help="mask file for --input/--study (.nii.gz)")
    output.add_argument(
        "--out-dir", help="folder for --input-dir: <case_id>.nii.gz per study (what `evaluate --pred` reads)"
    )
    output.add_argument(
        "--lesions", help="lesion table CSV for --input/--study (a JSON summary is written beside it); PET models"
    )
    output.add_argument(
        "--save-branches", metavar="DIR", help="also write each branch / bottleneck-decoder output as NIfTI here"
    )
    output.add_argument("--overwrite", action="store_true", help="replace existing outputs (refused by default)")
    run = parser.add_argument_group("how to run")
    run.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="auto (default): bf16 with BatchNorm folded where the CPU/GPU computes bf16 natively, else fp32; fp32 is exact",
    )
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    run.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap fraction")
    run.add_argument(
        "--window",
        type=int,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="window size in voxels (default: the model's patch size)",
    )
    run.add_argument(
        "--window-batch", type=int, default=None, help="windows per forward pass (default: 2 for fp32 on a CPU, else 1)"
    )
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        help="CPU: windows run in parallel, one thread each (default: one per core, at most 4)",
    )
    run.add_argument(
        "--blend", choices=["constant", "gaussian"], default="constant", help="blending of overlapping windows"
    )
    run.add_argument(
        "--skip-bad",
        action="store_true",
        help="with --input-dir: continue past studies that fail and list them at the end",
    )


def _parse_inputs(pairs: list[str]) -> dict[str, Path]:
    inputs = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UserInputError(f"--input {pair!r}: expected NAME=PATH, e.g. --input pet=SUV.nii.gz")
        if name in inputs:
            raise UserInputError(f"--input names modality {name!r} twice")
        inputs[name] = Path(path)
    return inputs


def _check_output(path: Path | None, overwrite: bool, flag: str) -> None:
    if path is None:
        return
    if not path.name.endswith((".nii.gz", ".nii")) and flag == "--out":
        raise UserInputError(f"{flag} {path}: expected a .nii.gz or .nii file name")
    if not path.parent.is_dir():
        raise UserInputError(f"{flag} {path}: folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise UserInputError(f"{flag} {path} already exists; pass --overwrite to replace it")


def _lesion_json(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name.removesuffix(".csv") + ".json")


def _check_branches_free(folder: Path | None, stems: list[str], overwrite: bool) -> None:
    """Refuse before predicting when --save-branches already holds a file of these studies."""
    if folder is None or overwrite or not folder.is_dir():
        return
    taken = next((p for stem in stems for p in folder.glob(f"{glob.escape(stem)}_*.nii.gz")), None)
    if taken is not None:
        raise UserInputError(f"--save-branches: {taken} already exists; pass --overwrite to replace it")


def _exists(path: Path) -> bool:
    """Path.exists(), but a name the file system refuses (too long) is "not there": writing it fails per study."""
    try:
        return path.exists()
    except OSError:
        return False


def dataset_studies(folder: Path) -> dict[str, Path | dict[str, Path]]:
    """case_id → study for a dataset folder: what its task's ``prediction_input`` gives (an AutoPET study
    folder, an MSD 4D image, or a ``{modality: file}`` mapping for nnU-Net's ``imagesTr/``), with the same
    case ids as the dataset builder (so `evaluate` matches predictions to ground truth)."""
    from ..data.builder import discover_studies
    from ..tasks import detect_task

    if not folder.is_dir():
        raise UserInputError(f"--input-dir {folder} is not a folder")
    found = detect_task(folder)
    if found is not None:
        task, root = found
        studies = discover_studies(task.name, root)
        return {s.case_id: task.prediction_input(s) for s in studies if not s.problem}
    raise UserInputError(
        f"--input-dir {folder}: no studies found; expected an AutoPET tree (<patient>/<study>/SUV.nii.gz), an "
        "MSD folder (dataset.json, imagesTr/) or an autoPET III/IV folder (imagesTr/<case>_0000.nii.gz)"
    )


def _write_branches(prediction, folder: Path, stem: str, overwrite: bool) -> None:
    from ..data.nifti_io import save_nifti

    folder.mkdir(parents=True, exist_ok=True)
    for name, image in prediction.branches.items():
        path = folder / f"{stem}_{name}.nii.gz"
        if path.exists() and not overwrite:
            raise UserInputError(f"--save-branches: {path} already exists; pass --overwrite to replace it")
        save_nifti(image, path)


def _lesions(prediction, pet_source, csv_path: Path, overwrite: bool) -> dict:
    import numpy as np

    from ..data.nifti_io import load_nifti
    from ..lesions import lesion_table, write_lesion_table

    pet = np.asanyarray(load_nifti(pet_source).dataobj, dtype=np.float32)
    mask = np.asanyarray(prediction.mask.dataobj)
    table = lesion_table(mask, pet, prediction.mask.affine)
    write_lesion_table(table, csv_path, _lesion_json(csv_path), overwrite=overwrite)
    return table.summary()


def run(args) -> int:
    from ..inference import load_model

    single = _check_sources(args)
    out, lesions, branches = _checked_outputs(args, single)
    settings = _settings(args)
    model = load_model(args.model, device=args.device)
    modalities = list(model.config.modalities)
    if lesions is not None and "pet" not in modalities:
        raise UserInputError(f"--lesions needs a PET model; this model reads {', '.join(modalities)}")
    if single:
        return _predict_one(args, model, settings, out, lesions, branches)
    return _predict_dataset(args, model, settings, branches)


def _check_sources(args) -> bool:
    """Exactly one input flag and the output flag it needs; True for one study (--input/--study)."""
    flags = (("--input", args.input), ("--study", args.study), ("--input-dir", args.input_dir))
    chosen = [flag for flag, value in flags if value]
    if len(chosen) != 1:
        raise UserInputError(f"give exactly one of --input, --study, --input-dir (got {', '.join(chosen) or 'none'})")
    single = not args.input_dir
    if single and not args.out:
        raise UserInputError("--out is required with --input/--study (the mask file to write)")
    if not single and not args.out_dir:
        raise UserInputError("--out-dir is required with --input-dir")
    if not single and args.lesions:
        raise UserInputError("--lesions is for one study; with --input-dir, run evaluate or predict per study")
    return single


def _checked_outputs(args, single: bool) -> tuple[Path | None, Path | None, Path | None]:
    """(--out, --lesions, --save-branches) as paths, refused before predicting where they cannot be written."""
    out = Path(args.out) if args.out else None
    lesions = Path(args.lesions) if args.lesions else None
    _check_output(out, args.overwrite, "--out")
    _check_output(lesions, args.overwrite, "--lesions")
    _check_output(_lesion_json(lesions) if lesions else None, args.overwrite, "--lesions (its JSON summary)")
    branches = Path(args.save_branches) if args.save_branches else None
    if single:
        _check_branches_free(branches, [out.name.split(".nii")[0]], args.overwrite)
    return out, lesions, branches


def _settings(args):
    from ..sliding_window import SlidingWindowSettings

    settings = SlidingWindowSettings(
        window=tuple(args.window) if args.window else None,
        overlap=args.overlap,
        window_batch=args.window_batch,
        workers=args.workers,
        blend=args.blend,
        precision=args.precision,
        device=args.device,
    )
    settings.check()
    return settings


def _predict_one(args, model, settings, out: Path, lesions: Path | None, branches: Path | None) -> int:
    """--input/--study: write the mask (and lesion table, branch outputs) and print a JSON summary."""
    from ..data.nifti_io import save_nifti
    from ..inference import predict_study, study_inputs

    modalities = list(model.config.modalities)
    inputs = _parse_inputs(args.input) if args.input else study_inputs(args.study, modalities)
    prediction = predict_study(model, inputs, settings, with_branches=branches is not None, progress=_progress_bar())
    save_nifti(prediction.mask, out)
    summary = {"mask": str(out), "seconds": {k: round(v, 2) for k, v in prediction.seconds.items()}}
    if prediction.classification is not None:
        summary["classification"] = prediction.classification
    if lesions is not None:
        summary["lesions"] = _lesions(prediction, inputs["pet"], lesions, args.overwrite)
    if branches is not None:
        _write_branches(prediction, branches, out.name.split(".nii")[0], args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def _predict_dataset(args, model, settings, branches: Path | None) -> int:
    """--input-dir: one mask per study in --out-dir; with --skip-bad, failing studies are listed instead of
    ending the run."""
    out_dir = Path(args.out_dir)
    studies = _dataset_to_predict(args, out_dir, branches)
    failures = _predict_studies(args, model, settings, studies, out_dir, branches)
    done = len(studies) - len(failures)
    print(f"wrote {done} of {len(studies)} masks to {out_dir}")
    for case_id, message in failures:
        print(f"failed: {case_id}: {message}", file=sys.stderr)
    return 1 if failures else 0


def _dataset_to_predict(args, out_dir: Path, branches: Path | None) -> dict[str, Path | dict[str, Path]]:
    """The studies of --input-dir, once --out-dir (created here) and --save-branches hold none of their outputs."""
    if not out_dir.parent.is_dir():
        raise UserInputError(f"--out-dir {out_dir}: folder {out_dir.parent} does not exist")
    studies = dataset_studies(Path(args.input_dir))
    existing = [case for case in studies if _exists(out_dir / f"{case}.nii.gz")]
    if existing and not args.overwrite:
        raise UserInputError(
            f"--out-dir {out_dir} already holds {len(existing)} of these predictions (e.g. {existing[0]}.nii.gz); "
            "pass --overwrite"
        )
    _check_branches_free(branches, list(studies), args.overwrite)
    out_dir.mkdir(exist_ok=True)
    return studies


def _predict_studies(
    args, model, settings, studies: dict[str, Path | dict[str, Path]], out_dir: Path, branches: Path | None
) -> list[tuple[str, str]]:
    """Predict and write every study; returns (case id, one-line reason) per study that failed under --skip-bad."""
    from tqdm.auto import tqdm

    from ..data.nifti_io import save_nifti
    from ..inference import predict_study, study_inputs

    modalities = list(model.config.modalities)
    failures = []
    for case_id, study in tqdm(studies.items(), desc="studies", unit="study", file=sys.stderr):
        try:
            inputs = study_inputs(study, modalities)
            prediction = predict_study(model, inputs, settings, with_branches=branches is not None, case_id=case_id)
            save_nifti(prediction.mask, out_dir / f"{case_id}.nii.gz")
            if branches is not None:
                _write_branches(prediction, branches, case_id, args.overwrite)
        except Exception as error:  # with --skip-bad one study's failure, even a bug, must not end the run
            if not args.skip_bad:
                raise
            failures.append((case_id, _failure_reason(case_id, error)))
    return failures


def _failure_reason(case_id: str, error: Exception) -> str:
    """The first line of a study's error; an internal error also prints its traceback to stderr."""
    if isinstance(error, UserInputError):
        return str(error).splitlines()[0]
    print(f"traceback of the internal error in {case_id}:\n{traceback.format_exc()}", file=sys.stderr)
    return f"internal error: {type(error).__name__}: {error}".splitlines()[0]


def _progress_bar():
    from tqdm.auto import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="windows", unit="window", file=sys.stderr, leave=False)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update
