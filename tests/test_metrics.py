"""AutoPET and BraTS metrics against hand-computed values and against the real whole-body AutoPET mask."""

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.metrics import autopet_metrics, brats_metrics, hausdorff_distance_95

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WHOLE_BODY_MASK = SHARED_DATA / "autopet_lesion_mask" / "fdg_04606080a0_SEG.nii.gz"
UNIT = (10.0, 10.0, 10.0)  # 1000 mm³: one voxel = 1 ml, so volumes read as voxel counts


def empty(shape=(8, 8, 8)):
    return np.zeros(shape, dtype=np.uint8)


# --- AutoPET: connectivity ---------------------------------------------------------------------------


def test_corner_only_touch_is_a_separate_component_under_18_connectivity():
    gt, pred = empty(), empty()
    gt[2, 2, 2] = 1
    pred[2, 2, 2] = pred[3, 3, 3] = 1  # diagonal corner neighbours: joined only under 26-connectivity
    m = autopet_metrics(pred, gt, UNIT)
    assert m.fpv_ml == 1.0
    assert m.false_positive_components == 1


def test_edge_touch_joins_the_component_under_18_connectivity():
    gt, pred = empty(), empty()
    gt[2, 2, 2] = 1
    pred[2, 2, 2] = pred[3, 3, 2] = 1  # share an edge
    m = autopet_metrics(pred, gt, UNIT)
    assert m.fpv_ml == 0.0
    assert m.false_positive_components == 0


def test_touching_ground_truth_blobs_form_one_lesion_hit_by_a_partial_prediction():
    gt, pred = empty(), empty()
    gt[1:3, 1:3, 1:3] = 1
    gt[3:5, 1:3, 1:3] = 1  # face to face with the first cube: one 16-voxel lesion
    pred[1:3, 1:3, 1:3] = 1
    m = autopet_metrics(pred, gt, UNIT)
    assert m.gt_lesions == 1
    assert m.fnv_ml == 0.0
    assert m.dice == pytest.approx(2 * 8 / (8 + 16))


def test_separated_ground_truth_blob_missed_by_the_prediction_is_false_negative():
    gt, pred = empty(), empty()
    gt[1:3, 1:3, 1:3] = 1
    gt[4:6, 1:3, 1:3] = 1  # one empty slice between: two lesions
    pred[1:3, 1:3, 1:3] = 1
    m = autopet_metrics(pred, gt, UNIT)
    assert m.gt_lesions == 2
    assert m.missed_lesions == 1
    assert m.fnv_ml == 8.0
    assert m.dice == pytest.approx(2 * 8 / (8 + 16))


def test_prediction_touching_ground_truth_by_one_voxel_is_not_a_false_positive():
    gt, pred = empty(), empty()
    gt[2:5, 2:5, 2:5] = 1
    pred[4:7, 4:7, 4:7] = 1  # overlap = the single voxel (4, 4, 4)
    m = autopet_metrics(pred, gt, UNIT)
    assert m.fpv_ml == 0.0
    assert m.fnv_ml == 0.0
    assert m.dice == pytest.approx(2 * 1 / (27 + 27))


# --- AutoPET: empty masks and volumes ---------------------------------------------------------------


def test_empty_ground_truth_scores_false_positive_volume_only():
    pred = empty()
    pred[1, 1, 1] = 1
    pred[5:7, 5, 5] = 1
    m = autopet_metrics(pred, empty(), UNIT)
    assert m.dice is None
    assert m.fnv_ml is None
    assert m.missed_lesions is None
    assert m.fpv_ml == 3.0
    assert m.false_positive_components == 2


def test_empty_prediction_gives_dice_zero_and_the_whole_lesion_volume_as_false_negative():
    gt = empty()
    gt[2:4, 2:4, 2] = 1
    m = autopet_metrics(empty(), gt, UNIT)
    assert m.dice == 0.0
    assert m.fnv_ml == 4.0
    assert m.fpv_ml == 0.0


def test_both_empty_has_no_dice_and_no_false_positive_volume():
    m = autopet_metrics(empty(), empty(), UNIT)
    assert (m.dice, m.fpv_ml, m.fnv_ml) == (None, 0.0, None)


def test_anisotropic_spacing_gives_voxel_volume_as_product_of_spacings():
    pred = empty()
    pred[0:5, 0, 0:2] = 1  # 10 voxels of 2.0 × 0.5 × 4.0 mm = 4 mm³ = 0.004 ml
    m = autopet_metrics(pred, empty(), (2.0, 0.5, 4.0))
    assert m.voxel_volume_ml == pytest.approx(0.004)
    assert m.fpv_ml == pytest.approx(0.04)


def test_any_non_zero_value_is_foreground():
    gt, pred = empty(), empty()
    gt[1, 1, 1] = 7
    pred[1, 1, 1] = 1
    assert autopet_metrics(pred.astype(np.float32) * 0.25, gt, UNIT).dice == 1.0


def test_shape_mismatch_is_a_user_error():
    with pytest.raises(UserInputError, match="shape"):
        autopet_metrics(empty((4, 4, 4)), empty((4, 4, 5)), UNIT)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -2.0, 1.0), (1.0, float("nan"), 1.0)])
def test_invalid_spacing_is_a_user_error(spacing):
    with pytest.raises(UserInputError, match="spacing"):
        autopet_metrics(empty(), empty(), spacing)


def _per_component_reference(pred, gt):
    """Independent slow reference: scipy labelling (18-neighbourhood), one full mask per component."""
    structure = ndimage.generate_binary_structure(3, 2)
    fp = fn = 0
    pred_labels, n_pred = ndimage.label(pred, structure)
    for i in range(1, n_pred + 1):
        component = pred_labels == i
        if not (component & gt).any():
            fp += int(component.sum())
    gt_labels, n_gt = ndimage.label(gt, structure)
    for i in range(1, n_gt + 1):
        component = gt_labels == i
        if not (component & pred).any():
            fn += int(component.sum())
    return fp, fn


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_per_component_reference_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    pred = rng.random((14, 12, 10)) < 0.12
    gt = rng.random((14, 12, 10)) < 0.12
    fp, fn = _per_component_reference(pred, gt)
    m = autopet_metrics(pred, gt, UNIT)
    assert (m.fpv_ml, m.fnv_ml) == (float(fp), float(fn))
    assert m.dice == pytest.approx(2 * (pred & gt).sum() / (pred.sum() + gt.sum()))


# --- AutoPET: the real whole-body mask --------------------------------------------------------------


@pytest.fixture(scope="module")
def whole_body():
    if not WHOLE_BODY_MASK.exists():
        pytest.skip(f"shared sample data absent: {WHOLE_BODY_MASK}")
    import nibabel as nib

    image = nib.load(str(WHOLE_BODY_MASK))
    gt = np.asanyarray(image.dataobj) != 0
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    return gt, spacing


def test_whole_body_prediction_equal_to_ground_truth_is_perfect(whole_body):
    gt, spacing = whole_body
    m = autopet_metrics(gt, gt, spacing)
    assert (m.dice, m.fpv_ml, m.fnv_ml) == (1.0, 0.0, 0.0)


def test_whole_body_dropping_one_lesion_gives_its_volume_as_false_negative(whole_body):
    gt, spacing = whole_body
    labels, n = ndimage.label(gt, ndimage.generate_binary_structure(3, 2))
    assert n >= 2
    sizes = np.bincount(labels[gt])[1:]
    dropped = int(np.argmin(sizes)) + 1
    pred = gt & (labels != dropped)
    expected_ml = sizes[dropped - 1] * spacing[0] * spacing[1] * spacing[2] / 1000
    m = autopet_metrics(pred, gt, spacing)
    assert m.fnv_ml == pytest.approx(expected_ml, rel=1e-12)
    assert m.fpv_ml == 0.0
    assert m.missed_lesions == 1


def test_whole_body_adding_a_disjoint_blob_gives_its_volume_as_false_positive(whole_body):
    gt, spacing = whole_body
    box = (slice(10, 16), slice(10, 15), slice(10, 14))  # 6 × 5 × 4 = 120 voxels
    assert not gt[5:21, 5:20, 5:19].any(), "the blob must be far from every lesion"
    pred = gt.copy()
    pred[box] = True
    m = autopet_metrics(pred, gt, spacing)
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000
    assert m.fpv_ml == pytest.approx(120 * voxel_ml, rel=1e-12)
    assert m.fnv_ml == 0.0
    assert m.dice == pytest.approx(2 * gt.sum() / (2 * gt.sum() + 120))


# --- BraTS -------------------------------------------------------------------------------------------


def test_hd95_of_parallel_planes_is_their_physical_distance():
    pred, gt = empty((8, 6, 6)), empty((8, 6, 6))
    pred[2] = 1
    gt[5] = 1  # 3 voxels apart along axis 0, 1.5 mm each
    assert hausdorff_distance_95(pred, gt, (1.5, 1.0, 1.0)) == pytest.approx(4.5)


@pytest.mark.parametrize("k", [1, 2])
def test_hd95_of_cubes_offset_by_k_voxels_is_k_spacings(k):
    # 4³ cubes (56 surface voxels each) shifted by k along axis 0; 3 mm voxels, 1 mm in-plane. By hand,
    # distances from each surface to the other (the same both ways, by symmetry):
    #   k = 2: 24 × 0, 4 × 1 mm (near-face centre → in-plane ring), 12 × 3 mm, 16 × 6 mm (far face);
    #   k = 1: 36 × 0, 4 × 1 mm, 16 × 3 mm (far face).
    # The 95th percentile sits at position 0.95 × 55 = 52.25 of the sorted values: the far-face block, k × 3 mm.
    gt, pred = empty((12, 8, 8)), empty((12, 8, 8))
    gt[2:6, 2:6, 2:6] = 1
    pred[2 + k : 6 + k, 2:6, 2:6] = 1
    assert hausdorff_distance_95(pred, gt, (3.0, 1.0, 1.0)) == pytest.approx(3.0 * k)


def test_hd95_ignores_a_single_far_outlier_voxel():
    gt, pred = empty((24, 12, 12)), empty((24, 12, 12))
    gt[2, 1:11, 1:11] = 1  # a 10 × 10 plate: 100 surface voxels
    pred[2, 1:11, 1:11] = 1
    pred[20, 5, 5] = 1  # 18 mm away: 1 distance in 101, above the 95th percentile
    assert hausdorff_distance_95(pred, gt, (1.0, 1.0, 1.0)) == 0.0


def _brute_force_hd95(a, b, spacing):
    """Independent reference: surfaces by explicit face-neighbour checks, all pairwise distances."""

    def surface(mask):
        padded = np.pad(mask, 1)
        inner = np.ones_like(mask)
        for axis in range(3):
            for step in (-1, 1):
                inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(mask & ~inner) * np.asarray(spacing)

    pa, pb = surface(a), surface(b)
    distances = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(distances.min(1), 95), np.percentile(distances.min(0), 95))


@pytest.mark.parametrize("seed", [0, 1])
def test_hd95_matches_a_brute_force_reference_in_anisotropic_spacing(seed):
    rng = np.random.default_rng(seed)
    a = ndimage.binary_dilation(rng.random((16, 14, 12)) > 0.99, iterations=2)
    b = ndimage.binary_dilation(rng.random((16, 14, 12)) > 0.99, iterations=2)
    spacing = (1.5, 0.8, 3.0)
    assert hausdorff_distance_95(a, b, spacing) == pytest.approx(_brute_force_hd95(a, b, spacing), rel=1e-9)


def test_brats_regions_follow_msd_labels():
    gt, pred = empty((6, 6, 6)), empty((6, 6, 6))
    gt[0, 0, 0:4] = [1, 1, 2, 3]  # WT 4 voxels, TC 2, ET 1
    pred[0, 0, 0:4] = [1, 2, 2, 1]  # WT 4, TC {1, 2}, ET none
    m = brats_metrics(pred, gt, (1.0, 1.0, 1.0))
    assert m.dice_wt == 1.0
    assert m.dice_tc == pytest.approx(2 * 1 / (2 + 2))
    assert m.dice_et == 0.0
    assert m.hd95_wt == 0.0
    assert m.hd95_et is None  # prediction empty, ground truth not


def test_brats_region_empty_in_both_scores_dice_one_and_hd95_zero():
    gt = empty((6, 6, 6))
    gt[2, 2, 2] = 1
    m = brats_metrics(gt, gt, (1.0, 1.0, 1.0))
    assert (m.dice_tc, m.hd95_tc, m.dice_et, m.hd95_et) == (1.0, 0.0, 1.0, 0.0)


def test_brats_prediction_in_an_empty_ground_truth_region_scores_dice_zero_and_no_hd95():
    gt, pred = empty((6, 6, 6)), empty((6, 6, 6))
    gt[2, 2, 2] = 1
    pred[2, 2, 2] = 3
    m = brats_metrics(pred, gt, (1.0, 1.0, 1.0))
    assert (m.dice_wt, m.dice_et, m.hd95_et) == (1.0, 0.0, None)


@pytest.mark.parametrize("value", [4, -1, 1.5])
def test_brats_rejects_labels_outside_msd_range(value):
    pred = empty((4, 4, 4)).astype(np.float32)
    pred[1, 1, 1] = value
    with pytest.raises(UserInputError, match="prediction"):
        brats_metrics(pred, empty((4, 4, 4)), (1.0, 1.0, 1.0))
