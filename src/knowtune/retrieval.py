"""Retrieval instead of fine-tuning: a BM25 store of facts, and open-book prompts built from it.

Gekhman et al. (EMNLP 2024) show that fine-tuning on Unknown facts teaches a model to
hallucinate; the practical alternative is to leave those facts out of training and give
them to the model at answer time (retrieval-augmented generation). This module holds the
store that ``knowtune curate --route-unknown retrieval`` writes and that ``knowtune evaluate
--retrieval STORE`` reads.

Passages. One passage per fact, one line each. When the fact's relation has statement
templates (a knowtune world's ``relations.json``) and the example names its subject, the
passage is the relation's first statement template filled with subject and first gold answer,
e.g. ``Burundi``, ``Bujumbura`` -> ``The capital of Burundi is Bujumbura.``; otherwise it is
``Q: <question> A: <answer>``.

Ranking. Okapi BM25 (Robertson & Zaragoza 2009) from the ``bm25s`` library, Lucene variant,
k1 = 1.5, b = 0.75, over lower-cased word tokens with English stopwords removed; the query is
the question text.

Relevance gate (``min_relevance``). BM25 always returns the top k passages, even for a question the
store knows nothing about, and a model that reads copies from whatever it is given. A passage's
relevance to a query is its BM25 score for the query divided by its score for its own fact's
question: 1.0 for that very question, near 0 for a question that shares only the relation's
wording. With ``min_relevance`` set, passages below it are left out, so a question about none of
the store's facts is asked closed book. Scores are only comparable within one passage, which is
why each is divided by its own question's.

Prompt (:data:`PROMPT_FORMAT`). The top-k passages, best first, one per line, then the usual
prompt of the task (fine-tuning template or few-shot prompt), unchanged.

On disk (``save``/``load``)::

    store.json       format, version, BM25 settings, passage count, provenance (config, source)
    passages.jsonl   one record per fact: id, relation, question, answers, text
    examples.jsonl   the facts as QA examples (any knowtune command reads it as --data; split as curated)
    bm25/            the bm25s index (its own files)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from knowtune.data.schema import QAExample
from knowtune.errors import ConfigError, DataError, KnowtuneError

STORE_FORMAT = "knowtune-retrieval-bm25"
STORE_VERSION = 1
STORE_FILE = "store.json"
PASSAGES_FILE = "passages.jsonl"
EXAMPLES_FILE = "examples.jsonl"
INDEX_DIR = "bm25"
BM25_SETTINGS = {"method": "lucene", "k1": 1.5, "b": 0.75, "stopwords": "en", "lower": True}
PROMPT_FORMAT = "the top-k retrieved passages, best first, one per line, then the usual prompt"
_LOAD_FIX = "pass the retrieval store directory that `knowtune curate --route-unknown retrieval` wrote (OUT/retrieval)"


@dataclass(frozen=True)
class Passage:
    """One fact as retrievable text."""

    id: str
    relation: str
    question: str
    answers: tuple[str, ...]
    text: str


def fact_passage(example: QAExample, relations: Mapping[str, Any] | None = None) -> str:
    """The passage of one fact: the relation's first statement template filled with the subject
    and first answer when ``relations`` (id -> :class:`~knowtune.world.spec.RelationSpec`) has the
    relation and the example its subject; else ``Q: <question> A: <answer>``. One line."""
    spec = (relations or {}).get(example.relation)
    if spec is not None and example.subject:
        text = spec.statement(example.subject, example.answers[0], 0)
    else:
        text = f"Q: {example.question} A: {example.answers[0]}"
    return " ".join(text.split())


def relation_specs(data: str | Path | None) -> dict[str, Any] | None:
    """The relations (with statement templates) of a knowtune world named by ``data`` (``embedded``
    or a directory with ``relations.json``); None for any other dataset."""
    from knowtune.world.embedded import resolve_data_path
    from knowtune.world.spec import RELATIONS_FILE, RelationSpec

    if data is None:
        return None
    path = resolve_data_path(data) / RELATIONS_FILE
    if not path.is_file():
        return None
    try:
        return {spec["id"]: RelationSpec.model_validate(spec) for spec in json.loads(path.read_text(encoding="utf-8"))["relations"]}
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(path, f"invalid relations file: {error}") from None


def _tokenize(texts: Sequence[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(list(texts), lower=BM25_SETTINGS["lower"], stopwords=BM25_SETTINGS["stopwords"], return_ids=False, show_progress=False)


class RetrievalStore:
    """Passages plus their BM25 index; build with :meth:`build`, persist with :meth:`save` / :meth:`load`."""

    def __init__(self, passages: Sequence[Passage], retriever, record: Mapping[str, Any], examples: Sequence[QAExample] = ()):
        self.passages = list(passages)
        self.retriever = retriever
        self.record = dict(record)
        self.examples = list(examples)
        self._own_scores: dict[int, float] = {}

    @classmethod
    def build(cls, examples: Sequence[QAExample], relations: Mapping[str, Any] | None = None, *,
              settings: Mapping[str, Any] | None = None, source: Mapping[str, Any] | None = None) -> "RetrievalStore":
        """Index one passage per example (:func:`fact_passage`); ``settings`` and ``source`` go to the provenance."""
        import bm25s

        from knowtune.provenance import provenance

        if not examples:
            raise KnowtuneError("a retrieval store needs at least one fact", fix="route some examples to it, e.g. a split with Unknown examples")
        passages = [Passage(ex.id, ex.relation, ex.question, tuple(ex.answers), fact_passage(ex, relations)) for ex in examples]
        retriever = bm25s.BM25(method=BM25_SETTINGS["method"], k1=BM25_SETTINGS["k1"], b=BM25_SETTINGS["b"])
        retriever.index(_tokenize([p.text for p in passages]), show_progress=False)
        record = {"format": STORE_FORMAT, "version": STORE_VERSION, "bm25": dict(BM25_SETTINGS), "bm25s_version": bm25s.__version__,
                  "passages": len(passages), "passage_kind": "statement" if relations else "qa",
                  "provenance": provenance(dict(settings or {}), source=dict(source or {}))}
        return cls(passages, retriever, record, examples)

    def save(self, directory: str | Path) -> Path:
        """Write ``store.json``, ``passages.jsonl`` and the ``bm25/`` index under ``directory``."""
        from knowtune.io import atomic_write_json, atomic_write_jsonl

        directory = Path(directory)
        self.retriever.save(str(directory / INDEX_DIR))
        atomic_write_jsonl(directory / PASSAGES_FILE, [{**asdict(p), "answers": list(p.answers)} for p in self.passages])
        if self.examples:
            atomic_write_jsonl(directory / EXAMPLES_FILE, [ex.to_record() for ex in self.examples])
        atomic_write_json(directory / STORE_FILE, self.record)  # last: its presence marks a complete store
        return directory

    def save_complete(self, directory: str | Path) -> Path:
        """:meth:`save` into a hidden ``.NAME.partial`` beside ``directory`` (new or empty), renamed into place when
        complete: a crash never leaves a half store at ``directory``."""
        directory = Path(directory)
        partial = directory.with_name(f".{directory.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        self.save(partial)
        if directory.exists():
            directory.rmdir()
        partial.rename(directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "RetrievalStore":
        """Read a store written by :meth:`save`; a missing, partial or foreign directory is a :class:`DataError`."""
        import bm25s

        directory = Path(directory)
        meta_path = directory / STORE_FILE
        if not meta_path.is_file():
            raise DataError(directory, f"not a retrieval store: {STORE_FILE} is missing", fix=_LOAD_FIX)
        try:
            record = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DataError(meta_path, f"malformed JSON: {error.msg}", line=error.lineno, fix=_LOAD_FIX) from None
        if record.get("format") != STORE_FORMAT or record.get("version") != STORE_VERSION:
            raise DataError(meta_path, f"format {record.get('format')!r} version {record.get('version')!r}, expected {STORE_FORMAT!r} version {STORE_VERSION}",
                            fix="rebuild the store with this knowtune (`knowtune curate --route-unknown retrieval`)")
        missing = [name for name in (PASSAGES_FILE, INDEX_DIR) if not (directory / name).exists()]
        if missing:
            raise DataError(directory, f"an incomplete retrieval store: {', '.join(missing)} missing", fix=_LOAD_FIX)
        passages = [Passage(r["id"], r["relation"], r["question"], tuple(r["answers"]), r["text"])
                    for r in map(json.loads, (directory / PASSAGES_FILE).read_text(encoding="utf-8").splitlines())]
        retriever = bm25s.BM25.load(str(directory / INDEX_DIR))
        if len(passages) != record.get("passages"):
            raise DataError(directory / PASSAGES_FILE, f"{len(passages)} passages, but {STORE_FILE} says {record.get('passages')}", fix=_LOAD_FIX)
        return cls(passages, retriever, record)

    def search(self, queries: Sequence[str], k: int = 2, min_relevance: float | None = None) -> list[list[Passage]]:
        """The ``k`` best passages of each query by BM25 score, best first (fewer when the store is smaller;
        passages sharing no word with the query are left out, and with ``min_relevance`` those whose
        :meth:`relevance` to the query is below it)."""
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}", fix="pass --retrieval-k 1 or more")
        if not queries:
            return []
        k = min(k, len(self.passages))
        indices, scores = self.retriever.retrieve(_tokenize(queries), k=k, show_progress=False, n_threads=1, backend_selection="numpy")  # (Q, k) each
        return [[self.passages[int(i)] for i, s in zip(row, row_scores)
                 if s > 0 and (min_relevance is None or s / self.own_score(int(i)) >= min_relevance)]
                for row, row_scores in zip(indices, scores)]

    def own_score(self, index: int) -> float:
        """Passage ``index``'s BM25 score for its own fact's question (the denominator of its relevance)."""
        if index not in self._own_scores:
            self._own_scores[index] = self._score(self.passages[index].question, index)
        return self._own_scores[index] or float("inf")  # a question sharing no word with its passage: nothing is relevant to it

    def relevance(self, query: str, index: int) -> float:
        """Passage ``index``'s BM25 score for ``query`` divided by its score for its own question (module docstring)."""
        return self._score(query, index) / self.own_score(index)

    def _score(self, query: str, index: int) -> float:
        ids = self.retriever.get_tokens_ids(_tokenize([query])[0])  # words the index has never seen are left out
        return float(self.retriever.get_scores_from_ids(ids)[index]) if ids else 0.0


def context_text(passages: Sequence[Passage]) -> str:
    """The passages block put before a prompt: one passage per line."""
    return "".join(p.text + "\n" for p in passages)


def retrieval_contexts(store: RetrievalStore, examples: Sequence[QAExample], k: int = 2, task=None,
                       min_relevance: float | None = None) -> list[str]:
    """The passages block of each example (its question's top ``k`` passages, :func:`context_text`; with
    ``min_relevance`` only those at least that relevant, so possibly none), to go before its usual prompt
    (:data:`PROMPT_FORMAT`). A chat-template task is refused: the block would sit outside the chat turn."""
    if task is not None and task.tokens.chat_template:
        raise ConfigError("--retrieval puts passages before plain prompt text; the task wraps prompts in a chat template",
                          fix="set tokens.chat_template: false in the task, or drop --retrieval")
    return [context_text(found) for found in store.search([ex.question for ex in examples], k, min_relevance)]


def retrieval_provenance(store_dir: str | Path, store: RetrievalStore, k: int, min_relevance: float | None = None) -> dict[str, Any]:
    """The ``retrieval`` block of ``metrics.json``: store path, size and format, k, the relevance gate and the prompt format."""
    return {"store": str(store_dir), "k": k, "passages": len(store.passages), "format": store.record["format"],
            "version": store.record["version"], "bm25": store.record["bm25"], "prompt_format": PROMPT_FORMAT,
            **({"min_relevance": min_relevance} if min_relevance is not None else {})}


def evaluation_contexts(store_dir: str | Path, examples: Sequence[QAExample], k: int, task=None,
                        min_relevance: float | None = None) -> tuple[list[str], dict[str, Any]]:
    """``knowtune evaluate --retrieval STORE``: each example's passages block and the ``retrieval`` block of ``metrics.json``
    (with it, the number of questions that got no passage past the relevance gate)."""
    store = RetrievalStore.load(store_dir)
    contexts = retrieval_contexts(store, examples, k, task, min_relevance)
    record = retrieval_provenance(store_dir, store, k, min_relevance)
    if min_relevance is not None:
        record["closed_book_questions"] = closed_book_count(contexts)
    return contexts, record


def closed_book_count(contexts: Sequence[str]) -> int:
    """Questions whose passages block is empty: every passage fell below the relevance gate."""
    return sum(not context for context in contexts)
