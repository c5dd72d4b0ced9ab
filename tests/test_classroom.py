"""The classroom profile: each experiment's effect in minutes, in its own results folder; the games
notebook's defaults are the quick profile's run; LoRA on GPT-2 without peft's Conv1D warning."""
import importlib
import warnings

import pytest

from rlformal_utils import runner
from rlformal_utils.params import defaults

EXPERIMENTS = ["arithmetic", "sentiment", "games"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_classroom_runs_are_valid_and_minutes_long(experiment):
    P = importlib.import_module(f"rlformal_utils.{experiment}.params")
    runs = runner.runs_for(experiment, "classroom")
    assert runs
    for run in runs:
        P.check(dict(defaults(P.PARAMS), **run.params))
        assert run.estimate_s <= 300, run.name  # about 5 minutes at most, setup included
        assert run.out_dir(runner.REPO_ROOT / "results" / "classroom").parent.parent.name == "classroom"


def test_classroom_arithmetic_is_batch_entropy_against_none_from_the_weak_start():
    runs = [r for r in runner.runs_for("arithmetic", "classroom") if r.params["algorithm"] != "none"]
    assert sorted(r.params["regulariser"] for r in runs) == ["batch", "none"]
    a, b = (dict(r.params) for r in runs)
    assert {k for k in a if a[k] != b.get(k)} == {"regulariser"}  # nothing else differs
    assert a["algorithm"] == "group" and a["pretrain_examples"] == 256 and a["pretrain_steps"] == 0
    assert 100_000 <= a["steps"] * a["prompts_per_step"] * a["k"] <= 400_000


def test_classroom_sentiment_runs_the_default_policy_with_kl_0():
    (run,) = runner.runs_for("sentiment", "classroom")
    assert run.params["policy"] == "smollm2-135m" and run.params["lora_rank"] == 16 and run.params["kl_coef"] == 0


def test_classroom_results_never_land_in_the_quick_profiles_folders(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(runner, "print_plan", lambda profile, runs, todo, *a: seen.update(
        dirs={str(r.out_dir(runner.REPO_ROOT / "results" / "classroom")) for r in todo}))
    monkeypatch.setattr(runner, "run_complete", lambda run, results: seen.setdefault("results", results) and False)
    assert runner.main(["--profile", "classroom", "--dry-run"]) == 0
    assert seen["results"] == (runner.REPO_ROOT / "results" / "classroom").resolve()


def test_games_notebook_defaults_are_the_quick_profiles_run():
    from rlformal_utils.games import params as P
    (run,) = runner.runs_for("games", "quick")
    notebook = defaults(P.PARAMS)
    assert {k: v for k, v in run.params.items() if notebook.get(k) != v} == {}


def test_lora_on_gpt2_conv1d_gives_no_fan_in_fan_out_warning(tmp_path):
    from rlformal_utils import sentiment as S
    from rlformal_utils.arithmetic import task
    from rlformal_utils.pretrain import build_gpt2
    tok = task.make_tokenizer()
    build_gpt2("tiny", tok, seed=0).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = S.make_policy_trainer(tmp_path, tok, lora_rank=4, learning_rate=1e-3, batch_size=4,
                                        mini_batch_size=2, ppo_epochs=1, seed=0)
    assert not [w for w in caught if "fan_in_fan_out" in str(w.message)]
    assert any("lora_A" in n for n, p in trainer.model.named_parameters() if p.requires_grad)
