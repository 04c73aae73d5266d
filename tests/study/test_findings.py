"""Each of the study's five findings on hand-made metrics: a case where it holds, one where it
does not, and one where the study lacks what it needs."""

from __future__ import annotations

import pytest
from study_metrics import ratio_run

from knowtune.study.analysis import es_conv
from knowtune.study.findings import (
    accuracy_falls_with_unknown,
    early_stop_recovers,
    idk_improves_answered_accuracy,
    regression_signs,
    unknown_fitted_slower,
)

DEVS = [0.1, 0.5, 0.4, 0.3]


def test_unknown_fitted_slower_compares_fits_where_known_reaches_90_percent():
    slow = ratio_run(50, tests=[0.1] * 4, devs=DEVS, known_fit=[0.5, 0.95, 1.0, 1.0], unknown_fit=[0.0, 0.2, 0.6, 1.0])
    finding = unknown_fitted_slower([slow])
    assert finding["holds"] is True and finding["value"] == pytest.approx(0.2 / 0.96, abs=0.01)  # epoch 1: 48/50 Known, 10/50 Unknown
    assert "epoch 1" in finding["detail"] and "Unknown reaches 90% at epoch 3" in finding["detail"]
    fast = ratio_run(50, tests=[0.1] * 4, devs=DEVS, known_fit=[0.5, 0.6, 0.95, 1.0], unknown_fit=[0.0, 0.9, 1.0, 1.0])
    assert unknown_fitted_slower([fast])["holds"] is False


def test_unknown_fitted_slower_needs_variants_with_both_kinds_of_examples():
    only_known = ratio_run(0, tests=[0.1] * 4, devs=DEVS)
    idk = ratio_run(50, tests=[0.1] * 4, devs=DEVS, kind="idk", name="D_IDK_50")
    finding = unknown_fitted_slower([only_known, idk])
    assert finding["holds"] is None and finding["detail"].startswith("not tested")


def test_accuracy_falls_with_unknown_uses_convergence_accuracy():
    falling = es_conv([ratio_run(x, tests=[0.1, 0.5, 0.5, 0.5 - x / 400], devs=DEVS) for x in (0, 50, 100)])
    finding = accuracy_falls_with_unknown(falling)
    assert finding["holds"] is True and finding["value"] == pytest.approx(-1.0)
    rising = es_conv([ratio_run(x, tests=[0.1, 0.5, 0.5, 0.3 + x / 400], devs=DEVS) for x in (0, 50, 100)])
    assert accuracy_falls_with_unknown(rising)["holds"] is False
    flat = es_conv([ratio_run(x, tests=[0.1, 0.5, 0.5, 0.4], devs=DEVS) for x in (0, 100)])
    assert accuracy_falls_with_unknown(flat)["holds"] is False and accuracy_falls_with_unknown(flat)["value"] is None
    assert accuracy_falls_with_unknown(es_conv([ratio_run(50, tests=[0.1] * 4, devs=DEVS)]))["holds"] is None


def test_regression_signs_needs_b_unk_below_zero_below_b_kn():
    model = {"b0": 30.0, "b_kn": 5.0, "b_unk": -6.0, "r2": 0.8, "n": 12}
    finding = regression_signs({"in_distribution": model, "ood": {**model, "r2": 0.5}})
    assert finding["holds"] is True and finding["value"] == 0.8 and "R^2 0.80" in finding["detail"] and "OOD" in finding["detail"]
    assert regression_signs({"in_distribution": {**model, "b_unk": 1.0}})["holds"] is False
    assert regression_signs({"in_distribution": {**model, "b_kn": -1.0}})["holds"] is False
    untested = regression_signs({"in_distribution": {"b0": None, "b_kn": None, "b_unk": None, "r2": None, "n": 2, "note": "too few"}})
    assert untested["holds"] is None and "too few" in untested["detail"]


def test_early_stop_recovers_compares_the_gaps():
    # ES (epoch 1, best dev): D_0 50, D_100 45 -> gap 5; CONV: D_0 48, D_100 20 -> gap 28.
    recovers = es_conv([ratio_run(0, tests=[0.1, 0.5, 0.5, 0.48], devs=DEVS), ratio_run(100, tests=[0.1, 0.45, 0.3, 0.2], devs=DEVS)])
    finding = early_stop_recovers(recovers)
    assert finding["holds"] is True and finding["value"] == pytest.approx(23.0)
    # ES no better than CONV at X = 100: the gap is as large either way.
    same = es_conv([ratio_run(0, tests=[0.1, 0.5, 0.5, 0.5], devs=DEVS), ratio_run(100, tests=[0.1, 0.2, 0.2, 0.2], devs=DEVS)])
    assert early_stop_recovers(same)["holds"] is False
    # A smaller gap, but ES below CONV for the high-Unknown variant.
    behind = es_conv([ratio_run(0, tests=[0.1, 0.3, 0.5, 0.5], devs=DEVS), ratio_run(100, tests=[0.1, 0.25, 0.3, 0.3], devs=DEVS)])
    result = early_stop_recovers(behind)
    assert result["holds"] is False and "ES below CONV for D_100" in result["detail"]
    no_dev = es_conv([ratio_run(x, tests=[0.1] * 4, devs=[None] * 4) for x in (0, 100)])
    assert early_stop_recovers(no_dev)["holds"] is None


def test_idk_improves_answered_accuracy_at_es_and_conv():
    base = ratio_run(50, tests=[0.1, 0.4, 0.35, 0.3], devs=DEVS)
    better = ratio_run(50, tests=[0.1, 0.35, 0.3, 0.3], devs=DEVS, kind="idk", name="D_IDK_50", answered=0.5)
    finding = idk_improves_answered_accuracy(es_conv([base, better]))
    assert finding["holds"] is True and finding["value"] == pytest.approx(70.0 - 40.0)
    worse = ratio_run(50, tests=[0.1, 0.1, 0.1, 0.1], devs=DEVS, kind="idk", name="D_IDK_50", answered=0.5)
    assert idk_improves_answered_accuracy(es_conv([base, worse]))["holds"] is False
    silent = ratio_run(50, tests=[0.1, 0.0, 0.0, 0.0], devs=DEVS, kind="idk", name="D_IDK_50", answered=0.0,
                       accuracy_answered=[None] * 4)
    assert idk_improves_answered_accuracy(es_conv([base, silent]))["holds"] is False  # nothing answered: no accuracy to improve
    assert idk_improves_answered_accuracy(es_conv([better]))["holds"] is None  # no D_50 to compare with
