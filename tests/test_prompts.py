"""The form parser never fails with anything but a 400 naming a field, whatever it is sent."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sam2_server.api.errors import status_of
from sam2_server.domain import AutomaticParams
from sam2_server.errors import ServiceError
from sam2_server.prompts import AutomaticLimits, automatic_points, build_prompt, check_automatic

FIELDS = ("point_coords", "point_labels", "box", "mask_input")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3),
    lambda children: st.lists(children, max_size=4),
    max_leaves=12,
)
field_text = st.one_of(
    st.none(),
    st.text(max_size=20),
    json_values.map(lambda v: json.dumps(v, allow_nan=True)),
    st.lists(st.lists(st.integers(-5, 2000), min_size=1, max_size=5), max_size=4).map(json.dumps),
)


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries({name: field_text for name in FIELDS}))
def test_any_input_gives_a_prompt_or_a_400(fields):
    try:
        prompt = build_prompt(
            **fields, multimask_output=True, return_logits=True, normalize_coords=True
        )
    except ServiceError as exc:
        error = exc
    else:
        error = None
    if error is not None:
        assert status_of(error) == 400
        assert any(name in error.message for name in FIELDS), error.message
        return
    if prompt.point_coords is not None:
        assert prompt.point_labels is not None
        assert prompt.point_coords.shape[-1] == 2
        assert prompt.point_labels.shape == prompt.point_coords.shape[:-1]
        assert np.isin(prompt.point_labels, (0, 1)).all()
    if prompt.box is not None:
        assert prompt.box.shape[-1] == 4
    for array in (prompt.point_coords, prompt.box, prompt.mask_input):
        if array is not None:
            assert np.isfinite(array).all()


def test_valid_prompt_keeps_values_and_flags():
    prompt = build_prompt(
        point_coords="[[1.5, 2], [3, 4]]",
        point_labels="[1, 0]",
        box="[0, 0, 10, 10]",
        mask_input=None,
        multimask_output=False,
        return_logits=False,
        normalize_coords=False,
    )
    np.testing.assert_array_equal(prompt.point_coords, [[1.5, 2], [3, 4]])
    np.testing.assert_array_equal(prompt.point_labels, [1, 0])
    assert prompt.num_objects == 1
    assert (prompt.multimask_output, prompt.return_logits, prompt.normalize_coords) == (
        False,
        False,
        False,
    )


@pytest.mark.parametrize(
    ("side", "layers", "factor"), [(32, 0, 1), (32, 1, 2), (64, 2, 1), (16, 2, 2), (7, 1, 2)]
)
def test_automatic_points_count_the_librarys_grids(side: int, layers: int, factor: int) -> None:
    from sam2.utils.amg import build_all_layer_point_grids, generate_crop_boxes

    grids = build_all_layer_point_grids(side, layers, factor)
    _, layer_of_crop = generate_crop_boxes((600, 800), layers, 512 / 1500)
    params = AutomaticParams(
        points_per_side=side, crop_n_layers=layers, crop_n_points_downscale_factor=factor
    )
    assert automatic_points(params) == sum(len(grids[layer]) for layer in layer_of_crop)


def test_automatic_work_is_bounded_over_all_crops() -> None:
    limits = AutomaticLimits(max_total_points=4096)
    check_automatic(
        AutomaticParams(points_per_side=32, crop_n_layers=1, crop_n_points_downscale_factor=2),
        limits,
    )
    with pytest.raises(ServiceError) as refused:
        check_automatic(AutomaticParams(points_per_side=64, crop_n_layers=2), limits)
    assert status_of(refused.value) == 400
    assert "86016 grid points" in refused.value.message
    assert "MAX_AUTOMATIC_POINTS" in refused.value.message
