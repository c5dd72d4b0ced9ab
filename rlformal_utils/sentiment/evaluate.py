"""Held-out evaluation of a policy: reward, independent judge, and fluency, in eval mode."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .fluency import ReviewLikeness, distinct_n, perplexity, repetition, response_nll
from .params import judge_name, prompt_lengths, sampling
from .ontask import make_ontask
from .reward import MiniLMEncoder, is_positive, make_reward
from .sampling import PROMPT_FORMATS, decode_pairs, make_prompts, prompt_prefix, sample_responses


@dataclass
class Scorers:
    """What every text is measured with: the reward PPO sees, the independent judge (never seen by
    PPO), review-likeness and the review-vs-other classifier (``ontask``, is it still a review?);
    ``classifier`` holds the MiniLM sentiment classifier's held-out metrics when the reward or the
    judge is that classifier."""
    reward: object
    judge: object
    judge_name: str
    likeness: ReviewLikeness
    classifier: dict | None = None
    ontask: object | None = None


def make_scorers(config: dict, train_reviews: pd.DataFrame, cache_dir=None) -> Scorers:
    """The run's reward, judge, review-likeness bank (a sample of ``likeness_bank`` train-movie
    snippets) and review-vs-other classifier. The classifiers and the bank's embeddings are cached by
    their configuration."""
    data, fraction, max_train = config["data"], config["heldout_fraction"], config["classifier_max_train"]
    reward = make_reward(config["reward"], data, fraction, max_train, cache_dir)
    judge = make_reward(judge_name(config), data, fraction, max_train, cache_dir)
    classifier = next((m.metrics for m in (reward, judge) if hasattr(m, "metrics")), None)
    encoder = next((m.encoder for m in (reward, judge) if hasattr(m, "encoder")), None) or MiniLMEncoder()
    bank = train_reviews.sample(min(config["likeness_bank"], len(train_reviews)), random_state=0)["text"]
    likeness = ReviewLikeness(encoder, bank, k=config["likeness_k"], cache_dir=cache_dir,
                              cache_key=dict(data=data, heldout_fraction=fraction))
    ontask = make_ontask(data, fraction, max_train, cache_dir, encoder)
    return Scorers(reward, judge, judge_name(config), likeness, classifier, ontask)


LABELS = {0: "rotten/negative", 1: "fresh/positive"}


def real_review_scale(scorers: Scorers, held_reviews: pd.DataFrame, per_label: int = 100,
                      chars: int = 80) -> tuple[pd.DataFrame, float, pd.DataFrame]:
    """What the three measures give for real held-out reviews, cut to ``chars`` characters (about
    the length of review start + response): the mean reward, judge-positive share and
    review-likeness (and share judged a review) per label (up to ``per_label`` reviews each), the mean review-likeness of all
    of them, and the scored reviews themselves (one row each, ``label`` named)."""
    probe = pd.concat([d.sample(min(len(d), per_label), random_state=0) for _, d in held_reviews.groupby("label")])
    cut = probe["text"].str.slice(0, chars).tolist()
    probe = probe.assign(reward=scorers.reward(cut), judge_positive=is_positive(scorers.judge, scorers.judge(cut)),
                         review_similarity=scorers.likeness(cut))
    columns = ["reward", "judge_positive", "review_similarity"]
    if scorers.ontask is not None:
        probe["review_share"] = scorers.ontask(cut)
        columns.append("review_share")
    scale = probe.groupby("label")[columns].mean()
    return (scale.rename(index=LABELS), float(probe["review_similarity"].mean()),
            probe.assign(label=probe["label"].map(LABELS)))


def data_text(reviews: pd.DataFrame, train: pd.DataFrame, held: pd.DataFrame, scorers: Scorers,
              reward: str) -> str:
    """The data and the scorers in a few lines."""
    lines = [f"{len(reviews)} snippets: {len(train)} labelled train, {len(held)} labelled held-out "
             f"({(train['label'] == 1).mean():.0%} positive in train); reward {reward!r}, judge {scorers.judge_name!r}"]
    if scorers.classifier:
        c = scorers.classifier
        lines.append(f"classifier: {c['n_train']} train snippets, held-out accuracy {c['heldout_accuracy']:.3f} "
                     f"(balanced {c['heldout_balanced_accuracy']:.3f}; VADER {c['vader_heldout_accuracy']:.3f})")
    if scorers.ontask is not None:
        m = scorers.ontask.metrics
        lines.append(f"review-vs-other: {m['n_train']} train texts; judged reviews: {m['heldout_review_share']:.2f} of "
                     f"held-out reviews, {m['heldout_other_share']:.2f} of held-out non-review text")
    return "\n".join(lines)


def evaluate(policy, reference, tokenizer, prompts: list[dict], reward_model, judge, seed: int,
             likeness=None, batch_size: int = 256, ontask=None, **sampling) -> pd.DataFrame:
    """One sampled response per held-out prompt, with its reward, the independent judge's score and
    verdict, its NLL under the frozen base model, (with ``likeness``) its review-likeness and (with
    ``ontask``, the review-vs-other classifier) whether review start + response is judged a review.

    ``reference`` is the frozen base model, or None when ``policy`` is a peft (LoRA) model: the
    base is then the policy with its adapter disabled. Everything runs in eval mode without
    gradients and leaves the models in the mode they were in. Sampling uses its own seed (the
    global RNG is restored afterwards), so before/after evaluations see the same random stream."""
    queries = [p["query"] for p in prompts]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        responses = sample_responses(policy, tokenizer, queries, [p["response_length"] for p in prompts], batch_size,
                                     **sampling)
    full, resp = decode_pairs(tokenizer, [p.get("review", p["query"]) for p in prompts], responses)
    rewards = reward_model(full)
    judged = judge(full)
    if reference is None:
        with policy.disable_adapter():
            nll = response_nll(policy, queries, responses, tokenizer.pad_token_id)
    else:
        nll = response_nll(reference, queries, responses, tokenizer.pad_token_id)
    df = pd.DataFrame(dict(prompt=[p["query_text"] for p in prompts], response=resp, text=full,
                           reward=rewards, judge_score=judged, judge_positive=is_positive(judge, judged),
                           reward_positive=is_positive(reward_model, rewards),
                           response_nll=nll[:, 0], response_tokens=nll[:, 1].astype(int)))
    if likeness is not None:
        df["review_similarity"] = likeness(full)
    if ontask is not None:
        df["review"] = ontask(full)
    return df


def eval_summary(df: pd.DataFrame) -> dict:
    """Mean / median / sd of the reward, the judge's positive share, the perplexity under the frozen
    base (exp of the mean NLL per response token), distinct-1/2 and repetition of the responses,
    the mean review-likeness of review start + response and the share judged a review."""
    nll = df[["response_nll", "response_tokens"]].to_numpy(dtype=float)
    out = dict(reward_mean=float(df["reward"].mean()), reward_median=float(df["reward"].median()),
               reward_sd=float(df["reward"].std(ddof=0)), reward_positive_share=float(df["reward_positive"].mean()),
               judge_positive_share=float(df["judge_positive"].mean()), judge_mean=float(df["judge_score"].mean()),
               perplexity=perplexity(nll), response_tokens_mean=float(df["response_tokens"].mean()),
               distinct_1=distinct_n(df["response"], 1), distinct_2=distinct_n(df["response"], 2),
               repetition=repetition(df["response"]))
    if "review_similarity" in df:
        out["review_similarity"] = float(np.mean(df["review_similarity"]))
    if "review" in df:
        out["review_share"] = float(np.mean(df["review"]))
    out["n"] = len(df)
    return out


def evaluate_policy(policy, reference, tokenizer, prompts: list[dict], scorers: Scorers, config: dict) -> pd.DataFrame:
    """``evaluate`` with the run's scorers, its sampling settings and its evaluation seed."""
    return evaluate(policy, reference, tokenizer, prompts, scorers.reward, scorers.judge, seed=config["data_seed"],
                    likeness=scorers.likeness, ontask=scorers.ontask, **sampling(config))


# parameters that cannot change the untrained policy's held-out evaluation (a fresh LoRA adapter
# adds exactly zero, and evaluation samples with its own seed, data_seed)
_RL_ONLY = {"seed", "ppo_steps", "ppo_lr", "ppo_batch_size", "ppo_mini_batch_size", "ppo_epochs", "kl_mode",
            "kl_coef", "adaptive_kl", "eval_every", "n_examples", "format_probe_prompts", "algorithm", "group_size",
            "group_epochs", "clip", "entropy_coef"}


def evaluate_before(config: dict, evaluate_fn, cache_dir=None) -> pd.DataFrame:
    """``evaluate_fn()`` on the untrained policy, computed once per configuration and then read from
    the cache (``.cache/sentiment-before``): every RL seed and KL setting starts from the same model
    and is evaluated on the same prompts with the same sampling seed, so the result is the same."""
    from ..runs import cached_value
    key = dict({k: v for k, v in config.items() if k not in _RL_ONLY}, version=3)
    return cached_value("sentiment-before", key, evaluate_fn, cache_dir)


def compare_prompt_formats(policy, reference, tokenizer, texts, scorers: Scorers, config: dict,
                           prepend_bos: bool = False) -> pd.DataFrame:
    """The untrained policy on the same ``format_probe_prompts`` held-out review starts in each
    prompt format (``chat`` only with a chat template): review-likeness, perplexity, reward, the
    judge's positive share, distinct-2, prompt length in tokens and the evaluation's seconds."""
    rows = {}
    for fmt in PROMPT_FORMATS:
        if fmt == "chat" and not getattr(tokenizer, "chat_template", None):
            continue  # a tokenizer trained here has no chat template
        prompts = make_prompts(tokenizer, texts, config["format_probe_prompts"], seed=20_000 + config["data_seed"],
                               prefix=prompt_prefix(tokenizer, fmt, prepend_bos), **prompt_lengths(config))
        t = time.time()
        result = eval_summary(evaluate_policy(policy, reference, tokenizer, prompts, scorers, config))
        rows[fmt] = dict(result, seconds=time.time() - t,
                         prompt_tokens=float(np.mean([len(p["query"]) for p in prompts])))
    columns = ["review_similarity", "review_share", "perplexity", "reward_mean", "judge_positive_share",
               "distinct_2", "prompt_tokens", "seconds"]
    table = pd.DataFrame(rows).T
    return table[[c for c in columns if c in table]]


def before_after(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """The held-out samples side by side (``eval_samples.csv``): the prompt, then every column of
    the evaluation before PPO with the suffix ``_before`` and after PPO with ``_after``."""
    samples = pd.concat([before.add_suffix("_before"), after.drop(columns=["prompt"]).add_suffix("_after")], axis=1)
    return samples.rename(columns={"prompt_before": "prompt"})
