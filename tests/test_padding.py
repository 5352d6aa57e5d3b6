"""segrl.padding.pad_rows: hand-written expectations for both sides, widths and dtypes."""

import pytest
import torch

from segrl.padding import pad_rows


def test_right_padding_hand_values():
    ids, attn = pad_rows([[5, 6, 7], [8]], pad_value=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert attn.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == torch.long and attn.dtype == torch.long


def test_left_padding_hand_values():
    ids, attn = pad_rows([[5, 6, 7], [8]], pad_value=9, side="left")
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]]
    assert attn.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_min_width_and_empty_rows():
    ids, attn = pad_rows([[1], []], pad_value=-1, width=3)
    assert ids.tolist() == [[1, -1, -1], [-1, -1, -1]]
    assert attn.tolist() == [[1, 0, 0], [0, 0, 0]]
    left, attn_left = pad_rows([[1, 2]], pad_value=0, side="left", width=4)
    assert left.tolist() == [[0, 0, 1, 2]] and attn_left.tolist() == [[0, 0, 1, 1]]


def test_float_values():
    vals, attn = pad_rows([[0.5, -1.0], [2.0]], pad_value=0.0, dtype=torch.float32)
    assert vals.dtype == torch.float32
    assert vals.tolist() == [[0.5, -1.0], [2.0, 0.0]]
    assert attn.tolist() == [[1, 1], [1, 0]]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`side`"):
        pad_rows([[1]], side="middle")
    with pytest.raises(ValueError, match="`rows`"):
        pad_rows([])
