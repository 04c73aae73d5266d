"""Training sets for other trainers: each curated variant as chat ``messages`` records.

TRL's ``SFTTrainer``, Axolotl (``type: chat_template``) and LLaMA-Factory (``formatting:
sharegpt`` with OpenAI-style tags) all read one JSON object per line holding
``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}``.
The user turn is the question, the assistant turn the first gold answer (the "I don't
know" phrase for relabelled examples); a system prompt carried by the source record
(``metadata.system``, as a chat-format input has) comes first.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from knowtune.data.schema import QAExample

CHAT_JSONL = "chat.jsonl"
CHAT_PARQUET = "chat.parquet"


def chat_record(example: QAExample) -> dict[str, Any]:
    """One example as ``{"id", "messages"}`` (the question as the user turn, its answer as the assistant's)."""
    messages = []
    system = example.metadata.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    messages += [{"role": "user", "content": example.question}, {"role": "assistant", "content": example.answers[0]}]
    return {"id": example.id, "messages": messages}


def write_chat_exports(examples: Iterable[QAExample], directory: str | Path) -> dict[str, str]:
    """Write ``chat.jsonl`` and ``chat.parquet`` into ``directory`` atomically; returns their file names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from knowtune.io import atomic_write_bytes, atomic_write_jsonl

    directory = Path(directory)
    records = [chat_record(example) for example in examples]
    atomic_write_jsonl(directory / CHAT_JSONL, records)
    turn = pa.struct([("role", pa.string()), ("content", pa.string())])
    schema = pa.schema([("id", pa.string()), ("messages", pa.list_(turn))])
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(records, schema=schema), sink)
    atomic_write_bytes(directory / CHAT_PARQUET, sink.getvalue().to_pybytes())
    return {"chat_jsonl": CHAT_JSONL, "chat_parquet": CHAT_PARQUET}
