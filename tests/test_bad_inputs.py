"""Bad data and bad options: every data-reading command stops with a one-line error that names the
argument (and the column), exit code 2, *before* any model is loaded, and leaves the file system
untouched (no output, checkpoint or RM directory created or changed).

One table of cases, one test per command over it. The checks run before model loading, so the
"models" here are only a tiny tokenizer directory.
"""

from __future__ import annotations

import json
import os

import pytest

from segrl.cli import main

PREFS = [
    {"prompt": "2+5=", "chosen": "2+5=7;=7", "rejected": "2+5=8;=8"},
    {"prompt": "3+3=", "chosen": "3+3=6;=6", "rejected": "3+3=5;=5"},
]


def _without(rows, key):
    return [{k: v for k, v in r.items() if k != key} for r in rows]


def _with(rows, i, key, value):
    rows = [dict(r) for r in rows]
    rows[i][key] = value
    return rows


# case -> (rows or raw text or None for "no file", extra flags, words the error must contain)
# Preference-data commands (dpo, train-rm, fit-norm, eval-rm).
PREF_CASES = {
    "row_without_rejected": (_without(PREFS, "rejected"), [], ["`dataset_name`", "`rejected`"]),
    "null_response": (_with(PREFS, 1, "chosen", None), [], ["`dataset_name`", "row 1", "`chosen`", "null"]),
    "int_response": (_with(PREFS, 0, "rejected", 3), [], ["`dataset_name`", "row 0", "`rejected`", "int"]),
    "empty_response": (_with(PREFS, 1, "rejected", ""), [], ["`dataset_name`", "1 of 2 rows", "`rejected`",
                                                             "--drop_empty"]),
    "all_empty_dropped": ([{**r, "chosen": ""} for r in PREFS], ["--drop_empty", "true"],
                          ["`dataset_name`", "every one of the 2 rows", "`chosen`"]),
    "messages_not_chat": (_with(PREFS, 0, "chosen", [{"text": "hi"}]), [], ["`chosen`", "chat messages"]),
    "empty_file": ("", [], ["`dataset_name`", "is empty"]),
    "whitespace_file": ("\n\n  \n", [], ["`dataset_name`", "empty"]),
    "bad_json": ("{not json\n", [], ["`dataset_name`", "could not read"]),
    "all_filtered_by_max_length": (PREFS, ["--max_length", "3"], ["`max_length`=3", "all 2", "`dataset_name`"]),
    "missing_local_file": (None, [], ["`dataset_name`", "no such file or directory", "missing.jsonl"]),
    "unknown_flag": (PREFS, ["--max_lenght", "64"], ["unrecognised argument", "--max_lenght", "--max_length"]),
}
# Prompt-data commands (rs, ppo, grpo).
PROMPT_CASES = {
    "no_prompt_column": ([{"question": "1+1="}], [], ["`dataset_name`", "`prompt`"]),
    "null_prompt": ([{"prompt": "1+1="}, {"prompt": None}], [], ["`dataset_name`", "row 1", "`prompt`", "null"]),
    "int_prompt": ([{"prompt": 7}], [], ["`dataset_name`", "row 0", "`prompt`", "int"]),
    "empty_prompt": ([{"prompt": "1+1="}, {"prompt": ""}], [], ["`dataset_name`", "1 of 2 rows", "`prompt`"]),
    "empty_file": ("", [], ["`dataset_name`", "is empty"]),
    "missing_local_file": (None, [], ["`dataset_name`", "no such file or directory", "missing.jsonl"]),
    "unknown_flag": ([{"prompt": "1+1="}], ["--totally_unknown", "1"], ["unrecognised argument", "--totally_unknown"]),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from segrl.models.tiny import make_tiny_model_dir

    return str(make_tiny_model_dir(tmp_path_factory.mktemp("bad_inputs") / "model", hidden_size=16, num_layers=1))


def _tree(root):
    """Every path under ``root`` with its size and mtime: any created, removed or changed file shows."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return out


def _write_data(tmp_path, rows):
    if rows is None:
        return str(tmp_path / "missing.jsonl")
    path = tmp_path / "data.jsonl"
    path.write_text(rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _command_args(command, model, data, out):
    """The command's required arguments (data = the case's file), writing under ``out``."""
    return {
        "dpo": ["--model_name_or_path", model, "--dataset_name", data, "--output_dir", out, "--mask_type", "none"],
        "train-rm": ["--model_name_or_path", model, "--dataset_name", data, "--output_dir", out],
        "fit-norm": ["--reward_model_path", model, "--dataset_name", data, "--output_dir", out],
        "eval-rm": ["--reward_model_path", model, "--dataset_name", data, "--output_json", f"{out}/eval.json"],
        "rs": ["--model_name_or_path", model, "--reward_model_path", model, "--dataset_name", data,
               "--output_dir", out],
        "ppo": ["--model_name_or_path", model, "--reward_model_path", model, "--dataset_name", data,
                "--output_dir", out],
        "grpo": ["--model_name_or_path", model, "--reward_model_path", model, "--dataset_name", data,
                 "--output_dir", out],
    }[command]


def _check(command, case, model_dir, tmp_path, capsys, extra_args=()):
    rows, flags, words = case
    data = _write_data(tmp_path, rows)
    out = str(tmp_path / "out")
    before = _tree(tmp_path)
    before_model = _tree(model_dir)
    rc = main([command, *_command_args(command, model_dir, data, out), *flags, *extra_args])
    err = capsys.readouterr().err
    assert rc == 2, err
    last = [line for line in err.splitlines() if "error:" in line][-1]
    for word in words:
        assert word in last, f"{word!r} not in {last!r}"
    assert _tree(tmp_path) == before, "the failed command created or changed files"
    assert _tree(model_dir) == before_model, "the failed command changed the model / RM directory"
    assert not os.path.exists(out)


@pytest.mark.parametrize("case", PREF_CASES, ids=str)
@pytest.mark.parametrize("command", ["dpo", "train-rm", "fit-norm", "eval-rm"])
def test_preference_commands(command, case, model_dir, tmp_path, capsys):
    _check(command, PREF_CASES[case], model_dir, tmp_path, capsys)


@pytest.mark.parametrize("case", PROMPT_CASES, ids=str)
@pytest.mark.parametrize("command", ["rs", "ppo", "grpo"])
def test_prompt_commands(command, case, model_dir, tmp_path, capsys):
    _check(command, PROMPT_CASES[case], model_dir, tmp_path, capsys)


MODEL_FLAG = {"dpo": "model_name_or_path", "train-rm": "model_name_or_path", "fit-norm": "reward_model_path",
              "eval-rm": "reward_model_path", "rs": "model_name_or_path", "ppo": "model_name_or_path",
              "grpo": "model_name_or_path"}


@pytest.mark.parametrize("command", list(MODEL_FLAG))
def test_missing_model_path(command, model_dir, tmp_path, capsys):
    data = _write_data(tmp_path, PREFS)
    missing = str(tmp_path / "no" / "such" / "model")
    args = _command_args(command, model_dir, data, str(tmp_path / "out"))
    args[args.index(f"--{MODEL_FLAG[command]}") + 1] = missing
    before = _tree(tmp_path)
    assert main([command, *args]) == 2
    err = capsys.readouterr().err
    assert f"`{MODEL_FLAG[command]}`: no such file or directory: {missing}" in err
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("command", ["dpo", "train-rm", "fit-norm"])
def test_unknown_config_key(command, model_dir, tmp_path, capsys):
    data = _write_data(tmp_path, PREFS)
    (tmp_path / "cfg.yaml").write_text("segment_treshold: 2.0\n" if command != "dpo" else "mask_tipe: asr\n")
    rc = main([command, *_command_args(command, model_dir, data, str(tmp_path / "out")),
               "--config", str(tmp_path / "cfg.yaml")])
    err = capsys.readouterr().err
    assert rc == 2 and "unrecognised key" in err and str(tmp_path / "cfg.yaml") in err


def test_dpo_asr_without_token_rewards_fails_before_loading(model_dir, tmp_path, capsys):
    """The default token_reward_source (columns) without the columns: named early, with the ways out."""
    data = _write_data(tmp_path, PREFS)
    args = _command_args("dpo", model_dir, data, str(tmp_path / "out"))
    args = args[:args.index("--mask_type")]
    assert main(["dpo", *args]) == 2
    err = capsys.readouterr().err
    assert "`chosen_token_rewards`" in err and "--token_reward_source" in err and "--mask_type none" in err
    assert not (tmp_path / "out").exists()


def test_hub_ids_are_the_only_strings_sent_to_the_hub(tmp_path):
    from segrl.data_checks import is_hub_id, load_data

    assert is_hub_id("openai/gsm8k") and is_hub_id("imdb")
    assert not is_hub_id("data/prefs.jsonl") and not is_hub_id("./prefs") and not is_hub_id("/abs/prefs")
    assert not is_hub_id("a/b/c") and not is_hub_id("prefs.parquet")
    with pytest.raises(FileNotFoundError, match="no such file or directory: a/b/c"):
        load_data("a/b/c")


def test_drop_empty_drops_and_counts(tmp_path, capsys):
    from segrl.data_checks import check_preference_data, load_data

    rows = PREFS + [{"prompt": "1+1=", "chosen": "  ", "rejected": "1+1=3;=3"}]
    ds = load_data(_write_data(tmp_path, rows))
    kept, report = check_preference_data(ds, drop_empty=True)
    assert len(kept) == 2 and report.n_dropped == 1 and kept["prompt"] == ["2+5=", "3+3="]
    assert "dropped 1 of 3 rows" in capsys.readouterr().err


def test_builtin_and_save_to_disk(tmp_path):
    from datasets import Dataset

    from segrl.data_checks import load_data

    tiny = load_data("builtin:tiny_prefs")
    assert len(tiny) == 48 and {"prompt", "chosen", "rejected"} <= set(tiny.column_names)
    Dataset.from_list(PREFS).save_to_disk(str(tmp_path / "disk"))
    assert load_data(str(tmp_path / "disk"))["chosen"] == [r["chosen"] for r in PREFS]
    with pytest.raises(ValueError, match="unknown built-in data set"):
        load_data("builtin:nope")


def test_dpo_reward_model_path_implies_the_segment_rm_source(model_dir, tmp_path, capsys):
    """`--reward_model_path` without `--token_reward_source`: the segment RM is the source (said once);
    a missing RM path is then the named error, still before any model load."""
    data = _write_data(tmp_path, PREFS)
    args = _command_args("dpo", model_dir, data, str(tmp_path / "out"))
    args = args[:args.index("--mask_type")] + ["--reward_model_path", str(tmp_path / "no_rm")]
    assert main(["dpo", *args]) == 2
    err = capsys.readouterr().err
    assert "token_reward_source=segment_rm" in err
    assert f"`reward_model_path`: no such file or directory: {tmp_path / 'no_rm'}" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["dpo", "train-rm", "fit-norm", "eval-rm", "rs", "ppo", "grpo"])
def test_existing_output_and_checkpoints_untouched(command, model_dir, tmp_path, capsys):
    """A run that fails its checks leaves an existing output directory (and its checkpoints) as it was."""
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (out / "eval.json").write_text("{}")
    data = _write_data(tmp_path, [{"prompt": None, "chosen": None, "rejected": None}])
    before = _tree(tmp_path)
    assert main([command, *_command_args(command, model_dir, data, str(out))]) == 2
    assert "null" in capsys.readouterr().err
    assert _tree(tmp_path) == before
