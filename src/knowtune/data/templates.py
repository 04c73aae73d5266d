"""EntityQuestions question templates: one per relation, ``[X]`` marking the subject.

EntityQuestions (Sciavolino et al. 2021) turns each Wikidata triple (subject, relation,
object) into a question with a fixed template per relation, e.g. P36 ``"What is the
capital of [X]?"``; its ``relation_query_templates.json`` maps relation -> template.
Matching a question against its template recovers the subject, which the test-overlap
filter (:func:`knowtune.data.filters.drop_test_overlap`) needs.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from knowtune.data.loaders import read_utf8
from knowtune.errors import DataError

SUBJECT_SLOT = "[X]"
_FIX = 'the file must be one JSON object mapping relation -> template, e.g. {"P36": "What is the capital of [X]?"}'


def load_relation_templates(path: str | Path) -> dict[str, str]:
    """Read ``relation_query_templates.json``: relation -> template holding ``[X]`` exactly once.

    Raises :class:`DataError` naming the file (and line where known) for a missing file,
    malformed JSON, a value that is not an object of strings, or a template without
    exactly one ``[X]``.
    """
    path = Path(path)
    text = read_utf8(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(path, f"malformed JSON: {error.msg} (column {error.colno})", line=error.lineno, fix=_FIX) from None
    if not isinstance(data, dict):
        raise DataError(path, f"expected a JSON object, got {type(data).__name__}", line=1, fix=_FIX)
    for relation, template in data.items():
        if not isinstance(template, str) or template.count(SUBJECT_SLOT) != 1:
            raise DataError(
                path,
                f"the template of relation {relation!r} must be a string holding {SUBJECT_SLOT} exactly once, got {template!r}",
                line=_line_of_key(text, relation),
                fix=f"write the subject's place as {SUBJECT_SLOT}, e.g. \"Where was {SUBJECT_SLOT} born?\"",
            )
    return data


def _line_of_key(text: str, key: str) -> int | None:
    position = text.find(json.dumps(key))
    return text.count("\n", 0, position) + 1 if position >= 0 else None


@lru_cache(maxsize=256)
def _template_pattern(template: str) -> re.Pattern[str]:
    if template.count(SUBJECT_SLOT) != 1:
        raise ValueError(f"template {template!r} must hold {SUBJECT_SLOT} exactly once")
    before, after = template.split(SUBJECT_SLOT)
    return re.compile(re.escape(before) + "(.+)" + re.escape(after), re.DOTALL)


def subject_from_question(question: str, template: str) -> str | None:
    """The subject filling ``[X]`` in ``template`` to give ``question``, or None if it does not fit.

    The template is regex-escaped and ``[X]`` becomes a greedy ``(.+)``; the whole
    question (stripped of surrounding whitespace) must match. Example:
    ``subject_from_question("Who is Ada Lovelace's child?", "Who is [X]'s child?")``
    -> ``"Ada Lovelace"``.
    """
    match = _template_pattern(template).fullmatch(question.strip())
    return match.group(1) if match else None
