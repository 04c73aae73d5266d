"""The protocol spec and its hash, deterministic sharding, and per-relation exemplar sets."""

from __future__ import annotations

import pytest

from knowtune.data.schema import QAExample
from knowtune.errors import ConfigError, KnowtuneError
from knowtune.slick.exemplars import draw_exemplar_sets
from knowtune.slick.protocol import AnnotateConfig, build_protocol, in_shard, parse_shard, protocol_hash, stable_hash


def _hash(**changes) -> str:
    config = AnnotateConfig(**changes)
    return protocol_hash(build_protocol(config, config.task_spec(), {"r": []}, "float32"))


@pytest.mark.parametrize("change", [
    {"temperature": 0.7}, {"top_k": 20}, {"n_samples": 8}, {"n_ex": 5}, {"k": 3}, {"seed": 1}, {"max_new_tokens": 8},
    {"mode": "exact"}, {"query_template": "Question: {question}\nAnswer:"}, {"match": {"strip_articles": False}},
    {"exemplars_from": "train"}, {"stop": "."}, {"add_special_tokens": False}, {"chat_template": True},
])
def test_every_protocol_field_changes_the_hash(change):
    assert _hash(**change) != _hash()


@pytest.mark.parametrize("change", [{"batch_size": 3}, {"chunk_size": 5}, {"device": "cpu"}, {"shard": "1/2"}, {"limit": 4}, {"out": "x"}])
def test_run_settings_do_not_change_the_hash(change):
    assert _hash(**change) == _hash()


def test_hash_covers_dtype_and_exemplars():
    config = AnnotateConfig()
    task = config.task_spec()
    base = protocol_hash(build_protocol(config, task, {"r": []}, "float32"))
    assert protocol_hash(build_protocol(config, task, {"r": []}, "bfloat16")) != base
    assert protocol_hash(build_protocol(config, task, {"r": [{"ids": ["a"]}]}, "float32")) != base


def test_the_default_protocol_record_is_that_of_protocol_v1():
    # Stored audits are keyed by this record's hash: the task spec must not add keys to the default's.
    protocol = build_protocol(AnnotateConfig(), AnnotateConfig().task_spec(), {}, "float32")
    assert protocol["template"] == {"instruction": "", "exemplar": "Q: {question}\nA: {answer}\n", "query": "Q: {question}\nA:", "chat_template": False}
    assert set(protocol) == {"protocol_version", "knowtune_version", "mode", "n_ex", "k", "exemplars_from", "seed", "template", "decoding",
                             "match", "exemplar_sets"}
    assert (protocol["decoding"]["stop"], protocol["decoding"]["max_new_tokens"], protocol["k"]) == ("\n", 24, 4)


def test_a_task_file_sets_the_audit_prompt_and_keys_set_in_the_config_override_it(tmp_path):
    (tmp_path / "task.yaml").write_text("fewshot:\n  k: 2\n  query_template: \"Question: {question}\\nAnswer:\"\ngeneration:\n  max_new_tokens: 9\n")
    task = AnnotateConfig(task=str(tmp_path / "task.yaml"), max_new_tokens=12).task_spec()
    assert (task.fewshot.k, task.fewshot.query_template, task.generation.max_new_tokens) == (2, "Question: {question}\nAnswer:", 12)
    assert _hash(task=str(tmp_path / "task.yaml")) == _hash(k=2, query_template="Question: {question}\nAnswer:", max_new_tokens=9)
    resolved = AnnotateConfig(task=str(tmp_path / "task.yaml")).resolved()
    assert (resolved.k, resolved.max_new_tokens) == (2, 9)


def test_templates_are_validated():
    with pytest.raises(ValueError, match="answer"):
        AnnotateConfig(exemplar_template="Q: {question}\n")
    with pytest.raises(ValueError, match="malformed"):
        AnnotateConfig(query_template="Q: {question} {oops}")


def test_shards_partition_deterministically():
    ids = [f"ex-{i}" for i in range(300)]
    owners = [[s for s in range(4) if in_shard(i, (s, 4))] for i in ids]
    assert all(len(o) == 1 for o in owners)
    assert all(40 < sum(o == [s] for o in owners) < 110 for s in range(4))
    assert stable_hash("ex-0") == int.from_bytes(__import__("hashlib").sha256(b"ex-0").digest()[:8], "big")
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x/2", "1", "-1/3"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def _examples(relation: str, n: int, split: str = "dev") -> list[QAExample]:
    return [QAExample(id=f"{relation}-{i}", relation=relation, question=f"q{i}?", answers=(f"a{i}",), split=split) for i in range(n)]


def test_exemplar_sets_are_seeded_per_relation():
    pool = _examples("r1", 12) + _examples("r2", 12)
    one = draw_exemplar_sets(pool, ["r1"], n_ex=10, k=4, seed=0, source="dev")
    both = draw_exemplar_sets(list(reversed(pool)), ["r1", "r2"], n_ex=10, k=4, seed=0, source="dev")
    assert one["r1"] == both["r1"]  # order of the pool and other relations do not matter
    assert draw_exemplar_sets(pool, ["r1"], n_ex=10, k=4, seed=1, source="dev")["r1"] != one["r1"]
    for s in both["r2"]:
        ids = [e.id for e in (*s.exemplars, s.spare)]
        assert len(set(ids)) == 5 and all(i.startswith("r2-") for i in ids)
    assert len({tuple(e.id for e in s.exemplars) for s in one["r1"]}) > 1


def test_the_audited_example_is_never_its_own_exemplar():
    pool = _examples("r", 5, split="train")
    sets = draw_exemplar_sets(pool, ["r"], n_ex=10, k=4, seed=0, source="train")
    for s in sets["r"]:
        for example in pool:
            used = s.for_example(example.id)
            assert example.id not in [e.id for e in used] and len(used) == 4
            assert [e.id for e in used if e.id != s.spare.id] == [e.id for e in s.exemplars if e.id != example.id]


def test_too_few_candidates_is_an_error_with_a_fix():
    with pytest.raises(KnowtuneError, match="needs k \\+ 1 = 5") as error:
        draw_exemplar_sets(_examples("r", 4), ["r"], n_ex=10, k=4, seed=0, source="dev")
    assert "--exemplars-from train" in error.value.fix


JUDGE = {"base_url": ["http://127.0.0.1:8081/v1"], "model": "judge-model"}


@pytest.mark.parametrize("change", [
    {"match": {"method": "contains"}}, {"match": {"method": "f1"}}, {"match": {"method": "judge", "judge": JUDGE}},
    {"stop": ["\n\n", "Q:"]}, {"stop": "\n\n"},
])
def test_matchers_and_stop_rules_are_protocol(change):
    assert _hash(**change) != _hash()


def test_matcher_settings_in_the_hash_are_those_that_decide_verdicts():
    assert _hash(match={"method": "f1", "f1_threshold": 0.6}) != _hash(match={"method": "f1"})
    assert _hash(match={"method": "exact", "f1_threshold": 0.6}) == _hash()  # unused by exact
    judge = {"method": "judge", "judge": JUDGE}
    assert _hash(match={**judge, "judge": {**JUDGE, "model": "other"}}) != _hash(match=judge)
    assert _hash(match={**judge, "judge": {**JUDGE, "prompt": "Q: {question} G: {gold} A: {answer}"}}) != _hash(match=judge)
    assert _hash(match={**judge, "judge": {**JUDGE, "base_url": ["http://10.0.0.2:80/v1"], "concurrency": 1}}) == _hash(match=judge)
    assert _hash(stop=["\n"]) == _hash(match={"method": "exact"}) == _hash()  # the defaults, spelled out, are the default


def test_the_match_and_stop_rules_reach_the_recorded_protocol():
    config = AnnotateConfig(match={"method": "f1", "f1_threshold": 0.7}, stop=["\n\n", "Q:"], max_new_tokens=64)
    protocol = build_protocol(config, config.task_spec(), {}, "float32")
    assert protocol["match"]["method"] == "f1" and protocol["match"]["f1_threshold"] == 0.7
    assert (protocol["decoding"]["stop"], protocol["decoding"]["max_new_tokens"]) == (["\n\n", "Q:"], 64)
