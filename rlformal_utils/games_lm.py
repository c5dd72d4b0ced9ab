"""Glue between the game-synthesis data and a causal LM: the tokenizer trained on the ludax
corpus, encoding of fill-in-the-middle examples, and generation cut where brackets balance."""
from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast, StoppingCriteria, StoppingCriteriaList

from .games import FimExample, cut_middle
from .modes import eval_mode

SPECIAL_TOKENS = ["[PAD]", "[BOS]", "[EOS]", "### PRE:", "### SUF:", "### MID:"]


def train_tokenizer(texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``. "(", " (" and ")" are always single
    tokens (they are split off before BPE), so a generation can be cut exactly where brackets
    balance; the three prompt markers are single special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?\(|\)"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]", additional_special_tokens=SPECIAL_TOKENS[3:])
    fast.padding_side = "right"
    return fast


def encode_prompt(tokenizer, example: FimExample, context_chars: int = 0) -> list[int]:
    """[BOS] (when the tokenizer has one) + the prompt's tokens; ``context_chars`` > 0 shows only
    that much prefix / suffix."""
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    return bos + tokenizer(example.prompt_window(context_chars), add_special_tokens=False)["input_ids"]


def encode_example(tokenizer, example: FimExample, context_chars: int = 0) -> tuple[list[int], list[int]]:
    """(token ids, loss mask): [BOS] prompt middle [EOS] with the loss on middle + [EOS] only."""
    prompt = encode_prompt(tokenizer, example, context_chars)
    middle = tokenizer(example.middle, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt + middle, [0] * len(prompt) + [1] * len(middle)


def bracket_deltas(tokenizer) -> torch.Tensor:
    """Per token id: the number of "(" minus the number of ")" in its text. With the ludax
    tokenizer only "(", " (" and ")" carry a bracket, so a generation is cut exactly where its
    brackets balance. A pretrained tokenizer (SmolLM2, hub models) may merge brackets into longer
    tokens; then the kept tokens can run a few characters past the balancing ")" (the middle text
    itself is always cut exactly, by ``cut_middle``)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return torch.tensor([(p or "").count("(") - (p or "").count(")") for p in pieces], dtype=torch.long)


def cut_index(ids: list[int] | torch.Tensor, delta: torch.Tensor, eos_id: int) -> int:
    """How many generated tokens to keep: up to the ")" that closes the first group, before an
    unmatched ")" or [EOS]; everything if the brackets never balance."""
    depth = 0
    for i, t in enumerate(list(map(int, ids))):
        if t == eos_id:
            return i
        depth += int(delta[t])
        if depth < 0:
            return i
        if depth == 0 and delta[t] != 0:
            return i + 1
    return len(ids)


class _BalancedStop(StoppingCriteria):
    def __init__(self, start: int, delta: torch.Tensor, eos_id: int):
        self.start, self.delta, self.eos_id = start, delta, eos_id

    def __call__(self, input_ids, scores, **kwargs):
        gen = input_ids[:, self.start:]
        d = self.delta[gen]
        depth = d.cumsum(1)
        return ((depth == 0) & (d != 0)).any(1) | (depth < 0).any(1) | (gen == self.eos_id).any(1)


def generate_middles(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, greedy: bool = False,
                     batch_size: int = 16, delta: torch.Tensor | None = None) -> list[dict]:
    """Sample (or greedily decode) one middle per prompt; pure sampling (top_k 0, top_p 1,
    temperature 1). Returns per prompt: ``ids`` (the kept response tokens, at least one),
    ``raw_ids`` (everything generated) and ``middle`` (the kept text, cut where brackets balance).
    Seed torch beforehand for reproducible samples. Runs in eval mode without gradients and
    leaves the model in the mode it was in."""
    with eval_mode(model):
        return _generate(model, tokenizer, prompts, max_new_tokens, greedy, batch_size, delta)


def _generate(model, tokenizer, prompts, max_new_tokens, greedy, batch_size, delta) -> list[dict]:
    delta = bracket_deltas(tokenizer) if delta is None else delta
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        att = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, p in enumerate(chunk):  # left padding for generation
            ids[j, width - len(p):] = torch.tensor(p)
            att[j, width - len(p):] = 1
        gen = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens,
                             do_sample=not greedy, top_k=0, top_p=1.0, temperature=1.0,
                             pad_token_id=pad, eos_token_id=eos,
                             stopping_criteria=StoppingCriteriaList([_BalancedStop(width, delta, eos)]))
        for row in gen[:, width:]:
            raw = row.tolist()
            k = max(1, cut_index(raw, delta, eos))
            kept = raw[:k]
            text = tokenizer.decode([t for t in kept if t not in (pad, eos)], skip_special_tokens=False)
            out.append(dict(ids=torch.tensor(kept), raw_ids=raw, middle=cut_middle(text)))
    return out


def score_middles(rewarder, examples: list[FimExample], middles: list[str], known: set[str]) -> tuple[dict, list[dict]]:
    """Rebuild each example with its middle, score the games, and summarise: shares that
    compile / are playable, mean reward, exact copies of the original middle, and novel playable
    games (playable and different from every bundled game in ``known``)."""
    from .games import novel

    games = [ex.rebuild(m) for ex, m in zip(examples, middles)]
    results = rewarder.evaluate(games)
    rows = []
    for ex, m, g, r in zip(examples, middles, games, results):
        rows.append(dict(game=ex.game, depth=ex.depth, original_middle=ex.middle, middle=m,
                         exact=m == ex.middle, status=r.status, reward=r.reward, compiles=r.compiles,
                         playable=r.playable, novel=r.playable and novel(g, known), balance=r.balance,
                         completion=r.completion, decisiveness=r.decisiveness, error=r.error[:200],
                         build_seconds=r.build_seconds, jit_seconds=r.jit_seconds,
                         description=g))
    n = max(len(rows), 1)
    novel_games = {row["description"] for row in rows if row["novel"]}
    summary = dict(n=len(rows), compile_share=sum(r["compiles"] for r in rows) / n,
                   playable_share=sum(r["playable"] for r in rows) / n,
                   mean_reward=sum(r["reward"] for r in rows) / n,
                   exact_share=sum(r["exact"] for r in rows) / n,
                   novel_playable_share=sum(r["novel"] for r in rows) / n,
                   novel_playable_games=len(novel_games))
    return summary, rows
