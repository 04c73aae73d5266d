"""The study's five findings, each a precise test on the analysis (Gekhman et al., EMNLP 2024).

Each finding is ``{"name", "holds", "value", "detail"}``: ``holds`` is True or False, or None
when the study lacks the variants it needs (``detail`` then says which); ``value`` is the
number behind the verdict. Accuracies are test exact match in percent.

* ``unknown_fitted_slower``: take every gold-answer variant holding both Known and Unknown
  training examples; in each, e_K = the first epoch >= 1 at which >= 90% of its Known
  examples are fitted (the last epoch if never). Pooled over those variants at their e_K,
  the fitted share of Unknown examples is below that of Known ones. value = pooled
  Unknown share / pooled Known share (1 = no difference).
* ``accuracy_falls_with_unknown``: over the D_X variants, CONVERGENCE test accuracy has a
  negative Spearman correlation with X and is lower at the largest X than at the smallest.
  value = Spearman rho.
* ``regression_signs``: the in-distribution linear model has b_unk < 0 < b_kn. value = R^2.
* ``early_stop_recovers``: with lo / hi the smallest / largest X, early stopping loses less
  accuracy to Unknown examples than training to convergence, gap_ES < gap_CONV where
  gap = acc(D_lo) - acc(D_hi), and ES accuracy >= CONV accuracy for every D_X with X >= 50.
  value = gap_CONV - gap_ES (points recovered).
* ``idk_improves_answered_accuracy``: for every D_IDK_X whose D_X was trained, accuracy on
  answered test questions is higher for D_IDK_X than for D_X, at EARLY_STOP and at
  CONVERGENCE. value = the mean ES difference in points.

Two more come with optional study sections (:func:`section_findings`): ``maybeknown_helps``
(``table2:``, the paper's Table 2) and ``retrieval_beats_sft_on_unknown`` (``retrieval_route:``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scipy.stats import spearmanr

from knowtune.study.analysis import GOLD_KINDS

FIT_LEVEL = 0.9
HIGH_UNKNOWN = 50
NAMES = ("unknown_fitted_slower", "accuracy_falls_with_unknown", "regression_signs", "early_stop_recovers",
         "idk_improves_answered_accuracy")


def finding(name: str, holds: bool | None, value: float | None, detail: str) -> dict[str, Any]:
    return {"name": name, "holds": holds, "value": value, "detail": detail}


def _untested(name: str, why: str) -> dict[str, Any]:
    return finding(name, None, None, f"not tested: {why}")


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _share(record: Mapping[str, Any], category: str) -> float:
    """Fitted share of the training examples of ``category`` at one evaluation."""
    return record[f"train/correct/{category}"] / record[f"train/n/{category}"]


def unknown_fitted_slower(runs: Sequence[Any]) -> dict[str, Any]:
    """Unknown training examples are fitted more slowly than Known ones (pooled at each variant's e_K)."""
    name = "unknown_fitted_slower"
    pooled = {"kn_fit": 0, "kn_n": 0, "unk_fit": 0, "unk_n": 0}
    parts = []
    for run in runs:
        records = sorted((r for r in run.metrics if r["epoch"] >= 1), key=lambda r: r["epoch"])
        if run.kind not in GOLD_KINDS or not records or not records[0].get("train/n/Known") or not records[0].get("train/n/Unknown"):
            continue
        at = next((r for r in records if _share(r, "Known") >= FIT_LEVEL), records[-1])
        pooled["kn_fit"] += at["train/correct/Known"]
        pooled["kn_n"] += at["train/n/Known"]
        pooled["unk_fit"] += at["train/correct/Unknown"]
        pooled["unk_n"] += at["train/n/Unknown"]
        unk_epoch = next((r["epoch"] for r in records if _share(r, "Unknown") >= FIT_LEVEL), None)
        parts.append(f"{run.name}: epoch {at['epoch']} Known {100 * _share(at, 'Known'):.0f}% vs Unknown {100 * _share(at, 'Unknown'):.0f}% fitted "
                     f"(Unknown reaches {FIT_LEVEL:.0%} at {'epoch ' + str(unk_epoch) if unk_epoch else 'no epoch'})")
    if not parts:
        return _untested(name, "no trained variant holds both Known and Unknown training examples")
    known, unknown = pooled["kn_fit"] / pooled["kn_n"], pooled["unk_fit"] / pooled["unk_n"]
    value = unknown / known if known > 0 else None
    detail = (f"at the epoch where {FIT_LEVEL:.0%} of Known examples are fitted: Known {100 * known:.1f}% vs Unknown "
              f"{100 * unknown:.1f}% fitted (pooled); " + "; ".join(parts))
    return finding(name, unknown < known, value, detail)


def _ratio_runs(results: Mapping[str, Mapping[str, Any]]) -> list[tuple[int, str]]:
    return sorted((entry["ratio"], name) for name, entry in results.items() if entry["kind"] == "ratio")


def accuracy_falls_with_unknown(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """CONVERGENCE test accuracy falls as the Unknown share X grows (Spearman rho < 0, acc(lo) > acc(hi))."""
    name = "accuracy_falls_with_unknown"
    ratios = _ratio_runs(results)
    if len({x for x, _ in ratios}) < 2:
        return _untested(name, "needs D_X variants with at least two different X")
    xs = [x for x, _ in ratios]
    accs = [results[n]["conv"]["test"] for _, n in ratios]
    if None in accs:
        return _untested(name, "needs test accuracy (a test split with in-distribution examples)")
    rho = None if len(set(accs)) == 1 else float(spearmanr(xs, accs).statistic)
    holds = rho is not None and rho < 0 and accs[0] > accs[-1]
    detail = "CONV test accuracy: " + ", ".join(f"{n} {_fmt(a)}" for (_, n), a in zip(ratios, accs)) + f"; Spearman rho {_fmt(rho, 2)}"
    return finding(name, holds, rho, detail)


def regression_signs(models: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """In-distribution linear model: fitting Unknown examples lowers accuracy, fitting Known ones raises it."""
    name = "regression_signs"
    model = models["in_distribution"]
    if model["b_kn"] is None:
        return _untested(name, model.get("note", "the linear model could not be fitted"))
    ood = models.get("ood") or {}
    detail = (f"in-distribution: b0 {model['b0']:.1f}, b_kn {model['b_kn']:.1f}, b_unk {model['b_unk']:.1f}, "
              f"R^2 {_fmt(model['r2'], 2)} over {model['n']} (variant, epoch) points")
    if ood.get("b_kn") is not None:
        detail += f"; OOD: b_kn {ood['b_kn']:.1f}, b_unk {ood['b_unk']:.1f}, R^2 {_fmt(ood['r2'], 2)}"
    return finding(name, model["b_unk"] < 0 < model["b_kn"], model["r2"], detail)


def early_stop_recovers(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Early stopping limits the damage of Unknown examples: a smaller lo-hi gap at ES than at CONV."""
    name = "early_stop_recovers"
    ratios = _ratio_runs(results)
    if len({x for x, _ in ratios}) < 2:
        return _untested(name, "needs D_X variants with at least two different X")
    if any(results[n]["es"] is None for _, n in ratios):
        return _untested(name, "EARLY_STOP needs a dev set evaluated every epoch")
    lo_name, hi_name = ratios[0][1], ratios[-1][1]
    es = {n: results[n]["es"]["test"] for _, n in ratios}
    conv = {n: results[n]["conv"]["test"] for _, n in ratios}
    if None in es.values() or None in conv.values():
        return _untested(name, "needs test accuracy (a test split with in-distribution examples)")
    gap_es, gap_conv = es[lo_name] - es[hi_name], conv[lo_name] - conv[hi_name]
    high = [n for x, n in ratios if x >= HIGH_UNKNOWN] or [hi_name]
    behind = [n for n in high if es[n] < conv[n]]
    detail = (f"gap {lo_name} - {hi_name}: ES {gap_es:.1f} vs CONV {gap_conv:.1f} points; ES / CONV accuracy: "
              + ", ".join(f"{n} {es[n]:.1f} / {conv[n]:.1f}" for _, n in ratios))
    if behind:
        detail += f"; ES below CONV for {', '.join(behind)}"
    return finding(name, gap_es < gap_conv and not behind, gap_conv - gap_es, detail)


def idk_improves_answered_accuracy(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Relabelling Unknown examples as "I don't know" raises accuracy on the questions the model answers."""
    name = "idk_improves_answered_accuracy"
    pairs = [(n, f"D_{e['ratio']}") for n, e in results.items() if e["kind"] == "idk" and f"D_{e['ratio']}" in results]
    if not pairs:
        return _untested(name, "needs a D_IDK_X variant and its D_X")
    holds, es_gains, parts = True, [], []
    for idk, base in pairs:
        for stage in ("es", "conv"):
            if results[idk][stage] is None or results[base][stage] is None:
                return _untested(name, "EARLY_STOP needs a dev set evaluated every epoch")
            ours, theirs = results[idk][stage]["accuracy_answered"], results[base][stage]["accuracy_answered"]
            better = ours is not None and theirs is not None and ours > theirs
            holds = holds and better
            if stage == "es":
                es_gains.append(None if ours is None or theirs is None else ours - theirs)
            parts.append(f"{stage.upper()}: {idk} {_fmt(ours)}% of answered correct ({_fmt(results[idk][stage]['answer_rate'])}% answered) "
                         f"vs {base} {_fmt(theirs)}%")
    value = None if None in es_gains else sum(es_gains) / len(es_gains)
    return finding(name, holds, value, "; ".join(parts))


def evaluate_findings(runs: Sequence[Any], results: Mapping[str, Mapping[str, Any]],
                      models: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The five findings, in the order of :data:`NAMES`."""
    return [unknown_fitted_slower(runs), accuracy_falls_with_unknown(results), regression_signs(models),
            early_stop_recovers(results), idk_improves_answered_accuracy(results)]


# -- training on one category (paper Table 2) and the retrieval route (issue 12) --------------------------------


def maybeknown_helps(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Training on MaybeKnown examples gives the best overall test accuracy (Gekhman et al. 2024, Table 2:
    D_MaybeKnown 43.6 at EARLY_STOP and 43.2 at CONVERGENCE, above D_Natural, D_HighlyKnown, D_WeaklyKnown and
    D_Unknown). ``results``: :func:`knowtune.study.analysis.es_conv` of the single-category sets and D_Natural.

    Holds when D_MaybeKnown's test accuracy is above that of every other trained set at ES and at CONV.
    value = the smaller of its two margins over the best other set, in points (> 0 exactly when it holds).
    """
    name = "maybeknown_helps"
    if "D_MaybeKnown" not in results or len(results) < 2:
        return _untested(name, "needs D_MaybeKnown and at least one other set of the table2: section")
    margins, parts = {}, []
    for stage in ("es", "conv"):
        if any(entry[stage] is None or entry[stage]["test"] is None for entry in results.values()):
            return _untested(name, "needs test accuracy at EARLY_STOP (a dev set evaluated every epoch) and CONVERGENCE")
        accuracy = {n: entry[stage]["test"] for n, entry in results.items()}
        ours = accuracy.pop("D_MaybeKnown")
        best = max(accuracy, key=lambda n: (accuracy[n], n))
        margins[stage] = ours - accuracy[best]
        parts.append(f"{stage.upper()}: D_MaybeKnown {ours:.1f} vs best other {best} {accuracy[best]:.1f} ("
                     + ", ".join(f"{n} {a:.1f}" for n, a in accuracy.items()) + ")")
    value = min(margins.values())
    detail = "; ".join(parts) + "; paper: D_MaybeKnown 43.6 vs D_Natural 43.5 at ES, 43.2 vs 41.8 at CONV"
    return finding(name, value > 0, value, detail)


def retrieval_beats_sft_on_unknown(comparison: Mapping[str, Any]) -> dict[str, Any]:
    """Fine-tuning on the Known facts and retrieving the Unknown ones answers the mixture's Unknown facts
    better than fine-tuning on all of them. ``comparison``: :func:`knowtune.study.retrieval_route.measure_route`.

    Holds when the ``known_retrieval`` route's accuracy on the Unknown facts (passages in the prompt) is above
    that of SFT on the whole mixture at EARLY_STOP (``sft_es``: the SFT model one would keep, chosen by dev
    accuracy; at CONVERGENCE SFT has memorised these very training questions). value = the difference, in points.
    """
    name = "retrieval_beats_sft_on_unknown"
    rows = {row["route"]: row for row in comparison.get("rows", [])}
    if "known_retrieval" not in rows or "sft_es" not in rows:
        return _untested(name, "needs the retrieval comparison's known_retrieval and sft_es rows")
    route, es, conv, alone = rows["known_retrieval"], rows["sft_es"], rows.get("sft"), rows.get("retrieval")
    if route["unknown"] is None or es["unknown"] is None:
        return _untested(name, "the mixture has no Unknown fact")
    value = route["unknown"] - es["unknown"]
    k, n = comparison["k"], comparison["unknown_facts"]
    detail = (f"on the mixture's {n} Unknown facts: SFT on Known + retrieval (top {k}) answers {route['unknown']:.1f}% "
              f"({route['unknown_closed_book']:.1f}% without the passages; the fact's own passage is among the top {k} for "
              f"{comparison['passage_recall']:.1f}%), SFT on everything {es['unknown']:.1f}% at EARLY_STOP (epoch {es['epoch']})")
    if conv is not None:
        detail += f" and {conv['unknown']:.1f}% at CONVERGENCE (epoch {conv['epoch']}, its own training questions)"
    passages = rows.get("known_passages")
    if passages is not None:
        detail += f", SFT on Known with passages + retrieval {_fmt(passages['unknown'])}%"
    if alone is not None:
        detail += f", retrieval alone (base model) {alone['unknown']:.1f}%"
    if comparison.get("min_relevance") is not None:
        detail += (f"; passages below relevance {comparison['min_relevance']:g} left out, which asks {comparison['test_closed_book_questions']} "
                   f"of the {comparison['test_questions']} test questions closed book")
    detail += "; held-out forgetting " + ", ".join(f"{r['label']} {_fmt(r['forgetting'])}" for r in comparison["rows"])
    detail += "; test EM " + ", ".join(f"{r['label']} {_fmt(r['test'])}" for r in comparison["rows"])
    return finding(name, value > 0, value, detail)


def section_findings(parts: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The findings of the optional sections present in ``parts``: ``table2`` (:mod:`knowtune.study.table2`)
    gives ``maybeknown_helps``, ``retrieval`` (:mod:`knowtune.study.retrieval_route`) ``retrieval_beats_sft_on_unknown``."""
    found = []
    if "table2" in parts:
        found.append(maybeknown_helps(parts["table2"]["variants"]))
    if "retrieval" in parts:
        found.append(retrieval_beats_sft_on_unknown(parts["retrieval"]))
    return found
