"""The key-overlap experiment (Kaplan, Gekhman et al., arXiv 2604.15574, 2026) in miniature:
a row per cell with finite measures, the paired design, resuming, the finding, config errors."""

from __future__ import annotations

import json
import math

import pytest
from study_metrics import mini_key_overlap

from knowtune.config import load_config
from knowtune.errors import ConfigError, KnowtuneError
from knowtune.study.keys import (RESULT_FILE, SUMMARY_FILE, CellSettings, KeyOverlapConfig, cell_means, cell_name, memorisation_confound,
                                 namelike_keys_forget_more, run_key_overlap)
from knowtune.world.synthetic import generate_synthetic_world

SIZES = [10, 12]
MEASURES = ("forgetting", "new_fact_learning", "drift", "format_drift", "held_out_accuracy_before", "held_out_accuracy_after",
            "key_overlap", "key_overlap_tokens")


def mini_config(**overrides) -> KeyOverlapConfig:
    """Two key types x two tiny worlds, a tiny model pretrained long enough to recall some facts."""
    values = mini_key_overlap(SIZES)
    values.update(overrides)
    return KeyOverlapConfig.model_validate(values)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("keys")
    lines: list[str] = []
    summary = run_key_overlap(mini_config(), out, log=lines.append)
    return out, summary, lines


def test_summary_has_a_row_per_cell_with_finite_measures(experiment):
    out, summary, _ = experiment
    cells = {(row["key_type"], row["entities"]) for row in summary["rows"]}
    assert cells == {(key, n) for key in ("name", "random") for n in SIZES}
    for row in summary["rows"]:
        for measure in MEASURES:
            assert row[measure] is not None and math.isfinite(row[measure]), (row["key_type"], row["entities"], measure)
        assert 0 <= row["forgetting"] <= 1 and row["drift"] >= 0
        assert row["held_out_accuracy_before"] > 0, "the reference must recall some held-out facts, or forgetting is undefined"
    assert json.loads((out / SUMMARY_FILE).read_text())["rows"] == summary["rows"]
    assert summary["finding"]["name"] == "namelike_keys_forget_more" and summary["finding"]["holds"] in (True, False)
    assert len(summary["memorisation"]["pairs"]) == len(SIZES) and summary["memorisation"]["correlation"] is None
    names = {row["entities"]: row["key_overlap"] for row in summary["rows"] if row["key_type"] == "name"}
    randoms = {row["entities"]: row["key_overlap"] for row in summary["rows"] if row["key_type"] == "random"}
    assert all(randoms[n] == 0.0 for n in SIZES) and any(names[n] > 0 for n in SIZES)


def test_each_cell_writes_result_config_and_provenance(experiment):
    out, _, _ = experiment
    for key in ("name", "random"):
        cell = out / cell_name(key, SIZES[0])
        record = json.loads((cell / RESULT_FILE).read_text())
        assert record["row"]["key_type"] == key and record["provenance"]["model_fingerprint"]
        assert json.loads((cell / "cell.json").read_text())["key_type"] == key
        exposures = [json.loads(line) for line in (cell / "base" / "exposures.jsonl").read_text().splitlines()]
        assert exposures and all(r["split"] != "test" for r in exposures), "new entities' facts must never be in the corpus"


def test_key_types_are_a_paired_design():
    config = mini_config()
    name, random_ = (generate_synthetic_world(config.world_config(key, 12)) for key in ("name", "random"))
    assert [(ex.id, ex.relation, ex.split, ex.object) for ex in name.examples] == [(ex.id, ex.relation, ex.split, ex.object) for ex in random_.examples]
    subjects = {ex.id: (ex.subject, other.subject) for ex, other in zip(name.examples, random_.examples)}
    assert all(a != b for a, b in subjects.values())


def test_rerun_skips_finished_cells(experiment):
    out, summary, _ = experiment
    results = sorted(out.glob(f"*/{RESULT_FILE}"))
    before = {path: path.stat().st_mtime_ns for path in results}
    lines: list[str] = []
    again = run_key_overlap(mini_config(), out, log=lines.append)
    assert sum("finished earlier, skipped" in line for line in lines) == len(summary["rows"]) == len(results)
    assert {path: path.stat().st_mtime_ns for path in results} == before
    assert again["rows"] == summary["rows"]


def test_rerun_with_other_settings_is_refused(experiment):
    out, _, _ = experiment
    changed = mini_config(finetune={"epochs": 3, "batch_size": 8, "eval_every_epoch": False})
    with pytest.raises(KnowtuneError, match="other settings"):
        run_key_overlap(changed, out, log=lambda _: None)


def _row(key: str, n: int, forgetting: float | None) -> dict:
    return {"key_type": key, "entities": n, "forgetting": forgetting}


def test_finding_holds_when_name_keys_forget_more_at_every_size():
    rows = [_row("name", 100, 0.40), _row("random", 100, 0.05), _row("name", 200, 0.38), _row("random", 200, 0.02)]
    result = namelike_keys_forget_more({"rows": rows})
    assert result["holds"] is True and result["value"] == pytest.approx((35 + 36) / 2)
    assert "100 entities: forgetting name 40.0% vs random 5.0%" in result["detail"] and "one run (seed) per cell" in result["detail"]


def test_finding_fails_when_one_size_does_not_show_it():
    rows = [_row("name", 100, 0.40), _row("random", 100, 0.05), _row("name", 200, 0.30), _row("random", 200, 0.31)]
    result = namelike_keys_forget_more(rows)
    assert result["holds"] is False and result["value"] == pytest.approx((35 - 1) / 2)
    assert "do not forget more" in result["detail"]


def test_finding_compares_with_every_other_key_type():
    rows = [_row("name", 100, 0.40), _row("random", 100, 0.05), _row("uuid", 100, 0.45)]
    assert namelike_keys_forget_more(rows)["holds"] is False


def test_a_repeated_cell_is_the_mean_of_its_runs_with_the_spread_between_seeds():
    runs = [{**_row("name", 100, f), "forgetting_se": 0.05, "held_out_accuracy_before": acc, "seed": seed}
            for f, acc, seed in ((0.30, 0.5, 0), (0.50, 0.7, 1), (0.40, 0.6, 2))]
    runs.append({**_row("random", 100, None), "forgetting_se": None, "held_out_accuracy_before": 0.0, "seed": 0})
    runs.append({**_row("random", 100, 0.20), "forgetting_se": 0.04, "held_out_accuracy_before": 0.9, "seed": 1})
    name, random_ = cell_means(runs)
    assert name["forgetting"] == pytest.approx(0.40) and name["held_out_accuracy_before"] == pytest.approx(0.6)
    assert name["forgetting_se"] == pytest.approx(0.1 / math.sqrt(3)), "sample sd of 30/50/40 over sqrt(3), not a run's binomial error"
    assert name["runs"] == 3 and name["forgetting_runs"] == [0.30, 0.50, 0.40] and "seed" not in name
    assert random_["forgetting"] == pytest.approx(0.20) and random_["forgetting_se"] == 0.04, "a run with undefined forgetting is left out"
    assert random_["runs"] == 2 and random_["forgetting_runs"] == [None, 0.20]


def test_the_finding_judges_a_repeated_cell_by_its_mean():
    runs = [_row("name", 100, 0.30), _row("random", 100, 0.35), _row("name", 100, 0.60), _row("random", 100, 0.25)]
    assert namelike_keys_forget_more(runs[:2])["holds"] is False, "the first run alone does not show it"
    result = namelike_keys_forget_more(cell_means(runs))
    assert result["holds"] is True and result["value"] == pytest.approx(15.0) and "one run" not in result["detail"]


def test_the_report_counts_a_repeated_cell_s_runs():
    from knowtune.report.html import keys_section

    def row(key, forgetting, runs):
        return {**_row(key, 100, forgetting), "key_overlap": 0.2, "held_out_accuracy_before": 0.8, "held_out_accuracy_after": 0.5,
                "forgetting_se": 0.03, "new_fact_learning": 0.6, "drift": 0.03, "format_drift": 0.001, "runs": runs}

    one = keys_section({"rows": [row("name", 0.4, 1), row("random", 0.3, 1)]}, {})
    three = keys_section({"rows": [row("name", 0.4, 3), row("random", 0.3, 3)]}, {})
    assert "<th>runs</th>" not in one and "standard error of that mean across runs" not in one
    assert "<th>runs</th>" in three and "<td>3</td>" in three and "standard error of that mean across runs" in three


def test_the_memorisation_confound_pairs_each_run_and_correlates_the_gaps():
    def run(key, n, seed, forgetting, accuracy):
        return {**_row(key, n, forgetting), "seed": seed, "held_out_accuracy_before": accuracy}

    runs = [run("name", 100, 0, 0.50, 0.30), run("random", 100, 0, 0.30, 0.90), run("name", 100, 1, 0.20, 0.90),
            run("random", 100, 1, 0.30, 0.90), run("name", 200, 0, 0.40, 0.60), run("random", 200, 0, 0.35, 0.90),
            run("name", 200, 1, None, 0.0), run("random", 200, 1, 0.30, 0.90)]
    result = memorisation_confound(runs)
    assert [(p["entities"], p["seed"], p["other"]) for p in result["pairs"]] == [(100, 0, "random"), (100, 1, "random"), (200, 0, "random")]
    assert result["pairs"][0]["forgetting_gap"] == pytest.approx(0.20) and result["pairs"][0]["accuracy_gap"] == pytest.approx(-0.60)
    gaps = [(-0.6, 0.2), (0.0, -0.1), (-0.3, 0.05)]
    mx, my = sum(a for a, _ in gaps) / 3, sum(b for _, b in gaps) / 3
    r = sum((a - mx) * (b - my) for a, b in gaps) / math.sqrt(sum((a - mx) ** 2 for a, _ in gaps) * sum((b - my) ** 2 for _, b in gaps))
    assert result["correlation"] == pytest.approx(r) and result["correlation"] < 0
    assert memorisation_confound(runs[:4])["correlation"] is None, "under 3 pairs"


def test_repeats_shift_every_seed_and_keep_the_key_types_paired():
    config = mini_config(repeats=3, seed=4, pretrain={**mini_key_overlap(SIZES)["pretrain"], "seed": 10})
    first, third = CellSettings.of(config, "name", 12, 0), CellSettings.of(config, "name", 12, 2)
    assert (first.world.seed, first.pretrain.seed, first.pretrain.corpus.seed, first.finetune.seed) == (4, 10, 4, 4)
    assert (third.world.seed, third.pretrain.seed, third.pretrain.corpus.seed, third.finetune.seed) == (6, 12, 6, 6)
    assert CellSettings.of(config, "random", 12, 2).world.seed == 6
    assert [cell_name("name", 12, run) for run in range(3)] == ["name-12", "name-12-run2", "name-12-run3"]
    worlds = [generate_synthetic_world(config.world_config("name", 12, run)) for run in (0, 2)]
    assert [ex.object for ex in worlds[0].examples] != [ex.object for ex in worlds[1].examples]
    assert "repeats" not in mini_config().comparable() and config.comparable()["repeats"] == 3
    assert CellSettings.of(mini_config(), "name", 12) == CellSettings.of(mini_config(repeats=2), "name", 12), "run 1 is the one-run cell"


def test_finding_is_untested_without_both_key_types():
    assert namelike_keys_forget_more([_row("name", 100, 0.4), _row("name", 200, 0.3)])["holds"] is None
    assert namelike_keys_forget_more([_row("random", 100, 0.1)])["holds"] is None
    missing = namelike_keys_forget_more([_row("name", 100, 0.4), _row("random", 200, 0.1)])
    assert missing["holds"] is None and "not tested" in missing["detail"]
    undefined = namelike_keys_forget_more([_row("name", 100, None), _row("random", 100, 0.1)])
    assert undefined["holds"] is None


@pytest.mark.parametrize(("values", "message"), [
    ({"new_share": 0.5}, "must sum to 1"),
    ({"relations": ["works_at", "mentor"]}, "mentor"),
    ({"sizes": [2]}, "at least"),
    ({"key_types": ["name", "name"]}, "listed twice"),
    ({"key_types": ["names"]}, "key_types"),
    ({"finetune": {"method": "selfdistill"}}, "plain SFT"),
    ({"sizes": []}, "at least one world size"),
    ({"repeats": 0}, "repeats"),
])
def test_bad_config_is_rejected_with_a_clear_error(values, message):
    with pytest.raises(ValueError, match=message):
        KeyOverlapConfig.model_validate(values)


def test_unknown_key_in_yaml_names_the_key(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text("sizes: [100]\nepochs: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="epochs: unknown key"):
        load_config(KeyOverlapConfig, path)
