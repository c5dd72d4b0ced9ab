"""The arithmetic runs' files as tables: one row per logged step and one row per run, with the arm each
run belongs to. Read by the figures (``plots``) and the stability analysis (``stability``)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..runs import complete_runs

REG_LABEL = {"none": "no entropy term", "token": "token entropy", "batch": "batch entropy", "both": "both entropies"}
WEAK = 256  # the paper's pretraining set: 256 chains, one epoch
# the quick profile's settings; an arm's name says where a run departs from them
DEFAULTS = {"entropy_coef": 0.3, "rl_lr": {"group": 1e-3, "ppo": 3e-4}, "steps": {"group": 3906, "ppo": 2344}}


def kl_label(cfg: dict) -> str:
    """'KL 0', or the frozen reference with its controller."""
    if cfg["kl_reference"] != "frozen":
        return "KL 0"
    controller = cfg.get("kl_controller", "trl")
    if controller == "fixed":
        return f"frozen ref + fixed KL {cfg['kl_coef']:g}"
    if controller == "adaptive":
        return f"frozen ref + adaptive KL (target {cfg['kl_target']:g})"
    return "frozen ref + trl's adaptive KL"


def arm_of(cfg: dict) -> str:
    """A readable name of the arm a run belongs to (its seed left out)."""
    if cfg["algorithm"] == "none":
        return "base model"
    if cfg["algorithm"] == "supervised":
        return "supervised"
    alg = cfg["algorithm"]
    name = f"{'group-relative' if alg == 'group' else 'PPO'}, {REG_LABEL[cfg['regulariser']]}"
    if cfg["regulariser"] != "none" and cfg.get("entropy_coef", DEFAULTS["entropy_coef"]) != DEFAULTS["entropy_coef"]:
        name += f" {cfg['entropy_coef']:g}"
    name += f", {kl_label(cfg)}"
    if alg in DEFAULTS["rl_lr"] and cfg["rl_lr"] != DEFAULTS["rl_lr"][alg]:
        name += f", lr {cfg['rl_lr']:g}"
    if alg in DEFAULTS["steps"] and cfg["steps"] != DEFAULTS["steps"][alg]:
        name += f", {cfg['steps']} steps"
    if not cfg.get("mask_banned", True):
        name += ", banned tokens trained (as trl)"
    return name


def is_sweep_point(run) -> bool:
    """A run of the coefficient or learning-rate sweeps: an entropy coefficient or a learning rate other
    than the quick profile's (``run``: a row of ``load_runs``)."""
    alg = run["algorithm"]
    if alg not in DEFAULTS["rl_lr"]:
        return False
    coef = run["regulariser"] != "none" and not np.isclose(run["entropy_coef"], DEFAULTS["entropy_coef"])
    return bool(coef or not np.isclose(run["rl_lr"], DEFAULTS["rl_lr"][alg]))


def start_of(cfg: dict) -> str:
    steps = f"{cfg['pretrain_steps']} steps" if cfg["pretrain_steps"] else "1 epoch"
    return f"{cfg['pretrain_examples']} chains, {steps}"


def load_runs(results_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All complete runs: (metrics rows with the run's labels, one tidy row per run)."""
    frames, rows = [], []
    for run, summary in complete_runs(results_dir):
        cfg = summary["config"]
        info = dict(run=run.name, arm=arm_of(cfg), start=start_of(cfg), algorithm=cfg["algorithm"],
                    regulariser=cfg["regulariser"] if cfg["algorithm"] in ("group", "ppo") else "none",
                    kl_reference=cfg["kl_reference"] if cfg["algorithm"] in ("group", "ppo") else "",
                    pretrain_chains=cfg["pretrain_examples"], pretrain_steps=cfg["pretrain_steps"], seed=cfg["seed"])
        # the settings the sweeps vary (kept out of the metrics rows: kl_coef is also a logged column there)
        setting = dict(entropy_coef=cfg.get("entropy_coef", DEFAULTS["entropy_coef"]),
                       kl_controller=cfg.get("kl_controller", "trl"), kl_coef=cfg.get("kl_coef", 0.2),
                       kl_target=cfg.get("kl_target", 3.0), steps=cfg.get("steps", 0),
                       mask_banned=cfg.get("mask_banned", True))
        m = pd.read_csv(run / "metrics.csv")
        frames.append(m.assign(**info))
        h, u = summary["final"]["heldout"], summary["final"]["unseen"]
        ev = m.dropna(subset=["heldout_greedy_exact_match"])
        reached = ev.loc[ev["heldout_greedy_exact_match"] >= 0.9, "answers_seen"]
        rows.append(dict(info, **setting, rl_lr=cfg["rl_lr"], answers_seen=summary["answers_seen"],
                         heldout_exact_match=h["greedy_exact_match"], unseen_pairs_exact_match=u["greedy_exact_match"],
                         heldout_sampled_exact_match=h["sampled_exact_match"], heldout_reward=h["sampled_reward"],
                         max_share=h["eval_max_share"], mutual_information=h["eval_mutual_information"],
                         batch_entropy=h["eval_batch_entropy"], answers_to_0_9=reached.min() if len(reached) else np.nan,
                         naive_reward=summary["naive_reward"], naive_answer=summary["naive_answer"],
                         true_answers=summary["true_answers"], wall_seconds=summary["train_seconds"],
                         cpu_seconds=summary["train_cpu_seconds"]))
    if not rows:
        raise FileNotFoundError(f"no complete runs under {results_dir}")
    return pd.concat(frames, ignore_index=True), pd.DataFrame(rows)
