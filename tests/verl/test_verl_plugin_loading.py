"""How verl loads the plugin in every process, and that segrl itself never needs verl."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import verl


def _python(code: str, **env) -> str:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}
    full_env.pop("VERL_USE_EXTERNAL_MODULES", None)
    full_env.update(env)
    done = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_the_real_verl_package_is_under_test():
    # tests/verl/ is a plain directory named like the package; make sure it never shadows it
    assert os.path.basename(os.path.dirname(verl.__file__)) == "verl"
    assert "site-packages" in verl.__file__


def test_verl_use_external_modules_registers_everything_on_import_verl():
    code = (
        "import json, verl\n"
        "from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, POLICY_LOSS_REGISTRY\n"
        "from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER\n"
        "from verl.workers.reward_manager.registry import REWARD_MANAGER_REGISTRY\n"
        "print(json.dumps({'adv': 'segrl_asr_gae' in ADV_ESTIMATOR_REGISTRY, 'loss': 'segrl_asr' in POLICY_LOSS_REGISTRY,"
        " 'rm': 'segrl_dense' in REWARD_MANAGER, 'legacy': 'segrl_dense' in REWARD_MANAGER_REGISTRY}))\n"
    )
    with_plugin = json.loads(_python(code, VERL_USE_EXTERNAL_MODULES="segrl.integrations.verl"))
    # the legacy reward-manager registry is left alone (segrl registers only the reward-loop manager)
    assert with_plugin == {"adv": True, "loss": True, "rm": True, "legacy": False}
    without = json.loads(_python(code))
    assert without == {"adv": False, "loss": False, "rm": False, "legacy": False}


def test_importing_segrl_does_not_import_verl():
    code = "import sys, segrl, segrl.integrations, segrl.ops, segrl.rm, segrl.models; print('verl' in sys.modules)"
    assert _python(code) == "False"


def test_reimporting_the_plugin_points_the_names_at_the_new_code():
    # verl's registries refuse a second, different object under a name; a reload must not trip that
    code = (
        "import importlib, segrl.integrations.verl as plugin\n"
        "from segrl.integrations.verl import advantage, reward_managers\n"
        "from verl.trainer.ppo.core_algos import get_adv_estimator_fn\n"
        "from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls\n"
        "old = plugin.compute_segrl_asr_gae_advantage, plugin.SegmentDenseRewardManager\n"
        "importlib.reload(advantage); importlib.reload(reward_managers)\n"
        "plugin = importlib.reload(plugin)\n"
        "print(old != (plugin.compute_segrl_asr_gae_advantage, plugin.SegmentDenseRewardManager)"
        " and get_adv_estimator_fn('segrl_asr_gae') is plugin.compute_segrl_asr_gae_advantage"
        " and get_reward_manager_cls('segrl_dense') is plugin.SegmentDenseRewardManager)\n"
    )
    assert _python(code) == "True"


# Every name imported from `segrl.integrations.verl` by the tests, examples/verl, docs or README before the
# module became a package (one module per concern); the package must keep exporting them all.
PUBLIC_NAMES = (
    "ADV_ESTIMATOR_NAME", "ASRAdvantages", "ASROptions", "CONFIG_KEY", "POLICY_LOSS_NAME", "REWARD_MANAGER_NAME",
    "SegmentDenseRewardManager", "SegmentRMTokenRewards", "TokenRewardSource", "asr_gae_advantages", "asr_keep_mask",
    "compute_policy_loss_segrl_asr", "compute_segrl_asr_gae_advantage", "dense_scores_tensor",
    "segment_rm_token_rewards",
)


def test_the_package_keeps_every_public_name_of_the_former_module():
    import segrl.integrations.verl as plugin

    assert set(PUBLIC_NAMES) <= set(plugin.__all__)
    assert [name for name in plugin.__all__ if not hasattr(plugin, name)] == []
    # verl's `pkg://segrl.integrations.verl` loader resolves the reward function on the package itself
    from verl.utils.import_utils import load_extern_object

    loaded = load_extern_object("pkg://segrl.integrations.verl", "segment_rm_token_rewards")
    assert loaded is plugin.segment_rm_token_rewards
