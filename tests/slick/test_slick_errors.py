"""Bad input ends with a clear message, the fix, and exit status 2."""

from __future__ import annotations

import json
import shutil

import pytest

from knowtune.cli import main


def cli(*args) -> int:
    try:
        main([*map(str, args)])
    except SystemExit as exit_:
        return exit_.code or 0
    return 0


def _base(tiny_model, data, out):
    return ("annotate", "--model", tiny_model, "--data", data, "--out", out, "--device", "cpu")


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_relation_with_too_few_exemplars(tiny_model, tiny_world, tmp_path, capsys):
    assert cli(*_base(tiny_model, tiny_world[0], tmp_path / "o"), "--k", 8) == 2  # 8 dev examples, needs k + 1 = 9
    err = capsys.readouterr().err
    assert "needs k + 1 = 9" in err and "--exemplars-from train" in err and "Fix:" in err


def test_dataset_without_dev_split_needs_exemplars_from_train(tiny_model, tiny_world, tmp_path, capsys):
    data = _write(tmp_path / "train_only.jsonl", [r for r in tiny_world[1] if r["split"] == "train"])
    assert cli(*_base(tiny_model, data, tmp_path / "o")) == 2
    assert "--exemplars-from train" in capsys.readouterr().err
    assert cli(*_base(tiny_model, data, tmp_path / "o"), "--exemplars-from", "train", "--limit", 4) == 0


def test_empty_dataset(tiny_model, tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    assert cli(*_base(tiny_model, tmp_path / "empty.jsonl", tmp_path / "o")) == 2
    assert "empty" in capsys.readouterr().err


def test_model_that_cannot_be_loaded(tiny_world, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    assert cli(*_base(broken, tiny_world[0], tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "could not be loaded" in err and "Fix:" in err
    assert not (tmp_path / "o" / "protocol.json").exists()  # nothing binds the dir to the broken model
    assert cli(*_base(broken.parent / "missing_model_dir", tiny_world[0], tmp_path / "o")) == 2


def test_out_dir_of_another_protocol_or_model(tiny_model, tiny_world, tmp_path, capsys):
    base = _base(tiny_model, tiny_world[0], tmp_path / "o")
    assert cli(*base, "--n-ex", 2, "--limit", 3) == 0
    assert cli(*base, "--n-ex", 3, "--limit", 3) == 2
    err = capsys.readouterr().err
    assert "another protocol" in err and "n_ex" in err and "--overwrite" in err
    other = tmp_path / "other_model"
    shutil.copytree(tiny_model, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert cli(*_base(other, tiny_world[0], tmp_path / "o"), "--n-ex", 2, "--limit", 3) == 2
    assert "model fingerprint" in capsys.readouterr().err
    assert cli(*base, "--n-ex", 3, "--limit", 3, "--overwrite") == 0
    assert json.loads((tmp_path / "o" / "protocol.json").read_text())["protocol"]["n_ex"] == 3


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--shard", "3/3", "0 <= i < N"),
    ("--mode", "fast", "mode"),
    ("--temperature", "0", "temperature"),
])
def test_bad_settings_name_the_key(tiny_model, tiny_world, tmp_path, capsys, flag, value, message):
    assert cli(*_base(tiny_model, tiny_world[0], tmp_path / "o"), flag, value) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_model_that_fails_to_load_after_the_checks_leaves_no_store(tiny_model, tiny_world, tmp_path):
    """The library path (no CLI pre-flight): a first run loads the model before it creates its
    store, so a model that cannot be loaded leaves no empty ``annotations.sqlite`` behind."""
    from knowtune.errors import KnowtuneError
    from knowtune.slick.annotate import run_annotate
    from knowtune.slick.protocol import AnnotateConfig

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    next(broken.glob("*.safetensors")).write_bytes(b"\0" * 64)
    out = tmp_path / "out"
    config = AnnotateConfig(model=str(broken), data=str(tiny_world[0]), out=str(out), device="cpu", limit=2, n_ex=2)
    with pytest.raises((KnowtuneError, OSError, RuntimeError, ValueError)):
        run_annotate(config)
    assert not (out / "annotations.sqlite").exists()


def test_a_few_shot_prompt_longer_than_the_context_is_refused_before_work(tmp_path, capsys):
    """Each question fits the default model's 512 tokens alone (about 200 tokens), but not once four
    exemplars precede it: refused, naming the example and the fix, before anything is written."""
    long = " ".join(["who was known for very many remarkable things"] * 10)
    records = [{"id": f"{split}-{i}", "question": f"Where was the person {long} number {i} born?", "answers": [f"City{i}"],
                "relation": "born_in", "split": split} for split, n in (("dev", 6), ("train", 2)) for i in range(n)]
    data = _write(tmp_path / "long.jsonl", records)
    out = tmp_path / "o"
    assert cli("annotate", "--model", "default", "--data", data, "--out", out, "--device", "cpu", "--k", 4) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the few-shot prompt of example" in err and "exceeds the model's 512" in err and "lower --k" in err, err
    assert not out.exists()
    assert cli("annotate", "--model", "default", "--data", data, "--out", out, "--device", "cpu", "--k", 1, "--limit", 1,
               "--n-ex", 2, "--n-samples", 2) == 0
