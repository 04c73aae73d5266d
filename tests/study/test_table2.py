"""The study's ``table2:`` section (Gekhman et al. 2024, Table 2): its config, analysis, finding and report
on hand-made records, then end to end on the default model (the ``route_study`` fixture of conftest.py)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from study_metrics import record

from knowtune.curate import CurateConfig
from knowtune.report.build import table2_with_paper
from knowtune.report.html import table2_section
from knowtune.study.analysis import Run, es_conv
from knowtune.study.config import StudyConfig
from knowtune.study.findings import maybeknown_helps
from knowtune.study.table2 import VARIANTS, Table2Config, analyse_table2
from knowtune.train.config import TrainConfig


def run(name: str, tests: list[float], devs: list[float], size: int = 64) -> Run:
    """A set trained for len(tests) - 1 epochs: test accuracy ``tests[e]``, dev ``devs[e]``, per category too."""
    metrics = []
    for epoch, (test, dev) in enumerate(zip(tests, devs)):
        rec = record(epoch, test=test, dev=dev, known=(0, size), per_category={"HighlyKnown": 0.9, "MaybeKnown": test, "WeaklyKnown": 0.1,
                                                                              "Unknown": 0.0, "Known": 0.6})
        rec.update({"test/n": 300, "test/n/HighlyKnown": 100, "test/n/MaybeKnown": 16, "test/n/WeaklyKnown": 17, "test/n/Unknown": 167})
        metrics.append(rec)
    kind = "natural" if name == "D_Natural" else "single"
    return Run(name=name, kind=kind, metrics=metrics, size=size)


def paper_like() -> list[Run]:
    """ES at epoch 1 (best dev), CONV at epoch 2; D_MaybeKnown best at both."""
    return [run("D_HighlyKnown", [0, 0.30, 0.29], [0, 0.4, 0.3]), run("D_MaybeKnown", [0, 0.33, 0.31], [0, 0.4, 0.3]),
            run("D_WeaklyKnown", [0, 0.28, 0.25], [0, 0.4, 0.3]), run("D_Unknown", [0, 0.25, 0.15], [0, 0.4, 0.3]),
            run("D_Natural", [0, 0.32, 0.30], [0, 0.4, 0.3])]


def test_the_section_curates_only_the_single_category_sets_and_natural_at_the_paper_rule(tmp_path):
    config = Table2Config()
    assert config.variants == list(VARIANTS)
    curate = config.curate_config(CurateConfig(annotations="a", data="d", size=240, size_split="equal", variants=["ratio", "idk"],
                                               route_unknown="retrieval", seed=3), tmp_path / "v")
    assert (curate.variants, curate.size, curate.size_split, curate.route_unknown) == (["single", "natural"], None, "paper", "train")
    assert (curate.annotations, curate.data, curate.seed, curate.out) == ("a", "d", 3, str(tmp_path / "v"))
    sized = Table2Config(size=30, size_split="equal").curate_config(CurateConfig(), tmp_path)
    assert (sized.size, sized.size_split) == (30, "equal")
    base = TrainConfig(epochs=12, learning_rate=3e-4)
    assert config.train_config(base) == base
    assert Table2Config(overrides={"max_eval_examples": 600}).train_config(base).max_eval_examples == 600


@pytest.mark.parametrize("section, message", [
    ({"variants": []}, "trains nothing"),
    ({"variants": ["D_MaybeKnown", "D_MaybeKnown"]}, "twice"),
    ({"variants": ["D_50"]}, "D_HighlyKnown"),
    ({"size": 0}, "size"),
    ({"overrides": {"learning_rate": -1}}, "learning_rate"),
])
def test_bad_sections_are_refused(section, message):
    with pytest.raises(ValidationError, match=message):
        StudyConfig.model_validate({"table2": section})


def test_analysis_gives_the_paper_table_shape_with_sizes_and_question_counts():
    table = analyse_table2(paper_like(), per_relation={"P19": 5, "P26": 14}, pool={"MaybeKnown": 64})
    assert [row["variant"] for row in table["rows"]] == list(VARIANTS)
    maybe = table["rows"][1]
    assert maybe["size"] == 64 and maybe["es"]["full"] == pytest.approx(33.0) and maybe["conv"]["full"] == pytest.approx(31.0)
    assert maybe["es"]["MaybeKnown"] == pytest.approx(33.0) and maybe["conv"]["HighlyKnown"] == pytest.approx(90.0)
    assert table["variants"]["D_Unknown"]["es_epoch"] == 1 and table["variants"]["D_Unknown"]["conv_epoch"] == 2
    assert table["test_n"] == {"full": 300, "HighlyKnown": 100, "MaybeKnown": 16, "WeaklyKnown": 17, "Unknown": 167}
    assert table["per_relation"] == {"P19": 5, "P26": 14} and table["pool"] == {"MaybeKnown": 64}


def test_maybeknown_helps_needs_the_best_accuracy_at_es_and_at_conv():
    finding = maybeknown_helps(es_conv(paper_like()))
    assert finding["holds"] is True and finding["value"] == pytest.approx(1.0)  # ES 33 vs 32, CONV 31 vs 30
    assert "best other D_Natural" in finding["detail"] and "43.6" in finding["detail"]
    behind_at_conv = paper_like()
    behind_at_conv[4] = run("D_Natural", [0, 0.32, 0.34], [0, 0.4, 0.3])
    finding = maybeknown_helps(es_conv(behind_at_conv))
    assert finding["holds"] is False and finding["value"] == pytest.approx(-3.0)
    assert maybeknown_helps(es_conv(paper_like()[:1] + paper_like()[2:]))["holds"] is None  # no D_MaybeKnown
    no_dev = [run(r.name, [0, 0.3, 0.3], [None, None, None]) for r in paper_like()]
    assert maybeknown_helps(es_conv(no_dev))["holds"] is None


def test_the_report_puts_the_paper_numbers_beside_ours():
    results = table2_with_paper(analyse_table2(paper_like(), per_relation={"P19": 5}, pool={"MaybeKnown": 64}))
    assert results["rows"][1]["paper"]["es"]["full"] == 43.6
    page = table2_section(results)
    assert "(43.6)" in page and "(98.7)" in page and "33.0" in page and "P19 5" in page and "MaybeKnown 16" in page
    assert table2_with_paper(None) is None


def test_the_study_trains_every_set_and_reports_table2(route_study):
    out, stdout = route_study
    assert "table2 ran" in " ".join(stdout.split())
    index = json.loads((out / "table2" / "variants" / "variants.json").read_text())
    sizes = {entry["name"]: entry["size"] for entry in index["variants"]}
    assert set(sizes) == set(VARIANTS) and len(set(sizes.values())) == 1  # the paper's rule: one |D| for every set
    manifest = json.loads((out / "table2" / "variants" / "D_MaybeKnown" / "manifest.json").read_text())
    assert manifest["counts"]["per_category"]["MaybeKnown"] == manifest["size"] > 0
    for name in VARIANTS:
        metrics = [json.loads(line) for line in (out / "runs" / "table2" / name / "metrics.jsonl").read_text().splitlines()]
        assert metrics[-1]["epoch"] >= 1 and "test/exact_match/MaybeKnown" in metrics[-1] and "ood/exact_match" not in metrics[-1]
    analysis = json.loads((out / "analysis.json").read_text())
    assert [row["variant"] for row in analysis["table2"]["rows"]] == list(VARIANTS)
    assert analysis["table2"]["per_relation"] == manifest["counts"]["per_relation"]
    found = {f["name"]: f for f in analysis["findings"]}
    assert found["maybeknown_helps"]["holds"] in (True, False) and "D_MaybeKnown" in found["maybeknown_helps"]["detail"]
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["table2"]["rows"][1]["paper"]["conv"]["full"] == 43.2
    assert "Training on one SliCK category" in (out / "report" / "index.html").read_text()


def test_demo_methods_runs_both_sections_and_make_demo_neither():
    from knowtune.config import load_config
    from knowtune.study.config import METHODS_CONFIG, demo_config_path

    methods = load_config(StudyConfig, demo_config_path(METHODS_CONFIG))
    assert methods.table2 == Table2Config() and methods.retrieval_route is not None
    demo = load_config(StudyConfig, demo_config_path())
    assert demo.table2 is None and demo.retrieval_route is None
