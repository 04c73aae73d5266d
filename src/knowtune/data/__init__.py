"""QA datasets: loading and saving (:mod:`.loaders`), the paper's filters (:mod:`.filters`)
and EntityQuestions question templates (:mod:`.templates`)."""

from knowtune.data.filters import FilterReport, apply_filters, drop_multi_answer, drop_test_overlap
from knowtune.data.loaders import load_examples, save_examples
from knowtune.data.schema import SPLITS, QAExample
from knowtune.data.templates import load_relation_templates, subject_from_question

__all__ = [
    "SPLITS",
    "FilterReport",
    "QAExample",
    "apply_filters",
    "drop_multi_answer",
    "drop_test_overlap",
    "load_examples",
    "load_relation_templates",
    "save_examples",
    "subject_from_question",
]
