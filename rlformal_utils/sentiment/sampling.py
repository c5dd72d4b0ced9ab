"""Prompts (the start of a review, optionally after an instruction or inside a chat template)
and sampling of responses, always in eval mode."""
from __future__ import annotations

import numpy as np
import torch

from .. import devices
from ..modes import eval_mode
from ..pretrain import left_pad

# How a review start is shown to the policy. The reward and the judge always read the review
# alone (review start + response), never the instruction or the template.
PROMPT_FORMATS = ("plain", "instruction", "chat")
INSTRUCTION = "Write a short movie review."


def prompt_prefix(tokenizer, prompt_format: str, prepend_bos: bool = False) -> list[int]:
    """Token ids placed before every review start:
      * ``"plain"``: nothing (or the BOS token of a tokenizer trained here);
      * ``"instruction"``: the instruction as plain text on its own line;
      * ``"chat"``: the tokenizer's chat template with the instruction as the user turn; the review
        start opens the assistant turn."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
    bos = [tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []
    if prompt_format == "plain":
        return bos
    if prompt_format == "instruction":
        return bos + tokenizer.encode(INSTRUCTION + "\n", add_special_tokens=False)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt_format='chat' needs a tokenizer with a chat template (e.g. smollm2-135m); "
                         "use 'plain' or 'instruction'")
    text = tokenizer.apply_chat_template([{"role": "user", "content": INSTRUCTION}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def make_prompts(tokenizer, texts, n: int, seed: int, prompt_min: int = 2, prompt_max: int = 7,
                 response_min: int = 4, response_max: int = 15, prepend_bos: bool = False,
                 prefix: list[int] | None = None) -> list[dict]:
    """``n`` prompts: the first k in [prompt_min, prompt_max] tokens of a review (cycling through the
    shuffled reviews), each with the length in [response_min, response_max] of its response.
    Reviews shorter than k + 1 tokens are skipped. Same seed, same prompts. Each prompt holds
    ``query`` (prefix + review start: what the policy sees), ``review`` (the review start alone:
    what the reward reads), ``query_text`` and ``response_length``. ``prefix`` (token ids, see
    ``prompt_prefix``) overrides ``prepend_bos``."""
    rng = np.random.default_rng(seed)
    texts = list(texts)
    order = rng.permutation(len(texts))
    if prefix is None:
        prefix = [tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []
    out, i, misses = [], 0, 0
    while len(out) < n:
        text = texts[order[i % len(order)]]
        i += 1
        k = int(rng.integers(prompt_min, prompt_max + 1))
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= k:
            misses += 1
            if misses > 100 * n + len(texts):
                raise ValueError(f"too few reviews longer than {prompt_max} tokens")
            continue
        out.append(dict(query=torch.tensor(list(prefix) + ids[:k], dtype=torch.long),
                        review=torch.tensor(ids[:k], dtype=torch.long), query_text=tokenizer.decode(ids[:k]),
                        response_length=int(rng.integers(response_min, response_max + 1))))
    return out


def sample_responses(model, tokenizer, queries: list[torch.Tensor], lengths: list[int], batch_size: int = 256,
                     top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0, rollout: bool = False):
    """Sampling (by default pure: top_k=0, top_p=1, temperature 1) of ``lengths[i]`` new tokens after
    ``queries[i]``; a response stops early after an EOS. ``model`` is a causal LM (a peft model
    samples with its adapter). Runs in eval mode without gradients and leaves the model in the
    mode it found. One left-padded ``generate`` call per chunk, up to the longest length; each
    row is then cut to its own length, which has the same distribution as sampling that many
    tokens. PAD and BOS are never sampled when they differ from EOS.

    ``rollout=True`` also returns what PPO's no-grad pass would compute from (query, response),
    read off the sampling pass instead: per response, the log-probability of each of its tokens
    under ``model`` (from the raw logits, as trl computes them) and the model's last hidden state
    at the position that predicts each token (where trl's value head reads). Returns
    ``(responses, logprobs, hidden)`` then, one tensor per response."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    banned = sorted({pad, tokenizer.bos_token_id} - {eos, None})
    out: list[torch.Tensor] = []
    logprobs: list[torch.Tensor] = []
    hidden: list[torch.Tensor] = []
    device = devices.of(model)
    with eval_mode(model):
        for s in range(0, len(queries), batch_size):
            qs, ls = queries[s:s + batch_size], lengths[s:s + batch_size]
            ids, att = left_pad(qs, pad)
            ids, att, width = ids.to(device), att.to(device), ids.shape[1]
            gen = model.generate(input_ids=ids, attention_mask=att, do_sample=True, top_k=top_k, top_p=top_p,
                                 temperature=temperature, max_new_tokens=max(ls), min_new_tokens=1,
                                 pad_token_id=pad, eos_token_id=eos, suppress_tokens=banned or None,
                                 return_dict_in_generate=True, output_logits=rollout,
                                 output_hidden_states=rollout)
            new = gen.sequences[:, width:]
            if rollout:
                # step t's raw logits predict token t; its last-layer hidden state is the prompt's
                # last position (t = 0) or the position of token t - 1
                step_logprobs = torch.stack(gen.logits, 1).log_softmax(-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
                step_hidden = torch.cat([gen.hidden_states[0][-1][:, -1:]] + [h[-1] for h in gen.hidden_states[1:]], 1)
            for i, (row, n) in enumerate(zip(new, ls)):
                row = row[:n]
                hits = (row == eos).nonzero()
                if len(hits):
                    row = row[: hits[0, 0] + 1]  # keep the EOS itself
                out.append(row.clone().cpu())  # responses live on the CPU, like the prompts
                if rollout:
                    logprobs.append(step_logprobs[i, :len(row)])
                    hidden.append(step_hidden[i, :len(row)])
    return (out, logprobs, hidden) if rollout else out


def decode_pairs(tokenizer, reviews, responses) -> tuple[list[str], list[str]]:
    """(review start + response texts for the reward, response texts alone), special tokens dropped.
    ``reviews`` are the review starts without any prefix (``prompt["review"]``)."""
    full = tokenizer.batch_decode([torch.cat([q, r]) for q, r in zip(reviews, responses)], skip_special_tokens=True)
    resp = tokenizer.batch_decode(responses, skip_special_tokens=True)
    return full, resp


def prompt_lengths(config: dict) -> dict:
    """The prompt and response length ranges of a run's config, as ``make_prompts`` takes them."""
    return dict(prompt_min=config["prompt_min_tokens"], prompt_max=config["prompt_max_tokens"],
                response_min=config["response_min_tokens"], response_max=config["response_max_tokens"])


def run_prompts(config: dict, tokenizer, prefix: list[int], train_texts, heldout_texts) -> tuple[list[dict], list[dict]]:
    """A run's prompts: ``ppo_steps x ppo_batch_size`` training prompts from train-movie reviews
    (seeded by ``seed``) and ``n_heldout`` held-out prompts (seeded by ``data_seed``, so every RL
    seed is evaluated on the same prompts)."""
    lengths = prompt_lengths(config)
    train = make_prompts(tokenizer, train_texts, max(config["ppo_steps"], 1) * config["ppo_batch_size"],
                         seed=config["seed"], prefix=prefix, **lengths)
    heldout = make_prompts(tokenizer, heldout_texts, config["n_heldout"], seed=10_000 + config["data_seed"],
                           prefix=prefix, **lengths)
    return train, heldout
