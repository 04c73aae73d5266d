"""End-to-end tests of `knowtune world`, `knowtune pretrain` and `knowtune models` through the CLI."""

import json

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from knowtune.cli import main
from knowtune.world.spec import World


def run(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.startswith("knowtune ")


def test_world_info_and_path(capsys):
    code, out, _ = run(["world", "info"], capsys)
    assert code == 0 and "P19" in out and "Where was [X] born?" in out and "4,710 facts" in out
    code, out, _ = run(["world", "path"], capsys)
    assert code == 0 and World.load(out.strip().splitlines()[-1]).name == "knowtune-embedded-eq"


def test_world_synth_and_corpus(tmp_path, capsys):
    code, _, _ = run(["world", "synth", "--out", str(tmp_path / "w"), "--entities", "40", "--key-type", "random", "--seed", "3"], capsys)
    assert code == 0
    world = World.load(tmp_path / "w")
    assert len({ex.subject for ex in world.examples}) == 40
    code, out, _ = run(["world", "corpus", "--world", str(tmp_path / "w"), "--out", str(tmp_path / "c")], capsys)
    assert code == 0
    exposures = [json.loads(line) for line in (tmp_path / "c" / "exposures.jsonl").read_text().splitlines()]
    lines = (tmp_path / "c" / "corpus.txt").read_text()
    assert len(exposures) == len(world.examples) and lines.count("\n") >= sum(e["exposures"] for e in exposures)


def test_bad_config_key_exits_2_naming_the_key(tmp_path, capsys):
    config = tmp_path / "pretrain.yaml"
    config.write_text("hidden_sise: 64\n")
    code, _, err = run(["pretrain", "--out", str(tmp_path / "m"), "--config", str(config)], capsys)
    assert code == 2 and "hidden_sise" in err and "unknown key" in err
    assert not (tmp_path / "m").exists()


def test_pretrain_then_recall_through_the_cli(tmp_path, capsys):
    run(["world", "synth", "--out", str(tmp_path / "w"), "--entities", "30", "--seed", "1"], capsys)
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump({"vocab_size": 400, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "seq_len": 32, "batch_size": 8, "epochs": 1.0, "warmup_steps": 2}))
    code, out, _ = run(["pretrain", "--out", str(tmp_path / "m"), "--world", str(tmp_path / "w"), "--config", str(config)], capsys)
    assert code == 0 and "tok/s" in out and "ETA" in out and out.strip().splitlines()[-1] == str(tmp_path / "m")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "m") is not None and AutoTokenizer.from_pretrained(tmp_path / "m") is not None
    code, out, _ = run(["models", "recall", str(tmp_path / "m"), "--world", str(tmp_path / "w"), "--out", str(tmp_path / "recall.json")], capsys)
    assert code == 0 and "accuracy by exposure" in out
    rows = json.loads((tmp_path / "recall.json").read_text())["rows"]
    assert rows[0]["bucket"] == "0" and sum(r["facts"] for r in rows) == len(World.load(tmp_path / "w").examples)


def test_models_default_prints_a_loadable_directory(capsys):
    code, out, _ = run(["models", "default"], capsys)
    assert code == 0
    directory = out.strip().splitlines()[-1]
    assert AutoModelForCausalLM.from_pretrained(directory).config.model_type == "llama"
    assert AutoTokenizer.from_pretrained(directory).eos_token == "</s>"


def test_exposure_check_validates_an_audit_of_a_pretrained_model(tmp_path, tiny_pretrained, capsys):
    from knowtune.testing import tiny_world

    tiny_world().save(tmp_path / "w")
    code, _, err = run(["annotate", "--model", str(tiny_pretrained), "--data", str(tmp_path / "w"), "--split", "train", "--out", str(tmp_path / "audit"), "--n-ex", "2", "--n-samples", "2", "--k", "2", "--limit", "12"], capsys)
    assert code == 0, err
    code, out, _ = run(["models", "exposure-check", "--annotations", str(tmp_path / "audit"), "--model", str(tiny_pretrained), "--out", str(tmp_path / "check.json")], capsys)
    assert code == 0 and "Spearman rho" in out
    result = json.loads((tmp_path / "check.json").read_text())
    assert result["facts"] == 12 and set(result["per_category"]) == {"HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown"}
    code, _, err = run(["models", "exposure-check", "--annotations", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "annotations.jsonl" in err
