"""Property-based tests (hypothesis) of array validation and of the geometry round trip."""
import numpy as np
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from GliomaAnalysisLib import Geometry, GliomaAnalysisError, load_case, preprocess
from GliomaAnalysisLib.io.image_io import validate_image

shapes = st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6))
dtypes = st.sampled_from([np.uint8, np.int16, np.int32, np.float32, np.float64])


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_validation_accepts_or_refuses_with_a_library_error_only(data):
    dtype = data.draw(dtypes)
    shape = data.draw(shapes)
    elements = (st.floats(allow_nan=True, allow_infinity=True, width=32) if np.issubdtype(dtype, np.floating)
                else st.integers(0, 200))
    array = data.draw(arrays(dtype, shape, elements=elements))
    image = sitk.GetImageFromArray(array)
    try:
        converted = validate_image(image, "generated")
    except GliomaAnalysisError as exc:
        assert str(exc).startswith("generated: ") and "\n" not in str(exc)
        return
    # accepted: a finite, non-constant 3D volume that is not a label map, as a float32 copy of the same geometry
    values = sitk.GetArrayFromImage(converted)
    assert converted is not image and converted.GetOrigin() == image.GetOrigin()
    assert np.array_equal(values, array.astype(np.float32))
    assert values.dtype == np.float32 and values.shape == array.shape
    assert np.all(np.isfinite(values)) and values.min() < values.max()
    assert sum(n > 1 for n in array.shape) == 3


def _rotation(angles):
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.tuples(st.integers(6, 14), st.integers(6, 14), st.integers(6, 14)),
       spacing=st.tuples(*[st.floats(0.3, 4.0)] * 3),
       origin=st.tuples(*[st.floats(-300, 300)] * 3),
       angles=st.tuples(*[st.floats(-np.pi, np.pi)] * 3),
       flips=st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3),
       seed=st.integers(0, 2 ** 16))
def test_native_round_trip_is_exact_on_any_grid(size, spacing, origin, angles, flips, seed):
    rng = np.random.default_rng(seed)
    array = rng.integers(1, 500, size=size[::-1]).astype(np.int16)
    array[0], array[:, 0] = 0, 0  # some background
    direction = _rotation(angles) @ np.diag(flips)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(direction.ravel()))
    labels = sitk.GetImageFromArray(((array % 5 == 0) & (array > 0)).astype(np.uint8) * 2)  # tumor lies in the brain
    labels.CopyInformation(image)
    case = load_case({"t2": image}, segmentation=labels)
    pre = preprocess(case, margin_mm=0.0, divisible_by=4)
    back = pre.to_reference(pre.labels, "label")
    geometry = Geometry.of(back)
    assert geometry.size == tuple(size)
    assert np.allclose(geometry.origin, origin, atol=1e-6) and np.allclose(geometry.spacing, spacing, atol=1e-9)
    assert np.allclose(geometry.direction, direction.ravel(), atol=1e-9)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(labels))
