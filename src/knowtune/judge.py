"""The answer judge of ``match: {method: judge}``: a served model decides whether an answer means the gold answer.

Exact match (SliCK's rule, Gekhman et al., EMNLP 2024, arXiv 2405.05904) calls "It is Paris,
the capital." wrong for the gold "Paris". For free-form answers knowtune can ask an
OpenAI-compatible ``/v1/completions`` server instead (LLM-as-a-judge; with ``judge.chat``, a
``/v1/chat/completions`` one, the prompt sent as the user message). Per (question, gold
answers, answer):

1. an answer that normalises to nothing is wrong, and one that equals a normalised gold alias
   (exact match) is right, without a call;
2. otherwise the judge's ``prompt`` is filled in (``{question}``, ``{gold}``: the gold aliases
   joined by `` / ``, ``{answer}``) and completed greedily (temperature 0, at most
   ``max_tokens`` tokens, stop at a newline) through :class:`knowtune.serving.client.CompletionsClient`
   (its retries and backoff);
3. the reply's first word decides: ``yes`` (or ``true``, ``correct``) is right, anything else
   (``no``, an unreadable reply) wrong; :attr:`Judge.unclear` counts the unreadable ones.

Verdicts are cached in SQLite (the audit's ``annotations.sqlite``, table ``judge_verdicts``)
under a hash of the judge's model name, prompt template and reply cap and of the triple, so a
rerun, a resumed audit or a second stage asking the same triple never asks twice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from knowtune.matching import MatchConfig, normalize_answer
from knowtune.provenance import config_hash

YES = frozenset({"yes", "true", "correct"})
_SCHEMA = "CREATE TABLE IF NOT EXISTS judge_verdicts (key TEXT PRIMARY KEY, verdict INTEGER NOT NULL, reply TEXT NOT NULL)"


def read_verdict(reply: str) -> bool | None:
    """True for a reply whose first word is yes/true/correct, False for no/false/incorrect/wrong, None otherwise."""
    words = "".join(c if c.isalnum() or c.isspace() else " " for c in reply.lower()).split()
    if not words:
        return None
    if words[0] in YES:
        return True
    return False if words[0] in {"no", "false", "incorrect", "wrong"} else None


class VerdictCache:
    """The ``judge_verdicts`` table of one SQLite file (``":memory:"`` for a run-local cache)."""

    def __init__(self, path: str | Path = ":memory:"):
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute(_SCHEMA)

    def get(self, keys: Sequence[str]) -> dict[str, bool]:
        found: dict[str, bool] = {}
        for start in range(0, len(keys), 500):
            part = list(keys[start:start + 500])
            marks = ",".join("?" * len(part))
            found.update((k, bool(v)) for k, v in self._db.execute(f"SELECT key, verdict FROM judge_verdicts WHERE key IN ({marks})", part))
        return found

    def put(self, rows: Sequence[tuple[str, bool, str]]) -> None:
        """Store (key, verdict, reply) rows in one transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT OR REPLACE INTO judge_verdicts VALUES (?, ?, ?)", [(k, int(v), r) for k, v, r in rows])
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


class Judge:
    """Verdicts of a served judge model under a ``method: judge`` :class:`MatchConfig` (module docstring).

    ``ask`` (prompts -> reply texts) defaults to the judge server's completions; ``calls`` counts
    the prompts sent, ``unclear`` the replies that were neither yes nor no.
    """

    def __init__(self, match: MatchConfig, cache: VerdictCache, ask: Callable[[list[str]], list[str]] | None = None):
        if match.method != "judge" or match.judge is None:
            raise ValueError("Judge needs a MatchConfig with method judge and its judge settings")
        self.match, self.settings, self.cache = match, match.judge, cache
        self._ask = ask or self._complete
        self._client = None
        self._scope = config_hash(match.protocol_record())
        self.calls = 0
        self.unclear = 0

    def verdicts(self, items: Sequence[tuple[str, Sequence[str], str]]) -> list[bool]:
        """Whether each ``(question, gold answers, prediction)`` is correct."""
        out: list[bool | None] = []
        asked: dict[str, tuple[str, Sequence[str], str]] = {}
        keys: list[str | None] = []
        for question, answers, prediction in items:
            predicted = normalize_answer(prediction, self.match)
            golds = {normalize_answer(a, self.match) for a in answers}
            if not predicted or predicted in golds:
                out.append(bool(predicted))
                keys.append(None)
                continue
            key = config_hash([self._scope, question, list(answers), prediction.strip()])
            asked.setdefault(key, (question, answers, prediction.strip()))
            out.append(None)
            keys.append(key)
        known = self.cache.get(list(asked))
        missing = [k for k in asked if k not in known]
        if missing:
            replies = self._ask([self.prompt(*asked[k]) for k in missing])
            self.calls += len(missing)
            rows = []
            for key, reply in zip(missing, replies):
                verdict = read_verdict(reply)
                self.unclear += verdict is None
                rows.append((key, bool(verdict), reply))
                known[key] = bool(verdict)
            self.cache.put(rows)
        return [verdict if key is None else known[key] for verdict, key in zip(out, keys)]

    def prompt(self, question: str, answers: Sequence[str], prediction: str) -> str:
        """The judge prompt of one triple."""
        return self.settings.prompt.format(question=question, gold=" / ".join(answers), answer=prediction)

    def _complete(self, prompts: list[str]) -> list[str]:
        from knowtune.serving.client import CompletionRequest, CompletionsClient
        from knowtune.serving.config import ServedSettings

        if self._client is None:
            s = self.settings
            served = ServedSettings(backend="openai", base_url=s.base_url, served_model=s.model, api_key_env=s.api_key_env,
                                    concurrency=s.concurrency, request_timeout=s.request_timeout, max_retries=s.max_retries)
            self._client = CompletionsClient(served)
            self._client.connect()
        requests = [CompletionRequest(prompt=p, max_tokens=self.settings.max_tokens, stop="\n", route=i, chat=self.settings.chat) for i, p in enumerate(prompts)]
        return [choices[0] if choices else "" for choices in self._client.complete(requests)]

    def close(self) -> None:
        self.cache.close()


def open_judge(match: MatchConfig, cache: str | Path | None = None) -> Judge | None:
    """The judge of ``match`` with its verdicts cached in the SQLite file ``cache`` (in memory when None),
    or None when the method is not ``judge``."""
    if match.method != "judge":
        return None
    return Judge(match, VerdictCache(cache if cache is not None else ":memory:"))
