"""Early rejection of samples is exact: it never drops a sample that would have been correct."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from knowtune.matching import MatchConfig, extract_answer, is_correct, normalize_answer
from knowtune.slick.annotate import run_annotate
from knowtune.slick.protocol import AnnotateConfig
from knowtune.slick.pruning import may_still_match, pruner

# Letters, articles, spaces of several kinds, punctuation, combining marks, ligatures,
# full-width and Greek capitals: the characters that make normalisation non-trivial.
PIECES = st.sampled_from(["a", "an", "the", "The", "x", "Y", "é", "e", "\u0301", "\u0323", "ﬁ", "Ｐ", "Σ", "ς", "'", "-",
                          ".", ",", " ", "  ", "\u00a0", "\t", "\u3000", "ß", "İ", "1", "Kathua", "District", "Mc"])
TEXTS = st.lists(PIECES, max_size=10).map("".join)
CONFIGS = st.builds(MatchConfig, nfkc=st.booleans(), lowercase=st.booleans(), strip_punctuation=st.booleans(),
                    strip_articles=st.booleans())


@settings(max_examples=400, deadline=None)
@given(answer=TEXTS, gold=TEXTS, config=CONFIGS)
def test_a_correct_answer_is_never_rejected_on_the_way(answer, gold, config):
    golds = [g for g in {normalize_answer(gold, config)} if g]
    if not is_correct(answer, gold, config):
        return
    for end in range(len(answer) + 1):
        assert may_still_match(answer[:end], golds, config), (answer[:end], answer, gold)


@settings(max_examples=200, deadline=None)
@given(answer=TEXTS, config=CONFIGS)
def test_a_text_that_matches_itself_is_kept(answer, config):
    golds = [g for g in {normalize_answer(answer, config)} if g]
    if not golds:  # an answer that normalises to nothing is never correct
        return
    assert all(may_still_match(answer[:end], golds, config) for end in range(len(answer) + 1))


def test_wrong_starts_are_rejected():
    config = MatchConfig()
    golds = [normalize_answer("Kathua District", config)]
    assert not may_still_match(" Sz", golds, config)          # first word already wrong
    assert not may_still_match(" Kathua Co", golds, config)   # second word already wrong
    assert may_still_match(" Kath", golds, config)
    assert may_still_match(" the Kathua Dis", golds, config)  # articles vanish
    assert may_still_match(" Th", golds, config)              # could still be "the"
    assert not may_still_match(" Kathua District Court ", golds, config)


def test_no_pruning_for_multi_character_stops():
    assert pruner(["x"], MatchConfig(), "\n\n") is None
    assert pruner(["x"], MatchConfig(collapse_whitespace=False), "\n") is None
    check = pruner(["Kathua District"], MatchConfig(), "\n")
    assert check(" Kathua") and not check(" Delhi ")


def test_pruned_and_unpruned_exact_runs_are_identical(tiny_model, tiny_world, tmp_path):
    def run(out, prune):
        config = AnnotateConfig(model=str(tiny_model), data=str(tiny_world[0]), out=str(out), device="cpu", mode="exact",
                                prune_samples=prune, splits=["test"])
        return run_annotate(config), (out / "annotations.jsonl").read_text()

    pruned, unpruned = run(tmp_path / "pruned", True), run(tmp_path / "full", False)
    assert pruned[1] == unpruned[1]
    assert pruned[0]["overall"] == unpruned[0]["overall"]
    assert sum(r for r in [pruned[0]["overall"]["counts"]["WeaklyKnown"], pruned[0]["overall"]["counts"]["MaybeKnown"]]) > 0


def test_extract_answer_cut_makes_rows_without_stop_final():
    # The pruning rule assumes the answer is the generation up to the single stop character.
    assert extract_answer(" Kathua District\nQ: next", "\n") == "Kathua District"
