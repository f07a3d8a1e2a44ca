"""Small data keeps its rows (``--test-fraction auto``) and the search's budget is its clock."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellsearch.data import read_dataset
from cellsearch.data.options import AUTO_TEST_SHARE, AUTO_TEST_UNITS, DataOptions


def _sequences(path, n: int):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"id": np.repeat(np.arange(n), 4), "t": np.tile(np.arange(4), n),
                       "x": rng.normal(size=4 * n), "label": np.repeat(np.arange(n) % 2, 4)})
    df.to_csv(path, index=False)
    return path


def test_auto_holds_out_a_test_split_only_where_it_is_large_enough():
    auto = DataOptions()
    assert auto.test_size == "auto"
    assert auto.test_share(AUTO_TEST_UNITS - 1) == 0.0 and auto.test_share(AUTO_TEST_UNITS) == AUTO_TEST_SHARE
    assert DataOptions(test_size=0.3).test_share(5) == 0.3  # a number is taken as given


def test_small_sequence_sets_keep_every_row_and_large_ones_hold_out_fifteen_percent(tmp_path):
    small = read_dataset(_sequences(tmp_path / "small.csv", 300))
    assert len(small.splits["test"]) == 0
    n = int(AUTO_TEST_UNITS / AUTO_TEST_SHARE) + 20
    large = read_dataset(_sequences(tmp_path / "large.csv", n))
    assert len(large.splits["test"]) == pytest.approx(AUTO_TEST_SHARE * n, abs=2)
    assert len(read_dataset(tmp_path / "small.csv", test_size=0.15).splits["test"]) == pytest.approx(45, abs=2)


def test_short_panels_keep_their_ends_and_long_ones_hold_them_out(tmp_path):
    def panel(n_series: int, length: int):
        t = np.arange(length)
        df = pd.concat([pd.DataFrame({"s": f"s{k}", "t": t, "v": np.sin(t / 3 + k) + k}) for k in range(n_series)])
        path = tmp_path / f"p{n_series}.csv"
        df.to_csv(path, index=False)
        return read_dataset(path, horizon=4, window=8)

    assert len(panel(5, 60).splits["test"]) == 0  # 5 series x 2 horizons at their ends: too few to test on
    assert len(panel(120, 60).splits["test"]) > 0  # 120 x 2 = 240 whole horizons


def test_a_search_without_a_test_split_reports_its_out_of_fold_score(tuned, tmp_path):
    """The shared tiny search keeps no test split: its front carries out-of-fold scores, which the
    result labels and the exported card says are out-of-fold."""
    from cellsearch.export import export

    assert tuned.held_out == "out-of-fold"
    chosen = tuned.chosen
    assert chosen["test_score"] is None and 0.0 <= chosen["oof_score"] <= 1.0
    assert tuned.to_dict()["held_out"] == "out-of-fold"
    out = export(out=tmp_path / "m", run_dir=tuned.run_dir)
    card = (out / "README.md").read_text()
    assert f"out-of-fold {tuned.metric}: {chosen['oof_score']:.4g}" in card


def test_the_cli_takes_auto_and_refuses_other_words(tiny_csv, tmp_path):
    from tests.test_hardening import one_line_error, run_cli

    one_line_error(run_cli("tune", str(tiny_csv), "--test-fraction", "most", "--run-dir", str(tmp_path)),
                   "--test-fraction must be a number or auto")


def test_a_timeout_alone_is_the_budget():
    from cellsearch.config import DEFAULT_TRIALS, UNBOUNDED_TRIALS, TuneConfig

    assert TuneConfig.create("d.csv").trial_target == DEFAULT_TRIALS
    assert TuneConfig.create("d.csv", timeout=600).trial_target == UNBOUNDED_TRIALS
    assert TuneConfig.create("d.csv", timeout=600, trials=7).trial_target == 7
