"""`knowtune curate` writes every variant also as chat `messages` records that TRL's
SFTTrainer, Axolotl and LLaMA-Factory read as they are (checked through `datasets`)."""

from __future__ import annotations

import json

from knowtune.curate.export import chat_record
from knowtune.data import QAExample, load_examples
from knowtune.testing import run_cli


def test_chat_record_keeps_system_prompt_and_first_answer():
    example = QAExample(id="a", relation="P19", question="Where was Ada born?", answers=("London", "London, England"), split="train",
                        metadata={"system": "Be brief."})
    assert chat_record(example) == {"id": "a", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where was Ada born?"},
        {"role": "assistant", "content": "London"}]}


def test_curate_writes_chat_exports_that_datasets_reads_in_trl_format(capsys, tmp_path, annotation_dir):
    import datasets

    code, _, err = run_cli(capsys, "curate", "--annotations", annotation_dir, "--out", tmp_path / "v", "--variants", "ratio,idk",
                           "--unknown-ratios", "0,50", "--size", "12")
    assert code == 0, err
    index = json.loads((tmp_path / "v" / "variants.json").read_text())
    for entry in index["variants"]:
        train = load_examples(tmp_path / "v" / entry["train"])
        for name in (entry["chat"], entry["chat_parquet"]):
            kind = "json" if name.endswith(".jsonl") else "parquet"
            loaded = datasets.load_dataset(kind, data_files=str(tmp_path / "v" / name), split="train")
            assert loaded.column_names == ["id", "messages"]
            assert [row["messages"] for row in loaded] == [
                [{"role": "user", "content": e.question}, {"role": "assistant", "content": e.answers[0]}] for e in train]
    idk = next(e for e in index["variants"] if e["kind"] == "idk")
    rows = [json.loads(line) for line in (tmp_path / "v" / idk["chat"]).read_text().splitlines()]
    assert any(row["messages"][-1]["content"] == "I don't know" for row in rows)
