"""The audit through a real llama.cpp ``llama-server`` (``--backend openai``) serving the default model as GGUF.

The server binary comes from knowtune's cache (``knowtune serve build``; ``make test`` builds it
first). Without it these tests are skipped, unless ``KNOWTUNE_REQUIRE_LLAMA_SERVER=1`` (set by
``make test``), where its absence fails them. The server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from fault_proxy import FAULTS, FaultProxy
from knowtune.errors import KnowtuneError
from knowtune.serving.client import CompletionRequest, CompletionsClient
from knowtune.serving.config import ServedSettings
from knowtune.serving.llama import LlamaServer, free_port, llama_server_command
from knowtune.slick.annotate import run_annotate
from knowtune.slick.protocol import AnnotateConfig
from knowtune.testing import kill_annotate_after_rows

pytestmark = pytest.mark.served


@pytest.fixture(scope="session")
def server(llama_server):
    """The session's llama-server (tests/conftest.py: the default model as ``default``, 4 slots)."""
    return llama_server


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from knowtune.models import default_model_dir

    return AutoTokenizer.from_pretrained(default_model_dir())


@pytest.fixture(scope="session")
def world_data(tmp_path_factory) -> Path:
    """The embedded world as one JSONL file."""
    from knowtune.data import save_examples
    from knowtune.world.embedded import load_embedded_world

    path = tmp_path_factory.mktemp("world") / "world.jsonl"
    save_examples(list(load_embedded_world().examples), path)
    return path


def _client(url: str, **settings) -> CompletionsClient:
    client = CompletionsClient(ServedSettings(backend="openai", base_url=[url], **settings))
    client.connect()
    return client


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]


def _config(data: Path, out: Path, **values) -> AnnotateConfig:
    return AnnotateConfig(**{"data": str(data), "out": str(out), "device": "cpu", "splits": ["train"], **values})


TEXTS = [
    "Q: Where was Alma Ferrow born?\nA: Tarsen\nQ: Who wrote The Quiet Hill?\nA:",
    "plain words", " leading space", "two  spaces   three", "trailing spaces   ", "\n\nnewlines\n \n", "tab\tseparated\t",
    "digits 1234567890 and 3.14159, 1,000,000", "year 1987-2024", "it's we're they'll I'd you've", "CAPS and MiXeD",
    "punctuation!?.,;:()[]{}<>\"'", "émigré naïve café façade", "Ærøskøbing Łódź Žižkov", "日本語のテキスト", "emoji 🙂👍🏽 done",
    "Ελληνικά и кириллица", "  \n  ", "a", "",
    "ﬁne ligature", "full-width ＡＢＣ１２３", "x² superscript", "Å angstrom sign",  # NFKC changes these
]


def test_exported_gguf_tokenizes_exactly_as_transformers(server, tokenizer, world_data):
    from knowtune.data import load_examples

    questions = [e.question for e in load_examples(world_data)[:300]]
    texts = TEXTS + questions + [f"Q: {q}\nA:" for q in questions[:100]]
    normalized = [tokenizer.backend_tokenizer.normalizer.normalize_str(t) for t in texts]
    assert any(n != t for n, t in zip(normalized, texts))  # the NFKC cases are in the list
    served = _client(server.base_url).tokenize(normalized, add_special=True)
    expected = tokenizer(texts)["input_ids"]
    mismatches = [(t, s, e) for t, s, e in zip(texts, served, expected) if s != e]
    assert not mismatches, mismatches[:3]


def test_server_greedy_equals_transformers_greedy(server, tokenizer):
    import torch

    from knowtune.models import load

    model, _ = load("default", "cpu", "float32")
    prompts = [TEXTS[0], "Q: Who founded Tarsen?\nA:", "Q: What is the capital of Norvale?\nA:"]
    served = _client(server.base_url).complete([CompletionRequest(prompt=p, max_tokens=24, stop="\n") for p in prompts])
    for prompt, (text,) in zip(prompts, served):
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24, pad_token_id=2)
        expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert text == expected.split("\n")[0]


def test_samples_do_not_depend_on_how_n_is_split(server):
    """Sample i of a prompt is seeded base + i, whether it comes from n=4, 2 x n=2 or 4 x n=1 requests."""
    client = _client(server.base_url)
    common = dict(prompt=TEXTS[0], max_tokens=8, stop="\n", temperature=1.5, top_k=40)
    whole = client.complete([CompletionRequest(**common, n=4, seed=1000)])[0]
    halves = client.complete([CompletionRequest(**common, n=2, seed=1000), CompletionRequest(**common, n=2, seed=1002)])
    singles = client.complete([CompletionRequest(**common, n=1, seed=1000 + i) for i in range(4)])
    assert whole == halves[0] + halves[1] == [s[0] for s in singles]
    assert len(set(whole)) > 1  # T = 1.5 draws different answers: the seeds matter


@pytest.fixture(scope="session")
def agreement_runs(server, world_data, tmp_path_factory):
    """The paper's protocol (N_ex = 10, k = 4, 16 samples at T = 0.5, top-k 40, lazy) on 200 train examples,
    in process and through the server."""
    root = tmp_path_factory.mktemp("agreement")
    local = run_annotate(_config(world_data, root / "local", limit=200))
    served = run_annotate(_config(world_data, root / "served", limit=200, backend="openai", base_url=[server.base_url]))
    return root / "local", root / "served", local, served


def test_served_audit_agrees_with_in_process(agreement_runs):
    local_out, served_out, local, served = agreement_runs
    a, b = _records(local_out), _records(served_out)
    assert [r["id"] for r in a] == [r["id"] for r in b] and len(a) == 200
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra["greedy_answers"], rb["greedy_answers"])]
    assert len(pairs) == 2000
    greedy = sum(x == y for x, y in pairs) / len(pairs)
    categories = sum(ra["category"] == rb["category"] for ra, rb in zip(a, b)) / len(a)
    assert greedy >= 0.98, greedy
    assert categories >= 0.95, categories
    assert {r["category"] for r in b} >= {"HighlyKnown", "Unknown"}  # the audit separates known from unknown facts


def test_served_protocol_records_backend_and_never_mixes(agreement_runs, server, world_data, tmp_path):
    local_out, served_out, _, _ = agreement_runs
    local, served = (json.loads((out / "protocol.json").read_text()) for out in (local_out, served_out))
    assert served["protocol_hash"] != local["protocol_hash"] and "backend" not in local["protocol"]
    backend = served["protocol"]["backend"]
    assert backend["name"] == "openai" and backend["served_model"] == "default"
    assert backend["hosts"] == [server.base_url.split("/")[2]] and len(backend["tokenizer"]) == 16
    assert served["model_fingerprint"] != local["model_fingerprint"]
    # the in-process results are not resumed by a served run, nor the other way round
    with pytest.raises(KnowtuneError, match="another protocol or model"):
        run_annotate(_config(world_data, local_out, limit=200, backend="openai", base_url=[server.base_url]))
    with pytest.raises(KnowtuneError, match="another protocol or model"):
        run_annotate(_config(world_data, served_out, limit=200))


def test_a_tokenizer_that_differs_from_the_servers_is_refused(server, world_data, tmp_path):
    import shutil

    from knowtune.models import default_model_dir

    other = tmp_path / "other-tokenizer"
    shutil.copytree(default_model_dir(), other)
    spec = json.loads((other / "tokenizer.json").read_text())
    spec["model"]["merges"] = spec["model"]["merges"][:1000]  # fewer merges: longer token sequences
    (other / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(KnowtuneError, match="tokenizes a prompt differently"):
        run_annotate(_config(world_data, tmp_path / "out", limit=2, n_ex=2, model=str(other), backend="openai", base_url=[server.base_url]))


SMALL = dict(limit=24, n_ex=3, n_samples=6, chunk_size=4)


@pytest.fixture(scope="session")
def small_clean_run(server, world_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    run_annotate(_config(world_data, out, mode="exact", backend="openai", base_url=[server.base_url], **SMALL))
    return out


def test_faults_between_client_and_server_change_nothing(server, world_data, small_clean_run, tmp_path):
    """429, 500, 503, stalls past the timeout, dropped connections and truncated bodies: retried, same results."""
    port = int(server.base_url.split(":")[2].split("/")[0])
    with FaultProxy(port, every=3, budget=28, stall_s=3.0) as proxy:
        run_annotate(_config(world_data, tmp_path / "faulty", mode="exact", backend="openai", base_url=[proxy.url],
                             request_timeout=2.0, retry_backoff=0.05, **SMALL))
    assert set(proxy.injected) == set(FAULTS) and sum(proxy.injected.values()) == 28
    assert _records(tmp_path / "faulty") == _records(small_clean_run)


def test_kill_9_mid_served_audit_then_resume_loses_nothing(server, world_data, small_clean_run, tmp_path):
    out = tmp_path / "killed"
    args = ["annotate", "--data", str(world_data), "--split", "train", "--out", str(out), "--device", "cpu", "--mode", "exact",
            "--backend", "openai", "--base-url", server.base_url, "--chunk-size", "1", "--concurrency", "2",
            *[f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items() if k != "chunk_size"]]
    database = out / "annotations.sqlite"
    kill_annotate_after_rows(args, database, 4, poll_s=0.05)
    with sqlite3.connect(database) as db:
        assert 4 <= db.execute("SELECT COUNT(*) FROM annotations").fetchone()[0] < SMALL["limit"]
    summary = run_annotate(_config(world_data, out, mode="exact", backend="openai", base_url=[server.base_url], **{**SMALL, "chunk_size": 1}))
    assert summary["provenance"]["run"]["examples_this_run"] < SMALL["limit"]
    assert _records(out) == _records(small_clean_run)


def test_served_settings_errors_name_the_flag(monkeypatch):
    with pytest.raises(KnowtuneError, match="--base-url"):
        CompletionsClient(ServedSettings(backend="openai"))
    monkeypatch.delenv("KT_TEST_KEY", raising=False)
    with pytest.raises(KnowtuneError, match="KT_TEST_KEY"):
        CompletionsClient(ServedSettings(backend="openai", base_url=["http://127.0.0.1:9/v1"], api_key_env="KT_TEST_KEY"))
    with pytest.raises(ValueError, match="not an http"):
        ServedSettings(backend="openai", base_url=["127.0.0.1:8080"])


def test_unknown_served_model_is_refused(server):
    with pytest.raises(KnowtuneError, match="not 'other'"):
        _client(server.base_url, served_model="other")


def test_api_key_is_read_from_the_named_environment_variable(llama_binary, default_gguf, monkeypatch, tmp_path):
    port = free_port()
    command = llama_server_command(llama_binary, default_gguf, port=port, parallel=1, threads=1) + ["--api-key", "s3cret"]
    with LlamaServer(command, host="127.0.0.1", port=port, log_path=tmp_path / "server.log") as keyed:
        monkeypatch.setenv("KT_TEST_KEY", "s3cret")
        client = _client(keyed.base_url, api_key_env="KT_TEST_KEY")
        assert client.complete([CompletionRequest(prompt=TEXTS[0], max_tokens=4, stop="\n")])[0][0]
        monkeypatch.setenv("KT_TEST_KEY", "wrong")
        with pytest.raises(KnowtuneError, match="HTTP 401"):
            _client(keyed.base_url, api_key_env="KT_TEST_KEY", max_retries=0)

