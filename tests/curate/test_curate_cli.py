"""Reading annotate's output, and `knowtune curate` end to end through knowtune.cli.main."""

from __future__ import annotations

import json

import pytest
from curate_annotations import annotation_records, write_annotation_dir

from knowtune.testing import run_cli
from knowtune.curate import load_annotated
from knowtune.data import QAExample, load_examples, save_examples
from knowtune.errors import DataError, KnowtuneError
from knowtune.io import atomic_write_jsonl

ALL_VARIANTS = ["D_0", "D_25", "D_50", "D_75", "D_100", "D_Known_25", "D_Known_50", "D_Known_75", "D_HighlyKnown",
                "D_MaybeKnown", "D_WeaklyKnown", "D_Unknown", "D_Natural", "D_IDK_50", "D_Filtered"]


def run(capsys, *args) -> tuple[int, str, str]:
    """Exit status, stdout and stderr (whitespace folded) of `knowtune *args`."""
    code, out, err = run_cli(capsys, *args)
    return code, out, " ".join(err.split())


def test_load_annotated_reads_annotates_own_output(annotation_dir):
    examples = load_annotated(annotation_dir)
    assert len(examples) == 89 + 6
    first = examples[0]
    assert (first.id, first.relation, first.split, first.category, first.p0) == ("P1-HighlyKnown-0", "P1", "train", "HighlyKnown", 1.0)
    weak = next(e for e in examples if e.category == "WeaklyKnown")
    assert weak.ps == 0.125 and weak.answers == (f"answer of {weak.id}",)
    record = weak.to_example().to_record()
    assert record["metadata"] == {"category": "WeaklyKnown", "p0": 0.0, "ps": 0.125}
    assert QAExample.model_validate(record) == weak.to_example()


def test_load_annotated_errors_name_the_path_and_line(tmp_path, annotation_dir):
    with pytest.raises(KnowtuneError, match="annotation directory not found"):
        load_annotated(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty/annotations.jsonl: no such file"):
        load_annotated(tmp_path / "empty")
    records = annotation_records()
    records[2]["category"] = "Known"
    bad = write_annotation_dir(tmp_path / "bad", records)
    with pytest.raises(DataError, match=r"annotations.jsonl:3: example 'P1-HighlyKnown-2': unknown category 'Known'"):
        load_annotated(bad)
    unfinished = write_annotation_dir(tmp_path / "unfinished", annotation_records(), expected=200)
    with pytest.raises(KnowtuneError, match="the audit is incomplete"):
        load_annotated(unfinished)


def test_records_without_question_are_joined_to_data_by_id(tmp_path):
    records = annotation_records()
    data = [QAExample(id=r["id"], relation=r["relation"], question=r["question"], answers=tuple(r["answers"]), split=r["split"],
                      subject=f"subject {i}", metadata={"source": "eq"}) for i, r in enumerate(records)]
    save_examples(data, tmp_path / "data.jsonl")
    directory = tmp_path / "bare"  # another tool's annotations: only ids and categories
    atomic_write_jsonl(directory / "annotations.jsonl", [{k: r[k] for k in ("id", "category", "p0", "ps")} for r in records])
    with pytest.raises(DataError, match=r"lacks 'relation', 'question', 'answers'") as caught:
        load_annotated(directory)
    assert "--data" in caught.value.fix
    joined = load_annotated(directory, tmp_path / "data.jsonl")
    assert [e.id for e in joined] == [r["id"] for r in records]
    assert joined[7].subject == "subject 7" and joined[7].metadata == {"source": "eq"} and joined[7].category == records[7]["category"]
    assert joined[7].question == records[7]["question"] and joined[-1].split == "dev"
    save_examples(data[5:], tmp_path / "partial.jsonl")
    with pytest.raises(KnowtuneError, match=r"5 annotated ids are not in --data .*'P1-HighlyKnown-0'"):
        load_annotated(directory, tmp_path / "partial.jsonl")
    changed = [d.model_copy(update={"answers": ("moved",)}) if d.id == "P2-Unknown-3" else d for d in data]
    save_examples(changed, tmp_path / "changed.jsonl")
    with pytest.raises(DataError, match=r"'P2-Unknown-3': answers .* in --data"):
        load_annotated(write_annotation_dir(tmp_path / "full", records), tmp_path / "changed.jsonl")


def test_cli_writes_every_variant_with_manifest_and_index(capsys, tmp_path, annotation_dir):
    out = tmp_path / "curated"
    code, stdout, err = run(capsys, "curate", "--annotations", annotation_dir, "--out", out, "--seed", "7")
    assert code == 0, err
    index = json.loads((out / "variants.json").read_text())
    assert [v["name"] for v in index["variants"]] == ALL_VARIANTS
    assert index["source"]["protocol_hash"] == "p" * 16 and index["source"]["annotations"] == str(annotation_dir)
    for entry in index["variants"]:
        examples = load_examples(out / entry["train"])
        manifest = json.loads((out / entry["manifest"]).read_text())
        assert len(examples) == entry["size"] == manifest["size"] and manifest["seed"] == 7
        per_category = {c: sum(e.metadata["category"] == c for e in examples) for c in manifest["counts"]["per_category"]}
        assert manifest["counts"]["per_category"] == per_category
        assert manifest["provenance"]["config"]["seed"] == 7 and manifest["source"]["model_fingerprint"] == "m" * 16
    d50 = json.loads((out / "D_50" / "manifest.json").read_text())["counts"]
    assert d50["per_relation"] == {"P1": 4, "P2": 3, "P3": 5}
    assert d50["per_relation_category"]["P3"]["Unknown"] == 3 and d50["unknown_share"] == 7 / 12
    idk = load_examples(out / "D_IDK_50" / "train.jsonl")
    assert {e.answers for e in idk if e.metadata["category"] == "Unknown"} == {("I don't know",)}
    assert (out / "config.yaml").is_file() and "D_IDK_50" in stdout


def test_cli_options_choose_ratios_kinds_and_size(capsys, tmp_path, annotation_dir):
    out = tmp_path / "curated"
    code, _, err = run(capsys, "curate", "--annotations", annotation_dir, "--out", out, "--variants", "ratio,idk",
                       "--unknown-ratios", "0,50", "--size", "24", "--idk-phrase", "unsure")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["D_0", "D_50", "D_IDK_50"]
    idk = load_examples(out / "D_IDK_50" / "train.jsonl")
    assert len(idk) == 24 and sum(e.answers == ("unsure",) for e in idk) == 12


def test_cli_missing_annotation_dir_exits_2(capsys, tmp_path):
    code, stdout, err = run(capsys, "curate", "--annotations", tmp_path / "missing", "--out", tmp_path / "out")
    assert code == 2 and stdout == ""
    assert f"{tmp_path / 'missing'}: annotation directory not found" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_too_large_size_exits_2_and_writes_nothing(capsys, tmp_path, annotation_dir):
    out = tmp_path / "curated"
    code, _, err = run(capsys, "curate", "--annotations", annotation_dir, "--out", out, "--size", "100")
    assert code == 2
    assert "relation P1, Unknown: needed 33, available 8" in err
    assert not out.exists()


def test_cli_config_file_and_bad_values_exit_2(capsys, tmp_path, annotation_dir):
    config = tmp_path / "curate.yaml"
    config.write_text("unknown_ratios: [25]\nvariants: [ratio]\nseed: 3\n")
    out = tmp_path / "curated"
    code, _, err = run(capsys, "curate", "--config", config, "--annotations", annotation_dir, "--out", out)
    assert code == 0, err
    assert json.loads((out / "D_25" / "manifest.json").read_text())["seed"] == 3
    config.write_text("ratios: [25]\n")
    code, _, err = run(capsys, "curate", "--config", config, "--annotations", annotation_dir, "--out", out)
    assert code == 2 and "ratios: unknown key" in err
    code, _, err = run(capsys, "curate", "--annotations", annotation_dir, "--out", out, "--unknown-ratios", "0,150")
    assert code == 2 and "unknown_ratios" in err and "between 0 and 100" in err

