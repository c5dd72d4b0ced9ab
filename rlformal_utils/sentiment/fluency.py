"""Fluency and staying on task: perplexity under the frozen base model, distinct-n and repetition,
and review-likeness (MiniLM similarity to real review snippets)."""
from __future__ import annotations

import math
import re

import numpy as np
import torch

from .. import devices
from ..modes import eval_mode
from ..runs import cached_dir

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """Lower-case words (letters and digits, with an inner apostrophe); punctuation is dropped."""
    return WORD.findall(str(text).lower())


def distinct_n(texts, n: int) -> float:
    """Distinct-n over a set of texts: the number of different word n-grams divided by the number
    of n-grams (each text contributes its own n-grams; none cross text boundaries). 1 means no
    n-gram ever repeats; a policy that writes the same phrase everywhere goes towards 0. NaN when
    there is no n-gram at all."""
    seen, total = set(), 0
    for text in texts:
        w = words(text)
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else float("nan")


def repetition(texts) -> float:
    """Mean over texts (with at least one word) of the share of words that repeat an earlier word of
    the same text ("great great great film" -> 2/4). NaN when no text has a word."""
    shares = [(len(w) - len(set(w))) / len(w) for w in (words(t) for t in texts) if w]
    return float(np.mean(shares)) if shares else float("nan")


def response_nll(model, queries, responses, pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Summed negative log-likelihood (nats) of each response given its prompt under ``model`` (a
    causal LM), and per-response token counts: returns an array of shape (n, 2). Runs in eval mode
    without gradients and leaves the model in the mode it found. Sequences are batched by length
    (less padding), and the vocabulary projection is computed only from the first position that
    predicts a response token on (``logits_to_keep``)."""
    out, device = np.zeros((len(queries), 2)), devices.of(model)
    seqs = [torch.cat([q, r]) for q, r in zip(queries, responses)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    with eval_mode(model):
        for s in range(0, len(order), batch_size):
            rows = order[s:s + batch_size]
            width = max(len(seqs[i]) for i in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            att = torch.zeros_like(ids)
            for j, i in enumerate(rows):
                ids[j, :len(seqs[i])] = seqs[i]
                att[j, :len(seqs[i])] = 1
            first = min(len(queries[i]) for i in rows) - 1  # logits at position t predict token t + 1
            logits = model(input_ids=ids.to(device), attention_mask=att.to(device),
                           logits_to_keep=width - first).logits[:, :-1].float().cpu()
            tok_logp = torch.log_softmax(logits, -1).gather(-1, ids[:, first + 1:, None])[..., 0]
            for j, i in enumerate(rows):
                a = len(queries[i]) - 1 - first
                out[i] = (-tok_logp[j, a:a + len(responses[i])].sum().item(), len(responses[i]))
    return out


def perplexity(nll_and_tokens: np.ndarray) -> float:
    """exp of the mean NLL per response token, over all responses (rows of ``response_nll``)."""
    tokens = max(float(nll_and_tokens[:, 1].sum()), 1.0)
    return float(math.exp(min(nll_and_tokens[:, 0].sum() / tokens, 50.0)))


class ReviewLikeness:
    """How much a text reads like a critic's review: the mean cosine similarity (MiniLM embeddings)
    of the text to its ``k`` nearest snippets in a bank of real review snippets. Real held-out
    reviews cut to 80 characters score about 0.44 (the quick profile). A coarse measure: it barely
    moved when PPO drifted from reviews towards praise ("Your vision, passion"), see the README.
    The bank's embeddings are cached by configuration."""

    def __init__(self, encoder, bank_texts, k: int = 5, cache_key: dict | None = None, cache_dir=None):
        self.encoder, self.k = encoder, k
        bank_texts = list(bank_texts)
        if cache_key is None:
            self.bank = encoder(bank_texts)
        else:
            def build(folder):
                np.save(folder / "bank.npy", encoder(bank_texts, progress=True))
            self.bank = np.load(cached_dir("review-bank", dict(cache_key, n=len(bank_texts), version=1), build,
                                           cache_dir) / "bank.npy")

    def __call__(self, texts) -> np.ndarray:
        x = self.encoder(texts)
        if len(x) == 0:
            return np.zeros(0)
        sims = x @ self.bank.T
        k = min(self.k, sims.shape[1])
        return np.sort(sims, axis=1)[:, -k:].mean(axis=1)
