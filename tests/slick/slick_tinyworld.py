"""A tiny QA world, tokenizer and Llama model for the SliCK tests (built in seconds on CPU).

Facts are ``(subject, relation) -> object`` over invented names. Training shows a fact
0, 2 or 12 times, so the trained model knows some facts well, some barely and some not
at all: the audit sees a mix of categories.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

RELATIONS = {
    "born_in": "Where was {s} born?",
    "works_as": "What kind of work does {s} do?",
    "founded": "Who founded {s}?",
}
_SYLLABLES = ["ka", "lo", "mi", "ru", "te", "sa", "vo", "ni", "pe", "du", "zo", "ha", "be", "ri", "fu", "gi"]


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def make_world(path: Path, *, per_relation: int = 24, dev: int = 8, seed: int = 0) -> list[dict]:
    """Write a JSONL dataset (train/dev/test per relation) and return its records."""
    rng = random.Random(seed)
    objects = [_name(rng, 2) for _ in range(12)]
    records = []
    for relation, template in RELATIONS.items():
        for i in range(per_relation + dev):
            subject = _name(rng, 3) + " " + _name(rng, 2)
            split = "dev" if i < dev else ("train" if i % 3 else "test")
            records.append({"id": f"{relation}-{i}", "relation": relation, "split": split, "subject": subject,
                            "question": template.format(s=subject), "answers": [rng.choice(objects)],
                            "exposures": rng.choice([0, 2, 12]) if split != "dev" else 12})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def _corpus(records: list[dict]) -> list[str]:
    lines = []
    for r in records:
        lines += [f"Q: {r['question']}\nA: {r['answers'][0]}\n"] * r["exposures"]
    random.Random(1).shuffle(lines)
    return lines


def make_tokenizer(records: list[dict], out: Path):
    """A byte-level BPE fast tokenizer with BOS/EOS and no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [f"Q: {r['question']}\nA: {r['answers'][0]}\n" for r in records]
    tok.train_from_iterator(texts, trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out)
    return fast


def make_model(records: list[dict], out: Path, *, steps: int = 150, seed: int = 0) -> Path:
    """Train the tiny Llama on the world's Q/A lines and save it (with its tokenizer) to ``out``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = make_tokenizer(records, out)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    ids = [t for line in _corpus(records) for t in tokenizer(line, add_special_tokens=False)["input_ids"]]
    data = torch.tensor(ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 65, (16,), generator=gen)
        batch = torch.stack([data[s:s + 64] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(out)
    return out
