"""Index conversions between TRL's DPO layouts and the response layout (segrl.dpo.layout)."""

import pytest
import torch

from segrl.dpo.layout import (
    LOGP_SHIFT,
    from_input_layout,
    from_logp_layout,
    response_span,
    to_input_layout,
    to_logp_layout,
)

# Two rows: prompt of 2 then 3 completion tokens; prompt of 3 then 1 completion token, then padding.
COMPLETION_MASK = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 0, 0]])


def test_span_hand_values():
    span = response_span(COMPLETION_MASK)
    assert span.start.tolist() == [2, 3]
    assert span.length.tolist() == [3, 1]
    assert span.mask.tolist() == [[True, True, True], [True, False, False]]
    assert span.input_width == 6 and span.width == 3


def test_input_layout_round_trip():
    span = response_span(COMPLETION_MASK)
    inputs = torch.arange(12).view(2, 6) * 10
    resp = from_input_layout(inputs, span)
    assert resp.tolist() == [[20, 30, 40], [90, 0, 0]]
    back = to_input_layout(resp, span)
    assert back.tolist() == [[0, 0, 20, 30, 40, 0], [0, 0, 0, 90, 0, 0]]


def test_logp_layout_is_shifted_by_one():
    # TRL's per_token_logps[j] scores input token j + 1: completion token t -> index start + t - 1.
    assert LOGP_SHIFT == 1
    span = response_span(COMPLETION_MASK)
    logps = torch.arange(10).view(2, 5).float()
    resp = from_logp_layout(logps, span)
    assert resp.tolist() == [[1.0, 2.0, 3.0], [7.0, 0.0, 0.0]]
    assert to_logp_layout(resp, span).tolist() == [[0, 1, 2, 3, 0], [0, 0, 7, 0, 0]]


def test_no_python_side_effects_on_inputs():
    cm = COMPLETION_MASK.clone()
    response_span(cm)
    assert torch.equal(cm, COMPLETION_MASK)


@pytest.mark.parametrize("bad", [
    torch.tensor([[0, 1, 0, 1, 0]]),  # two runs
    torch.tensor([[0, 1, 1, 0, 1]]),
])
def test_non_contiguous_completion_is_an_error(bad):
    with pytest.raises(ValueError, match="contiguous"):
        response_span(bad)


def test_empty_prompt_is_an_error():
    with pytest.raises(ValueError, match="empty prompt"):
        response_span(torch.tensor([[1, 1, 0]]))


def test_empty_completion_row_is_allowed():
    span = response_span(torch.tensor([[0, 1, 1], [0, 0, 0]]))
    assert span.length.tolist() == [2, 0]
    assert from_input_layout(torch.ones(2, 3), span).tolist() == [[1.0, 1.0], [0.0, 0.0]]
