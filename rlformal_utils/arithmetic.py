"""The arithmetic task of the paper: expressions, solution chains, tokenizer, reward.

An expression such as ``6+0+8+6+7`` is solved step by step, adding one adjacent
pair at a time, and written as a chain with spaces between the words::

    6 + 0 + 8 + 6 + 7 = 6 + 8 + 6 + 7 = 6 + 8 + 13 = 14 + 13 = 27

For RL the prompt is the chain cut right after its last ``=``; the model answers
with exactly one token, the final sum. The reward is the paper's
``r = 2 / (1 + exp(min(err, 500) / 10))`` where ``err`` adds up how far each stated
result is from the true value.
"""
from __future__ import annotations

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


def make_splits(n_train: int, n_heldout: int, seed: int = 0) -> tuple[list[Problem], list[Problem]]:
    """Train and held-out problems with disjoint expressions. The held-out set depends only on
    ``seed`` and ``n_heldout`` (it is drawn first), so runs with different training-set sizes
    are evaluated on the same held-out problems. Training expressions may repeat (as in the paper)."""
    rng = random.Random(seed)
    heldout: list[Problem] = []
    seen: set[str] = set()
    while len(heldout) < n_heldout:
        e = generate_expression(rng)
        if e not in seen:
            seen.add(e)
            heldout.append(make_problem(e, rng))
    train = []
    while len(train) < n_train:
        e = generate_expression(rng)
        if e not in seen:
            train.append(make_problem(e, rng))
    return train, heldout


# ----------------------------------------------------------------------------- reward
def answer_error(text: str) -> float:
    """Sum over the stated results (every part after the first '=') of |true - stated|.

    ``inf`` when the text has no '=', or a part is empty, not an expression, or has the
    wrong number of operators (part k must have k fewer than the first part).
    Special tokens ([BOS], [EOS], [PAD]) are ignored."""
    for tok in SPECIAL_TOKENS:
        text = text.replace(tok, " ")
    parts = text.split("=")
    if len(parts) < 2:
        return math.inf
    try:
        first = split_words(parts[0])
        truth = evaluate(first)
        n_ops = len(first) // 2
        err = 0.0
        for k, part in enumerate(parts[1:], start=1):
            words = split_words(part)
            if len(words) // 2 != n_ops - k:
                return math.inf
            err += abs(truth - evaluate(words))
        return err
    except (ValueError, OverflowError):
        return math.inf


def reward(text: str) -> float:
    """The paper's reward r = 2 / (1 + exp(min(err, 500) / 10)), in (0, 1].
    Defined and finite for any string: 1 when exact, ~0 for garbage."""
    if not isinstance(text, str):
        return 0.0
    err = min(answer_error(text), 500.0)
    return 2.0 / (1.0 + math.exp(err / 10.0))


def best_constant_reward(answers: list[int]) -> tuple[int, float]:
    """The 'naive solution': the single answer that earns the highest mean reward on
    these problems without any arithmetic, and that mean reward."""
    def mean_r(c):
        return sum(2.0 / (1.0 + math.exp(min(abs(a - c), 500) / 10.0)) for a in answers) / len(answers)
    best = max(range(MAX_NUMBER + 1), key=mean_r)
    return best, mean_r(best)


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
