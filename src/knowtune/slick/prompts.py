"""Few-shot prompt rendering for SliCK: ``Q: <question>\\nA: <answer>`` lines.

Gekhman et al., EMNLP 2024 (arXiv 2405.05904), section 3 / appendix: the 4-shot prompt
lists k exemplars of the same relation as ``Q: ...`` / ``A: ...`` line pairs and ends
with ``Q: <question>`` / ``A:``; the model's answer is the rest of that line.
The templates are configurable; ``chat_template = true`` wraps the whole few-shot text
in one user turn of the tokenizer's chat template (for chat-tuned models).

The *prefix* of a prompt is everything before the query line. It is the same for every
question of a (relation, exemplar set), so its KV cache is computed once
(:mod:`knowtune.slick.generation`).
"""

from __future__ import annotations

from collections.abc import Sequence

from knowtune.data.schema import QAExample
from knowtune.errors import KnowtuneError

_SENTINEL = "\u2063KNOWTUNE_QUESTION\u2063"


class PromptBuilder:
    """Renders prompts and encodes them exactly as a plain ``tokenizer(prompt)`` call would."""

    def __init__(self, tokenizer, *, instruction: str, exemplar_template: str, query_template: str, chat_template: bool):
        self.tokenizer = tokenizer
        self.instruction = instruction
        self.exemplar_template = exemplar_template
        self.query_template = query_template
        self.chat_template = chat_template
        if chat_template and not getattr(tokenizer, "chat_template", None):
            raise KnowtuneError(
                "chat_template is on but the tokenizer has no chat template",
                fix="set chat_template: false (plain few-shot text), or use the chat model's own tokenizer",
            )

    def few_shot_text(self, exemplars: Sequence[QAExample], question: str) -> str:
        """Instruction, the k exemplars, then the query line (no chat wrapping)."""
        shots = "".join(self.exemplar_template.format(question=e.question, answer=e.answers[0]) for e in exemplars)
        return self.instruction + shots + self.query_template.format(question=question)

    def prompt(self, exemplars: Sequence[QAExample], question: str) -> str:
        """The full prompt text for ``question`` after ``exemplars``."""
        text = self.few_shot_text(exemplars, question)
        if not self.chat_template:
            return text
        messages = [{"role": "user", "content": text}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prefix(self, exemplars: Sequence[QAExample]) -> str:
        """The text every prompt of this exemplar set starts with: all before the query line."""
        text = self.prompt(exemplars, _SENTINEL)
        query_head = self.query_template.split("{question}")[0]
        cut = text.index(_SENTINEL) - len(query_head)
        return text[:cut]

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text; special tokens added as the tokenizer does by default
        (a chat template already writes its own)."""
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=not self.chat_template)
        return [list(ids) for ids in encoded["input_ids"]]
