"""Bad inputs across annotate, curate, train, evaluate and study (issue 13), run in-process: each
exits with status 2, names the key, flag, file or example at fault, prints no traceback and
leaves nothing behind: --out is not created (or a file given as --out is untouched) and the
fixture directory is unchanged. Validation runs before any model is loaded, so each case is cheap.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from knowtune.models import default_model_dir
from knowtune.testing import run_cli

DEFAULT = default_model_dir()

#: (id, command line, what the message must name). {D}: the fixture directory; {OUT}: a fresh output path.
CASES = [
    # -- annotate ---------------------------------------------------------------------------------
    ("annotate-truncated-weights", "annotate --model {D}/truncated --data embedded --out {OUT}", ["truncated/model.safetensors is truncated or corrupt"]),
    ("annotate-no-tokenizer", "annotate --model {D}/no-tokenizer --data embedded --out {OUT}", ["no tokenizer files", "tokenizer.save_pretrained"]),
    ("annotate-tokenizer-config-only", "annotate --model {D}/tokenizer-config-only --data embedded --out {OUT}",
     ["no tokenizer files", "beside its tokenizer_config.json"]),
    ("annotate-only-config", "annotate --model {D}/only-config --data embedded --out {OUT}", ["has config.json but no weights"]),
    ("annotate-config-not-json", "annotate --model {D}/bad-config --data embedded --out {OUT}", ["bad-config/config.json is not valid JSON"]),
    ("annotate-unknown-architecture", "annotate --model {D}/unknown-architecture --data embedded --out {OUT}",
     ["transformers cannot read", "unknown-architecture/config.json", "upgrade transformers"]),
    ("annotate-weights-of-another-config", "annotate --model {D}/other-shapes --data embedded --out {OUT}",
     ["other-shapes/model.safetensors holds model.layers.0.mlp.down_proj.weight of shape (128, 512)", "config.json makes it (128, 256)"]),
    ("train-weights-of-another-config", "train --model {D}/other-shapes --data embedded --out {OUT}", ["of shape (128, 512)"]),
    ("annotate-tokenizer-not-json", "annotate --model {D}/bad-tokenizer --data embedded --out {OUT}", ["bad-tokenizer/tokenizer.json is truncated or not valid JSON"]),
    ("annotate-missing-shard", "annotate --model {D}/missing-shard --data embedded --out {OUT}", ["missing: model-00002-of-00002.safetensors"]),
    ("annotate-truncated-bin", "annotate --model {D}/truncated-bin --data embedded --out {OUT}", ["pytorch_model.bin is truncated or corrupt"]),
    ("annotate-model-not-cached", "annotate --model no-such-org/no-such-model --data embedded --out {OUT}", ["no-such-org/no-such-model", "local Hugging Face cache"]),
    ("annotate-model-dir-without-config", "annotate --model {D}/data --data embedded --out {OUT}", ["no config.json"]),
    ("annotate-k-0", "annotate --data embedded --k 0 --out {OUT}", ["k is 0", "--k 1"]),
    ("annotate-n-samples-0", "annotate --data embedded --n-samples 0 --out {OUT}", ["n_samples is 0", "WeaklyKnown"]),
    ("annotate-n-ex-0", "annotate --data embedded --n-ex 0 --out {OUT}", ["n_ex", "--n-ex"]),
    ("annotate-limit-0", "annotate --data embedded --limit 0 --out {OUT}", ["limit", "--limit"]),
    ("annotate-temperature-0", "annotate --data embedded --temperature 0 --out {OUT}", ["temperature"]),
    ("annotate-top-k-0", "annotate --data embedded --top-k 0 --out {OUT}", ["top_k"]),
    ("annotate-max-new-tokens-0", "annotate --data embedded --max-new-tokens 0 --out {OUT}", ["max_new_tokens"]),
    ("annotate-batch-size-0", "annotate --data embedded --batch-size 0 --out {OUT}", ["batch_size"]),
    ("annotate-chunk-size-0", "annotate --data embedded --chunk-size 0 --out {OUT}", ["chunk_size"]),
    ("annotate-shard-out-of-range", "annotate --data embedded --shard 3/2 --out {OUT}", ["shard", "3/2"]),
    ("annotate-device", "annotate --data embedded --device tpu --out {OUT}", ["--device", "tpu"]),
    ("annotate-exemplars-from", "annotate --data embedded --exemplars-from nope --out {OUT}", ["--exemplars-from"]),
    ("annotate-mode", "annotate --data embedded --mode weird --out {OUT}", ["--mode"]),
    ("annotate-split", "annotate --data embedded --split nosuch --out {OUT}", ["splits", "nosuch"]),
    ("annotate-unknown-relation", "annotate --data embedded --relations P999 --out {OUT}", ["P999"]),
    ("annotate-no-out", "annotate --data embedded", ["--out"]),
    ("annotate-no-data", "annotate --out {OUT}", ["--data"]),
    ("annotate-missing-data", "annotate --data {D}/missing.jsonl --out {OUT}", ["missing.jsonl: no such file"]),
    ("annotate-malformed-data", "annotate --data {D}/data/malformed.jsonl --out {OUT}", ["malformed.jsonl:2"]),
    ("annotate-huge-question", "annotate --data {D}/data/huge.jsonl --exemplars-from train --k 1 --out {OUT}", ["'huge-1'", "5,000,000 characters", "512 tokens", "max_position_embeddings"]),
    ("annotate-out-is-a-file", "annotate --data embedded --out {D}/a-file", ["a-file exists and is not a directory"]),
    ("annotate-out-under-a-file", "annotate --data embedded --out {D}/a-file/audit", ["a-file is a file"]),
    ("annotate-missing-config", "annotate --data embedded --config {D}/missing.yaml --out {OUT}", ["missing.yaml: config file not found"]),
    ("annotate-unknown-config-key", "annotate --data embedded --config {D}/data/unknown-key.yaml --out {OUT}", ["nosuchkey", "unknown key"]),
    # -- evaluate ---------------------------------------------------------------------------------
    ("evaluate-truncated-weights", "evaluate --model {D}/truncated --data embedded --out {OUT}", ["model.safetensors is truncated or corrupt"]),
    ("evaluate-no-tokenizer", "evaluate --model {D}/no-tokenizer --data embedded --out {OUT}", ["no tokenizer files"]),
    ("evaluate-only-config", "evaluate --model {D}/only-config --data embedded --out {OUT}", ["no weights"]),
    ("evaluate-fewshot-0-shots", "evaluate --data embedded --format fewshot --shots 0 --out {OUT}", ["prompt.shots is 0", "--shots 1"]),
    ("evaluate-format", "evaluate --data embedded --format weird --out {OUT}", ["--format"]),
    ("evaluate-split", "evaluate --data embedded --split nosuch --out {OUT}", ["--split"]),
    ("evaluate-no-examples-of-split", "evaluate --data {D}/data/no-train.jsonl --split train --out {OUT}", ["no-train.jsonl: no examples of the train split"]),
    ("evaluate-batch-size-0", "evaluate --data embedded --batch-size 0 --out {OUT}", ["batch_size"]),
    ("evaluate-limit-0", "evaluate --data embedded --limit 0 --out {OUT}", ["limit"]),
    ("evaluate-no-data", "evaluate --out {OUT}", ["no dataset given", "--data"]),
    ("evaluate-missing-task", "evaluate --data embedded --task {D}/missing.yaml --out {OUT}", ["missing.yaml", "task"]),
    ("evaluate-huge-question", "evaluate --data {D}/data/huge.jsonl --split train --out {OUT}", ["'huge-1'", "512 tokens"]),
    ("evaluate-missing-annotations", "evaluate --data embedded --annotations {D}/nowhere --out {OUT}", ["nowhere: no such annotations file"]),
    ("evaluate-malformed-annotations", "evaluate --data embedded --annotations {D}/bad-audit --out {OUT}", ["bad-audit/annotations.jsonl:1"]),
    ("evaluate-audit-of-another-model", "evaluate --model {D}/other --data embedded --annotations {D}/audit --out {OUT}",
     ["audit of another model", "--allow-other-model-audit"]),
    ("evaluate-out-is-a-file", "evaluate --data embedded --out {D}/a-file", ["a-file exists and is not a directory"]),
    # -- train ------------------------------------------------------------------------------------
    ("train-truncated-weights", "train --model {D}/truncated --data embedded --out {OUT}", ["model.safetensors is truncated or corrupt"]),
    ("train-no-tokenizer", "train --model {D}/no-tokenizer --data embedded --out {OUT}", ["no tokenizer files"]),
    ("train-only-config", "train --model {D}/only-config --data embedded --out {OUT}", ["no weights"]),
    ("train-epochs-0", "train --data embedded --epochs 0 --out {OUT}", ["epochs"]),
    ("train-lr-0", "train --data embedded --lr 0 --out {OUT}", ["learning_rate is 0"]),
    ("train-lr-negative", "train --data embedded --lr -1 --out {OUT}", ["learning_rate"]),
    ("train-batch-size-0", "train --data embedded --batch-size 0 --out {OUT}", ["batch_size"]),
    ("train-lora-r-0", "train --data embedded --lora-r 0 --out {OUT}", ["lora.r"]),
    ("train-max-eval-examples-0", "train --data embedded --max-eval-examples 0 --out {OUT}", ["max_eval_examples"]),
    ("train-no-train-split", "train --data {D}/data/no-train.jsonl --out {OUT}", ["no examples of the train split"]),
    ("train-missing-dev", "train --data embedded --dev {D}/missing.jsonl --out {OUT}", ["missing.jsonl: no such file"]),
    ("train-huge-question", "train --data {D}/data/huge.jsonl --out {OUT}", ["'huge-1'", "512 tokens"]),
    ("train-missing-teacher", "train --data embedded --method selfdistill --selfdistill-teacher {D}/nowhere --out {OUT}", ["--selfdistill-teacher", "nowhere"]),
    ("train-truncated-teacher", "train --data embedded --method selfdistill --selfdistill-teacher {D}/truncated --out {OUT}",
     ["--selfdistill-teacher", "model.safetensors is truncated"]),
    ("train-missing-annotations", "train --data embedded --annotations {D}/nowhere --out {OUT}", ["nowhere: no such annotations file"]),
    ("train-audit-of-another-model", "train --model {D}/other --data embedded --annotations {D}/audit --out {OUT}", ["audit of another model"]),
    ("train-variant-curated-from-another-models-audit", "train --model {D}/other --data {D}/variants/D_Natural/train.jsonl --out {OUT}",
     ["D_Natural/train.jsonl (a variant curated from an audit) is the audit of another model"]),
    ("train-unknown-config-key", "train --data embedded --config {D}/data/unknown-key.yaml --out {OUT}", ["nosuchkey"]),
    ("train-out-is-a-file", "train --data embedded --out {D}/a-file", ["a-file exists and is not a directory"]),
    ("train-out-under-a-file", "train --data embedded --out {D}/a-file/run", ["a-file is a file"]),
    ("train-retrieval-not-a-store", "train --data embedded --retrieval {D}/nowhere --out {OUT}", ["nowhere: not a retrieval store", "store.json is missing"]),
    ("train-oracle-share-without-store", "train --data embedded --retrieval-oracle-share 0.5 --out {OUT}", ["set retrieval to a store too"]),
    ("data-store-out-is-a-file", "data store embedded --out {D}/a-file", ["a-file exists and is not an empty directory"]),
    # -- curate -----------------------------------------------------------------------------------
    ("curate-missing-annotations", "curate --annotations {D}/nowhere --out {OUT}", ["nowhere: annotation directory not found"]),
    ("curate-malformed-annotations", "curate --annotations {D}/bad-audit --out {OUT}", ["bad-audit/annotations.jsonl:1", "Sorta"]),
    ("curate-ratio-over-100", "curate --annotations {D}/audit --unknown-ratios 150 --out {OUT}", ["unknown_ratios", "150"]),
    ("curate-variant-kind", "curate --annotations {D}/audit --variants bogus --out {OUT}", ["variants", "bogus"]),
    ("curate-idk-base-ratio", "curate --annotations {D}/audit --idk-base-ratio 101 --out {OUT}", ["idk_base_ratio"]),
    ("curate-size-0", "curate --annotations {D}/audit --size 0 --out {OUT}", ["size"]),
    ("curate-split", "curate --annotations {D}/audit --split nosuch --out {OUT}", ["--split"]),
    ("curate-missing-data", "curate --annotations {D}/audit --data {D}/missing.jsonl --out {OUT}", ["missing.jsonl"]),
    ("curate-no-out", "curate --annotations {D}/audit", ["--out"]),
    ("curate-out-is-a-file", "curate --annotations {D}/audit --out {D}/a-file", ["a-file exists and is not a directory"]),
    # -- study ------------------------------------------------------------------------------------
    ("study-truncated-weights", "study --model {D}/truncated --out {OUT}", ["model.safetensors is truncated or corrupt"]),
    ("study-only-config", "study --model {D}/only-config --out {OUT}", ["no weights"]),
    ("study-unknown-architecture", "study --model {D}/unknown-architecture --out {OUT}", ["transformers cannot read"]),
    ("study-unknown-variant", "study --train-variants D_0,D_7 --out {OUT}", ["train_variants names D_7", "D_Natural"]),
    ("study-variant-of-an-unbuilt-kind", "study --curate-variants ratio --train-variants D_Natural --out {OUT}", ["train_variants names D_Natural"]),
    ("study-workers-0", "study --workers 0 --out {OUT}", ["workers"]),
    ("study-annotate-k-0", "study --annotate-k 0 --out {OUT}", ["annotate.k is 0", "--annotate-k"]),
    ("study-annotate-n-samples-0", "study --annotate-n-samples 0 --out {OUT}", ["annotate.n_samples is 0"]),
    ("study-train-epochs-0", "study --train-epochs 0 --out {OUT}", ["train.epochs"]),
    ("study-train-lr-0", "study --train-learning-rate 0 --out {OUT}", ["train.learning_rate is 0"]),
    ("study-ratio-over-100", "study --curate-unknown-ratios 200 --out {OUT}", ["curate.unknown_ratios"]),
    ("study-section-sets-a-wired-key", "study --config {D}/data/wired.yaml --out {OUT}", ["annotate.out is set by the study itself"]),
    ("study-missing-data", "study --data {D}/missing.jsonl --out {OUT}", ["missing.jsonl"]),
    ("study-missing-dev", "study --dev {D}/missing.jsonl --out {OUT}", ["missing.jsonl"]),
    ("study-huge-question", "study --data {D}/data/huge.jsonl --out {OUT}", ["'huge-1'", "512 tokens"]),
    ("study-missing-teacher", "study --train-method selfdistill --train-selfdistill-teacher {D}/nowhere --out {OUT}", ["--train-selfdistill-teacher"]),
    ("study-no-out", "study", ["--out"]),
    ("study-out-is-a-file", "study --out {D}/a-file", ["a-file exists and is not a directory"]),
    # -- data check with a model --------------------------------------------------------------------
    ("data-check-huge-question", "data check {D}/data/huge.jsonl --model default", ["'huge-1'", "512 tokens"]),
]


def _copy_model(root: Path, name: str) -> Path:
    return Path(shutil.copytree(DEFAULT, root / name))


def _write_models(root: Path) -> None:
    """Model directories broken in the ways users break them, and one other real model."""
    from knowtune.testing import tiny_family_model

    truncated = _copy_model(root, "truncated")
    (truncated / "model.safetensors").write_bytes((DEFAULT / "model.safetensors").read_bytes()[:100_000])
    no_tokenizer = root / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(DEFAULT / name, no_tokenizer)
    (root / "tokenizer-config-only").mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        shutil.copy(DEFAULT / name, root / "tokenizer-config-only")
    (root / "only-config").mkdir()
    shutil.copy(DEFAULT / "config.json", root / "only-config")
    (_copy_model(root, "bad-config") / "config.json").write_text('{"model_type": "llama",')
    shapes = _copy_model(root, "other-shapes")
    (shapes / "config.json").write_text(json.dumps({**json.loads((DEFAULT / "config.json").read_text()), "intermediate_size": 256}))
    (_copy_model(root, "unknown-architecture") / "config.json").write_text('{"model_type": "no-such-architecture"}')
    (_copy_model(root, "bad-tokenizer") / "tokenizer.json").write_text("garbage{")
    sharded = _copy_model(root, "missing-shard")
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    legacy = _copy_model(root, "truncated-bin")
    (legacy / "model.safetensors").unlink()
    (legacy / "pytorch_model.bin").write_bytes((DEFAULT / "model.safetensors").read_bytes()[:5000])
    tiny_family_model("llama", root / "other")


def _write_data(root: Path) -> None:
    from knowtune.data import load_examples
    from knowtune.world.embedded import resolve_data_path

    data = root / "data"
    data.mkdir()
    examples = load_examples(resolve_data_path("embedded"))
    record = lambda e: json.dumps({"id": e.id, "relation": e.relation, "question": e.question, "answers": list(e.answers), "split": e.split})  # noqa: E731
    train = [e for e in examples if e.split == "train"][:4]
    huge = {"id": "huge-1", "relation": train[0].relation, "question": "x" * 5_000_000, "answers": ["a"], "split": "train"}
    (data / "huge.jsonl").write_text("".join(record(e) + "\n" for e in train) + json.dumps(huge) + "\n")
    (data / "no-train.jsonl").write_text("".join(record(e) + "\n" for e in examples if e.split == "test"))
    (data / "malformed.jsonl").write_text(record(train[0]) + "\n{not json\n")
    (data / "unknown-key.yaml").write_text("nosuchkey: 1\n")
    (data / "wired.yaml").write_text("annotate:\n  out: somewhere\n")
    (root / "bad-audit").mkdir()
    (root / "bad-audit" / "annotations.jsonl").write_text('{"id": "a", "category": "Sorta"}\n')
    (root / "a-file").write_text("not a directory\n")


def _write_audit(root: Path) -> None:
    """A real (tiny) audit of the default model."""
    from knowtune.slick.annotate import run_annotate
    from knowtune.slick.protocol import AnnotateConfig

    from knowtune.curate import CurateConfig, run_curate

    run_annotate(AnnotateConfig(model="default", data="embedded", limit=4, n_ex=1, n_samples=2, device="cpu", out=str(root / "audit")))
    run_curate(CurateConfig(annotations=str(root / "audit"), variants=["natural"], size=2, out=str(root / "variants")))


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    _write_models(root)
    _write_data(root)
    _write_audit(root)
    return root


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_the_table_holds_at_least_60_cases_across_every_command():
    commands = {line.split()[0] for _, line, _ in CASES}
    assert len(CASES) >= 60 and commands >= {"annotate", "curate", "train", "evaluate", "study"}
    assert len({case_id for case_id, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("line", "named"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_input_exits_2_naming_it_and_leaves_nothing(capsys, fixtures, tmp_path, line, named):
    out = tmp_path / "out"
    before = _snapshot(fixtures)
    code, _, err = run_cli(capsys, *line.replace("{D}", str(fixtures)).replace("{OUT}", str(out)).split())
    text = " ".join(err.replace("│", " ").split())
    assert code == 2, err[-3000:]
    assert "Traceback" not in err and "protobuf" not in err
    for needle in named:
        assert needle.replace("{D}", str(fixtures)) in text, f"{needle!r} not in: {text}"
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert _snapshot(fixtures) == before  # nothing written into the inputs (a-file untouched, no lock left)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_out_is_refused_before_any_work(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = run_cli(capsys, "evaluate", "--data", "embedded", "--out", locked / "out")
        assert code == 2 and "is not writable" in err and not (locked / "out").exists()
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("settings", [{}, {"variants": ["ratio", "idk"], "unknown_ratios": [0, 100], "idk_base_ratio": 100},
                                      {"variants": ["known", "single", "natural", "filtered"], "unknown_ratios": [0, 30, 100]}])
def test_study_variant_names_are_checked_against_the_names_curation_builds(settings):
    from knowtune.curate import AnnotatedExample, CurateConfig
    from knowtune.curate.pipeline import build_variants
    from knowtune.slick.categories import CATEGORIES
    from knowtune.validate import curated_variant_names

    pool = [AnnotatedExample(id=f"{r}-{c}-{i}", relation=r, split="train", question=f"q {r} {c} {i}?", answers=("a",), category=c)
            for r in ("P1", "P2") for c in CATEGORIES for i in range(5)]
    config = CurateConfig(**settings)
    assert curated_variant_names(config) == [variant.name for variant in build_variants(pool, config)]


def test_evaluate_takes_the_audit_of_the_base_model_a_train_run_records(capsys, fixtures, tmp_path):
    """A fine-tuned model is scored per category of its base model's audit: OUT/provenance.json of
    the train run names the base model's fingerprint (here: a run laid out as `knowtune train` writes it)."""
    from knowtune.models import fingerprint_of
    from knowtune.provenance import model_fingerprint, provenance

    run = tmp_path / "run"
    shutil.copytree(fixtures / "other", run / "model")
    args = ["evaluate", "--model", run / "model", "--data", "embedded", "--limit", "2", "--annotations", fixtures / "audit"]
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "refused")
    assert code == 2 and "audit of another model" in err
    (run / "provenance.json").write_text(json.dumps(provenance(None, model_fingerprint=fingerprint_of("default"), base_model="default",
                                                               final_model_fingerprint=model_fingerprint(run / "model"))))
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "eval")
    assert code == 0, err
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())


def test_allow_other_model_audit_uses_the_categories_with_a_note(capsys, fixtures, tmp_path):
    code, _, err = run_cli(capsys, "evaluate", "--model", fixtures / "other", "--data", "embedded", "--limit", "2",
                           "--annotations", fixtures / "audit", "--allow-other-model-audit", "--out", tmp_path / "eval")
    assert code == 0, err
    assert "used as --allow-other-model-audit asks" in " ".join(err.split()) and (tmp_path / "eval" / "metrics.json").is_file()


def test_a_full_disk_exits_2_with_how_to_resume_and_the_rerun_completes(capsys, tmp_path):
    """A file-size limit (RLIMIT_FSIZE) makes every write past 20 kB fail as a full disk would."""
    import resource
    import subprocess
    import sys

    out = tmp_path / "audit"
    args = ["annotate", "--model", "default", "--data", "embedded", "--limit", "12", "--chunk-size", "4", "--n-ex", "2", "--n-samples", "2",
            "--device", "cpu", "--out", str(out)]
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # noqa: E731
    process = subprocess.run([sys.executable, "-c", "from knowtune.cli import main; main()", *args], preexec_fn=limit,
                             capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    text = " ".join(process.stderr.split())
    assert process.returncode == 2 and "Traceback" not in process.stderr, process.stderr[-3000:]
    assert "failed:" in text and "free disk space" in text and "rerun the same command to resume" in text
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["complete"]


@pytest.mark.parametrize("writer", ["safetensors", "torch.save"])
def test_a_refused_model_or_checkpoint_write_is_a_storage_error(writer, tmp_path):
    """safetensors and torch.save (the Trainer's checkpoint files) raise no OSError when the disk is
    full: their own errors, raised here by a real write past a file-size limit, still read as one."""
    import resource

    import torch
    from safetensors.torch import save_file

    from knowtune.cli import _storage_error

    tensors = {"weight": torch.zeros(64, 1024)}
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, previous[1]))
    try:
        with pytest.raises(Exception) as raised:
            if writer == "safetensors":
                save_file(tensors, str(tmp_path / "model.safetensors"))
            else:
                torch.save(tensors, tmp_path / "optimizer.pt")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous)
    assert not isinstance(raised.value, OSError)
    message = _storage_error(raised.value)
    assert message is not None and "free disk space" in message and "rerun the same command to resume" in message
    assert _storage_error(RuntimeError("a bug of knowtune")) is None


def test_an_error_quoting_a_bracketed_value_prints_it_whole(capsys, tmp_path):
    """rich markup would read "[name, name]" as a style tag and drop it from the message."""
    config = tmp_path / "study.yaml"
    config.write_text("key_overlap:\n  key_types: [name, name]\n")
    code, _, err = run_cli(capsys, "study", "--config", config, "--out", tmp_path / "out")
    assert code == 2 and "key_overlap.key_types" in err and "a key type is listed twice" in err and "(got ['name', 'name'])" in err, err
    assert not (tmp_path / "out").exists()
