"""The method comparison's config, measures and findings (Kaplan, Gekhman et al. 2026), on hand-made records."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from knowtune.study.config import StudyConfig
from knowtune.study.methods import (
    METHODS,
    CompareMethodsConfig,
    MethodRun,
    attention_only_preserves,
    compare,
    measures,
    selfdistill_reduces_forgetting,
)
from knowtune.train.config import TrainConfig


def rec(epoch: int, *, new: float | None, held: float, dev: float = 0.3, test: float = 0.3, drift: float | None = None) -> dict:
    record = {"epoch": epoch, "dev/exact_match": dev, "test/exact_match": test, "test/answer_rate": 1.0, "test/accuracy_answered": test,
              "test/exact_match/HighlyKnown": held, "train/n/Unknown": 0 if new is None else 10,
              "train/exact_match/Unknown": new}
    if drift is not None:
        record["drift/cosine"] = drift
    return record


def run(method: str, news: list[float | None], helds: list[float], devs: list[float] | None = None, read: str = "conv") -> MethodRun:
    devs = devs or [0.3] * len(news)
    return MethodRun(method, "D_50", [rec(e, new=n, held=h, dev=d) for e, (n, h, d) in enumerate(zip(news, helds, devs))], read=read)


def test_each_method_changes_only_what_it_names():
    base = TrainConfig(epochs=3, learning_rate=3e-4)
    config = CompareMethodsConfig(overrides={"selfdistill": {"selfdistill": {"lambda_kl": 2.0}}})
    assert config.train_config("sft", base) == base
    assert config.train_config("sft_es", base) == base
    assert config.train_config("selfdistill", base).method == "selfdistill"
    assert config.train_config("selfdistill", base).selfdistill.lambda_kl == 2.0
    assert config.train_config("selfdistill", base).selfdistill.temperature == base.selfdistill.temperature  # merged, not replaced
    assert config.train_config("attention_only", base).train_only == ["attention"]
    lora = config.train_config("lora", base)
    assert lora.lora is not None and lora.learning_rate == config.lora_learning_rate
    assert config.variants() == {"sft": "D_50", "sft_es": "D_50", "filtered": "D_Known_50", "idk": "D_IDK_50",
                                 "selfdistill": "D_50", "attention_only": "D_50", "lora": "D_50"}
    assert config.trained_methods() == [m for m in METHODS if m != "sft_es"]
    assert CompareMethodsConfig(methods=["sft_es", "lora"]).trained_methods() == ["sft", "lora"]


@pytest.mark.parametrize("section, message", [
    ({"methods": []}, "compares nothing"),
    ({"methods": ["sft", "dpo"]}, "dpo"),
    ({"overrides": {"ppo": {}}}, "ppo"),
    ({"mixture": 100}, "mixture"),
])
def test_bad_sections_are_refused(section, message):
    with pytest.raises(ValidationError, match=message):
        StudyConfig.model_validate({"compare_methods": section})


def test_the_study_must_curate_what_the_methods_train_on():
    with pytest.raises(ValidationError, match="curate.variants"):
        StudyConfig.model_validate({"curate": {"variants": ["ratio", "idk"]}, "compare_methods": {}})
    with pytest.raises(ValidationError, match="unknown_ratios"):
        StudyConfig.model_validate({"curate": {"unknown_ratios": [0, 100]}, "compare_methods": {}})
    with pytest.raises(ValidationError, match="idk_base_ratio"):
        StudyConfig.model_validate({"curate": {"unknown_ratios": [25, 50]}, "compare_methods": {"mixture": 25}})
    with pytest.raises(ValidationError, match="lr|learning_rate"):
        StudyConfig.model_validate({"compare_methods": {"overrides": {"lora": {"learning_rate": -1}}}})
    StudyConfig.model_validate({"curate": {"variants": ["ratio"]}, "compare_methods": {"methods": ["sft", "selfdistill"]}})


def test_measures_are_percent_and_forgetting_is_the_drop_from_the_base_model():
    m = measures(rec(3, new=0.8, held=0.75, test=0.4, drift=0.05), "sft")
    assert m == {"epoch": 3, "new_facts": 80.0, "held_out": 75.0, "forgetting": 25.0, "test": 40.0, "answer_rate": 100.0,
                 "accuracy_answered": 40.0, "drift": 0.05}
    assert measures(rec(3, new=0.8, held=0.9), "idk")["new_facts"] is None  # relabelled: no new fact is taught
    assert measures(rec(3, new=None, held=0.9), "filtered")["new_facts"] is None


def test_sft_es_is_read_at_the_best_dev_epoch_and_the_rest_at_convergence():
    sft = run("sft", [0, 0.3, 0.7, 1.0], [0, 0.9, 0.8, 0.6], devs=[0, 0.3, 0.35, 0.2])
    es = MethodRun("sft_es", "D_50", sft.metrics, read="es")
    table = {row["method"]: row for row in compare([sft, es])["table"]}
    assert (table["sft"]["epoch"], table["sft"]["read"]) == (3, "CONVERGENCE")
    assert (table["sft_es"]["epoch"], table["sft_es"]["read"], table["sft_es"]["forgetting"]) == (2, "EARLY_STOP", pytest.approx(20.0))


def test_selfdistill_finding_compares_at_equal_new_fact_learning():
    sft = run("sft", [0, 0.4, 0.8, 1.0], [0, 0.9, 0.8, 0.7])
    slow_but_kind = run("selfdistill", [0, 0.2, 0.5, 0.8], [0, 0.99, 0.97, 0.95])  # reaches 80% at epoch 3
    result = selfdistill_reduces_forgetting(compare([sft, slow_but_kind]))
    assert result["holds"] is True and result["value"] == pytest.approx(20.0 / 5.0)  # SFT read at epoch 2 (80%), SD at 3
    harsh = run("selfdistill", [0, 0.4, 0.8, 1.0], [0, 0.9, 0.85, 0.8])
    result = selfdistill_reduces_forgetting(compare([sft, harsh]))
    assert result["holds"] is False and result["value"] == pytest.approx(30.0 / 20.0)
    assert "self-distillation" in result["detail"] and "3x" in result["detail"]
    assert selfdistill_reduces_forgetting(compare([sft]))["holds"] is None


def test_attention_only_finding_needs_little_forgetting_and_few_new_facts():
    sft = run("sft", [0, 0.5, 1.0], [0, 0.8, 0.6])
    assert attention_only_preserves(compare([sft, run("attention_only", [0, 0.05, 0.1], [0, 0.9, 0.9])]))["holds"] is True
    assert attention_only_preserves(compare([sft, run("attention_only", [0, 0.5, 0.9], [0, 0.9, 0.9])]))["holds"] is False
    assert attention_only_preserves(compare([sft, run("attention_only", [0, 0.05, 0.1], [0, 0.7, 0.65])]))["holds"] is False
    assert attention_only_preserves(compare([sft]))["holds"] is None


def test_findings_count_forgetting_beyond_the_known_only_run():
    sft = run("sft", [0, 0.5, 1.0], [0, 0.8, 0.5])            # forgets 50 at CONV
    att = run("attention_only", [0, 0.05, 0.1], [0, 0.8, 0.7])  # forgets 30 at CONV: 60% of SFT's raw forgetting
    assert attention_only_preserves(compare([sft, att]))["holds"] is False
    known_only = run("filtered", [None, None, None], [0, 0.85, 0.8])  # forgets 20: the format's reach, not the new facts
    result = attention_only_preserves(compare([sft, att, known_only]))
    assert result["holds"] is True and "beyond the Known-only run" in result["detail"]  # 10 lost against SFT's 30
    sd = run("selfdistill", [0, 0.5, 1.0], [0, 0.8, 0.7])
    assert selfdistill_reduces_forgetting(compare([sft, sd, known_only]))["value"] == pytest.approx(30.0 / 10.0)
