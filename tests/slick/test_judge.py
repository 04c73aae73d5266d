"""``match: {method: judge}`` against a real OpenAI-compatible server process (tests/slick/judge_server.py):
verdicts, the SQLite verdict cache, and the judged audit and evaluation end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from knowtune.data.schema import QAExample
from knowtune.evaluate import score_predictions
from knowtune.judge import VerdictCache, open_judge, read_verdict
from knowtune.matching import MatchConfig
from knowtune.serving.llama import free_port
from knowtune.slick.annotate import run_annotate
from knowtune.slick.protocol import AnnotateConfig


@pytest.fixture(scope="module")
def judge_url():
    port = free_port()
    process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("judge_server.py")), str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(url + "/v1/models", timeout=1.0)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url + "/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)


def served(url: str) -> int:
    return httpx.get(url.removesuffix("/v1") + "/count").json()["completions"]


def judged(url: str, **judge) -> MatchConfig:
    return MatchConfig(method="judge", judge={"base_url": [url], "model": "toy-judge", **judge})


ITEMS = [
    ("Where was Ada born?", ["London"], "London"),  # exact match: right without a call
    ("Where was Ada born?", ["London"], "the."),  # normalises to nothing: wrong without a call
    ("Where was Ada born?", ["London"], "She was born in London, England."),  # the judge says yes
    ("Where was Ada born?", ["London"], "Paris"),  # the judge says no
    ("Where was Ada born?", ["London"], "perhaps"),  # an unreadable reply: wrong, counted unclear
    ("Who founded Acme?", ["J. Smith", "John Smith"], "it was john smith"),  # any alias
]


def test_judge_verdicts_calls_and_cache(judge_url, tmp_path):
    before = served(judge_url)
    judge = open_judge(judged(judge_url), tmp_path / "cache.sqlite")
    assert judge.verdicts(ITEMS) == [True, False, True, False, False, True]
    assert (judge.calls, judge.unclear, served(judge_url) - before) == (4, 1, 4)
    assert judge.verdicts(ITEMS[2:4]) == [True, False] and judge.calls == 4  # cached in this run
    judge.close()
    again = open_judge(judged(judge_url), tmp_path / "cache.sqlite")  # a new run on the same store asks nothing
    assert again.verdicts(ITEMS) == [True, False, True, False, False, True] and again.calls == 0
    reworded = open_judge(judged(judge_url, prompt="Q {question}\nGold answer: {gold}\nProposed answer: {answer}\nOK?"), tmp_path / "cache.sqlite")
    assert reworded.verdicts(ITEMS[2:3]) == [True] and reworded.calls == 1  # another prompt is another judge
    assert served(judge_url) - before == 5


def test_a_chat_judge_asks_chat_completions_and_is_another_judge(judge_url, tmp_path):
    before = httpx.get(judge_url.removesuffix("/v1") + "/count").json()
    chat = judged(judge_url, chat=True)
    assert chat.protocol_record()["judge"]["chat"] is True and "chat" not in judged(judge_url).protocol_record()["judge"]
    judge = open_judge(chat, tmp_path / "cache.sqlite")
    assert judge.verdicts(ITEMS) == [True, False, True, False, False, True]
    assert (judge.calls, judge.unclear) == (4, 1)
    after = httpx.get(judge_url.removesuffix("/v1") + "/count").json()
    assert (after["chat"] - before["chat"], after["completions"] - before["completions"]) == (4, 0)


def test_reply_reading():
    assert [read_verdict(r) for r in (" Yes.", "no", "TRUE", " incorrect!", "maybe", "", "Yes, it is")] == [True, False, True, False, None, None, True]
    cache = VerdictCache()
    cache.put([("k", True, "yes")])
    assert cache.get(["k", "other"]) == {"k": True}


def test_evaluation_scores_through_the_judge(judge_url):
    examples = [QAExample(id=str(i), relation="r", question=q, answers=tuple(a), split="test") for i, (q, a, _) in enumerate(ITEMS)]
    predictions = [p for _, _, p in ITEMS]
    result = score_predictions(examples, predictions, match=judged(judge_url))
    assert [p.correct for p in result.predictions] == [True, False, True, False, False, True]
    assert result.overall.hallucination_rate == pytest.approx(3 / 6)
    exact = score_predictions(examples, predictions)
    assert [p.correct for p in exact.predictions] == [True, False, False, False, False, False]


def _audit(tiny_model, tiny_world, out, **values) -> AnnotateConfig:
    return AnnotateConfig(model=str(tiny_model), data=str(tiny_world[0]), out=str(out), device="cpu", splits=["train"], limit=12,
                          n_ex=3, n_samples=4, chunk_size=6, **values)


def test_a_judged_audit_equals_the_judges_rule_and_resumes_without_asking(judge_url, tiny_model, tiny_world, tmp_path):
    contains = run_annotate(_audit(tiny_model, tiny_world, tmp_path / "contains", match={"method": "contains"}))
    config = _audit(tiny_model, tiny_world, tmp_path / "judge", match=judged(judge_url).model_dump())
    start, lines = served(judge_url), []
    summary = run_annotate(config, log=lines.append)
    assert served(judge_url) > start  # answers that are not exact matches went to the judge
    assert f"judge: {served(judge_url) - start} answers judged" in "\n".join(lines)
    assert summary["overall"]["counts"] == contains["overall"]["counts"]
    rows = lambda out: [(r["id"], r["category"], r["greedy_answers"]) for r in map(json.loads, (out / "annotations.jsonl").read_text().splitlines())]
    assert rows(tmp_path / "judge") == rows(tmp_path / "contains")
    protocol = json.loads((tmp_path / "judge" / "protocol.json").read_text())["protocol"]
    assert protocol["match"]["method"] == "judge" and protocol["match"]["judge"]["model"] == "toy-judge"
    assert "{answer}" in protocol["match"]["judge"]["prompt"] and "base_url" not in protocol["match"]["judge"]
    hashes = {json.loads((tmp_path / d / "protocol.json").read_text())["protocol_hash"] for d in ("judge", "contains")}
    assert len(hashes) == 2
    before = served(judge_url)
    (tmp_path / "judge" / "summary.json").unlink()
    import sqlite3

    with sqlite3.connect(tmp_path / "judge" / "annotations.sqlite") as db:  # drop half the results: the rerun redoes them
        db.execute("DELETE FROM annotations WHERE rowid % 2 = 0")
    again = run_annotate(config)
    assert again["overall"]["counts"] == summary["overall"]["counts"]
    assert served(judge_url) == before  # every verdict came from the store


@pytest.mark.served
def test_the_judge_through_a_real_llama_server(llama_server, tmp_path):
    """The default model served by llama-server as the judge: its replies are read (a tiny model's
    replies are mostly neither yes nor no, so counted unclear), greedy, hence the same on a second
    asking, and cached."""
    match = MatchConfig(method="judge", judge={"base_url": [llama_server.base_url], "model": "default", "max_tokens": 3})
    items = [(q, a, p) for q, a, p in ITEMS if p not in ("London", "the.")]  # the ones that need a call
    first = open_judge(match, tmp_path / "verdicts.sqlite")
    verdicts = first.verdicts(items)
    assert first.calls == len(items) and all(isinstance(v, bool) for v in verdicts)
    replies = [row[0] for row in first.cache._db.execute("SELECT reply FROM judge_verdicts")]
    assert len(replies) == len(items) and first.unclear == sum(read_verdict(r) is None for r in replies)
    fresh = open_judge(match)  # no cache: the server is asked again and answers the same (temperature 0)
    assert fresh.verdicts(items) == verdicts and fresh.calls == len(items)
    cached = open_judge(match, tmp_path / "verdicts.sqlite")
    assert cached.verdicts(items) == verdicts and cached.calls == 0
