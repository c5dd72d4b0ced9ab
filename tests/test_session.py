"""The start of a run notebook (rlformal_utils/session.py): a sensible thread count, run folders that
never collide, and same seed + same threads = the same numbers."""
import json

import pandas as pd
import pytest
import torch

from rlformal_utils import session
from rlformal_utils.arithmetic import params as P


@pytest.mark.parametrize("cores, threads", [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8), (64, 8)])
def test_default_threads_is_half_the_cores_between_1_and_8(cores, threads):
    assert session.default_threads(cores) == threads


def test_default_scratch_folder_is_named_by_the_parameters(tmp_path):
    base = P.check({p.name: p.default for p in P.PARAMS})
    other = dict(base, regulariser="none")
    a = session.run_folder("arithmetic", "../scratch/arithmetic", base)
    b = session.run_folder("arithmetic", "../scratch/arithmetic/", other)
    assert a.parent == b.parent == session.Path("../scratch/arithmetic") and a != b
    assert a.name.startswith("group_batch_kl-policy_s0-") and b.name.startswith("group_none_kl-policy_s0-")
    assert session.run_folder("arithmetic", "../scratch/arithmetic", dict(base)) == a  # a rerun: its own folder
    assert session.run_folder("arithmetic", str(tmp_path / "x"), base) == tmp_path / "x"  # given: used as is
    for e in ("sentiment", "games"):
        assert session.run_folder(e, f"../scratch/{e}", {"seed": 1}).parent.name == e


def _tiny_arithmetic(out, seed, threads, capsys):
    from rlformal_utils.arithmetic import model as M, task, train as T
    values = {p.name: p.default for p in P.PARAMS}
    values.update(model_size="tiny", pretrain_examples=32, steps=4, prompts_per_step=8, k=4, n_heldout=16,
                  n_evals=2, seed=seed, output_dir=str(out), torch_threads=threads)
    config = P.check(values)
    run = session.start("arithmetic", config, str(out), threads, seed, "cpu", P.PARAMS)
    assert "torch threads" in capsys.readouterr().out  # the settings, printed once
    assert torch.get_num_threads() == (threads or session.default_threads())
    tok = task.make_tokenizer()
    splits = task.cached_splits(32 + 4 * 8, 16, seed=0)
    base = M.base_model_dir(config, splits.train[:32], tok)
    T.train(config, base, tok, splits.train[32:], {"heldout": splits.heldout}, run.log, device=torch.device("cpu"))
    run.log.finish(dict(session=run.info))
    return run


def test_same_seed_and_threads_give_identical_metrics_and_threads_are_recorded(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        runs = [_tiny_arithmetic(tmp_path / name, 5, 1, capsys) for name in ("a", "b")]
    finally:
        torch.set_num_threads(before)
    a, b = (pd.read_csv(r.log.dir / "metrics.csv") for r in runs)
    numbers = [c for c in a.columns if "seconds" not in c]
    assert len(numbers) > 10
    pd.testing.assert_frame_equal(a[numbers], b[numbers])
    summary = json.loads((runs[0].log.dir / "summary.json").read_text())
    assert summary["session"]["torch_threads"] == 1 and summary["session"]["torch"] == torch.__version__
    assert "torch_threads" not in json.loads((runs[0].log.dir / "config.json").read_text())  # bookkeeping only
