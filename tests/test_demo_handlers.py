"""The demo's handlers without Gradio: the bundled checkpoint (demo/checkpoint) segments the bundled
examples (demo/examples) through `DemoHandlers`, and loading, slider moves, window presets, lesion-table
clicks, downloads, bad uploads and the sessions' folders are checked on the plain values they return."""

from __future__ import annotations

import gc
import gzip
import os
import re
import subprocess
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mirror_unet_hf import viewer
from mirror_unet_hf.demo import session as sessions
from mirror_unet_hf.demo.handlers import (
    Controls,
    DemoHandlers,
    find_examples,
    lesion_of_row,
)
from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.inference import load_model, predict_study, study_inputs

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "demo" / "checkpoint"
EXAMPLES = REPO / "demo" / "examples"
SHAPE = (96, 96, 80)  # the bundled examples' grid (x, y, z)

pytestmark = pytest.mark.skipif(not (CHECKPOINT / "config.json").is_file(), reason="no committed demo/checkpoint")


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def handlers(tmp_path_factory) -> DemoHandlers:
    model = load_model(CHECKPOINT)
    examples = find_examples(EXAMPLES, list(model.config.modalities))
    return DemoHandlers(model, examples, tmp_path_factory.mktemp("sessions"))


@pytest.fixture(scope="module")
def case_ids(handlers) -> list[str]:
    assert len(handlers.examples) == 2, handlers.examples
    return list(handlers.examples)


@pytest.fixture(scope="module")
def done(handlers, case_ids) -> SimpleNamespace:
    """One session that loaded the first example and segmented it (with the progress reports)."""
    loaded = handlers.load_example(None, case_ids[0])
    reports = []

    def progress(value, desc=None, unit=None):
        reports.append((value, desc, unit))

    segmented = handlers.segment(
        loaded.session, loaded.slider_values.values(), Controls("fusion", "ground_truth"), progress
    )
    return SimpleNamespace(
        handlers=handlers, loaded=loaded, segmented=segmented, session=segmented.session, reports=reports
    )


# ---------------------------------------------------------------------------------------- loading


def test_loading_an_example_opens_a_session_with_the_study_centred(done, handlers, case_ids):
    view = done.loaded
    assert isinstance(view.session, sessions.Session) and view.session.workdir.parent == handlers.sessions_root
    assert view.session.workdir.is_dir()
    assert view.status == f"**{case_ids[0]}** · 96 × 96 × 80 voxels · 2 × 2 × 3 mm · with ground truth"
    assert view.slices == {"axial": 80, "coronal": 96, "sagittal": 96}
    assert view.slider_values == {"axial": 41, "coronal": 49, "sagittal": 49}
    assert (view.display.image, view.display.overlay) == ("fusion", "ground_truth")
    assert [key for _, key in view.image_choices] == ["ct", "pet", "fusion"]
    assert [key for _, key in view.overlay_choices] == ["ground_truth", "none"]
    assert not view.segmented and view.rows == [] and view.lesion_choices == [] and view.timing == ""
    assert view.columns == viewer.PET_LESION_COLUMNS and view.totals == "No segmentation yet: press **Segment**."
    assert set(view.rendered.mips) == {"coronal", "sagittal"} and "Ground truth: lesion" in view.rendered.legend


def test_an_unknown_example_and_segmenting_before_loading_are_user_errors(handlers):
    with pytest.raises(UserInputError, match="example 'nope' does not exist; choose one of: PETCT_"):
        handlers.load_example(None, "nope")
    with pytest.raises(UserInputError, match="no study loaded yet: load the example or upload"):
        handlers.segment(None, (1, 1, 1), Controls())
    with pytest.raises(UserInputError, match="no study loaded yet"):
        handlers.render(None, (1, 1, 1), Controls("pet"))


# --------------------------------------------------------------------------------------- segmenting


def test_segmenting_the_bundled_example_gives_a_mask_and_a_lesion_table(done, handlers, case_ids):
    view = done.segmented
    assert view.session is done.loaded.session and view.segmented
    assert view.mask_file == view.session.workdir / "mask.nii.gz" and view.mask_file.is_file()
    inputs = study_inputs(EXAMPLES / case_ids[0], handlers.modalities)
    expected = predict_study(handlers.model, inputs, handlers.settings)
    mask = np.asanyarray(nib.load(view.mask_file).dataobj)
    np.testing.assert_array_equal(mask, np.asanyarray(expected.mask.dataobj))
    assert mask.any()  # the bundled checkpoint finds the example's lesions

    table = view.session.table
    assert table.lesion_count >= 1 and len(view.rows) == table.lesion_count
    assert [row[0] for row in view.rows] == list(range(1, table.lesion_count + 1))
    assert view.columns == viewer.PET_LESION_COLUMNS and all(len(row) == 6 for row in view.rows)
    csv_lines = view.table_file.read_text().splitlines()
    assert csv_lines[0].startswith("lesion_id,") and len(csv_lines) == table.lesion_count + 1
    noun = "lesion" if table.lesion_count == 1 else "lesions"
    assert view.totals.startswith(f"**Study:** {table.lesion_count} {noun} · MTV ")
    assert [lesion_id for _, lesion_id in view.lesion_choices] == [row[0] for row in view.rows]


def test_segmenting_shows_the_final_mask_and_every_branch_and_reports_progress(done):
    view = done.segmented
    assert (view.display.image, view.display.overlay) == ("fusion", "final_mask")  # the image shown is kept
    assert [key for _, key in view.image_choices] == ["ct", "pet", "fusion", "rec:ct", "rec:bottleneck_decoder"]
    assert [key for _, key in view.overlay_choices] == ["final_mask", "ground_truth", "compare", "prob:pet", "none"]
    assert re.fullmatch(r"Segmented in \*\*\d+\.\d s\*\*", view.timing)
    assert set(view.classification) == {"lesion present", "no lesion"}
    assert view.classification["lesion present"] + view.classification["no lesion"] == pytest.approx(1.0)
    assert done.reports[0] == (0.0, "Preparing the study", None)
    assert done.reports[-1] == (1.0, "Measuring lesions", None)
    windows = done.reports[1:-1]
    assert windows and all(desc == "Sliding window" and unit == "windows" for _, desc, unit in windows)
    assert windows[-1][0][0] == windows[-1][0][1]  # (done, total): all windows done


# ---------------------------------------------------------------------------------- slider & window


def test_a_slider_move_redraws_the_views_at_the_new_slice(done):
    study, controls = done.session.study, Controls("pet", "final_mask", crosshair=False)
    a, b = (done.handlers.render(done.session, (axial, 49, 49), controls) for axial in (30, 50))
    for plane in viewer.PLANES:
        width, height = viewer.image_size(study, plane)
        assert pixels(a.views[plane]).shape == (height, width, 3)
    assert not np.array_equal(pixels(a.views["axial"]), pixels(b.views["axial"]))  # the axial slice moved
    for plane in ("coronal", "sagittal"):  # no crosshair: the other views stay as they were
        assert np.array_equal(pixels(a.views[plane]), pixels(b.views[plane]))
    assert pixels(a.mips["coronal"]).shape[:2] == viewer.image_size(study, "coronal")[::-1]


def test_a_slider_outside_the_volume_is_a_user_error(done):
    with pytest.raises(UserInputError, match=r"axial slice 81 is outside 1\.\.80"):
        done.handlers.render(done.session, (81, 1, 1), Controls("pet"))
    with pytest.raises(UserInputError, match=r"sagittal slice None is outside 1\.\.96"):
        done.handlers.render(done.session, (1, 1, None), Controls("pet"))


def test_window_presets_change_the_ct_but_not_the_pet(done):
    def axial(image, window):
        rendered = done.handlers.render(done.session, (40, 49, 49), Controls(image, "none", window, crosshair=False))
        return pixels(rendered.views["axial"])

    assert not np.array_equal(axial("ct", "Lung"), axial("ct", "Bone"))
    assert np.array_equal(axial("ct", None), axial("ct", viewer.DEFAULT_CT_WINDOW))  # no choice yet: the default
    assert np.array_equal(axial("pet", "Lung"), axial("pet", "Bone"))
    with pytest.raises(UserInputError, match="CT window 'Brain' is unknown; expected one of: Soft tissue, Lung, Bone"):
        axial("ct", "Brain")


# ------------------------------------------------------------------------------------------ lesions


def test_a_lesion_table_click_moves_the_slices_into_that_lesion(done):
    rows = done.segmented.rows
    row = rows[-1]  # the smallest lesion: its position is no coincidence
    move = done.handlers.select_row(done.session, [len(rows) - 1, 1], row, Controls("pet", "final_mask"))
    assert move.lesion_id == row[0]
    x, y, z = move.position
    assert move.slider_values == {"axial": z + 1, "coronal": y + 1, "sagittal": x + 1}
    # the position lies in that lesion: the 18-connected component of the saved mask with its voxel count
    study = done.session.study
    mask = np.asanyarray(nib.load(done.segmented.mask_file).dataobj) > 0
    components, _ = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 2))
    to_reference = np.linalg.inv(study.reference_grid.affine) @ study.affine
    voxel = tuple(int(v) for v in np.rint(nib.affines.apply_affine(to_reference, move.position)))
    lesion = next(lesion for lesion in done.session.table.lesions if lesion.lesion_id == row[0])
    assert components[voxel] > 0 and (components == components[voxel]).sum() == lesion.voxel_count
    assert set(move.rendered.views) == set(viewer.PLANES)


def test_a_row_without_values_goes_to_the_lesion_of_its_number(done):
    assert lesion_of_row(0, None) == 1 and lesion_of_row([2, 3], []) == 3 and lesion_of_row((4, 0), [7, 1.5]) == 7
    by_row = done.handlers.select_row(done.session, 0, None, Controls("pet"))
    by_list = done.handlers.go_to_lesion(done.session, 1, Controls("pet"))
    assert by_row.lesion_id == by_list.lesion_id == 1 and by_row.position == by_list.position


def test_going_to_a_missing_lesion_or_before_segmenting_is_a_user_error(done, handlers, case_ids):
    count = done.session.table.lesion_count
    with pytest.raises(UserInputError, match=f"lesion 999 does not exist; this study has {count}"):
        handlers.go_to_lesion(done.session, 999, Controls("pet"))
    fresh = handlers.load_example(None, case_ids[1]).session
    with pytest.raises(UserInputError, match="segment the study first: the lesions come from the final mask"):
        handlers.go_to_lesion(fresh, 1, Controls("pet"))
    fresh.close()


# ------------------------------------------------------------------------------------------ uploads


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, case_ids):
    folder = tmp_path_factory.mktemp("bad")
    study = EXAMPLES / case_ids[0]
    ct = nib.load(study / "CTres.nii.gz")
    far = ct.affine.copy()
    far[0, 3] += 10_000.0  # ten metres to the side
    (folder / "fake.nii.gz").write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    (folder / "big.nii.gz").write_bytes(os.urandom(2**20))
    nib.save(nib.Nifti1Image(np.zeros(SHAPE[:2], np.float32), ct.affine), folder / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.asanyarray(ct.dataobj), far), folder / "far_ct.nii.gz")
    return SimpleNamespace(folder=folder, ct=study / "CTres.nii.gz", pet=study / "SUV.nii.gz", seg=study / "SEG.nii.gz")


@pytest.mark.parametrize(
    "ct, pet, message",
    [
        ("fake.nii.gz", "pet", "file 'fake.nii.gz': not a readable NIfTI file"),
        ("flat.nii.gz", "pet", "file 'flat.nii.gz': is 2D with shape (96, 96); expected a 3D volume"),
        ("far_ct.nii.gz", "pet", "file 'far_ct.nii.gz' (CT) does not overlap the PET (SUV) image in space"),
        ("ct", None, "upload the PET (SUV) file first (this model reads CT, PET (SUV))"),
        (None, None, "upload the CT and PET (SUV) files first"),
    ],
    ids=["not-nifti", "2d", "no-overlap", "no-pet", "nothing"],
)
def test_a_bad_upload_gives_a_clear_error_and_keeps_the_session_study(handlers, case_ids, bad_files, ct, pet, message):
    def path(name):
        return None if name is None else str(getattr(bad_files, name, None) or bad_files.folder / name)

    session = handlers.load_example(None, case_ids[1]).session
    study = session.study
    with pytest.raises(UserInputError) as error:
        handlers.load_files(session, [path(ct), path(pet)], None)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert session.study is study  # the session still shows what it had
    session.close()


def test_an_upload_over_the_limit_is_refused_before_reading_it(handlers, bad_files, tmp_path):
    small = DemoHandlers(handlers.model, {}, tmp_path, max_upload_mb=0.5)
    with pytest.raises(UserInputError, match="file 'big.nii.gz' is 1.0 MB; the limit is 0.5 MB per file"):
        small.load_files(None, [str(bad_files.folder / "big.nii.gz"), str(bad_files.pet)], None)
    assert list(tmp_path.iterdir()) == []  # no session was opened


def test_uploaded_files_give_the_same_result_as_the_example(handlers, done, bad_files):
    loaded = handlers.load_files(None, [str(bad_files.ct), str(bad_files.pet)], str(bad_files.seg))
    assert loaded.status.startswith("**SUV** · 96 × 96 × 80 voxels") and "with ground truth" in loaded.status
    out = handlers.segment(loaded.session, (41, 49, 49), Controls("fusion", "ground_truth"))
    assert out.rows == done.segmented.rows
    loaded.session.close()


# ----------------------------------------------------------------------------------------- sessions


def test_loading_again_in_a_session_drops_its_previous_results(handlers, case_ids):
    first = handlers.load_example(None, case_ids[0])
    session = first.session
    handlers.segment(session, first.slider_values.values(), Controls("fusion"))
    assert session.mask_file.is_file() and session.table_file.is_file()
    again = handlers.load_example(session, case_ids[1])
    assert again.session is session and not again.segmented
    assert session.table is None and session.classification is None and session.study.case_id == case_ids[1]
    assert not session.mask_file.exists() and not session.table_file.exists()
    assert "final_mask" not in session.study.overlays
    session.close()


def test_a_forgotten_or_collected_session_takes_its_folder_with_it(handlers, case_ids):
    session = handlers.load_example(None, case_ids[1]).session
    folder = session.workdir
    sessions.forget(session)
    assert not folder.exists()
    sessions.forget(None)  # a session that never loaded a study
    session.close()  # twice: nothing left to do

    view = handlers.load_example(None, case_ids[1])
    folder, alive = view.session.workdir, weakref.ref(view.session)
    assert folder.is_dir()
    del view
    gc.collect()
    assert alive() is None and not folder.exists()


def test_the_app_folder_goes_with_its_owner():
    class App:
        pass

    app, folder = App(), sessions.new_app_folder()
    sessions.remove_with(app, folder)
    assert folder.is_dir() and folder.name.startswith(sessions.APP_DIR_PREFIX)
    del app
    gc.collect()
    assert not folder.exists()


def test_the_handlers_do_not_need_gradio():
    code = (
        "import sys; import mirror_unet_hf.demo.handlers, mirror_unet_hf.demo.session, mirror_unet_hf.demo.text; "
        "assert 'gradio' not in sys.modules, 'gradio was imported'"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=600)
