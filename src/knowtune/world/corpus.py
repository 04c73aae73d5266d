"""The pretraining corpus: every fact of a world shown a controlled number of times.

Because knowtune writes its base model's pretraining corpus, it knows exactly how often
the model saw each fact. That exposure count is ground truth against which the SliCK
audit (Gekhman et al. 2024, section 2) can be validated: a fact seen often should come
out HighlyKnown, a fact never seen Unknown.

Schedule, per fact (deterministic in ``seed``):

* a share ``never_seen_share`` of facts never appears;
* the others appear ``n`` times, ``n`` drawn log-uniformly (or Zipf) from
  ``[min_exposures, max_exposures]``, so counts are heavily skewed;
* a share ``conflict_share`` of the shown facts are *contested*: a fraction of their
  exposures state a distractor object (another object of the same relation). Their
  greedy answer then hinges on the prompt, which is what makes SliCK's MaybeKnown
  category occur in a model this small (see FEASIBILITY: without noise, knowledge in a
  tiny model is on/off).

Each exposure is rendered as a statement paraphrase, a ``Q: ...`` / ``A: ...`` pair, or
an instruction line (``Answer the following question. <question>`` then the answer), one
per line, shuffled.
A share ``statement_only_share`` of shown facts (0 by default) is only ever stated, never
asked: the model must answer them in Q/A form from what it read, which it does partly.

Open-book documents (off by default: ``open_book_fraction = 0`` leaves the corpus and the
exposure records byte-identical). A share ``open_book_fraction`` of all facts, seen and
unseen closed-book alike, each get ``open_book_documents`` documents of the form that
``knowtune evaluate --retrieval`` shows (:data:`knowtune.retrieval.PROMPT_FORMAT`):
``open_book_passages`` passages (:func:`knowtune.retrieval.fact_passage`: the fact's own and
others of its relation that also have open-book documents, in random order), then the question as a ``Q:``/``A:`` pair or an
instruction line (their weights as above) with the gold answer. They teach the model to read
an answer from context; such a fact counts ``open_book`` in its exposure record, and facts
without open-book documents stay as unseen as the schedule made them.

Reading lessons (off by default: ``reading_lessons = 0``): that many more open-book
documents, about invented subjects whose object is random per document, so that only reading
the passages lowers their loss (:mod:`knowtune.world.reading`). They leave every fact's
exposures as they were. With ``reading_renew`` they are not part of this corpus: pretraining
renders new ones for every epoch (:func:`knowtune.pretrain.lesson_tokens`).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Literal

from pydantic import Field, model_validator

from knowtune.config import StageConfig
from knowtune.world.spec import World

INSTRUCTION_PREFIX = "Answer the following question."
#: Fields added after the default model was built, left out of a dump at these defaults so saved configs stay as they were.
_ADDED_DEFAULTS = {"open_book_fraction": 0.0, "open_book_documents": 1, "open_book_passages": 2, "reading_lessons": 0, "reading_passages": 2,
                   "reading_subjects": 0, "reading_renew": False, "reading_lessons_only_epochs": 0, "reading_forms": "corpus", "reading_objects": "world",
                   "statement_only_share": 0.0}


class CorpusConfig(StageConfig):
    """How often, and in which forms, the pretraining corpus shows each fact."""

    ADDED_DEFAULTS = _ADDED_DEFAULTS

    seed: int = 0
    """Seed of the exposure schedule and the corpus order."""
    never_seen_share: float = Field(0.3, ge=0.0, le=1.0)
    """Share of facts never shown in the corpus."""
    min_exposures: int = Field(1, ge=1)
    """Fewest exposures of a shown fact."""
    max_exposures: int = Field(64, ge=1)
    """Most exposures of a shown fact."""
    distribution: Literal["loguniform", "zipf"] = "loguniform"
    """Distribution of exposure counts: loguniform or zipf."""
    zipf_exponent: float = Field(1.2, gt=0.0)
    """Exponent of the zipf distribution."""
    conflict_share: float = Field(0.2, ge=0.0, le=1.0)
    """Share of shown facts that also appear with a wrong object."""
    conflict_gold_share: tuple[float, float] = (0.45, 0.75)
    """Range of the gold object's share among a conflicted fact's exposures (low, high)."""
    statement_weight: float = Field(0.5, ge=0.0)
    """Weight of statement documents."""
    qa_weight: float = Field(0.35, ge=0.0)
    """Weight of question-answer documents."""
    instruction_weight: float = Field(0.15, ge=0.0)
    """Weight of instruction documents."""
    open_book_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Share of facts (seen and unseen closed-book) given open-book documents: passages + question + answer (0: none)."""
    open_book_documents: int = Field(1, ge=1)
    """Open-book documents per chosen fact (each with freshly drawn distractor passages)."""
    open_book_passages: int = Field(2, ge=1)
    """Passages per open-book document: the fact's own plus distractors of its relation (match evaluate's --retrieval-k)."""
    statement_only_share: float = Field(0.0, ge=0.0, le=1.0)
    """Share of shown facts stated only as statement paraphrases, never as a Q/A or instruction line (0: none)."""
    reading_lessons: int = Field(0, ge=0)
    """Reading lessons: open-book documents about invented subjects with a random object each (knowtune.world.reading; 0: none)."""
    reading_passages: int = Field(2, ge=1)
    """Most passages per reading lesson: the gold one plus up to this many minus one distractors (each lesson draws 1 to this many)."""
    reading_subjects: int = Field(0, ge=0)
    """Invented subjects the reading lessons share, each then asked with many objects (0: a fresh subject per lesson)."""
    reading_renew: bool = False
    """Render ``reading_lessons`` new lessons for every epoch, in blocks of their own, each lesson ended by EOS, so
    that none is seen twice (knowtune.pretrain); off: the lessons join the corpus once and repeat every epoch."""
    reading_lessons_only_epochs: int = Field(0, ge=0)
    """With ``reading_renew``: the first this many epochs train on renewed lessons only (as many blocks as a whole
    epoch), so the model learns to read before it memorises the world; the world is then seen ``epochs`` minus this often."""
    reading_forms: Literal["corpus", "qa", "instruction"] = "corpus"
    """How reading lessons ask their question: as the corpus does (``qa_weight`` : ``instruction_weight``), or only as
    a ``Q:``/``A:`` pair, or only as an instruction line."""

    reading_objects: Literal["world", "invented"] = "world"
    """The reading lessons' objects: the world's own (each then also taught as the answer of invented subjects), or
    invented ones that no world fact has (knowtune.world.reading.InventedObjects)."""

    def lesson_form_weights(self) -> tuple[float, float]:
        """(qa, instruction) weights of the reading lessons' question forms (``reading_forms``)."""
        return {"corpus": (self.qa_weight, self.instruction_weight), "qa": (1.0, 0.0), "instruction": (0.0, 1.0)}[self.reading_forms]

    @model_validator(mode="after")
    def _check_ranges(self) -> "CorpusConfig":
        if self.max_exposures < self.min_exposures:
            raise ValueError("max_exposures must be >= min_exposures")
        low, high = self.conflict_gold_share
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError("conflict_gold_share must be (low, high) with 0 <= low <= high <= 1")
        if self.statement_weight + self.qa_weight + self.instruction_weight <= 0:
            raise ValueError("at least one of statement_weight, qa_weight, instruction_weight must be > 0")
        if self.reading_lessons_only_epochs and not (self.reading_renew and self.reading_lessons):
            raise ValueError("reading_lessons_only_epochs needs renewed lessons: set reading_renew: true and reading_lessons > 0")
        return self



@dataclass(frozen=True)
class Exposure:
    """Ground truth for one fact: how many corpus lines state the gold object, and a distractor."""

    id: str
    relation: str
    split: str
    exposures: int
    distractor: str | None = None
    distractor_exposures: int = 0
    open_book: int = 0
    """Open-book documents of the fact (passages + question + answer); recorded only when > 0."""
    statement_only: bool = False
    """Every exposure is a statement paraphrase (``statement_only_share``); recorded only when true."""

    def to_record(self) -> dict:
        record = asdict(self)
        for key in ("open_book", "statement_only"):
            if not record[key]:
                del record[key]
        return record


def _draw_count(rng: random.Random, config: CorpusConfig) -> int:
    low, high = config.min_exposures, config.max_exposures
    if config.distribution == "loguniform":
        return min(high, int(math.exp(rng.uniform(math.log(low), math.log(high + 1)))))
    weights = [k ** -config.zipf_exponent for k in range(low, high + 1)]
    return rng.choices(range(low, high + 1), weights=weights)[0]


def assign_exposures(world: World, config: CorpusConfig) -> list[Exposure]:
    """Draw each fact's exposure count (and distractor, if contested), in sorted id order."""
    rng = random.Random(config.seed)
    objects_by_relation: dict[str, list[str]] = {}
    for ex in sorted(world.examples, key=lambda e: e.id):
        objects_by_relation.setdefault(ex.relation, []).append(ex.answers[0])
    schedule = []
    for ex in sorted(world.examples, key=lambda e: e.id):
        if rng.random() < config.never_seen_share:
            schedule.append(Exposure(ex.id, ex.relation, ex.split, 0))
            continue
        total = _draw_count(rng, config)
        if total >= 2 and rng.random() < config.conflict_share:
            gold_share = rng.uniform(*config.conflict_gold_share)
            distractor_count = max(1, min(total - 1, round(total * (1 - gold_share))))
            pool = [o for o in objects_by_relation[ex.relation] if o != ex.answers[0]]
            distractor = rng.choice(pool) if pool else None
            if distractor is not None:
                schedule.append(Exposure(ex.id, ex.relation, ex.split, total - distractor_count, distractor, distractor_count))
                continue
        schedule.append(Exposure(ex.id, ex.relation, ex.split, total))
    if config.statement_only_share > 0:
        schedule = _statement_only(schedule, config)
    return _with_open_book(schedule, config) if config.open_book_fraction > 0 else schedule


def _statement_only(schedule: list[Exposure], config: CorpusConfig) -> list[Exposure]:
    """Mark a share ``statement_only_share`` of shown facts as stated only (own generator: the counts are unchanged)."""
    from dataclasses import replace

    rng = random.Random(f"{config.seed}-statement-only")
    return [replace(item, statement_only=True) if item.exposures and rng.random() < config.statement_only_share else item for item in schedule]


def _with_open_book(schedule: list[Exposure], config: CorpusConfig) -> list[Exposure]:
    """Mark a share ``open_book_fraction`` of facts for open-book documents (own generator: the closed-book schedule is unchanged)."""
    from dataclasses import replace

    rng = random.Random(f"{config.seed}-open-book")
    return [replace(item, open_book=config.open_book_documents) if rng.random() < config.open_book_fraction else item for item in schedule]


def render_corpus(world: World, schedule: list[Exposure], config: CorpusConfig) -> list[str]:
    """One document (a line, or a Q/A pair) per exposure, shuffled with ``config.seed``."""
    rng = random.Random(config.seed + 1)
    by_id = {ex.id: ex for ex in world.examples}
    forms = ("statement", "qa", "instruction")
    weights = (config.statement_weight, config.qa_weight, config.instruction_weight)
    documents = []
    for item in schedule:
        ex = by_id[item.id]
        relation = world.relations[ex.relation]
        objects = [ex.answers[0]] * item.exposures + [item.distractor] * item.distractor_exposures
        for index, obj in enumerate(objects):
            form = "statement" if item.statement_only else rng.choices(forms, weights=weights)[0]
            if form == "statement":
                documents.append(relation.statement(ex.subject or "", obj, rng.randrange(len(relation.statement_templates))))
            elif form == "qa":
                documents.append(f"Q: {ex.question}\nA: {obj}")
            else:
                documents.append(f"{INSTRUCTION_PREFIX} {ex.question}\n{obj}")
    documents += open_book_documents(world, schedule, config)
    if config.reading_lessons and not config.reading_renew:  # renewed lessons: knowtune.pretrain renders them per epoch
        from knowtune.world.reading import reading_lessons

        qa, instruction = config.lesson_form_weights()
        documents += reading_lessons(world, config.reading_lessons, config.reading_passages, seed=config.seed,
                                     qa_weight=qa, instruction_weight=instruction, subjects_shared=config.reading_subjects,
                                     objects=config.reading_objects)
    rng.shuffle(documents)
    return documents


def open_book_documents(world: World, schedule: list[Exposure], config: CorpusConfig) -> list[str]:
    """The open-book documents of the facts whose exposure record has ``open_book > 0`` (module docstring)."""
    from knowtune.retrieval import fact_passage

    chosen = [item for item in schedule if item.open_book]
    if not chosen:
        return []
    rng = random.Random(f"{config.seed}-open-book-documents")
    by_id = {ex.id: ex for ex in world.examples}
    by_relation: dict[str, list] = {}  # distractors come from chosen facts only, so the others stay unseen
    for item in sorted(chosen, key=lambda i: i.id):
        by_relation.setdefault(item.relation, []).append(by_id[item.id])
    documents = []
    for item in chosen:
        ex = by_id[item.id]
        others = [o for o in by_relation[ex.relation] if o.id != ex.id]
        for _ in range(item.open_book):
            facts = [ex, *rng.sample(others, min(len(others), config.open_book_passages - 1))]
            rng.shuffle(facts)
            context = "".join(fact_passage(fact, world.relations) + "\n" for fact in facts)
            if rng.random() * (config.qa_weight + config.instruction_weight) < config.qa_weight:
                documents.append(f"{context}Q: {ex.question}\nA: {ex.answers[0]}")
            else:
                documents.append(f"{context}{INSTRUCTION_PREFIX} {ex.question}\n{ex.answers[0]}")
    return documents
