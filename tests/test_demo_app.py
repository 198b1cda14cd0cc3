"""The Gradio demo, launched on a loopback port: through its API (gradio_client, one client = one
browser session) and in a real headless Chromium (Playwright), with a small model and phantoms made here.

The browser tests skip when Playwright or /usr/bin/chromium is missing. Set MIRROR_UNET_SCREENSHOT to
a path to keep the viewer screenshot there as well as under the test's tmp folder.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio", reason="the demo extra is not installed: pip install 'mirror-unet-hf[demo]'")

from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel
from mirror_unet_hf.cli import main
from mirror_unet_hf.data import make_phantoms
from mirror_unet_hf.inference import load_model, predict_study, study_inputs
from mirror_unet_hf.sliding_window import SlidingWindowSettings

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
UPLOAD_LIMIT_MB = 1
LESION_FRACTION = 0.001  # of the volume the small model marks as lesion (a random network marks about half)
# Limits of waits on events (a server starting, a session finishing, the page updating): generous, so that
# a loaded machine makes these tests slower but never fails them. No test asserts how long anything took.
WAIT_S = 300
WAIT_MS = WAIT_S * 1000


# --------------------------------------------------------------------------------------------- fixtures


def small_model(folder: Path, preset: str, study: dict) -> Path:
    """A random small model whose lesion logit is lowered until it marks 0.1 % of `study` (some tens of
    small lesions, fewer than the table lists) instead of half the volume."""
    torch.manual_seed(0)
    config = MirrorUNetConfig.from_preset(preset, channels=[4, 8, 16, 32, 64], patch_size=[32, 32, 32], norm="instance")
    model = MirrorUNetModel(config).eval()
    name = config.final_mask_branches[0]
    prediction = predict_study(
        model, study, SlidingWindowSettings(), with_branches=True
    )  # fp32, as the demo and the CLI
    probability = np.sort(np.asanyarray(prediction.branches[name].dataobj), axis=None)
    # cut in the widest gap between neighbouring values near the wanted fraction, so that float noise
    # between runs (other threads, other processes) cannot move a voxel across the cut
    low, high = (int(probability.size * (1.0 - f * LESION_FRACTION)) for f in (1.5, 0.5))
    gap = low + int(np.argmax(np.diff(probability[low:high])))
    cut = float(probability[gap] + probability[gap + 1]) / 2.0
    last_bias = [p for n, p in model.named_parameters() if n.startswith(f"branches.{name}.") and n.endswith(".bias")][
        -1
    ]
    with torch.no_grad():
        last_bias[1:] -= np.log(cut / (1.0 - cut))  # the output layer's bias: shifts the foreground logits only
    model.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def _private_temp_dir(tmp_path_factory):
    """gradio_client 2 leaves an empty ``<gettempdir()>/<40 hex>`` folder behind for every file it downloads,
    whatever ``download_files`` says: point this module's temporary files at a folder pytest cleans up."""
    with pytest.MonkeyPatch.context() as env:
        env.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tmp")))
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small autopet-v3 checkpoint and two phantom studies with lesions as the app's examples."""
    root = tmp_path_factory.mktemp("demo")
    dataset = make_phantoms("autopet", root / "phantoms", 3, seed=1, shape=(48, 48, 40))
    studies = [p.parent for p in sorted(dataset.rglob("SEG.nii.gz")) if np.asanyarray(nib.load(p).dataobj).any()]
    examples = {}
    for case_id, study in zip(("case_a", "case_b"), studies):
        examples[case_id] = root / "examples" / case_id
        shutil.copytree(study, examples[case_id])
    model = small_model(root / "model", "autopet-v3", study_inputs(examples["case_a"], ["ct", "pet"]))
    return SimpleNamespace(root=root, model=model, examples=examples)


@pytest.fixture(scope="module")
def app(files, tmp_path_factory):
    """The demo on a free loopback port (upload limit 1 MB), closed after the module."""
    from mirror_unet_hf.demo.app import build_demo, launch_demo

    temp_dir = tmp_path_factory.mktemp("gradio")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(temp_dir))
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        demo = build_demo(files.model, files.root / "examples", max_upload_mb=UPLOAD_LIMIT_MB)
        port = free_port()
        launch_demo(
            demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True
        )
        try:
            yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", demo=demo, temp_dir=temp_dir)
        finally:
            demo.close()


def client(app):
    from gradio_client import Client

    return Client(app.url, verbose=False, download_files=tempfile.mkdtemp(prefix="client-"))


class Outputs(SimpleNamespace):
    """The outputs of load_example / load_files / segment, by name."""


# (the State and the Segment button are not part of the API's outputs)
NAMES = (
    "status",
    "axial_slider",
    "coronal_slider",
    "sagittal_slider",
    "image",
    "overlay",
    "axial",
    "coronal",
    "sagittal",
    "mip_coronal",
    "mip_sagittal",
    "legend",
    "table",
    "totals",
    "go_to",
    "timing",
    "classification",
    "mask",
    "csv",
)
RENDERED = ("axial", "coronal", "sagittal", "mip_coronal", "mip_sagittal", "legend")


def named(values, names=NAMES) -> Outputs:
    assert len(values) == len(names)
    return Outputs(**dict(zip(names, values)))


def value(update):
    return update["value"] if isinstance(update, dict) and "__type__" in update else update


DISPLAY = ("ct", "final_mask", "Soft tissue", 8, 1.0, False)  # image, overlay, CT window, SUV max, opacity, crosshair


def segmented(session, case_id="case_a") -> Outputs:
    loaded = named(session.predict(case_id, api_name="/load_example"))
    axial, coronal, sagittal = (value(loaded.axial_slider), value(loaded.coronal_slider), value(loaded.sagittal_slider))
    return named(
        session.predict(
            axial, coronal, sagittal, "fusion", value(loaded.overlay), "Soft tissue", 8, 0.5, True, api_name="/segment"
        )
    )


@pytest.fixture(scope="module")
def session_a(app):
    """One session that has loaded and segmented case_a."""
    session = client(app)
    return SimpleNamespace(client=session, out=segmented(session))


@pytest.fixture(scope="module")
def cli_run(files, tmp_path_factory):
    """`mirror-unet predict --lesions` on case_a: the reference the app must agree with."""
    out = tmp_path_factory.mktemp("cli")
    args = [
        "predict",
        "--model",
        str(files.model),
        "--study",
        str(files.examples["case_a"]),
        "--out",
        str(out / "mask.nii.gz"),
        "--lesions",
        str(out / "lesions.csv"),
        "--precision",
        "fp32",
    ]  # the demo runs fp32
    assert main(args) == 0
    return out


def ras(path) -> np.ndarray:
    return np.asanyarray(nib.as_closest_canonical(nib.load(path)).dataobj)


# ------------------------------------------------------------------------------------------------- API


def test_the_small_model_marks_a_few_lesions_not_half_the_body(cli_run):
    mask = np.asanyarray(nib.load(cli_run / "mask.nii.gz").dataobj)
    assert 0.0005 < (mask > 0).mean() < 0.01  # otherwise the overlay and lesion tests below prove little
    assert len(cli_run.joinpath("lesions.csv").read_text().splitlines()) > 1


def test_loading_the_example_shows_the_study_before_segmenting(app, files):
    loaded = named(client(app).predict("case_a", api_name="/load_example"))
    assert "case_a" in loaded.status and "48 × 48 × 40 voxels" in loaded.status and "with ground truth" in loaded.status
    assert value(loaded.axial_slider) == 21 and loaded.axial_slider["maximum"] == 40
    assert [key for _, key in loaded.image["choices"]] == ["ct", "pet", "fusion"]
    assert [key for _, key in loaded.overlay["choices"]] == ["ground_truth", "none"]
    assert Image.open(loaded.axial).format == "PNG"
    assert loaded.table["data"] == [] and loaded.mask["value"] is None and loaded.mask["interactive"] is False


def test_segmenting_fills_views_layers_table_timing_and_downloads(session_a):
    out = session_a.out
    assert [key for _, key in out.image["choices"]] == ["ct", "pet", "fusion", "rec:ct", "rec:bottleneck_decoder"]
    assert [title for title, _ in out.image["choices"]][3:] == [
        "CT branch: CT reconstruction",
        "Bottleneck decoder: PET reconstruction",
    ]
    assert [key for _, key in out.overlay["choices"]] == ["final_mask", "ground_truth", "compare", "prob:pet", "none"]
    assert out.overlay["value"] == "final_mask"
    assert out.timing.startswith("Segmented in **") and out.timing.endswith(" s**")
    assert set(out.classification["confidences"][0]) == {"label", "confidence"}
    assert {c["label"] for c in out.classification["confidences"]} == {"lesion present", "no lesion"}
    assert Path(out.mask["value"]).name == "mask.nii.gz" and Path(out.csv["value"]).name == "lesions.csv"


def test_slice_image_has_the_physical_aspect_and_png_pixels(session_a, files):
    zooms = nib.load(files.examples["case_a"] / "SUV.nii.gz").header.get_zooms()[:3]  # 2 x 2 x 3 mm
    extents = [n * z for n, z in zip((48, 48, 40), zooms)]
    scale = 512 / max(extents)
    images = session_a.client.predict(10, 20, 30, *DISPLAY, api_name="/render")
    sizes = {name: Image.open(path).size for name, path in zip(RENDERED[:5], images[:5])}
    assert sizes["axial"] == (round(extents[0] * scale), round(extents[1] * scale))
    assert sizes["coronal"] == sizes["mip_coronal"] == (round(extents[0] * scale), round(extents[2] * scale))
    assert sizes["sagittal"] == (round(extents[1] * scale), round(extents[2] * scale))
    assert all(Image.open(images[i]).format == "PNG" for i in range(5))


def test_overlay_pixels_lie_exactly_where_the_downloaded_mask_is(session_a):
    from mirror_unet_hf.viewer import LABEL_COLOURS

    mask = ras(session_a.out.mask["value"])  # RAS with nibabel's own reorientation
    z = int(np.argmax((mask > 0).sum(axis=(0, 1))))  # the axial slice with most lesion
    axial = session_a.client.predict(z + 1, 24, 24, *DISPLAY, api_name="/render")[0]
    image = np.asarray(Image.open(axial).convert("RGB"))
    drawn = np.all(image == LABEL_COLOURS[1], axis=-1)
    # radiological axial view: anterior at the top, patient's right on the left
    expected = mask[:, :, z].T[::-1, ::-1] > 0
    expected = np.asarray(Image.fromarray(expected).resize(image.shape[1::-1], Image.NEAREST))
    assert expected.sum() > 0
    assert (drawn & expected).sum() / (drawn | expected).sum() > 0.97


def test_moving_a_slider_changes_only_what_that_plane_shows(session_a):
    first = session_a.client.predict(10, 20, 30, *DISPLAY, api_name="/render")
    moved = session_a.client.predict(11, 20, 30, *DISPLAY, api_name="/render")
    pixels = [np.asarray(Image.open(path)) for path in first[:3]], [np.asarray(Image.open(path)) for path in moved[:3]]
    assert not np.array_equal(pixels[0][0], pixels[1][0])  # axial moved
    assert np.array_equal(pixels[0][1], pixels[1][1]) and np.array_equal(
        pixels[0][2], pixels[1][2]
    )  # no crosshair: unchanged


def test_slider_values_outside_the_volume_are_refused(session_a):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="greater than maximum value 40"):
        session_a.client.predict(41, 20, 30, *DISPLAY, api_name="/render")


def test_the_lesion_table_matches_mirror_unet_predict(session_a, cli_run):
    rows = list(csv.DictReader(io.StringIO(cli_run.joinpath("lesions.csv").read_text())))
    table = session_a.out.table
    assert table["headers"] == ["Lesion", "Volume (ml)", "SUVmax", "SUVmean", "TLG", "Centroid (mm)"]
    assert len(table["data"]) == len(rows)
    for shown, row in zip(table["data"], rows):
        assert shown[0] == int(row["lesion_id"])
        assert shown[1:5] == [
            pytest.approx(round(float(row[k]), 2)) for k in ("volume_ml", "suv_max", "suv_mean", "tlg")
        ]
    summary = (
        f"{len(rows)} lesion{'s' if len(rows) != 1 else ''} · MTV {sum(float(r['volume_ml']) for r in rows):.2f} ml"
    )
    assert summary in session_a.out.totals


def test_downloads_equal_the_cli_outputs(session_a, cli_run):
    assert Path(session_a.out.csv["value"]).read_bytes() == cli_run.joinpath("lesions.csv").read_bytes()
    np.testing.assert_array_equal(ras(session_a.out.mask["value"]), ras(cli_run / "mask.nii.gz"))
    assert nib.load(session_a.out.mask["value"]).get_data_dtype() == np.uint8


def test_going_to_a_lesion_moves_the_three_sliders_into_it(session_a):
    lesion_id = len(session_a.out.table["data"])  # the smallest one, to be sure the position is not a coincidence
    moved = named(
        session_a.client.predict(lesion_id, *DISPLAY, api_name="/go_to_lesion"),
        ("axial_slider", "coronal_slider", "sagittal_slider", *RENDERED, "go_to"),
    )
    mask = ras(session_a.out.mask["value"])
    x, y, z = moved.sagittal_slider - 1, moved.coronal_slider - 1, moved.axial_slider - 1
    assert mask[x, y, z] > 0
    assert moved.go_to == lesion_id


def test_a_missing_lesion_id_is_a_readable_error(session_a):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Value: 999 is not in the list of choices: \\[1, 2, "):
        session_a.client.predict(999, *DISPLAY, api_name="/go_to_lesion")


def test_segment_before_loading_says_what_to_do(app):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="no study loaded yet: load the example or upload"):
        client(app).predict(1, 1, 1, None, None, "Soft tissue", 8, 0.5, True, api_name="/segment")


def test_uploaded_files_give_the_same_result_as_the_example(app, files, session_a):
    from gradio_client import handle_file

    session = client(app)
    study = files.examples["case_a"]
    loaded = named(
        session.predict(
            handle_file(str(study / "CTres.nii.gz")),
            handle_file(str(study / "SUV.nii.gz")),
            handle_file(str(study / "SEG.nii.gz")),
            api_name="/load_files",
        )
    )
    assert loaded.status.startswith("**SUV**") and "with ground truth" in loaded.status
    out = named(session.predict(21, 24, 24, "fusion", "ground_truth", "Soft tissue", 8, 0.5, True, api_name="/segment"))
    assert out.table["data"] == session_a.out.table["data"]


def test_two_sessions_at_once_see_only_their_own_study(app, files):
    sessions = {case: client(app) for case in ("case_a", "case_b")}
    results, errors = {}, []

    def run(case):
        try:
            results[case] = segmented(sessions[case], case)
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(case,)) for case in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT_S)
    assert not any(thread.is_alive() for thread in threads), f"a session did not finish in {WAIT_S} s"
    assert not errors, errors
    assert set(results) == set(sessions)
    model = load_model(files.model)
    for case, out in results.items():
        assert f"**{case}**" in out.status
        expected = predict_study(model, study_inputs(files.examples[case], ["ct", "pet"]), SlidingWindowSettings()).mask
        np.testing.assert_array_equal(ras(out.mask["value"]), np.asanyarray(nib.as_closest_canonical(expected).dataobj))
    assert results["case_a"].table["data"] != results["case_b"].table["data"]
    # later renders still read each session's own study
    images = {
        case: sessions[case].predict(20, 24, 24, "pet", "none", "Soft tissue", 8, 0.5, False, api_name="/render")[0]
        for case in sessions
    }
    assert not np.array_equal(np.asarray(Image.open(images["case_a"])), np.asarray(Image.open(images["case_b"])))


# -------------------------------------------------------------------------------------- bad uploads


def upload(session, ct: Path, pet: Path):
    from gradio_client import handle_file

    return session.predict(handle_file(str(ct)), handle_file(str(pet)), None, api_name="/load_files")


def nifti_file(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture(scope="module")
def bad_files(files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    pet = nib.load(files.examples["case_a"] / "SUV.nii.gz")
    ct = nib.load(files.examples["case_a"] / "CTres.nii.gz")
    far = ct.affine.copy()
    far[0, 3] += 10_000.0  # ten metres to the side
    (folder / "notes.txt").write_text("not an image")
    (folder / "fake.nii.gz").write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    (folder / "big.nii.gz").write_bytes(os.urandom(int(1.5 * 2**20)))
    return SimpleNamespace(
        folder=folder,
        pet=files.examples["case_a"] / "SUV.nii.gz",
        text=folder / "notes.txt",
        fake=folder / "fake.nii.gz",
        flat=nifti_file(folder / "flat.nii.gz", np.zeros((48, 48), np.float32), pet.affine),
        far=nifti_file(folder / "far_ct.nii.gz", np.asanyarray(ct.dataobj), far),
        big=folder / "big.nii.gz",
    )


@pytest.mark.parametrize(
    "which, message",
    [
        ("text", "Invalid file type. Please upload a file that is one of these formats: ['.nii', '.nii.gz']"),
        ("fake", "file 'fake.nii.gz': not a readable NIfTI file"),
        ("flat", "file 'flat.nii.gz': is 2D with shape (48, 48); expected a 3D volume"),
        ("far", "file 'far_ct.nii.gz' (CT) does not overlap the PET (SUV) image in space"),
    ],
    ids=["not-nifti-type", "not-nifti-content", "2d", "no-overlap"],
)
def test_a_bad_upload_gets_a_readable_message_and_the_session_goes_on(app, bad_files, which, message):
    from gradio_client.exceptions import AppError

    session = client(app)
    with pytest.raises(AppError) as error:
        upload(session, getattr(bad_files, which), bad_files.pet)
    assert message in str(error.value)
    assert "Traceback" not in str(error.value)
    loaded = named(session.predict("case_b", api_name="/load_example"))  # the same session still works
    assert "case_b" in loaded.status


def test_an_upload_over_the_limit_is_refused_by_client_and_server(app, bad_files):
    import httpx

    with pytest.raises(ValueError, match=f"exceeds the maximum file size of {UPLOAD_LIMIT_MB * 2**20} bytes"):
        upload(client(app), bad_files.big, bad_files.pet)
    with bad_files.big.open("rb") as stream:  # straight to the server, past the client's own check
        answer = httpx.post(app.url + "gradio_api/upload", files={"files": ("big.nii.gz", stream)}, timeout=WAIT_S)
    assert answer.status_code == 413
    assert "big.nii.gz" not in [p.name for p in app.temp_dir.rglob("*")]


def test_the_app_keeps_serving_other_sessions_after_bad_uploads(app, bad_files):
    from gradio_client.exceptions import AppError

    for which in ("fake", "flat", "far"):
        with pytest.raises(AppError):
            upload(client(app), getattr(bad_files, which), bad_files.pet)
    assert "case_a" in named(client(app).predict("case_a", api_name="/load_example")).status


# -------------------------------------------------------------------------------------- brain model


@pytest.fixture(scope="module")
def brain_app(tmp_path_factory):
    """A brats-v1 demo (FLAIR + T1Gd) with one MSD phantom split into per-channel files."""
    from mirror_unet_hf.demo.app import build_demo, launch_demo

    root = tmp_path_factory.mktemp("brain")
    dataset = make_phantoms("brain_tumour", root / "phantoms", 1, seed=3, shape=(32, 40, 32))
    image = min((dataset / "imagesTr").glob("*.nii.gz"))
    case = root / "examples" / "brain_case"
    case.mkdir(parents=True)
    for name, channel in study_inputs(image, ["flair", "t1gd"]).items():
        nib.save(channel, case / f"{name}.nii.gz")
    shutil.copy(dataset / "labelsTr" / image.name, case / "label.nii.gz")
    model = small_model(root / "model", "brats-v1", study_inputs(case, ["flair", "t1gd"]))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        demo = build_demo(model, root / "examples")
        port = free_port()
        launch_demo(
            demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True
        )
        try:
            yield SimpleNamespace(url=f"http://127.0.0.1:{port}/")
        finally:
            demo.close()


def test_a_brain_model_shows_mri_channels_without_suv_or_mip(brain_app):
    session = client(brain_app)
    loaded = named(session.predict("brain_case", api_name="/load_example"))
    assert [key for _, key in loaded.image["choices"]] == ["flair", "t1gd"]
    assert loaded.table["headers"] == ["Lesion", "Volume (ml)", "Centroid (mm)"]
    out = named(session.predict(16, 20, 16, "t1gd", "ground_truth", "Soft tissue", 8, 0.5, True, api_name="/segment"))
    overlays = {key: title for title, key in out.overlay["choices"]}
    assert overlays["prob:flair"] == "FLAIR branch: edema probability"
    assert overlays["prob:t1gd"] == "T1Gd branch: non-enhancing tumour + enhancing tumour probability"
    assert out.mip_coronal == {"__type__": "update"} and out.mip_sagittal == {"__type__": "update"}  # no MIP drawn
    assert "SUV" not in out.totals and "connected" in out.totals
    legend = out.legend
    assert "Final mask: edema" in legend and "Final mask: non-enhancing tumour + enhancing tumour" in legend


# ------------------------------------------------------------------------------ launch & bundled files


def test_resolve_model_prefers_the_flag_then_the_environment_then_the_bundled_checkpoint(tmp_path, monkeypatch, files):
    from mirror_unet_hf.demo.app import resolve_model
    from mirror_unet_hf.errors import UserInputError

    monkeypatch.delenv("MIRROR_UNET_MODEL", raising=False)
    assert resolve_model(None, files.model) == str(files.model)
    monkeypatch.setenv("MIRROR_UNET_MODEL", "org/name")
    assert resolve_model(None, files.model) == "org/name"
    assert resolve_model("other/model", files.model) == "other/model"
    monkeypatch.delenv("MIRROR_UNET_MODEL")
    with pytest.raises(UserInputError, match="no model to serve: pass --model PATH_OR_HUB_ID, set MIRROR_UNET_MODEL"):
        resolve_model(None, tmp_path / "no-checkpoint")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "70000"], "--port 70000 is not a port number"),
        (["--max-upload-mb", "0"], "--max-upload-mb 0 must be positive"),
    ],
)
def test_cli_demo_refuses_bad_flags_in_one_line(args, message, capsys):
    assert main(["demo", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mirror-unet demo: error: ") and message in err and err.count("\n") == 1


def test_cli_demo_with_a_folder_that_is_no_checkpoint_is_a_user_error(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path)]) == 2
    assert f"model folder {tmp_path} has no config.json" in capsys.readouterr().err


@pytest.mark.slow  # a server process: imports torch and Gradio, loads the model
def test_cli_demo_serves_the_app_on_loopback_until_stopped(files, tmp_path):
    import httpx

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    env.pop("MIRROR_UNET_MODEL", None)
    command = [
        sys.executable,
        "-m",
        "mirror_unet_hf.cli",
        "demo",
        "--model",
        str(files.model),
        "--examples",
        str(files.root / "examples"),
        "--port",
        str(port),
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + WAIT_S
        page = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert page is not None, (
            f"the demo did not start: {server.stdout.read() if server.poll() is not None else 'timeout'}"
        )
        assert page.status_code == 200
        config = httpx.get(f"http://127.0.0.1:{port}/config", timeout=WAIT_S).json()
        assert config["title"] == "Mirror U-Net demo" and config["max_file_size"] == 512 * 2**20
    finally:
        server.terminate()
        try:
            server.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_the_space_app_file_exposes_build_demo_and_bundled_paths():
    spec = importlib.util.spec_from_file_location("space_app", REPO / "demo" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # importing must not launch anything
    from mirror_unet_hf.demo.app import build_demo

    assert module.build_demo is build_demo
    assert module.CHECKPOINT == REPO / "demo" / "checkpoint" and module.EXAMPLES == REPO / "demo" / "examples"


@pytest.mark.skipif(
    not (REPO / "demo" / "checkpoint" / "config.json").is_file(), reason="no committed demo/checkpoint yet"
)
def test_the_committed_checkpoint_and_examples_build_the_demo():
    from mirror_unet_hf.demo.app import build_demo
    from mirror_unet_hf.demo.handlers import find_examples

    demo = build_demo(REPO / "demo" / "checkpoint", REPO / "demo" / "examples")
    model = load_model(REPO / "demo" / "checkpoint")
    assert find_examples(REPO / "demo" / "examples", list(model.config.modalities)), (
        "no usable example in demo/examples"
    )
    assert "load_example" in {d.api_name for d in demo.fns.values()}


# ---------------------------------------------------------------------------------------- the browser


def browser():
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install playwright"
    )
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    return playwright.sync_playwright


@pytest.fixture(scope="module")
def page_factory(app):
    sync_playwright = browser()
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        pages = []

        def new_page():
            page = chromium.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(app.url)
            page.wait_for_selector("#segment", timeout=WAIT_MS)
            pages.append(page)
            return page

        try:
            yield new_page
        finally:
            chromium.close()


def image_source(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} img").first.get_attribute("src") or ""


def rendered_size(page, elem_id: str) -> int:
    return page.eval_on_selector(f"#{elem_id} img", "img => img.complete ? img.naturalWidth : 0")


@pytest.mark.slow
def test_in_a_browser_example_segment_slider_lesion_and_screenshot(page_factory, app, tmp_path):
    page = page_factory()
    page.get_by_role("button", name="Load example").click()
    page.wait_for_function("document.querySelector('#view-axial img') !== null", timeout=WAIT_MS)
    page.get_by_role("button", name="Segment").click()
    page.wait_for_selector("#lesions [data-testid='cell-0-0']", timeout=WAIT_MS)
    page.wait_for_function("document.querySelector('#timing')?.innerText.startsWith('Segmented in')", timeout=WAIT_MS)
    for elem_id in ("view-axial", "view-coronal", "view-sagittal", "mip-coronal", "mip-sagittal"):
        page.wait_for_function(f"document.querySelector('#{elem_id} img')?.naturalWidth > 0", timeout=WAIT_MS)
    rows = page.locator("#lesions [role='row'][data-index]").count()
    assert rows >= 1
    assert "lesion" in page.locator("#totals").inner_text()

    # move the axial slider one step with the keyboard: its number and the axial image change
    before = image_source(page, "view-axial")
    number = page.locator("#slider-axial input[type='number']")
    start = int(number.input_value())
    page.locator("#slider-axial input[type='range']").focus()
    page.keyboard.press("ArrowUp")
    page.wait_for_function(
        f"document.querySelector('#slider-axial input[type=number]').value == '{start + 1}'", timeout=WAIT_MS
    )
    page.wait_for_function(
        f"document.querySelector('#view-axial img')?.getAttribute('src') !== {before!r}", timeout=WAIT_MS
    )

    # select the third lesion row: the three sliders move to that lesion (where the API's go_to_lesion puts them)
    assert rows >= 3
    reference = client(app)
    segmented(reference)
    expected = [int(v) for v in reference.predict(3, *DISPLAY, api_name="/go_to_lesion")[:3]]
    page.locator("#lesions [data-testid='cell-2-1']").click()
    page.wait_for_function(
        "document.querySelector('#go-to-lesion input')?.value?.startsWith('Lesion 3:')", timeout=WAIT_MS
    )
    planes = ("axial", "coronal", "sagittal")
    at_lesion = " && ".join(
        f"document.querySelector('#slider-{plane} input[type=number]')?.value == '{value}'"
        for plane, value in zip(planes, expected)
    )
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with contextlib.suppress(PlaywrightTimeout):  # the sliders may follow the dropdown a moment later
        page.wait_for_function(at_lesion, timeout=WAIT_MS)
    positions = [int(page.locator(f"#slider-{plane} input[type='number']").input_value()) for plane in planes]
    assert positions == expected

    shot = tmp_path / "demo_screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] >= 1600
    if os.environ.get("MIRROR_UNET_SCREENSHOT"):
        shutil.copy(shot, os.environ["MIRROR_UNET_SCREENSHOT"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "which, message",
    [("fake", "not a readable NIfTI file"), ("big", "exceed the maximum allowed size of 1.0 Mb")],
    ids=["not-nifti", "over-limit"],
)
def test_in_a_browser_a_bad_upload_shows_a_message_in_the_page(page_factory, bad_files, which, message):
    page = page_factory()
    page.get_by_text("Upload a study (NIfTI)").click()
    page.locator("#upload-ct input[type='file']").set_input_files(str(getattr(bad_files, which)))
    page.locator("#upload-pet input[type='file']").set_input_files(str(bad_files.pet))
    if which != "big":
        page.wait_for_function(
            "document.querySelector('#upload-pet')?.innerText.includes('SUV.nii.gz')", timeout=WAIT_MS
        )
        page.get_by_role("button", name="Load uploaded files").click()
    page.get_by_text(message).first.wait_for(timeout=WAIT_MS)
    page.get_by_role("button", name="Load example").click()  # the page keeps working
    page.wait_for_function("document.querySelector('#status')?.innerText.includes('case_a')", timeout=WAIT_MS)
