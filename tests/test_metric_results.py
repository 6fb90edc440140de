"""The distillation metric, leaderboard re-ranking and the results table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from raykd.results import append_rows, make_row, read_results
from raykd.metrics import distillation_score, ds_column, leaderboard, pareto_front, paired_verdict, seed_verdict


@pytest.mark.parametrize("size_s, size_t, acc_s, acc_t, a, expected", [
    (10, 100, 0.9, 1.0, 0.5, 0.5 * 0.1 + 0.5 * 0.1),           # 0.1
    (25, 100, 0.8, 0.9, 0.3, 0.3 * 0.25 + 0.7 * (1 - 0.8 / 0.9)),
    (50, 100, 0.99, 0.99, 1.0, 0.5),                           # a=1: size only
    (50, 100, 0.5, 1.0, 0.0, 0.5),                             # a=0: accuracy only
    (100, 100, 1.0, 1.0, 0.5, 0.5),                            # teacher against itself
])
def test_ds_hand_computed(size_s, size_t, acc_s, acc_t, a, expected):
    assert distillation_score(size_s, size_t, acc_s, acc_t, a) == pytest.approx(expected, abs=1e-12)


def test_ds_properties():
    # ideal: free student matching the teacher -> approaches 0
    assert distillation_score(1e-9, 1.0, 0.9, 0.9, 0.5) == pytest.approx(0.0, abs=1e-8)
    # negative when the student beats the teacher and size weighs nothing
    assert distillation_score(10, 100, 0.95, 0.9, 0.0) < 0
    # lower is better: same size, higher accuracy -> lower DS
    assert distillation_score(10, 100, 0.95, 0.97, 0.5) < distillation_score(10, 100, 0.90, 0.97, 0.5)


@pytest.mark.parametrize("args", [
    (0, 100, 0.9, 0.9, 0.5), (10, 0, 0.9, 0.9, 0.5), (-1, 10, 0.9, 0.9, 0.5),
    (10, 100, 1.2, 0.9, 0.5), (10, 100, 0.9, 0.0, 0.5), (10, 100, 0.9, 1.1, 0.5),
    (10, 100, 0.9, 0.9, -0.1), (10, 100, 0.9, 0.9, 1.1), (10, 100, 0.9, 0.9, float("nan")),
])
def test_ds_rejects_bad_inputs(args):
    with pytest.raises(ValueError):
        distillation_score(*args)


def _table() -> pd.DataFrame:
    rows = [make_row(method="kd", dataset="mnist", student=name, params=p, accuracy=acc, teacher="T",
                     teacher_params=1000, teacher_accuracy=0.99, a=0.5)
            for name, p, acc in [("big", 800, 0.985), ("mid", 200, 0.975), ("small", 20, 0.90), ("bad", 500, 0.95)]]
    return pd.DataFrame(rows)


def test_rerank_for_another_a_without_rerunning():
    df = _table()
    by_size = leaderboard(df, a=0.9)
    by_acc = leaderboard(df, a=0.0)
    assert by_size["student"].iloc[0] == "small"
    assert by_acc["student"].iloc[0] == "big"
    # DS recomputed from the stored columns equals the formula
    col = ds_column(df, a=0.25)
    assert col.iloc[1] == pytest.approx(distillation_score(200, 1000, 0.975, 0.99, 0.25))


def test_pareto_front():
    front = pareto_front(_table())
    assert list(front["student"]) == ["small", "mid", "big"]  # "bad" is dominated by "mid"


def test_results_table_roundtrip(tmp_path):
    rows = _table().to_dict("records")
    append_rows(tmp_path, rows[:2])
    df = append_rows(tmp_path, rows[2:])
    assert len(df) == 4
    back = read_results(tmp_path)
    assert list(back["student"]) == ["big", "mid", "small", "bad"]
    assert (tmp_path / "results.csv").exists()
    csv = read_results(tmp_path / "results.csv")
    np.testing.assert_allclose(csv["ds"].to_numpy(), back["ds"].to_numpy())
    assert math.isclose(back["ds"].iloc[0], distillation_score(800, 1000, 0.985, 0.99, 0.5))


def test_row_without_teacher_has_nan_ds():
    row = make_row(method="ce", dataset="mnist", student="s", params=10, accuracy=0.5)
    assert math.isnan(row["ds"])


def test_fresh_drops_a_sweeps_trial_rows_and_keeps_other_runs(tmp_path):
    """``raykd sweep --fresh`` starts over: its trial rows (run ids ``<run id>/<trial>``) go with its own
    rows; other runs' rows in the same output directory stay (a rerun once doubled every trial)."""
    from types import SimpleNamespace

    from raykd.lifecycle import forget

    rows = _table().to_dict("records")
    ids = ["sw-1", "sw-1/t0", "sw-1/t1", "sw-10/t0"]  # sw-10 is another run whose id starts like sw-1
    for row, (i, run_id) in zip(rows, enumerate(ids)):
        row.update(run_id=run_id, item=f"item{i}")
    append_rows(tmp_path, rows)
    forget(SimpleNamespace(run_id="sw-1", out_dir=tmp_path, storage=tmp_path / "ray", ray_name=lambda item: f"sw-1-{item}"))
    assert read_results(tmp_path)["run_id"].tolist() == ["sw-10/t0"]
    assert read_results(tmp_path / "results.csv")["run_id"].tolist() == ["sw-10/t0"]


@pytest.mark.parametrize("differences, verdict", [
    ([3.0, 2.0, 4.0], "holds"),                   # better on every seed, mean above the spread
    ([3.0, 2.0, 4.0, 3.0, 2.5], "holds"),
    ([5.0, 6.0, -0.5], "undecided"),              # mean above the spread, but worse on one seed
    ([0.1, 5.0, 0.2], "undecided"),               # better on every seed, but the spread is larger than the mean
    ([-3.0, -2.0, -4.0], "does not hold"),        # worse by more than the spread
    ([-1.0, 1.5, -0.5], "undecided"),
    ([3.0, 2.0], "undecided"),                    # fewer than 3 seeds never decide
    ([3.0, float("nan"), 2.0], "undecided"),      # a missing seed does not count
])
def test_seed_verdict_reads_paired_differences(differences, verdict):
    assert seed_verdict(pd.Series(differences)) == verdict


def test_paired_verdict_signs_lower_is_better_metrics_and_keeps_the_raw_differences():
    nll_a_minus_b = pd.Series({0: -0.04, 1: -0.03, 2: -0.05})  # a's NLL lower on every seed: a is better
    judged = paired_verdict(nll_a_minus_b, sign=-1)
    assert judged["verdict"] == "holds" and judged["better_on"] == 3 and judged["seeds"] == 3
    assert judged["mean"] == pytest.approx(-0.04) and judged["per_seed"] == {0: -0.04, 1: -0.03, 2: -0.05}
    assert paired_verdict(nll_a_minus_b, sign=1)["verdict"] == "does not hold"
    assert paired_verdict(pd.Series(dtype=float))["mean"] is None
