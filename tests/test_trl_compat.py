"""The TRL guard (segrl._trl_compat): passes on the installed TRL, fails loudly on a renamed or changed internal.

A TRL release that renames a private method segrl overrides would otherwise silently drop the ASR
mask from the loss (the override is simply never called). Each test below breaks TRL the way a
release could and checks that the guard names the broken internal and the supported range.
"""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from segrl import _trl_compat as compat
from segrl._trl_compat import SUPPORTED_TRL, TRLCompatibilityError, check_trl_compat

ROOT = Path(__file__).resolve().parents[1]


def _raises(group: str, *needles: str) -> str:
    with pytest.raises(TRLCompatibilityError) as info:
        check_trl_compat(group, force=True)
    message = str(info.value)
    for needle in (*needles, f"trl{SUPPORTED_TRL}"):
        assert needle in message, f"{needle!r} not in:\n{message}"
    return message


@pytest.mark.parametrize("group", compat.GROUPS)
def test_installed_trl_passes(group):
    assert compat.problems(group) == []
    check_trl_compat(group, force=True)


def test_pin_matches_pyproject_and_installed_version():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    trl_deps = [d.replace(" ", "") for d in deps if re.match(r"trl\b", d)]
    assert trl_deps == [f"trl{SUPPORTED_TRL}"], trl_deps
    spec = SpecifierSet(SUPPORTED_TRL)
    assert version("trl") in spec
    assert "1.17.0" not in spec and "1.15.0" not in spec  # the range has an upper bound


def test_renamed_override_raises(monkeypatch):
    from trl.trainer.dpo_trainer import DPOTrainer

    monkeypatch.delattr(DPOTrainer, "_compute_loss")
    message = _raises("dpo", "trl.trainer.dpo_trainer.DPOTrainer._compute_loss does not exist", "ASRDPOTrainer")
    assert "1.16" in message


def test_changed_override_signature_raises(monkeypatch):
    from trl.trainer.dpo_trainer import DPOTrainer

    def _precompute_ref_logps(self, dataset, name, batch_size, *, device=None):
        return dataset

    monkeypatch.setattr(DPOTrainer, "_precompute_ref_logps", _precompute_ref_logps)
    _raises("dpo", "DPOTrainer._precompute_ref_logps has parameters (self, dataset, name, batch_size, device)")


def test_caller_that_stops_calling_the_override_raises(monkeypatch):
    from trl.trainer.dpo_trainer import DPOTrainer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return self._compute_dpo_loss(model, inputs, return_outputs)  # a hypothetical rename of the callee

    monkeypatch.setattr(DPOTrainer, "compute_loss", compute_loss)
    _raises("dpo", "DPOTrainer.compute_loss no longer calls self._compute_loss(...)")


def test_grpo_loss_that_ignores_tool_mask_raises(monkeypatch):
    from trl.trainer.grpo_trainer import GRPOTrainer

    def _compute_loss(self, model, inputs):
        mask = inputs["completion_mask"]
        return (inputs["advantages"].unsqueeze(1) * mask).sum()

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", _compute_loss)
    _raises("grpo", "GRPOTrainer._compute_loss no longer contains", "tool_mask")


def test_renamed_private_function_raises(monkeypatch):
    import trl.data_utils

    monkeypatch.delattr(trl.data_utils, "_tokenize")
    _raises("rm", "trl.data_utils._tokenize does not exist", "segrl.rm.data")


def test_called_function_with_new_leading_parameter_raises(monkeypatch):
    import trl.trainer.utils

    def selective_log_softmax(index, logits, temperature=1.0):  # parameters swapped
        raise AssertionError

    monkeypatch.setattr(trl.trainer.utils, "selective_log_softmax", selective_log_softmax)
    _raises("ppo", "selective_log_softmax has parameters (index, logits, temperature)")


def test_attribute_no_longer_set_raises(monkeypatch):
    real = compat._module_source

    def without_metrics(module_name):
        return real(module_name).replace("self._metrics", "self._logged_metrics")

    monkeypatch.setattr(compat, "_module_source", without_metrics)
    _raises("grpo", "GRPOTrainer._metrics is no longer set by trl.trainer.grpo_trainer")


def test_skip_env_and_unknown_group(monkeypatch):
    from trl.trainer.dpo_trainer import DPOTrainer

    monkeypatch.delattr(DPOTrainer, "_compute_loss")
    monkeypatch.setenv(compat.SKIP_ENV, "1")
    check_trl_compat("dpo", force=True)  # skipped
    with pytest.raises(ValueError, match="`group` must be one of"):
        check_trl_compat("kto")


def _segrl_trl_subclasses():
    from segrl.dpo.trainer import ASRDPOTrainer
    from segrl.grpo.trainer import SegmentGRPOTrainer
    from segrl.rm.trainer import DataCollatorForSegmentPreference, SegmentRewardTrainer
    from segrl.rs.sampler import _RejectionSamplingSFTTrainer

    return [ASRDPOTrainer, SegmentGRPOTrainer, SegmentRewardTrainer, DataCollatorForSegmentPreference,
            _RejectionSamplingSFTTrainer]


def test_every_override_of_a_trl_method_is_registered():
    """A new override of a TRL method must be added to the guard (else a rename would go unnoticed)."""
    registered = {(r.target.split(":")[0], r.target.split(":")[1]) for reqs in compat.REQUIREMENTS.values()
                  for r in reqs if r.kind == "override"}
    missing = []
    for cls in _segrl_trl_subclasses():
        for name, member in vars(cls).items():
            if name.startswith("__") or not inspect.isfunction(member):  # dunders: dataclass-generated
                continue
            for base in cls.__mro__[1:]:
                if base.__module__.startswith("trl.") and name in vars(base):
                    if (base.__module__, f"{base.__qualname__}.{name}") not in registered:
                        missing.append(f"{cls.__name__}.{name} overrides {base.__module__}.{base.__qualname__}")
                    break
    assert not missing, missing


def test_trainer_modules_run_the_check_at_import():
    _segrl_trl_subclasses()
    importlib.import_module("segrl.ppo.trainer")
    assert set(compat.GROUPS) <= compat._CHECKED
