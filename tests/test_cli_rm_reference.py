"""A saved segment RM records its reference model portably: as given (Hub id or path), relative to the
RM directory when the reference lives inside it, resolved on load; so a moved RM directory still finds
its reference, and PPO compares paths after resolving them (no false "different reference" warning)."""

from __future__ import annotations

import json
import shutil

import pytest

from segrl.rm.model import SegmentRewardModel, resolve_reference, same_model_path, stored_reference


def test_stored_and_resolved_by_hand(tmp_path, monkeypatch):
    rm_dir = tmp_path / "rm"
    (rm_dir / "ref").mkdir(parents=True)
    (tmp_path / "sft").mkdir()
    monkeypatch.chdir(tmp_path)
    assert stored_reference(str(rm_dir / "ref"), rm_dir) == "./ref"          # inside: relative to the RM
    assert stored_reference("rm/ref", "rm") == "./ref"
    assert stored_reference("sft", rm_dir) == "sft"                          # elsewhere: as given
    assert stored_reference(str(tmp_path / "sft"), rm_dir) == str(tmp_path / "sft")
    assert stored_reference("org/model", rm_dir) == "org/model"              # a Hub id
    assert stored_reference(None, rm_dir) is None
    assert resolve_reference("./ref", "/moved/rm") == "/moved/rm/ref"
    assert resolve_reference("org/model", "/moved/rm") == "org/model"
    assert resolve_reference("sft", rm_dir) == "sft"
    assert resolve_reference(str(tmp_path / "sft"), "/x") == str(tmp_path / "sft")


def test_same_model_path_resolves_before_comparing(tmp_path, monkeypatch):
    (tmp_path / "runs" / "sft").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert same_model_path("runs/sft", str(tmp_path / "runs" / "sft"))
    assert same_model_path("runs/sft", "./runs/../runs/sft/")
    assert not same_model_path("runs/sft", "org/sft")
    assert same_model_path("org/sft", "org/sft")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from segrl.models.tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("rmref") / "tiny", hidden_size=16, num_layers=1)


def _rm(tiny_dir, reference):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1)
    return SegmentRewardModel(model, AutoTokenizer.from_pretrained(tiny_dir), threshold=2.0,
                              reference_model=reference)


def test_moved_rm_directory_keeps_its_reference(tiny_dir, tmp_path):
    rm_dir = tmp_path / "rm"
    shutil.copytree(tiny_dir, rm_dir / "reference")                # the reference ships inside the RM
    _rm(tiny_dir, str(rm_dir / "reference")).save_pretrained(rm_dir)
    stored = json.loads((rm_dir / "config.json").read_text())["segment_rm"]["reference_model"]
    assert stored == "./reference"                                 # no absolute path in config.json
    moved = tmp_path / "elsewhere" / "rm"
    shutil.move(str(rm_dir), moved)
    rm = SegmentRewardModel.from_pretrained(moved)
    assert rm.reference_model == str(moved / "reference")
    ref = rm.load_reference()                                      # loads from the new place
    assert ref is not None and same_model_path(rm.reference_model, str(moved / "reference"))


def test_hub_id_and_outside_path_stored_as_given(tiny_dir, tmp_path):
    _rm(tiny_dir, "some-org/some-model").save_pretrained(tmp_path / "a")
    assert json.loads((tmp_path / "a" / "config.json").read_text())["segment_rm"]["reference_model"] == \
        "some-org/some-model"
    _rm(tiny_dir, str(tiny_dir)).save_pretrained(tmp_path / "b")
    assert json.loads((tmp_path / "b" / "config.json").read_text())["segment_rm"]["reference_model"] == \
        str(tiny_dir)
