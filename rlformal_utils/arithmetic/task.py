"""The arithmetic task of the paper: expressions, solution chains, data splits, tokenizer.

An expression such as ``6+0+8+6+7`` is solved step by step, adding one adjacent
pair at a time, and written as a chain with spaces between the words::

    6 + 0 + 8 + 6 + 7 = 6 + 8 + 6 + 7 = 6 + 8 + 13 = 14 + 13 = 27

For RL the prompt is the chain cut right after its last ``=``; the model answers
with exactly one token, the final sum (the reward is in ``reward.py``).

That answer only needs the last step ``a + b =``. Two held-out splits therefore measure two
things: ``heldout`` problems have expressions never used for training (but their final pair
(a, b) has almost surely been a final step of some training prompt: seen additions), while
``unseen`` problems end in a final pair that NEVER ends a pretraining chain or an RL prompt
(10 % of all pairs are reserved for it): unseen additions.
"""
from __future__ import annotations

import functools
import math
import random
import re
from dataclasses import dataclass

MAX_NUMBER = 99  # every number 0..99 is one token
SPECIAL_TOKENS = ["[PAD]", "[BOS]", "[EOS]"]
OPERATORS = ["+", "*"]
VOCAB = SPECIAL_TOKENS + [str(n) for n in range(MAX_NUMBER + 1)] + OPERATORS + ["="]  # 106 words


# ----------------------------------------------------------------------------- expressions
def generate_expression(rng: random.Random, min_chars: int = 10, max_value: int = 100,
                        operators: tuple[str, ...] = ("+",)) -> str:
    """The paper's generator: append randint(0, 10) and an operator until the string has
    >= ``min_chars`` characters, cut it to ``min_chars``, drop a trailing operator, and keep
    it only if its value is < ``max_value`` (else draw again). No spaces: ``"6+0+8+6+7"``."""
    while True:
        s = ""
        while len(s) < min_chars:
            s += str(rng.randint(0, 10)) + rng.choice(operators)
        s = s[:min_chars]
        if s[-1] in OPERATORS:
            s = s[:-1]
        if evaluate(split_words(s)) < max_value:
            return s


def split_words(text: str) -> list[str]:
    """Split ``"6+0 + 8"`` into ``["6", "+", "0", "+", "8"]`` (numbers, operators, '=')."""
    return re.findall(r"\d+|[+*=]|\S", text)


def evaluate(words: list[str]) -> int:
    """Value of an alternating number/operator word list, with * before +.
    Raises ValueError when the list is not a well-formed expression."""
    if len(words) % 2 == 0 or not words:
        raise ValueError(f"not an expression: {words}")
    total, product = 0, None
    for i, w in enumerate(words):
        if i % 2 == 0:
            if not w.isdigit():
                raise ValueError(f"expected a number, got {w!r}")
            product = int(w) if product is None else product * int(w)
        elif w == "+":
            total, product = total + product, None
        elif w != "*":
            raise ValueError(f"expected an operator, got {w!r}")
    return total + product


def solution_chain(expression: str, rng: random.Random) -> str:
    """Solve by repeatedly replacing one randomly chosen adjacent pair by its result.
    Products are reduced before sums, so every intermediate keeps the same value."""
    words = split_words(expression)
    steps = [" ".join(words)]
    while len(words) > 1:
        ops = [i for i in range(1, len(words), 2) if words[i] == "*"] or list(range(1, len(words), 2))
        i = rng.choice(ops)
        a, b = int(words[i - 1]), int(words[i + 1])
        value = a * b if words[i] == "*" else a + b
        words = words[: i - 1] + [str(value)] + words[i + 2:]
        steps.append(" ".join(words))
    return " = ".join(steps)


@dataclass(frozen=True)
class Problem:
    expression: str  # "6+0+8+6+7"
    chain: str       # the full solution chain, words separated by spaces
    prompt: str      # the chain cut right after its last "=" (ends with "=")
    answer: int      # the true value


def make_problem(expression: str, rng: random.Random) -> Problem:
    chain = solution_chain(expression, rng)
    cut = chain.rindex("=") + 1
    return Problem(expression, chain, chain[:cut], evaluate(split_words(expression)))


def final_pair(problem: Problem) -> tuple[int, int]:
    """The (a, b) of the last step ``a + b =`` that the one-token answer completes."""
    words = problem.prompt.split()
    return int(words[-4]), int(words[-2])


UNSEEN_PAIR_SHARE = 0.1


@functools.lru_cache(maxsize=None)  # ~10k distinct pairs: seed a Random once per pair, not once per problem
def is_reserved(pair: tuple[int, int], seed: int) -> bool:
    """Whether the final pair belongs to the unseen-additions split (a fixed 10 % of all ordered
    pairs, chosen by ``seed``)."""
    return random.Random(f"{seed}:{pair[0]}+{pair[1]}").random() < UNSEEN_PAIR_SHARE


@dataclass
class Splits:
    train: list[Problem]     # pretraining chains first, then RL prompts
    heldout: list[Problem]   # expression-disjoint from train (seen additions)
    unseen: list[Problem]    # final pair never a final step in train (unseen additions)


def make_splits(n_train: int, n_heldout: int, seed: int = 0, n_unseen: int | None = None) -> Splits:
    """Train, held-out and unseen-pair problems. The evaluation sets depend only on ``seed`` and
    their sizes (they are drawn first), so runs with different training budgets are evaluated on
    the same problems. Training expressions may repeat (as in the paper), never a held-out one."""
    n_unseen = n_heldout if n_unseen is None else n_unseen
    rng = random.Random(seed)
    heldout, unseen, seen = [], [], set()
    while len(heldout) < n_heldout or len(unseen) < n_unseen:
        e = generate_expression(rng)
        if e in seen:
            continue
        p = make_problem(e, rng)
        target = unseen if is_reserved(final_pair(p), seed) else heldout
        if len(target) < (n_unseen if target is unseen else n_heldout):
            seen.add(e)
            target.append(p)
    train = []
    while len(train) < n_train:
        e = generate_expression(rng)
        if e not in seen:
            p = make_problem(e, rng)
            if not is_reserved(final_pair(p), seed):
                train.append(p)
    return Splits(train, heldout, unseen)


def cached_splits(n_train: int, n_heldout: int, seed: int = 0) -> Splits:
    """``make_splits``, built once per (sizes, seed, this file's code) and then read from the
    cache: the arms of a profile share ``data_seed``, and drawing 150k problems takes ~3 s of every
    run's start, reading them back ~0.4 s. Any edit to this file invalidates the cache."""
    import hashlib
    from pathlib import Path
    from ..runs import cached_value

    key = dict(n_train=n_train, n_heldout=n_heldout, seed=seed,
               code=hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16])
    return cached_value("arithmetic-splits", key, lambda: make_splits(n_train, n_heldout, seed))


# ----------------------------------------------------------------------------- tokenizer
def make_tokenizer():
    """Word-level tokenizer over whitespace: 0..99, + * =, [BOS] [EOS] [PAD] (106 words).
    A ``PreTrainedTokenizerFast``, so trl and transformers can pad and decode with it.
    Right padding (trl's training pass assumes it)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from tokenizers.decoders import WordPiece  # joins words with spaces
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB)}
    core = Tokenizer(WordLevel(vocab, unk_token="[PAD]"))
    core.pre_tokenizer = WhitespaceSplit()
    core.decoder = WordPiece(prefix="##", cleanup=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", bos_token="[BOS]",
                                  eos_token="[EOS]", unk_token="[PAD]", padding_side="right")
    return tok


def encode_prompt(tokenizer, problem: Problem) -> list[int]:
    """[BOS] + prompt words (ends with '=')."""
    return [tokenizer.bos_token_id] + tokenizer.convert_tokens_to_ids(problem.prompt.split())


def encode_chain(tokenizer, problem: Problem) -> list[int]:
    """[BOS] + chain words + [EOS]: one pretraining example."""
    return ([tokenizer.bos_token_id] + tokenizer.convert_tokens_to_ids(problem.chain.split())
            + [tokenizer.eos_token_id])


def number_token_ids(tokenizer) -> list[int]:
    """Token ids of the numbers 0..99 in order (index = value)."""
    return tokenizer.convert_tokens_to_ids([str(n) for n in range(MAX_NUMBER + 1)])
