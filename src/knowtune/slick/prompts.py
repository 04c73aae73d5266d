"""Few-shot prompt rendering for SliCK: ``Q: <question>\\nA: <answer>`` lines.

Gekhman et al., EMNLP 2024 (arXiv 2405.05904), section 3 / appendix: the 4-shot prompt
lists k exemplars of the same relation as ``Q: ...`` / ``A: ...`` line pairs and ends
with ``Q: <question>`` / ``A:``; the model's answer is the rest of that line.
Rendering and encoding live in the task spec (:class:`knowtune.task.Prompts`), shared by
every stage; :class:`PromptBuilder` builds one from the audit's template settings.

The *prefix* of a prompt is everything before the query line. It is the same for every
question of a (relation, exemplar set), so its KV cache is computed once
(:mod:`knowtune.slick.generation`).
"""

from __future__ import annotations

from knowtune.task import DEFAULT_TASK, Prompts


class PromptBuilder(Prompts):
    """:class:`~knowtune.task.Prompts` of the default task with these few-shot settings."""

    def __init__(self, tokenizer, *, instruction: str, exemplar_template: str, query_template: str, chat_template: bool,
                 add_special_tokens: bool = True):
        task = DEFAULT_TASK.updated(instruction=instruction, exemplar_template=exemplar_template, query_template=query_template,
                                    chat_template=chat_template, add_special_tokens=add_special_tokens)
        super().__init__(task, tokenizer)

    def prompt(self, exemplars, question: str) -> str:
        """The full prompt text for ``question`` after ``exemplars``."""
        return self.fewshot(exemplars, question)
