"""The task spec: validation, hashing, overrides, and one encoding of a prompt across every stage.

The cross-stage test runs each stage through its own code (``run_annotate``, ``train_model``
with its per-epoch evaluation, the ``knowtune evaluate`` command, ``few_shot_recall``) on a
tiny Llama whose tokenizer adds a BOS token (as Llama-2, Mistral and Gemma tokenizers do),
records the token ids each stage hands to the model, and checks that a question's prompt is
the same sequence of ids, BOS first, everywhere.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict

import pytest
import yaml

from knowtune.errors import ConfigError, KnowtuneError
from knowtune.models import default_model_dir, load
from knowtune.task import DEFAULT_TASK, DEFAULT_TEMPLATE, TaskSpec, load_task, save_task
from knowtune.testing import run_cli, tiny_family_model, tiny_world

N = 4  # questions followed through every stage


def bos_tokenizer_dir(out, *, eos: bool = False):
    """The default tokenizer re-saved with a post-processor that prepends ``<s>`` (Llama-2 style)
    and, with ``eos``, also appends ``</s>``."""
    out.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(default_model_dir() / name, out / name)
    spec = json.loads((out / "tokenizer.json").read_text())
    bos, sequence = {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}
    tail = [{"SpecialToken": {"id": "</s>", "type_id": 0}}] if eos else []
    specials = {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}, "</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}}
    spec["post_processor"] = {"type": "TemplateProcessing", "single": [bos, sequence, *tail],
                              "pair": [bos, sequence, {"Sequence": {"id": "B", "type_id": 1}}, *tail], "special_tokens": specials}
    (out / "tokenizer.json").write_text(json.dumps(spec))
    config = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True}))
    return out


@pytest.fixture(scope="module")
def bos_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("bos")
    return tiny_family_model("llama", root / "model", tokenizer_dir=bos_tokenizer_dir(root / "tokenizer"))


class Recorder:
    """Records the unpadded token rows every ``LlamaForCausalLM`` forward receives, by stage."""

    def __init__(self, monkeypatch):
        from transformers import LlamaForCausalLM

        self.stage = None
        self.rows: dict[str, list[tuple[bool, tuple[int, ...], tuple[int, ...] | None]]] = defaultdict(list)
        original = LlamaForCausalLM.forward

        def forward(model, *args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None and self.stage is not None:
                mask, labels = kwargs.get("attention_mask"), kwargs.get("labels")
                for i, row in enumerate(ids.tolist()):
                    keep = mask[i].tolist() if mask is not None and mask.shape[-1] == len(row) else [1] * len(row)
                    label_row = tuple(labels[i].tolist()) if labels is not None else None
                    self.rows[self.stage].append((model.training, tuple(t for t, m in zip(row, keep) if m), label_row))
            return original(model, *args, **kwargs)

        monkeypatch.setattr(LlamaForCausalLM, "forward", forward)


def _by_text(tokenizer, sequences) -> dict[str, tuple[int, ...]]:
    return {tokenizer.decode(ids, skip_special_tokens=True): tuple(ids) for ids in sequences}


def test_a_prompt_is_the_same_token_ids_in_every_stage(bos_model, tmp_path, monkeypatch, capsys):
    from knowtune.data import save_examples
    from knowtune.data.splits import Splits
    from knowtune.recall import few_shot_recall
    from knowtune.slick.annotate import run_annotate
    from knowtune.slick.generation import HFBackend
    from knowtune.slick.protocol import AnnotateConfig
    from knowtune.train.config import TrainConfig
    from knowtune.train.sft import train_model

    world = tiny_world()
    save_examples(list(world.examples), tmp_path / "data.jsonl")
    questions = world.split("train")[:N]
    texts = [DEFAULT_TEMPLATE.replace("{question}", ex.question) for ex in questions]
    # A 0-shot few-shot prompt whose query line is the fine-tuning prompt: every stage shows the same text.
    same_text = {"k": 0, "query_template": DEFAULT_TEMPLATE}
    _, tokenizer = load(bos_model)
    bos = tokenizer.bos_token_id
    assert tokenizer(texts[0])["input_ids"][0] == bos  # the tokenizer adds a BOS
    recorder = Recorder(monkeypatch)
    seen = defaultdict(list)

    # annotate: the full prompt ids each request hands the decoding backend
    original = HFBackend.generate_keeping_prefills
    monkeypatch.setattr(HFBackend, "generate_keeping_prefills",
                        lambda self, requests: (seen["annotate"].extend(r.prompt_ids for r in requests), original(self, requests))[1])
    run_annotate(AnnotateConfig(model=str(bos_model), data=str(tmp_path / "data.jsonl"), out=str(tmp_path / "audit"), splits=["train"],
                                limit=N, n_ex=1, n_samples=0, max_new_tokens=2, device="cpu", **same_text))
    # train: the prompt part (labels -100) of every training row, and the per-epoch evaluation's prompts
    recorder.stage = "train"
    config = TrainConfig(epochs=1, batch_size=1, eval_batch_size=1, max_new_tokens=2, learning_rate=1e-6, device="cpu")
    train_model(config, bos_model, Splits(train=questions), out_dir=tmp_path / "run", log=lambda _: None)
    for training, ids, labels in recorder.rows["train"]:
        if training:
            seen["training rows"].append(tuple(t for t, label in zip(ids, labels) if label == -100))
        elif len(ids) > 1:  # the first forward of each generate: the whole prompt
            seen["per-epoch evaluation"].append(ids)
    # evaluate: the command, end to end
    recorder.stage = "evaluate"
    code, _, err = run_cli(capsys, "evaluate", "--model", bos_model, "--data", tmp_path / "data.jsonl", "--split", "train",
                           "--limit", str(N), "--batch-size", "1", "--max-new-tokens", "2", "--device", "cpu", "--out", tmp_path / "eval")
    assert code == 0, err
    seen["evaluate"] = [ids for _, ids, _ in recorder.rows["evaluate"] if len(ids) > 1]
    # recall
    recorder.stage = "recall"
    model, _ = load(bos_model)
    few_shot_recall(model, tokenizer, questions, world.split("dev"), task=DEFAULT_TASK.updated(max_new_tokens=2, **same_text), batch_size=1)
    seen["recall"] = [ids for _, ids, _ in recorder.rows["recall"] if len(ids) > 1]

    assert set(seen) == {"annotate", "training rows", "per-epoch evaluation", "evaluate", "recall"}
    expected = {text: tuple(tokenizer(text)["input_ids"]) for text in texts}
    for stage, sequences in seen.items():
        found = _by_text(tokenizer, sequences)
        assert set(expected) <= set(found), stage
        for text, ids in expected.items():
            assert found[text] == ids and ids[0] == bos and ids.count(bos) == 1, (stage, text)
    saved = [load_task(tmp_path / d / "task.yaml") for d in ("audit", "run", "eval")]
    assert all(task.tokens.add_special_tokens for task in saved)


def test_without_special_tokens_no_stage_adds_a_bos(bos_model):
    from knowtune.evaluate import evaluation_prompts
    from knowtune.train.sft import build_sft_rows

    _, tokenizer = load(bos_model)
    task = DEFAULT_TASK.updated(add_special_tokens=False)
    questions = tiny_world().split("train")[:2]
    prompts = task.prompts(tokenizer)
    plain = [tokenizer(prompts.finetune(ex.question), add_special_tokens=False)["input_ids"] for ex in questions]
    rows = build_sft_rows(questions, tokenizer, task)
    assert [row["input_ids"][: len(ids)] for row, ids in zip(rows, plain)] == plain
    assert all(row["labels"][: len(ids)] == [-100] * len(ids) for row, ids in zip(rows, plain))
    assert prompts.encode(evaluation_prompts(tokenizer, questions, task)) == plain
    assert tokenizer.bos_token_id not in {ids[0] for ids in plain}


def test_a_prompt_gets_the_tokenizers_bos_but_never_its_eos(tmp_path):
    from transformers import AutoTokenizer

    from knowtune.train.sft import build_sft_rows

    tokenizer = AutoTokenizer.from_pretrained(bos_tokenizer_dir(tmp_path / "tok", eos=True))
    text = DEFAULT_TEMPLATE.replace("{question}", "Who?")
    assert tokenizer(text)["input_ids"][-1] == tokenizer.eos_token_id  # this tokenizer appends an EOS
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert DEFAULT_TASK.prompts(tokenizer).encode([text]) == [[tokenizer.bos_token_id, *plain]]
    (question,) = tiny_world().split("train")[:1]
    (row,) = build_sft_rows([question], tokenizer, DEFAULT_TASK)
    prompt = DEFAULT_TASK.prompts(tokenizer).encode([DEFAULT_TEMPLATE.replace("{question}", question.question)])[0]
    assert row["input_ids"][: len(prompt)] == prompt and row["input_ids"].count(tokenizer.eos_token_id) == 0


def test_task_spec_is_validated_versioned_and_hashed(tmp_path):
    assert DEFAULT_TASK.hash() == TaskSpec().hash() != DEFAULT_TASK.updated(answer_prefix=" ").hash()
    path = save_task(DEFAULT_TASK.updated(stop=".", k=2), tmp_path)
    assert load_task(path) == DEFAULT_TASK.updated(stop=".", k=2)
    assert yaml.safe_load(path.read_text())["version"] == 1
    assert DEFAULT_TASK.updated(**DEFAULT_TASK.flat()) == DEFAULT_TASK
    for bad, key in (({"version": 2}, "version"), ({"fewshot": {"query_template": "Q:"}}, "query_template"),
                     ({"finetune": {"template": "no slot"}}, "template"), ({"generation": {"stop": ""}}, "stop"),
                     ({"tokens": {"bos": True}}, "bos")):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=key):
            load_task(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="task file not found"):
        load_task(tmp_path / "missing.yaml")
    with pytest.raises(KeyError, match="not a task key"):
        DEFAULT_TASK.updated(temperature=0.5)


def test_prompts_render_the_fewshot_and_finetune_formats_and_need_a_chat_template_when_asked():
    from knowtune.data.schema import QAExample

    shot = QAExample(id="a", relation="r", question="Where was A born?", answers=("Rome",), split="dev")
    prompts = DEFAULT_TASK.updated(instruction="Facts.\n").prompts(None)
    assert prompts.fewshot([shot], "Where was B born?") == "Facts.\nQ: Where was A born?\nA: Rome\nQ: Where was B born?\nA:"
    assert prompts.prefix([shot]) == "Facts.\nQ: Where was A born?\nA: Rome\n"
    assert prompts.finetune("Who? {x}") == "Answer the following question. Who? {x}\n"
    _, tokenizer = load("default")
    with pytest.raises(KnowtuneError, match="no chat template"):
        DEFAULT_TASK.updated(chat_template=True).prompts(tokenizer)
