"""The study's analysis on hand-made metrics: epoch selection, the linear model, the tables."""

from __future__ import annotations

import numpy as np
import pytest
from study_metrics import ratio_run, record

from knowtune.study.analysis import (
    Run,
    analyse,
    category_table,
    es_conv,
    fit_linear_model,
    fixed_size,
    idk_table,
    linear_model,
    regression_points,
    select_epochs,
)


def test_linear_model_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    known, unknown = rng.uniform(0, 1, 40), rng.uniform(0, 0.5, 40)
    exact = 36.9 + 7.3 * known - 8.3 * unknown
    fit = fit_linear_model(known, unknown, exact)
    assert fit["b0"] == pytest.approx(36.9) and fit["b_kn"] == pytest.approx(7.3) and fit["b_unk"] == pytest.approx(-8.3)
    assert fit["r2"] == pytest.approx(1.0) and fit["n"] == 40
    noisy = exact + rng.normal(0, 1.0, 40)
    fit = fit_linear_model(known, unknown, noisy)
    design = np.column_stack([np.ones(40), known, unknown])
    predicted = design @ np.array([fit["b0"], fit["b_kn"], fit["b_unk"]])
    r2 = 1 - ((noisy - predicted) ** 2).sum() / ((noisy - noisy.mean()) ** 2).sum()
    assert fit["r2"] == pytest.approx(r2) and 0.3 < fit["r2"] < 1.0
    assert fit["b_kn"] == pytest.approx(7.3, abs=2.0) and fit["b_unk"] == pytest.approx(-8.3, abs=3.0)


def test_linear_model_refuses_a_rank_deficient_design():
    fit = fit_linear_model([0.1, 0.2, 0.3, 0.4], [0.2, 0.4, 0.6, 0.8], [30, 31, 32, 33])  # unknown = 2 * known
    assert fit["b_kn"] is None and fit["r2"] is None and "rank 2" in fit["note"]
    assert fit_linear_model([0.1, 0.2], [0.0, 0.1], [1, 2])["b0"] is None


def test_select_epochs_takes_the_first_best_dev_epoch_after_training():
    metrics = [record(0, dev=0.9), record(1, dev=0.3), record(2, dev=0.5), record(3, dev=0.5), record(4, dev=0.2)]
    assert select_epochs(metrics) == (2, 4)  # epoch 0 is a reference, ties keep the earlier epoch
    assert select_epochs([record(0, dev=None), record(1, dev=None), record(2, dev=None)]) == (None, 2)
    with pytest.raises(ValueError, match="no epoch >= 1"):
        select_epochs([record(0)])


def test_es_conv_reads_test_results_at_both_epochs():
    run = ratio_run(50, tests=[0.1, 0.5, 0.45, 0.3], devs=[0.1, 0.6, 0.5, 0.4])
    entry = es_conv([run])["D_50"]
    assert (entry["es_epoch"], entry["conv_epoch"]) == (1, 3)
    assert entry["es"]["test"] == pytest.approx(50.0) and entry["conv"]["test"] == pytest.approx(30.0)
    assert entry["conv"]["ood"] == pytest.approx(20.0)


def test_regression_points_skip_epoch_zero_and_idk_and_scale_to_the_fixed_size():
    d = ratio_run(50, tests=[0.1, 0.4, 0.3], devs=[0.1, 0.4, 0.3], size=100, known_fit=[0.0, 1.0, 1.0], unknown_fit=[0.0, 0.5, 1.0])
    known_only = Run("D_Known_50", "known", [record(e, known=(50, 50)) for e in range(3)], ratio=50, size=50)
    idk = ratio_run(50, tests=[0.1, 0.4, 0.3], devs=[0.1, 0.4, 0.3], kind="idk", name="D_IDK_50")
    assert fixed_size([d, known_only, idk]) == 100
    points = regression_points([d, known_only, idk], 100)
    assert [(p["variant"], p["epoch"]) for p in points] == [("D_50", 1), ("D_50", 2), ("D_Known_50", 1), ("D_Known_50", 2)]
    assert (points[0]["known"], points[0]["unknown"]) == (0.5, 0.25)  # 50 of 100 Known, 25 of 100 Unknown examples fitted
    assert (points[2]["known"], points[2]["unknown"]) == (0.5, 0.0)  # all 50 of D_Known_50, over |D| = 100


def test_linear_model_fits_in_distribution_and_ood_separately():
    points = [{"known": k, "unknown": u, "test": 30 + 10 * k - 20 * u, "ood": 20 + 2 * k - 4 * u}
              for k, u in ((0.5, 0.0), (0.9, 0.1), (0.4, 0.5), (0.5, 0.3), (1.0, 0.0))]
    models = linear_model(points)
    assert models["in_distribution"]["b_unk"] == pytest.approx(-20) and models["ood"]["b_kn"] == pytest.approx(2)


def test_tables_have_the_paper_shapes():
    cats = {"HighlyKnown": 0.9, "MaybeKnown": 0.5, "WeaklyKnown": 0.2, "Unknown": 0.01}
    single = Run("D_HighlyKnown", "single", [record(e, per_category=cats) for e in range(3)], size=10)
    base = ratio_run(50, tests=[0.1, 0.4, 0.3], devs=[0.1, 0.4, 0.3])
    idk = ratio_run(50, tests=[0.1, 0.3, 0.3], devs=[0.1, 0.3, 0.3], kind="idk", name="D_IDK_50", answered=0.5)
    results = es_conv([single, base, idk])
    rows = category_table(results)
    assert [r["variant"] for r in rows] == ["D_HighlyKnown", "D_50"]
    assert rows[0]["es"] == {"full": pytest.approx(40.0), "HighlyKnown": pytest.approx(90.0), "MaybeKnown": pytest.approx(50.0),
                             "WeaklyKnown": pytest.approx(20.0), "Unknown": pytest.approx(1.0)}
    table = idk_table(results)
    assert [(r["variant"], r["role"]) for r in table] == [("D_50", "D"), ("D_IDK_50", "D_IDK")]
    assert table[1]["es_answered"] == pytest.approx(50.0) and table[1]["es_accuracy"] == pytest.approx(60.0)


def test_analyse_reports_every_table_and_five_findings():
    runs = [ratio_run(x, tests=[0.1, 0.5 - x / 1000, 0.5 - x / 300], devs=[0.1, 0.5, 0.4]) for x in (0, 50, 100)]
    analysis = analyse(runs)
    assert set(analysis) >= {"variants", "curves", "linear_model", "regression_points", "category_table", "idk_table", "findings"}
    assert [f["name"] for f in analysis["findings"]] == ["unknown_fitted_slower", "accuracy_falls_with_unknown", "regression_signs",
                                                         "early_stop_recovers", "idk_improves_answered_accuracy"]
    assert analysis["curves"]["D_50"][2]["fitted"]["Unknown"] == pytest.approx(50.0)
