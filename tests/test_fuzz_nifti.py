"""Bad and random input to the NIfTI readers (``load_nifti``, ``nifti_from_bytes``, ``read_array``,
``preprocess_study``): every input gives a result or a one-line ``UserInputError``, never another exception,
and a header that promises more than it holds is refused before memory is allocated for it."""

from __future__ import annotations

import gzip
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
from conftest_fuzz import (  # noqa: F401 - fuzz_report reports the counts at the end of the session
    AFFINE,
    FUZZ,
    HUGE_VOXELS,
    PET,
    SHAPE,
    UNREADABLE,
    UNUSABLE,
    VALID,
    fuzz_report,
    huge_header,
    nifti_bytes,
    tried,
    user_error_or_result,
    valid_raw,
)
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mirror_unet_hf import MirrorUNetConfig
from mirror_unet_hf.data.nifti_io import (
    MAX_BYTES_ENV,
    load_nifti,
    nifti_from_bytes,
    read_array,
    require_3d,
)
from mirror_unet_hf.data.preprocessing import preprocess_study
from mirror_unet_hf.errors import UserInputError

CONFIG = MirrorUNetConfig.from_preset("autopet-v3")  # ct + pet on the PET grid, 2x2x3 mm, labels 0..1
# readable and usable although unusual
USABLE = {
    "int64 extremes": nifti_bytes(np.where(VALID > 5, np.iinfo(np.int64).max, np.iinfo(np.int64).min).astype(np.int64)),
    "uint64 max": nifti_bytes(np.full(SHAPE, np.iinfo(np.uint64).max, np.uint64)),
    "int8 with huge scl_slope": nifti_bytes(VALID.astype(np.int8), scl_slope=1e30, scl_inter=-5.0),
    "trailing singleton axes (X, Y, Z, 1, 1)": nifti_bytes(VALID[..., None, None]),
    "NIfTI-2": nifti_bytes(VALID, nifti2=True),
    "two gzip members": gzip.compress(valid_raw()[:200]) + gzip.compress(valid_raw()[200:]),
    "uncompressed": valid_raw(),
}


def read(data: bytes, name: str = "ct.nii.gz") -> np.ndarray:
    """What the pipeline does with a file: decode, read voxels, check it is 3D."""
    return require_3d(read_array(nifti_from_bytes(data, "study-1", name), "study-1", name), "study-1", name)


def preprocess(ct, pet=PET, label=None):
    return preprocess_study({"ct": ct, "pet": pet}, CONFIG, label=label, case_id="study-1")


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_unreadable_file_is_refused_through_every_reader(case, tmp_path):
    data, fragment = UNREADABLE[case]
    path = tmp_path / "bad file ünï.nii.gz"
    path.write_bytes(data)
    for attempt in (
        lambda: read(data),
        lambda: load_nifti(path),
        lambda: preprocess(path),
        lambda: preprocess(PET, data),
    ):
        tried("nifti readers")
        with pytest.raises(UserInputError) as caught:
            attempt()
        message = str(caught.value)
        assert fragment in message and "\n" not in message, message


@pytest.mark.parametrize("case", sorted(UNUSABLE))
def test_unusable_image_is_refused_by_preprocessing(case, tmp_path):
    data, fragment = UNUSABLE[case]
    tried("preprocess_study")
    with pytest.raises(UserInputError, match=fragment) as caught:
        preprocess(data)
    assert "study 'study-1'" in str(caught.value) and "\n" not in str(caught.value)


def test_resampling_that_would_explode_is_refused_before_allocating():
    tried("preprocess_study")
    tracemalloc.start()
    try:
        with pytest.raises(UserInputError, match=r"would make a \(6000, 5000, 2667\) grid"):
            preprocess(HUGE_VOXELS, HUGE_VOXELS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20


@pytest.mark.parametrize("case", sorted(USABLE))
def test_unusual_but_valid_image_is_read_and_normalised(case):
    tried("preprocess_study")
    study = preprocess(USABLE[case])
    assert study.image.shape == (2, *SHAPE)
    assert np.isfinite(study.image).all() and study.image.min() >= 0 and study.image.max() <= 1


@pytest.mark.parametrize(
    "values, fragment",
    [(7, "expected 0..1"), (-1, "expected 0..1"), (0.5, "non-integer"), (np.nan, "NaN/Inf")],
    ids=["7 in an AutoPET label", "negative", "fractional", "NaN"],
)
def test_label_with_unexpected_values_is_refused(values, fragment):
    label = np.zeros(SHAPE, np.float32)
    label[2:4, 2:4, 2:4] = values
    tried("preprocess_study")
    with pytest.raises(UserInputError, match=fragment):
        preprocess(PET, label=nifti_bytes(label))


def test_huge_header_is_refused_before_allocating(monkeypatch):
    """30000^3 float32 is 100 TiB; 900^3 is 2.7 GiB, under the limit, in a 1 KiB file: neither may cost memory."""
    for shape, fragment in (((30000, 30000, 30000), "over the"), ((900, 900, 900), "truncated")):
        for gz in (True, False):
            data = huge_header(shape, gz=gz)
            tried("nifti readers")
            tracemalloc.start()
            try:
                with pytest.raises(UserInputError, match=fragment):
                    read(data)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < 16 * 2**20, f"{shape} gz={gz}: {peak / 2**20:.1f} MiB allocated"


def test_gzip_bomb_is_refused_without_inflating_it(monkeypatch):
    monkeypatch.setenv(MAX_BYTES_ENV, str(2**20))
    bomb = gzip.compress(valid_raw() + bytes(64 * 2**20), compresslevel=9)  # 64 MiB of zeros after the image
    tried("nifti readers")
    tracemalloc.start()
    try:
        with pytest.raises(UserInputError, match="gzip bomb"):
            read(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48 * 2**20


def test_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(MAX_BYTES_ENV, "1000")
    with pytest.raises(UserInputError, match="over the 1000 bytes limit"):
        read(PET)
    monkeypatch.setenv(MAX_BYTES_ENV, "lots")
    with pytest.raises(UserInputError, match=MAX_BYTES_ENV):
        read(PET)


def test_in_memory_images_are_checked_too():
    image = nib.Nifti1Image(VALID, AFFINE)
    image._affine = np.diag([2.0, 0.0, 3.0, 1.0])  # as a caller could build it by hand
    with pytest.raises(UserInputError, match="voxel sizes"):
        preprocess(image)


# ------------------------------------------------------------------------------------------ properties

_FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.sampled_from([0.0, -1.0, 1e-30, 1e30])
_FIELDS = {
    "dim": st.lists(st.integers(-3, 40), min_size=8, max_size=8).map(lambda d: [d[0] % 10 - 1, *d[1:]]),
    "datatype": st.sampled_from(
        [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 999, -1]
    ),
    "bitpix": st.integers(-(2**15), 2**15 - 1),
    "pixdim": st.lists(_FLOATS, min_size=8, max_size=8),
    "vox_offset": _FLOATS | st.integers(0, 2000).map(float),
    "scl_slope": _FLOATS,
    "scl_inter": _FLOATS,
    "qform_code": st.integers(-1, 5),
    "sform_code": st.integers(-1, 5),
    "quatern_b": _FLOATS,
    "srow_x": st.lists(_FLOATS, min_size=4, max_size=4),
    "srow_y": st.lists(_FLOATS, min_size=4, max_size=4),
    "srow_z": st.lists(_FLOATS, min_size=4, max_size=4),
    "magic": st.sampled_from([b"n+1", b"ni1", b"n+2", b"\0\0\0\0", b"xyz"]),
    "sizeof_hdr": st.sampled_from([348, 540, 0, -348, 1 << 24]),
}


@FUZZ
@given(
    mutations=st.lists(
        st.sampled_from(sorted(_FIELDS)).flatmap(lambda k: st.tuples(st.just(k), _FIELDS[k])), min_size=1, max_size=4
    ),
    gz=st.booleans(),
)
def test_random_header_fields_never_crash(mutations, gz):
    image = nib.Nifti1Image(VALID, AFFINE)
    raw = bytearray(image.to_bytes())
    header = nib.Nifti1Header(bytes(raw[:348]), check=False)
    for key, value in mutations:
        header._structarr[key] = value
    raw[:348] = header.binaryblock
    data = gzip.compress(bytes(raw), mtime=0) if gz else bytes(raw)
    result = user_error_or_result("nifti readers (random header)", preprocess, data)
    if not isinstance(result, UserInputError):
        assert np.isfinite(result.image).all()


@FUZZ
@given(
    gz=st.booleans(),
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.none() | st.floats(0, 1),
    insert=st.none() | st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=64)),
)
def test_random_byte_corruption_never_crashes(gz, edits, cut, insert):
    data = bytearray(PET if gz else valid_raw())
    for where, value in edits:
        data[min(int(where * len(data)), len(data) - 1)] = value
    if insert is not None:
        at = int(insert[0] * len(data))
        data[at:at] = insert[1]
    if cut is not None:
        data = data[: int(cut * len(data))]
    result = user_error_or_result("nifti readers (byte corruption)", preprocess, bytes(data))
    if not isinstance(result, UserInputError):
        assert np.isfinite(result.image).all()


_DTYPES = st.sampled_from(["i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f4", "f8"]).map(np.dtype)


@FUZZ
@given(
    values=_DTYPES.flatmap(
        lambda dtype: hnp.arrays(dtype, SHAPE, elements=hnp.from_dtype(dtype, allow_nan=True, allow_infinity=True))
    )
)
def test_any_voxel_values_give_a_normalised_image_or_a_user_error(values):
    result = user_error_or_result("preprocess_study (voxel values)", preprocess, nifti_bytes(values))
    if not isinstance(result, UserInputError):
        assert np.isfinite(result.image).all() and result.image.min() >= 0 and result.image.max() <= 1


@FUZZ
@given(
    values=_DTYPES.flatmap(
        lambda dtype: hnp.arrays(dtype, SHAPE, elements=hnp.from_dtype(dtype, allow_nan=True, allow_infinity=True))
    )
)
def test_any_label_values_give_class_indices_or_a_user_error(values):
    result = user_error_or_result("preprocess_study (label values)", preprocess, PET, PET, nifti_bytes(values))
    if not isinstance(result, UserInputError):
        assert set(np.unique(result.label)) <= {0, 1}
