"""The window merger on its own: a known field comes back, overlaps are weighted, misuse is a clear error."""

import itertools

import numpy as np
import pytest

from mirror_unet_hf.sliding_window import window_starts
from mirror_unet_hf.window_merging import WindowGrid, WindowMerger, gaussian_weights


def grid_for(shape, window, overlap=0.25):
    padded = [max(s, w) for s, w in zip(shape, window)]
    return WindowGrid(shape, window, tuple(tuple(window_starts(p, w, overlap)) for p, w in zip(padded, window)))


def windows_of(field, grid):
    """The windows of a `(C, *shape)` field, zero-padded to the grid as the sliding window pads its input."""
    padded = np.zeros((field.shape[0], *grid.padded), dtype=np.float32)
    padded[(slice(None), *(slice(0, s) for s in grid.shape))] = field
    for corner in grid.corners:
        yield corner, padded[(slice(None), *grid.region(corner))]


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize("shape", [(20, 13, 9), (6, 16, 11)])  # the second is smaller than the window on one axis
def test_merging_the_windows_of_a_field_gives_the_field_back(blend, shape):
    rng = np.random.default_rng(0)
    field = rng.normal(size=(2, *shape)).astype(np.float32)
    grid = grid_for(shape, (8, 8, 8))
    merger = WindowMerger(grid, blend)
    for corner, window in windows_of(field, grid):
        merger.aggregate({"logits": window, "branch/ct": window[:1] + 1.0}, corner)
    merged = merger.finalize()
    assert list(merged) == ["logits", "branch/ct"]
    assert merged["logits"].shape == (2, *shape) and merged["logits"].flags.c_contiguous
    np.testing.assert_allclose(merged["logits"], field, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(merged["branch/ct"], field[:1] + 1.0, rtol=1e-5, atol=1e-6)


def two_windows(first, second):
    """Windows [0, 8) and [4, 12) along the first axis of a 12x2x2 volume, filled with `first` and `second`."""
    grid = WindowGrid((12, 2, 2), (8, 2, 2), ((0, 4), (0,), (0,)))
    return grid, [
        ((0, 0, 0), np.full((1, 8, 2, 2), first, np.float32)),
        ((4, 0, 0), np.full((1, 8, 2, 2), second, np.float32)),
    ]


def test_constant_blending_is_the_mean_of_the_overlapping_windows():
    grid, windows = two_windows(1.0, 4.0)
    merger = WindowMerger(grid, "constant")
    for corner, value in windows:
        merger.aggregate({"x": value}, corner)
    along = merger.finalize()["x"][0, :, 0, 0]
    np.testing.assert_array_equal(along, [1.0] * 4 + [2.5] * 4 + [4.0] * 4)


def test_gaussian_blending_weights_each_window_by_its_gaussian():
    grid, windows = two_windows(1.0, 4.0)
    merger = WindowMerger(grid, "gaussian")
    for corner, value in windows:
        merger.aggregate({"x": value}, corner)
    along = merger.finalize()["x"][0, :, 0, 0]
    w = gaussian_weights((8, 2, 2)).numpy()[:, 0, 0]
    # in the overlap, voxel 4 + i is voxel 4 + i of the first window and voxel i of the second
    expected_overlap = (w[4:] * 1.0 + w[:4] * 4.0) / (w[4:] + w[:4])
    np.testing.assert_allclose(along[4:8], expected_overlap, rtol=1e-6)
    np.testing.assert_allclose(along[:4], 1.0, rtol=1e-6)
    np.testing.assert_allclose(along[8:], 4.0, rtol=1e-6)
    assert along[4] < 2.5 < along[7]  # each side leans towards the window whose centre is nearer


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_a_sign_only_output_is_the_unnormalised_margin_with_the_argmax_of_the_blended_logits(blend):
    rng = np.random.default_rng(1)
    grid = grid_for((20, 13, 9), (8, 8, 8))
    full = WindowMerger(grid, blend)
    margin = WindowMerger(grid, blend, sign_only=("logits",))
    for corner in grid.corners:
        logits = rng.normal(size=(2, 8, 8, 8)).astype(np.float32)
        full.aggregate({"logits": logits}, corner)
        margin.aggregate({"logits": logits}, corner)
    blended, summed = full.finalize()["logits"], margin.finalize()["logits"]
    assert summed.shape == (1, 20, 13, 9)
    decided = np.abs(blended[1] - blended[0]) > 1e-4  # ties are rounding noise either way
    np.testing.assert_array_equal((summed[0] > 0)[decided], np.argmax(blended, axis=0)[decided].astype(bool))
    if blend == "constant":  # not divided by the window count: the margins of overlapping windows add up
        assert (grid.coverage() > 1).any()
        np.testing.assert_allclose(summed[0], (blended[1] - blended[0]) * grid.coverage(), rtol=1e-4, atol=1e-4)


def test_coverage_counts_the_windows_over_each_voxel():
    grid = grid_for((20, 13, 9), (8, 8, 8), overlap=0.5)
    counted = np.zeros(grid.padded, dtype=np.float32)
    for corner in grid.corners:
        counted[grid.region(corner)] += 1
    np.testing.assert_array_equal(grid.coverage(), counted[:20, :13, :9])


def test_a_window_never_merged_is_an_error():
    grid, windows = two_windows(1.0, 4.0)
    merger = WindowMerger(grid)
    merger.aggregate({"x": windows[0][1]}, windows[0][0])
    with pytest.raises(ValueError, match=r"1 of 2 windows were never merged \(e.g. the one at \(4, 0, 0\)\)"):
        merger.finalize()


@pytest.mark.parametrize(
    "location, value, message",
    [
        ((3, 0, 0), np.zeros((1, 8, 2, 2), np.float32), r"window location \(3, 0, 0\) is not on the grid"),
        ((0, 0), np.zeros((1, 8, 2, 2), np.float32), r"window location \(0, 0\) is not on the grid"),
        ((0, 0, 0), np.zeros((1, 7, 2, 2), np.float32), r"has shape \(1, 7, 2, 2\); expected \(channels, 8, 2, 2\)"),
    ],
)
def test_a_bad_window_is_refused(location, value, message):
    grid, _ = two_windows(1.0, 4.0)
    with pytest.raises(ValueError, match=message):
        WindowMerger(grid).aggregate({"x": value}, location)


def test_a_window_merged_twice_or_after_finalize_is_refused():
    grid, windows = two_windows(1.0, 4.0)
    merger = WindowMerger(grid)
    merger.aggregate({"x": windows[0][1]}, windows[0][0])
    with pytest.raises(ValueError, match=r"window at \(0, 0, 0\) was merged twice"):
        merger.aggregate({"x": windows[0][1]}, windows[0][0])
    merger.aggregate({"x": windows[1][1]}, windows[1][0])
    merger.finalize()
    with pytest.raises(ValueError, match="after finalize"):
        merger.aggregate({"x": windows[1][1]}, windows[1][0])


def test_sign_only_outputs_need_two_channels_and_channel_counts_must_agree():
    grid, windows = two_windows(1.0, 4.0)
    with pytest.raises(ValueError, match=r"sign-only output 'logits' has 1 channels; expected 2"):
        WindowMerger(grid, sign_only=("logits",)).aggregate({"logits": windows[0][1]}, windows[0][0])
    merger = WindowMerger(grid)
    merger.aggregate({"x": windows[0][1]}, windows[0][0])
    with pytest.raises(ValueError, match="has 2 channels in this window and 1 in earlier ones"):
        merger.aggregate({"x": np.zeros((2, 8, 2, 2), np.float32)}, windows[1][0])


@pytest.mark.parametrize(
    "window, starts",
    [(4, (0, 8)), (8, (0, 2)), (8, (1, 4)), (8, (4, 0)), (8, ())],
    ids=["gap", "short-of-the-end", "not-from-0", "not-increasing", "no-window"],
)
def test_a_grid_that_leaves_voxels_uncovered_is_refused(window, starts):
    with pytest.raises(ValueError, match=rf"axis 0: window starts .* do not tile 12 voxels with windows of {window}"):
        WindowGrid((12, 2, 2), (window, 2, 2), (starts, (0,), (0,)))


def test_an_unknown_blend_is_refused():
    grid, _ = two_windows(1.0, 4.0)
    with pytest.raises(ValueError, match="blend is 'median'; expected one of: constant, gaussian"):
        WindowMerger(grid, "median")


def test_corners_run_the_last_axis_fastest():
    grid = WindowGrid((12, 10, 2), (8, 8, 2), ((0, 4), (0, 2), (0,)))
    assert grid.corners == list(itertools.product((0, 4), (0, 2), (0,)))
    assert grid.corners[:2] == [(0, 0, 0), (0, 2, 0)]
