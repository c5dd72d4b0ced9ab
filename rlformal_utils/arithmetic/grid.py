"""The arithmetic runs of each profile and what they cost (``rlformal_utils.runner`` runs them).

quick: the paper's weak start (256 chains, one epoch), three seeds per arm: the group-relative update with
and without batch entropy (1M answers each), and the paper's PPO with KL 0 and no entropy term, token
entropy or batch entropy (150k answers each). PPO's four epochs over every answer make it ~13x dearer
per answer than the group update, and the quick profile must stay within 45 minutes on 2 cores: the
sweeps and the arms that answer no claim of the paper live in ``long``.
long: PPO with both entropy terms at once (three seeds), the batch-entropy sweeps (its coefficient
0.1 / 1.0 for both updates, PPO's learning rate 1e-3) and the KL-controller sweep (one seed per point), trl's
default frozen-reference PPO and the chosen controller with three seeds, the supervised reference, the
competent start, and PPO twice as long.
"""
from __future__ import annotations

from ..grid import Run
from .params import answers_per_step

NOTEBOOK_OVERHEAD_S = 15  # kernel start, imports, problems, evaluations (measured ~13 s)

# seconds per answer of one run on one thread of the reference machine (2 cores), with a second run on
# the other core: tiny GPT-2, the shortened last-position pass of one_token.gpt2_last_position. Measured
# from the quick profile's runs (results/runner_log.csv); the benchmark, alone on the machine, is ~20 % faster
SECONDS_PER_ANSWER = {"group": 0.000092, "ppo": 0.00125, "supervised": 0.0004, "none": 0.0}

# cost of a larger model relative to tiny (extrapolated, not measured). The last-position shortcut of
# one_token.gpt2_last_position saves ~3/4 of ONE block: ~37 % of tiny's 2 blocks, ~6 % of gpt2-small's
# 12, so the factors are those fitted before it (2.5, 8, 60) x 1.6 x the share it leaves of each depth
SIZE_FACTOR = {"tiny": 1.0, "small": 3.2, "medium": 11.0, "gpt2-small": 90.0}

ENTROPY_COEF = 0.3  # the paper's coefficient of each entropy term
# The frozen-reference PPO arm whose controller can reach its target: chosen in the long profile's
# controller sweep (fixed coefficients 0.01 / 0.03 / 0.1 and an adaptive target of 4 nats, seed 0)
FROZEN = dict(kl_reference="frozen", kl_controller="fixed", kl_coef=0.03)
CONTROLLER_SWEEP = [dict(kl_controller="fixed", kl_coef=c) for c in (0.01, 0.03, 0.1)] + \
                   [dict(kl_controller="adaptive", kl_target=4.0, kl_coef=0.2)]


def run_name(base: dict, p: dict, seed: int | None) -> str:
    """A run's name, read off the parameters that differ between arms (see PLAN: one folder per run)."""
    pre = f"pre{p['pretrain_examples']}" + (f"x{p['pretrain_steps']}" if p.get("pretrain_steps") else "")
    if p["algorithm"] in ("none", "supervised"):
        name = f"{p['algorithm']}_{pre}"
    else:
        ref = p["kl_reference"]
        if ref == "frozen" and p.get("kl_controller", "trl") == "fixed":
            ref += f"-fixed{p['kl_coef']:g}"
        elif ref == "frozen" and p.get("kl_controller", "trl") == "adaptive":
            ref += f"-target{p['kl_target']:g}"
        name = f"{p['algorithm']}_{p['regulariser']}_kl-{ref}_{pre}"
        if p["regulariser"] != "none" and p.get("entropy_coef", ENTROPY_COEF) != ENTROPY_COEF:
            name += f"_c{p['entropy_coef']:g}"
        if p.get("rl_lr") != base.get("rl_lr"):
            name += f"_lr{p['rl_lr']:g}"
        if p.get("steps") != base.get("steps"):
            name += f"_steps{p['steps']}"
        if p.get("mask_banned") is False:
            name += "_unmasked"
    if seed is not None and p["algorithm"] != "none":
        name += f"_s{seed}"
    return name


def _run(base: dict, seed: int | None = None, **arm) -> Run:
    p = dict(base, **arm)
    if seed is not None:
        p["seed"] = seed
    answers = p["steps"] * answers_per_step(dict({"k": 8}, **p))
    est = NOTEBOOK_OVERHEAD_S + answers * SECONDS_PER_ANSWER[p["algorithm"]] * SIZE_FACTOR[p.get("model_size", "tiny")]
    return Run("arithmetic", run_name(base, p, seed), p, est)


def _settings(profile: str):
    """(group base, ppo base, competent start, seeds) of a profile."""
    weak = dict(pretrain_examples=256, pretrain_steps=0, pretrain_lr=1e-4)      # the paper's weak start
    competent = dict(pretrain_examples=4096, pretrain_steps=1500, pretrain_lr=1e-3)
    if profile in ("quick", "long"):
        group = dict(model_size="tiny", algorithm="group", regulariser="batch", entropy_coef=ENTROPY_COEF,
                     kl_reference="policy", rl_lr=1e-3, steps=3906, prompts_per_step=32, k=8, epochs=2,
                     n_heldout=512, n_evals=16, **weak)
        ppo = dict(group, algorithm="ppo", regulariser="none", rl_lr=3e-4, steps=2344, prompts_per_step=64, epochs=4)
        return group, ppo, competent, [0, 1, 2]
    if profile == "smoke":  # seconds, for the tests
        group = dict(model_size="tiny", algorithm="group", regulariser="batch", entropy_coef=ENTROPY_COEF,
                     kl_reference="policy", rl_lr=1e-3, steps=6, prompts_per_step=8, k=4, epochs=2, n_heldout=16,
                     n_evals=3, pretrain_examples=32, pretrain_steps=0, pretrain_lr=1e-4)
        ppo = dict(group, algorithm="ppo", regulariser="none", steps=3, prompts_per_step=8, epochs=2)
        return group, ppo, dict(pretrain_examples=64, pretrain_steps=2, pretrain_lr=1e-3), [0]
    if profile == "paper":  # GPT-2 small, the paper's PPO settings (lr 1.41e-5, batch 128, 4 epochs, ~1000 steps)
        group = dict(model_size="gpt2-small", algorithm="group", regulariser="batch", entropy_coef=ENTROPY_COEF,
                     kl_reference="policy", rl_lr=1e-4, steps=3906, prompts_per_step=32, k=8, epochs=2,
                     n_heldout=1024, n_evals=16, **weak)
        ppo = dict(group, algorithm="ppo", regulariser="none", rl_lr=1.41e-5, steps=1000, prompts_per_step=128,
                   epochs=4)
        return group, ppo, dict(competent, pretrain_steps=3000, pretrain_lr=1e-4), [0, 1, 2]
    return None


def _main_arms(group: dict, ppo: dict, seeds: list[int]) -> list[Run]:
    runs = [_run(group, None, algorithm="none")]
    for seed in seeds:
        runs += [_run(group, seed),                                  # the headline arm
                 _run(group, seed, regulariser="none")]              # does batch entropy matter?
        runs += [_run(ppo, seed, regulariser=r) for r in ("none", "token", "batch")]  # the paper: PPO, KL 0
    return runs


def _reference_arms(group: dict, ppo: dict, competent: dict, seeds: list[int]) -> list[Run]:
    runs = [_run(group, None, algorithm="none", **competent)]
    for seed in seeds:
        runs += [_run(ppo, seed, regulariser="both"),                                      # both terms at once
                 _run(ppo, seed, kl_reference="frozen", kl_controller="trl", kl_coef=0.2),  # trl's default
                 _run(ppo, seed, **FROZEN),                                                # a reachable KL
                 _run(group, seed, algorithm="supervised"),                                # the supervised reference
                 _run(group, seed, rl_lr=1e-4, **competent)]                               # a model that already adds
    return runs


def _entropy_sweeps(group: dict, ppo: dict) -> list[Run]:
    """Batch entropy's coefficient (group and PPO) and PPO's learning rate, one seed per point."""
    runs = [_run(group, 0, entropy_coef=c) for c in (0.1, 1.0)]                    # c = 0 and 0.3: the main arms
    runs += [_run(ppo, 0, regulariser="batch", entropy_coef=c) for c in (0.1, 1.0)]
    runs += [_run(ppo, 0, regulariser="batch", rl_lr=1e-3)]                         # main arms: 3e-4
    return runs


def _controller_sweep(ppo: dict) -> list[Run]:
    return [_run(ppo, 0, kl_reference="frozen", **c) for c in CONTROLLER_SWEEP if c != FROZEN]


# classroom: the paper's central effect in about a minute per arm. The group-relative update from the
# paper's weak start, with and without batch entropy, 1000 steps (256k answers): in the quick profile's
# runs the arms had parted by then (held-out exact match ~0.6-0.8 against ~0.2-0.3, the most common
# answer's share ~0.07 against ~0.3). The cosine schedule ends at 1000 steps here.
CLASSROOM = dict(model_size="tiny", algorithm="group", regulariser="batch", entropy_coef=ENTROPY_COEF,
                 kl_reference="policy", rl_lr=1e-3, steps=1000, prompts_per_step=32, k=8, epochs=2,
                 n_heldout=512, n_evals=12, pretrain_examples=256, pretrain_steps=0, pretrain_lr=1e-4)


def runs(profile: str) -> list[Run]:
    """The arithmetic runs of ``profile`` (see notebooks/arithmetic.ipynb for the parameters)."""
    if profile == "classroom":
        return [_run(CLASSROOM, None, algorithm="none"),  # the weak start itself (seconds), for the figures
                _run(CLASSROOM, 0), _run(CLASSROOM, 0, regulariser="none")]
    settings = _settings(profile)
    if settings is None:
        return []
    group, ppo, competent, seeds = settings
    if profile == "smoke":  # one run of each kind the figures draw
        return [_run(group, None, algorithm="none"), _run(group, None, algorithm="none", **competent),
                _run(group, 0), _run(group, 0, regulariser="none"), _run(ppo, 0),
                _run(ppo, 0, kl_reference="frozen", kl_controller="trl", kl_coef=0.2),
                _run(group, 0, algorithm="supervised"), _run(group, 0, rl_lr=1e-4, **competent)]
    if profile == "long":
        diagnostics = [_run(ppo, 0, kl_reference="frozen", kl_controller="trl", kl_coef=0.2, steps=4688, mask_banned=m)
                       for m in (True, False)]  # PPO twice as long: trl-style vs masked banned tokens
        return (_reference_arms(group, ppo, competent, seeds) + _entropy_sweeps(group, ppo) + _controller_sweep(ppo)
                + diagnostics)
    runs = _main_arms(group, ppo, seeds)
    if profile == "paper":
        runs += _entropy_sweeps(group, ppo) + _reference_arms(group, ppo, competent, seeds) + _controller_sweep(ppo)
    return runs
