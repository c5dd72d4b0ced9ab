"""Fill-in-the-middle data from ludax's bundled games: normalised text, examples, the split by game, the bracket cut.

Every parenthesised sub-expression of depth >= 1 of a game becomes one example: the prompt is
``### PRE: <prefix> ### SUF: <suffix> ### MID:`` and the target is the sub-expression. Descriptions
are first normalised to one line (whitespace runs become one space, none after "(" or before ")");
ludax parses the normalised text to the same tree. A generated middle is cut where its brackets
first balance, counted in characters, and the game is rebuilt as prefix + middle + suffix.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

PROMPT_TEMPLATE = "### PRE: {prefix} ### SUF: {suffix} ### MID:"


def normalise(description: str) -> str:
    """One line: whitespace runs -> one space, no space after "(" or before ")"."""
    text = " ".join(description.split())
    return re.sub(r"\s+\)", ")", re.sub(r"\(\s+", "(", text))


def bundled_games() -> dict[str, str]:
    """The games shipped with ludax, by name, normalised."""
    from ludax import games  # plain text files; importing this does not start jax

    return {name: normalise(getattr(games, name)) for name in games.__all__}


def _brackets(text: str):
    """Yield (index, "(" or ")") of every bracket outside double-quoted strings."""
    in_string = False
    for i, ch in enumerate(text):
        if ch == '"':
            in_string = not in_string
        elif not in_string and ch in "()":
            yield i, ch


def paren_spans(text: str) -> list[tuple[int, int, int]]:
    """(start, end, depth) of every balanced "(...)" group; ``text[start:end]`` is the group and
    depth 0 is the outermost. Parentheses inside double-quoted strings are ignored."""
    spans, stack = [], []
    for i, ch in _brackets(text):
        if ch == "(":
            stack.append(i)
        elif stack:
            start = stack.pop()
            spans.append((start, i + 1, len(stack)))
    return sorted(spans)


def make_prompt(prefix: str, suffix: str) -> str:
    return PROMPT_TEMPLATE.format(prefix=prefix, suffix=suffix)


@dataclass(frozen=True)
class FimExample:
    game: str
    prefix: str
    middle: str
    suffix: str
    depth: int

    @property
    def prompt(self) -> str:
        return make_prompt(self.prefix, self.suffix)

    def prompt_window(self, context_chars: int = 0) -> str:
        """The prompt with only the last ``context_chars`` characters of the prefix and the first
        ``context_chars`` of the suffix (0: all of them). The rebuilt game always uses the whole
        prefix and suffix; the window only limits what the model reads."""
        if not context_chars:
            return self.prompt
        return make_prompt(self.prefix[-context_chars:], self.suffix[:context_chars])

    def rebuild(self, middle: str | None = None) -> str:
        return self.prefix + (self.middle if middle is None else middle) + self.suffix


def fim_examples(name: str, description: str, min_depth: int = 1) -> list[FimExample]:
    """One example per parenthesised sub-expression of depth >= ``min_depth``."""
    text = normalise(description)
    return [FimExample(name, text[:s], text[s:e], text[e:], d)
            for s, e, d in paren_spans(text) if d >= min_depth]


def split_games(names, heldout: list[str]) -> tuple[list[str], list[str]]:
    """(train games, held-out games): the split is by game, never by example."""
    unknown = sorted(set(heldout) - set(names))
    if unknown:
        raise ValueError(f"unknown held-out games {unknown}; bundled games: {sorted(names)}")
    return [n for n in names if n not in heldout], [n for n in names if n in heldout]


@dataclass(frozen=True)
class FimData:
    """The examples of one run: training games give SFT and PPO prompts, held-out games evaluation only."""
    games: dict[str, str]
    train_games: list[str]
    heldout_games: list[str]
    train: list[FimExample]
    heldout: list[FimExample]

    def describe(self) -> str:
        return (f"train games ({len(self.train_games)}): {', '.join(self.train_games)}\n"
                f"held-out games ({len(self.heldout_games)}): {', '.join(self.heldout_games)}\n"
                f"{len(self.train)} training examples, {len(self.heldout)} held-out examples")


def make_data(heldout: list[str], max_middle_chars: int = 0) -> FimData:
    """Every example of every bundled game, split by game; ``max_middle_chars`` > 0 drops
    examples whose middle is longer."""
    games = bundled_games()
    train_games, heldout_games = split_games(list(games), list(heldout))

    def examples(names):
        return [e for g in names for e in fim_examples(g, games[g])
                if not max_middle_chars or len(e.middle) <= max_middle_chars]

    return FimData(games, train_games, heldout_games, examples(train_games), examples(heldout_games))


def balance_point(text: str) -> int | None:
    """Where a generated middle ends: the index just past the ")" that first balances its
    brackets, or of the first unmatched ")" (which is not kept); None while neither happened.
    Counted in characters after leading whitespace; brackets inside quoted strings do not count."""
    stripped = text.lstrip()
    depth = 0
    for i, ch in _brackets(stripped):
        if ch == "(":
            depth += 1
        elif depth == 0:
            return i
        else:
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def cut_middle(text: str) -> str:
    """The generated middle up to the point where its brackets first balance.

    Leading whitespace is dropped. If the text does not start with "(", it is cut before the
    first unmatched ")" (or kept whole); if the brackets never balance, the whole text is kept
    (and the rebuilt game will not parse)."""
    end = balance_point(text)
    stripped = text.lstrip()
    return stripped if end is None else stripped[:end]


def novel(description: str, known: set[str] | None = None) -> bool:
    """True if ``description`` (normalised) differs from every bundled game."""
    known = known if known is not None else set(bundled_games().values())
    return normalise(description) not in known


def sample_examples(examples: list[FimExample], n: int, seed: int = 0) -> list[FimExample]:
    """``n`` examples drawn without replacement (all of them if n >= len)."""
    if n >= len(examples):
        return list(examples)
    return random.Random(seed).sample(examples, n)
