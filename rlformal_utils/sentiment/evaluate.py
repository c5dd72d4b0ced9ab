"""Held-out evaluation of a policy: reward, independent judge, and fluency, in eval mode."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .fluency import distinct_n, perplexity, repetition, response_nll
from .reward import is_positive
from .sampling import decode_pairs, sample_responses


def evaluate(policy, reference, tokenizer, prompts: list[dict], reward_model, judge, seed: int,
             likeness=None, batch_size: int = 256, **sampling) -> pd.DataFrame:
    """One sampled response per held-out prompt, with its reward, the independent judge's score and
    verdict, its NLL under the frozen base model and (with ``likeness``) its review-likeness.

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
    return df


def eval_summary(df: pd.DataFrame) -> dict:
    """Mean / median / sd of the reward, the judge's positive share, the perplexity under the frozen
    base (exp of the mean NLL per response token), distinct-1/2 and repetition of the responses,
    and the mean review-likeness of review start + response."""
    nll = df[["response_nll", "response_tokens"]].to_numpy(dtype=float)
    out = dict(reward_mean=float(df["reward"].mean()), reward_median=float(df["reward"].median()),
               reward_sd=float(df["reward"].std(ddof=0)), reward_positive_share=float(df["reward_positive"].mean()),
               judge_positive_share=float(df["judge_positive"].mean()), judge_mean=float(df["judge_score"].mean()),
               perplexity=perplexity(nll), response_tokens_mean=float(df["response_tokens"].mean()),
               distinct_1=distinct_n(df["response"], 1), distinct_2=distinct_n(df["response"], 2),
               repetition=repetition(df["response"]))
    if "review_similarity" in df:
        out["review_similarity"] = float(np.mean(df["review_similarity"]))
    out["n"] = len(df)
    return out
