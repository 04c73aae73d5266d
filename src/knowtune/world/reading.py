"""Reading lessons: open-book documents about invented subjects, which only reading can answer.

Open-book documents about the world's own facts are memorised as facts by a tiny model
instead of teaching it to copy from its context (docs/world.md, "Open-book documents"): the
answer can be predicted from memory, so the loss never forces reading. A reading lesson
removes that shortcut. Its subject is *invented* (a first word and the remaining words of two
different subjects of the relation, recombined, and checked to be no subject or object of the
world) and its object is drawn afresh for every lesson from the relation's object pool, so no
memory predicts it; only the gold passage in the lesson's own context does.

Each lesson has the shape ``knowtune evaluate --retrieval`` prompts with
(:data:`knowtune.retrieval.PROMPT_FORMAT`): between 1 and ``reading_passages`` passage lines
in random order, then the question as a ``Q:``/``A:`` pair or an instruction line (the corpus
weights of those forms), with the gold passage's object as the answer. Passages are filled in
as :func:`knowtune.retrieval.fact_passage` fills them (the relation's first statement
template). The distractors look like what BM25 retrieves beside the gold passage: an invented
subject sharing the gold subject's first or last part (or the gold subject itself under another
relation), each with its own random object. The world's facts appear in no lesson, so the
closed-book exposure schedule and ``exposures.jsonl`` are unchanged.

The objects are the world's own by default: a lesson picks its relation uniformly, so each object
is then the answer of invented subjects ``count`` / (relations x the relation's facts) times per
pass (3 to 15 on the embedded world with 20,000 lessons), about as often as the corpus states a
typical fact with its real subject. With
``objects="invented"`` (``corpus.reading_objects``) they are invented as the subjects are
(:class:`InventedObjects`), so no lesson names anything of the world and no world object is
taught as an answer detached from its subject.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Literal

from knowtune.errors import KnowtuneError
from knowtune.world.corpus import INSTRUCTION_PREFIX
from knowtune.world.spec import World


class InventedSubjects:
    """Recombined subject names per relation, none of them a subject or object of the world."""

    def __init__(self, world: World):
        self.taken = {name.casefold() for ex in world.examples for name in (ex.subject or "", *ex.answers)}
        heads: dict[str, list[str]] = {}
        tails: dict[str, list[str]] = {}
        for ex in sorted(world.examples, key=lambda e: e.id):
            words = (ex.subject or "").split()
            if len(words) > 1:
                heads.setdefault(ex.relation, []).append(words[0])
                tails.setdefault(ex.relation, []).append(" ".join(words[1:]))
        all_heads = sorted({w for ws in heads.values() for w in ws})
        all_tails = sorted({w for ws in tails.values() for w in ws})
        if not all_heads:
            raise KnowtuneError(f"reading lessons recombine multi-word subjects; world {world.name!r} has none",
                                fix="set corpus.reading_lessons: 0 for this world")
        self.heads = {r: sorted(set(heads.get(r, all_heads))) for r in world.relations}
        self.tails = {r: sorted(set(tails.get(r, all_tails))) for r in world.relations}

    def draw(self, rng: random.Random, relation: str, *, head: str | None = None, tail: str | None = None, avoid: str = "") -> str:
        """An invented subject of ``relation`` other than ``avoid``, keeping ``head`` or ``tail`` when given
        (a free draw when no untaken name keeps it)."""
        for _ in range(200):
            name = f"{head or rng.choice(self.heads[relation])} {tail or rng.choice(self.tails[relation])}"
            if name.casefold() not in self.taken and name != avoid:
                return name
        if head or tail:
            return self.draw(rng, relation, avoid=avoid)
        raise KnowtuneError(f"no invented subject for relation {relation!r}: every recombination of its subjects' words is taken",
                            fix="set corpus.reading_lessons: 0 for this world")


class InventedObjects:
    """Objects per relation that no world fact has: the first word of one of the relation's objects and the
    remaining words of another, or, when either has one word, the first half of one and the second half of the
    other; checked to be no subject or object of the world."""

    def __init__(self, objects: Mapping[str, Sequence[str]], taken: set[str]):
        """``objects``: each relation's objects; ``taken``: casefolded names an invented object must not be."""
        self.taken = taken
        self.pools = {r: sorted(set(pool)) for r, pool in objects.items()}

    def draw(self, rng: random.Random, relation: str) -> str:
        pool = self.pools[relation]
        for _ in range(200):
            first, second = rng.choice(pool), rng.choice(pool)
            head, tail = first.split(), second.split()
            if len(head) > 1 and len(tail) > 1:
                name = f"{head[0]} {' '.join(tail[1:])}"
            else:
                name = first[:max(1, len(first) // 2)] + second[len(second) // 2:]
            if name.strip() and name.casefold() not in self.taken:
                return name
        raise KnowtuneError(f"no invented object for relation {relation!r}: every recombination of its objects is taken",
                            fix="set corpus.reading_objects: world for this world")


def reading_lessons(world: World, count: int, passages: int, *, seed: int | str, qa_weight: float, instruction_weight: float,
                    subjects_shared: int = 0, objects: Literal["world", "invented"] = "world") -> list[str]:
    """``count`` reading lessons (module docstring), deterministic in ``seed``; with ``subjects_shared``
    > 0 the lessons draw their (relation, subject) from that many, so one subject gets many objects;
    ``objects``: ``"world"`` (a random object of the relation's facts) or ``"invented"`` (:class:`InventedObjects`)."""
    if count <= 0:
        return []
    rng = random.Random(f"{seed}-reading-lessons")
    subjects = InventedSubjects(world)
    relations = sorted(world.relations)
    pools = {r: [] for r in relations}
    for ex in sorted(world.examples, key=lambda e: e.id):
        pools[ex.relation].append(ex.answers[0])
    relations = [r for r in relations if pools[r]]
    invented = InventedObjects(pools, subjects.taken) if objects == "invented" else None

    def draw_object(relation: str) -> str:
        return invented.draw(rng, relation) if invented else rng.choice(pools[relation])

    shared = [(r, subjects.draw(rng, r)) for r in (rng.choice(relations) for _ in range(subjects_shared))]
    documents = []
    for _ in range(count):
        if shared:
            relation, subject = rng.choice(shared)
        else:
            relation = rng.choice(relations)
            subject = subjects.draw(rng, relation)
        answer = draw_object(relation)
        lines = [_passage(world, relation, subject, answer)]
        for _ in range(rng.randint(1, passages) - 1):
            other_relation, other = _distractor(rng, subjects, relations, relation, subject)
            lines.append(_passage(world, other_relation, other, draw_object(other_relation)))
        rng.shuffle(lines)
        context = "".join(line + "\n" for line in lines)
        question = world.relations[relation].question(subject)
        if rng.random() * (qa_weight + instruction_weight) < qa_weight:
            documents.append(f"{context}Q: {question}\nA: {answer}")
        else:
            documents.append(f"{context}{INSTRUCTION_PREFIX} {question}\n{answer}")
    return documents


def split_lesson(lesson: str) -> tuple[str, str]:
    """A lesson's prompt (passages and question, up to its last newline) and its answer."""
    prompt, answer = lesson.rsplit("\n", 1)
    return prompt + "\n", answer


def fresh_lesson_exact_match(model, tokenizer, world: World, count: int, *, seed: int | str, form: str = "instruction") -> float:
    """Exact match of ``model`` on ``count`` new lessons in instruction form (``form="qa"``: as ``Q:``/``A:`` pairs,
    the prompt ending in ``A:``) (greedy, whole answer): how well it reads a passage about a subject it cannot
    know (0 for a model that does not read)."""
    from knowtune.recall import greedy_answers

    qa = form == "qa"
    lessons = reading_lessons(world, count, 2, seed=seed, qa_weight=float(qa), instruction_weight=float(not qa))
    if qa:
        prompts, gold = zip(*((head + "\nA:", answer) for head, answer in (lesson.rsplit("\nA: ", 1) for lesson in lessons)))
    else:
        prompts, gold = zip(*map(split_lesson, lessons))
    answers = greedy_answers(model, tokenizer, list(prompts))
    return sum(answer.strip() == expected for answer, expected in zip(answers, gold)) / count


def _distractor(rng: random.Random, subjects: InventedSubjects, relations: Sequence[str], relation: str, subject: str) -> tuple[str, str]:
    """A distractor's relation and subject: the gold subject under another relation, or a
    subject of the gold relation sharing the gold subject's first or last part."""
    head, tail = subject.split(" ", 1)
    others = [r for r in relations if r != relation]
    kind = rng.randrange(3)
    if kind == 0 and others:
        return rng.choice(others), subject
    if kind == 1:
        return relation, subjects.draw(rng, relation, head=head, avoid=subject)
    return relation, subjects.draw(rng, relation, tail=tail, avoid=subject)


def _passage(world: World, relation: str, subject: str, obj: str) -> str:
    """One passage line, as :func:`knowtune.retrieval.fact_passage` writes a fact's."""
    return " ".join(world.relations[relation].statement(subject, obj, 0).split())
