"""How far a novel game is from the games the model was trained on: an edit distance over the
tokenised rule text (brackets, names and quoted strings are tokens; whitespace does not count).
Every parenthesised group is a node of the rule tree, so a token edit distance counts inserted,
deleted and renamed rule parts; it is an upper bound of a tree edit distance, not the same thing
(moving a whole sub-rule costs its length twice)."""
from __future__ import annotations

import re

from .fim import normalise

_TOKEN = re.compile(r'"[^"]*"|[()]|[^\s()"]+')


def rule_tokens(description: str) -> list[str]:
    """The tokens of a description: "(", ")", quoted strings whole, every other run of non-blank characters."""
    return _TOKEN.findall(normalise(description))


def edit_distance(a, b, bound: int | None = None) -> int:
    """Levenshtein distance between two sequences (insert, delete, substitute: cost 1 each).
    With ``bound``, the search may stop early and return any value > bound once the distance
    is known to exceed it."""
    if len(a) < len(b):
        a, b = b, a
    if bound is not None and len(a) - len(b) > bound:
        return len(a) - len(b)
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        if bound is not None and min(cur) > bound:
            return min(cur)
        prev = cur
    return prev[-1]


def nearest_game(description: str, games: dict[str, str]) -> tuple[str, int]:
    """(name, token edit distance) of the game in ``games`` nearest to ``description``."""
    tokens = rule_tokens(description)
    best_name, best = None, None
    for name, text in sorted(games.items()):
        d = edit_distance(tokens, rule_tokens(text), bound=best)
        if best is None or d < best:
            best_name, best = name, d
    return best_name, best


def novelty_table(descriptions, training_games: dict[str, str]) -> list[dict]:
    """For each distinct description: the nearest training game, the token edit distance to it and
    that distance relative to the description's length in tokens; most different first."""
    rows = []
    for d in dict.fromkeys(normalise(x) for x in descriptions):
        name, dist = nearest_game(d, training_games)
        rows.append(dict(description=d, nearest_training_game=name, distance=dist,
                         relative_distance=dist / max(len(rule_tokens(d)), 1)))
    return sorted(rows, key=lambda r: (-r["distance"], r["description"]))


def most_different(descriptions, training_games: dict[str, str], k: int = 5) -> list[dict]:
    """The ``k`` descriptions farthest (token edit distance) from their nearest training game."""
    return novelty_table(descriptions, training_games)[:k]
