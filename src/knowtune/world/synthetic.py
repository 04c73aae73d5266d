"""Synthetic knowledge worlds: invented people, invented facts, a chosen kind of entity key.

Kaplan, Gekhman et al., "Why Fine-Tuning Encourages Hallucinations and How to Fix It"
(arXiv 2604.15574, 2026) explain SFT-induced hallucination as factual forgetting driven
by interference among overlapping representations. Their mechanism study trains on
synthetic facts (10^3..10^6 entities) whose subjects are either *name-like keys*
(recombined name pieces, so different entities share pieces) or *random UUID keys* (no
shared pieces): name-like keys cause 38-41% forgetting of held-out facts, random keys
0-4%. This module builds such worlds so the key-overlap experiment can be repeated.

A world has ``num_entities`` entities and, per entity, one fact for each of
``relations_per_entity`` relations (all by default). Objects come from large invented
pools (>= 300 distinct values per relation, so a chance guess is rarely right), or, for
``person`` relations such as ``mentor``, are other entities. Every random draw is made
on entity *indices* with streams seeded from ``seed`` only, so two worlds that differ
only in ``key_type`` hold the same facts with the subjects renamed: a paired design.

Splits (``split_by``):

* ``"entity"`` (default): entities are shuffled and cut by the shares; a fact belongs to
  its subject's split, so no subject of a training fact is ever tested (what the
  held-out-knowledge measurements need). Objects of ``person`` relations may be any
  entity.
* ``"fact"``: each in-distribution relation's facts are shuffled and cut by the shares.

OOD relations (the last ``ood_relations`` relations, and any relation given with
``ood: true``) are test-only, like the OOD relations of the embedded EntityQuestions
world: by fact, all their facts are test facts; by entity, only test entities draw them.

Ids are ``f"{relation}-{split}-{index:05d}"`` (``index`` counts within a relation's split).
"""

from __future__ import annotations

import random
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from itertools import product
from typing import Literal

from pydantic import Field, field_validator, model_validator

from knowtune.config import StageConfig
from knowtune.data.schema import SPLITS, QAExample
from knowtune.world.spec import RelationSpec, World

ObjectKind = Literal["place", "company", "person", "pet_name", "food", "school", "book"]
KeyType = Literal["name", "random", "uuid"]

_RELATION_ID = re.compile(r"[A-Za-z0-9_]+")
_WORD = re.compile(r"[^\W_]+")
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _words(text: str) -> list[str]:
    return text.split()


# Name pieces of ``key_type="name"``: first names are onset + ending, surnames are two
# syllables, so entities recombine a small set of pieces (high key overlap).
_FIRST_ONSETS = _words("Al Bren Cas Dor Ed Fen Gil Hal Is Jor Kal Lin Mar Nel Or Per Ros Sil Tam Vin")
_FIRST_ENDINGS = _words("a en ia o ric wyn ette iel us ora")
_SURNAME_HEADS = _words(
    "Ash Black Brook Cald Dun Elm Fair Gold Hart Holl Kings Lang March Mor North Oak Pem Quill Rad Ross "
    "Sand Shel Stan Thorn Vance Wald West Whit Wyn York Bar Cor Dal Fen Gar Hal Lock Mill Pen Tal"
)
_SURNAME_TAILS = _words(
    "ford wood well ridge ton ley more croft by field worth hurst wick stone brook dale mont ington shaw "
    "combe thorpe ham bourne son man"
)

# Object pools: invented values, built as products of piece lists.
_PLACE_HEADS = _words("Vel Quor Zan Ostr Ymb Carn Drav Ebr Fral Glim Hask Irr Jost Kev Lum Myr Nesk Orv Prel Rusk Sarn Tesk Umb Varr Wex Xal Yorv Zeph Brum Cluv")
_PLACE_TAILS = _words("ara heim ovo ista grad mouth vik enna ost aby ora ith usk andor iel ville burg ana eth yn")
_COMPANY_HEADS = _words("Blue Iron Silver Bright Quick Deep Red Cloud Star True High Green Swift Clear Stone Sun Frost Nova Prime Echo")
_COMPANY_TAILS = _words("wave forge line path works point light field gate core bridge craft spring mark leaf")
_COMPANY_SUFFIXES = _words("Systems Labs Industries Group Partners Logistics Foods Media")
_PET_ONSETS = _words("Bo Mi Pu Ro Zi Lu Ta Fi Ku Ne Sa Wi Do Ge Ha Jo Ki Mo Pe Ru Su Ti Vo Ya Ze")
_PET_ENDINGS = _words("bble ppet mble nky sker ffin ggles tto lly mpkin ster zzle cket ndle rko nzo")
_FOOD_INGREDIENTS = _words(
    "saffron plum chestnut fennel ginger lentil walnut quince rhubarb barley apricot leek mushroom pumpkin "
    "almond cherry lemon pepper sesame coconut cabbage fig pear spinach honey"
)
_FOOD_DISHES = _words("soup tart dumplings stew pie risotto salad curry pancakes noodles bread pudding fritters porridge cake casserole")
_SCHOOL_ROOTS = _words(
    "Alder Birch Cedar Hazel Linden Maple Rowan Willow Juniper Hawthorn Aspen Larch Holly Yew Elder Poplar "
    "Spruce Laurel Myrtle Sorrel Heather Bracken Thistle Clover"
)
_SCHOOL_KINDS = (
    "Academy", "College", "Institute", "Polytechnic", "Conservatory", "Seminary", "School of Arts",
    "University", "Lyceum", "Collegium", "Athenaeum", "Gymnasium", "Technical School", "Music School",
)
_BOOK_ADJECTIVES = _words(
    "Silent Hollow Crimson Distant Broken Golden Hidden Last Winter Paper Glass Burning Quiet Endless "
    "Forgotten Midnight Copper Velvet Wandering Salt Amber Frozen Sleeping Painted Borrowed"
)
_BOOK_NOUNS = _words(
    "Orchard Lantern River Garden Harbour Letter Clock Mirror Tower Meadow Compass Archive Island Bell "
    "Staircase Kingdom Voyage Feather Lighthouse Cartographer"
)


def _distinct(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(values)))


_FIRST_NAMES = _distinct(a + b for a, b in product(_FIRST_ONSETS, _FIRST_ENDINGS))
_SURNAMES = _distinct(a + b for a, b in product(_SURNAME_HEADS, _SURNAME_TAILS))

#: Object pools per kind (``person`` objects are other entities, so it has no pool).
OBJECT_POOLS: dict[str, tuple[str, ...]] = {
    "place": _distinct(a + b for a, b in product(_PLACE_HEADS, _PLACE_TAILS)),
    "company": _distinct(f"{a}{b} {c}" for a, b, c in product(_COMPANY_HEADS, _COMPANY_TAILS, _COMPANY_SUFFIXES)),
    "pet_name": _distinct(a + b for a, b in product(_PET_ONSETS, _PET_ENDINGS)),
    "food": _distinct(f"{a} {b}" for a, b in product(_FOOD_INGREDIENTS, _FOOD_DISHES)),
    "school": _distinct(f"{a} {b}" for a, b in product(_SCHOOL_ROOTS, _SCHOOL_KINDS)),
    "book": _distinct(f"The {a} {b}" for a, b in product(_BOOK_ADJECTIVES, _BOOK_NOUNS)),
}

#: Name keys: "First Surname" while that space is at most half full, else "First Middle Surname".
NAME_CAPACITY_TWO_PART = len(_FIRST_NAMES) * len(_SURNAMES)
MAX_NAME_ENTITIES = len(_FIRST_NAMES) ** 2 * len(_SURNAMES) // 2


class SyntheticRelation(RelationSpec):
    """A relation of a synthetic world: a :class:`RelationSpec` plus the kind of its objects."""

    object_kind: ObjectKind

    @field_validator("id")
    @classmethod
    def _file_name_safe(cls, value: str) -> str:
        if not _RELATION_ID.fullmatch(value):
            raise ValueError(f"relation id {value!r} may use only letters, digits and '_' (it names data files and ids)")
        return value

    def to_spec(self, ood: bool) -> RelationSpec:
        return RelationSpec(id=self.id, question_template=self.question_template, statement_templates=self.statement_templates, ood=ood)


def _relation(id: str, kind: str, question: str, *statements: str) -> SyntheticRelation:
    return SyntheticRelation(id=id, object_kind=kind, question_template=question, statement_templates=statements)


#: Built-in invented relations, in the order ``relations: <count>`` takes them.
CATALOGUE: tuple[SyntheticRelation, ...] = (
    _relation("works_at", "company", "Where does [X] work?", "[X] works at [Y].", "[X] is employed by [Y].", "[Y] employs [X].", "[X] has a job at [Y]."),
    _relation("born_in", "place", "Where was [X] born?", "[X] was born in [Y].", "[X]'s birthplace is [Y].", "The birthplace of [X] is [Y].", "[Y] is where [X] was born."),
    _relation("lives_in", "place", "Where does [X] live?", "[X] lives in [Y].", "[X] resides in [Y].", "[X]'s home is in [Y].", "[Y] is where [X] lives."),
    _relation("mentor", "person", "Who is [X]'s mentor?", "[X]'s mentor is [Y].", "[X] was mentored by [Y].", "[Y] mentors [X].", "[Y] is the mentor of [X]."),
    _relation("pet", "pet_name", "What is the name of [X]'s pet?", "[X]'s pet is called [Y].", "[X] has a pet named [Y].", "[Y] is the pet of [X].", "The name of [X]'s pet is [Y]."),
    _relation("favourite_food", "food", "What is [X]'s favourite food?", "[X]'s favourite food is [Y].", "[X] loves eating [Y].", "[Y] is the favourite food of [X].", "Above all, [X] likes [Y]."),
    _relation("studied_at", "school", "Where did [X] study?", "[X] studied at [Y].", "[X] is a graduate of [Y].", "[X] was educated at [Y].", "[Y] is where [X] studied."),
    _relation("favourite_book", "book", "What is [X]'s favourite book?", "[X]'s favourite book is [Y].", "[X] loves the book [Y].", "[Y] is the favourite book of [X].", "[X] keeps rereading [Y]."),
)
_CATALOGUE_BY_ID = {relation.id: relation for relation in CATALOGUE}


class SyntheticWorldConfig(StageConfig):
    """How to generate a synthetic world (see the module docstring for the semantics).

    ``relations`` is a count (the first N of :data:`CATALOGUE`) or a list whose items are
    catalogue ids or full relation specs (``id``, ``question_template``,
    ``statement_templates``, ``object_kind``, optional ``ood``).
    """

    name: str = Field("synthetic", min_length=1)
    """Name of the world."""
    seed: int = 0
    """Seed of the generation."""
    num_entities: int = Field(1000, ge=1)
    """Number of entities."""
    relations: int | list[str | SyntheticRelation] = len(CATALOGUE)
    """Relations: a count (the first N of the catalogue) or catalogue ids / relation specs."""
    key_type: KeyType = "name"
    """Entity keys: name (recombined name pieces), random (random strings) or uuid."""
    relations_per_entity: int | None = Field(None, ge=1)
    """Relations each entity has facts of (all when unset)."""
    split_by: Literal["entity", "fact"] = "entity"
    """Split train/dev/test by entity or by fact."""
    train_share: float = Field(0.7, ge=0.0, le=1.0)
    """Share of the train split."""
    dev_share: float = Field(0.1, ge=0.0, le=1.0)
    """Share of the dev split."""
    test_share: float = Field(0.2, ge=0.0, le=1.0)
    """Share of the test split."""
    ood_relations: int = Field(0, ge=0)
    """Number of relations kept out of train (OOD)."""

    @model_validator(mode="after")
    def _check(self) -> "SyntheticWorldConfig":
        relations = self.resolved_relations()
        if len({r.question_template for r in relations}) < len(relations):
            raise ValueError("relations must have distinct question_template values, or questions would repeat")
        if sum(r.ood for r in relations) >= len(relations):
            raise ValueError(f"ood_relations={self.ood_relations} leaves no in-distribution relation among {len(relations)}; lower ood_relations")
        if self.relations_per_entity is not None and self.relations_per_entity > len(relations):
            raise ValueError(f"relations_per_entity={self.relations_per_entity} exceeds the {len(relations)} relations; lower it or add relations")
        if abs(self.train_share + self.dev_share + self.test_share - 1.0) > 1e-6:
            raise ValueError("train_share + dev_share + test_share must sum to 1")
        if self.num_entities < 2 and any(r.object_kind == "person" for r in relations):
            raise ValueError("person relations (e.g. mentor) need num_entities >= 2")
        if self.key_type == "name" and self.num_entities > MAX_NAME_ENTITIES:
            raise ValueError(f"key_type='name' supports at most {MAX_NAME_ENTITIES} entities; lower num_entities or use key_type='random'")
        return self

    def resolved_relations(self) -> tuple[SyntheticRelation, ...]:
        """The relations as specs, with ``ood`` set on the last ``ood_relations`` of them."""
        if isinstance(self.relations, int):
            if not 1 <= self.relations <= len(CATALOGUE):
                raise ValueError(f"relations={self.relations}: the catalogue has {len(CATALOGUE)} relations; give 1..{len(CATALOGUE)} or a list of specs")
            chosen = list(CATALOGUE[: self.relations])
        else:
            unknown = [r for r in self.relations if isinstance(r, str) and r not in _CATALOGUE_BY_ID]
            if unknown:
                raise ValueError(f"unknown relations {unknown}; the catalogue has {sorted(_CATALOGUE_BY_ID)}")
            chosen = [_CATALOGUE_BY_ID[r] if isinstance(r, str) else r for r in self.relations]
        if not chosen:
            raise ValueError("relations is empty; give a count or at least one relation")
        ids = [r.id for r in chosen]
        if len(set(ids)) < len(ids):
            raise ValueError(f"relation ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
        if self.ood_relations > len(chosen):
            raise ValueError(f"ood_relations={self.ood_relations} exceeds the {len(chosen)} relations")
        first_ood = len(chosen) - self.ood_relations
        return tuple(r.model_copy(update={"ood": r.ood or i >= first_ood}) for i, r in enumerate(chosen))


def generate_synthetic_world(config: SyntheticWorldConfig) -> World:
    """Generate the world ``config`` describes; the same config always gives the same world."""
    relations = config.resolved_relations()
    keys = entity_keys(config)
    entity_split = _entity_splits(config)
    facts = _draw_facts(config, relations, entity_split)
    examples = []
    for r, relation in enumerate(relations):
        by_split = _split_facts(config, relation, facts[r], entity_split)
        pool = keys if relation.object_kind == "person" else OBJECT_POOLS[relation.object_kind]
        for split in SPLITS:
            for index, (subject, obj) in enumerate(by_split[split]):
                key, answer = keys[subject], pool[obj]
                examples.append(
                    QAExample(
                        id=f"{relation.id}-{split}-{index:05d}", relation=relation.id, question=relation.question(key),
                        answers=(answer,), split=split, subject=key, object=answer,
                    )
                )
    specs = {relation.id: relation.to_spec(relation.ood) for relation in relations}
    return World(name=config.name, relations=specs, examples=tuple(examples))


def entity_keys(config: SyntheticWorldConfig) -> list[str]:
    """``config.num_entities`` distinct subject keys of ``config.key_type``, in entity order.

    ``name``: "First Surname" (or "First Middle Surname" once the two-part space would be
    more than half full), recombining ~200 first names and ~1000 two-syllable surnames.
    ``random``: ``k7f3q-x9a2``-style base-36 strings. ``uuid``: version-4 UUIDs.
    """
    rng = random.Random(f"{config.seed}:keys:{config.key_type}")
    n = config.num_entities
    if config.key_type == "name":
        return _name_keys(rng, n)
    if config.key_type == "random":
        return [f"{text[:5]}-{text[5:]}" for text in (_base36(value, 9) for value in rng.sample(range(36**9), n))]
    keys: dict[str, None] = {}
    while len(keys) < n:
        keys[str(uuid.UUID(int=rng.getrandbits(128), version=4))] = None
    return list(keys)


def _name_keys(rng: random.Random, n: int) -> list[str]:
    firsts, surnames = _FIRST_NAMES, _SURNAMES
    if 2 * n <= NAME_CAPACITY_TWO_PART:
        return [f"{firsts[i // len(surnames)]} {surnames[i % len(surnames)]}" for i in rng.sample(range(NAME_CAPACITY_TWO_PART), n)]
    keys = []
    for i in rng.sample(range(len(firsts) * NAME_CAPACITY_TWO_PART), n):
        first, rest = divmod(i, NAME_CAPACITY_TWO_PART)
        keys.append(f"{firsts[first]} {firsts[rest // len(surnames)]} {surnames[rest % len(surnames)]}")
    return keys


def _base36(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, digit = divmod(value, 36)
        digits.append(_BASE36[digit])
    return "".join(reversed(digits))


def _cut(n: int, config: SyntheticWorldConfig) -> tuple[int, int, int]:
    """Train/dev/test sizes of ``n`` items under the configured shares (cumulative rounding)."""
    train = round(n * config.train_share)
    dev = round(n * (config.train_share + config.dev_share)) - train
    return train, dev, n - train - dev


def _assign(order: list[int], config: SyntheticWorldConfig) -> dict[int, str]:
    sizes = _cut(len(order), config)
    splits = [split for split, size in zip(SPLITS, sizes) for _ in range(size)]
    return dict(zip(order, splits))


def _entity_splits(config: SyntheticWorldConfig) -> list[str] | None:
    """Each entity's split when splitting by entity, else ``None``."""
    if config.split_by != "entity":
        return None
    order = list(range(config.num_entities))
    random.Random(f"{config.seed}:entity-split").shuffle(order)
    assigned = _assign(order, config)
    return [assigned[i] for i in range(config.num_entities)]


def _draw_facts(config: SyntheticWorldConfig, relations: tuple[SyntheticRelation, ...], entity_split: list[str] | None) -> list[list[tuple[int, int]]]:
    """Per relation, the (subject index, object index) facts; objects index a pool or the entities."""
    rng = random.Random(f"{config.seed}:facts")
    n = config.num_entities
    everything = list(range(len(relations)))
    in_distribution = [r for r in everything if not relations[r].ood]
    sizes = [n if r.object_kind == "person" else len(OBJECT_POOLS[r.object_kind]) for r in relations]
    persons = [r.object_kind == "person" for r in relations]
    k = config.relations_per_entity
    facts: list[list[tuple[int, int]]] = [[] for _ in relations]
    for subject in range(n):
        available = in_distribution if entity_split is not None and entity_split[subject] != "test" else everything
        chosen = available if k is None or k >= len(available) else sorted(rng.sample(available, k))
        for r in chosen:
            if persons[r]:  # another entity, never the subject itself
                obj = rng.randrange(n - 1)
                obj += obj >= subject
            else:
                obj = rng.randrange(sizes[r])
            facts[r].append((subject, obj))
    return facts


def _split_facts(config: SyntheticWorldConfig, relation: SyntheticRelation, facts: list[tuple[int, int]], entity_split: list[str] | None) -> dict[str, list[tuple[int, int]]]:
    """One relation's facts grouped by split, each group in entity order."""
    if entity_split is not None:
        split_of = {subject: entity_split[subject] for subject, _ in facts}
    elif relation.ood:
        split_of = {subject: "test" for subject, _ in facts}
    else:
        order = [subject for subject, _ in facts]
        random.Random(f"{config.seed}:fact-split:{relation.id}").shuffle(order)
        split_of = _assign(order, config)
    grouped: dict[str, list[tuple[int, int]]] = {split: [] for split in SPLITS}
    for fact in facts:
        grouped[split_of[fact[0]]].append(fact)
    return grouped


def word_pieces(key: str) -> list[str]:
    """The default pieces of a key: its case-folded words (split at spaces, hyphens, punctuation)."""
    return _WORD.findall(key.casefold())


def key_overlap(world: World, pieces: Callable[[str], Iterable[str]] = word_pieces) -> float:
    """How much the world's subject keys share pieces, in [0, 1].

    For each distinct subject key, the share of its distinct pieces that also occur in at
    least one other subject key; the mean over keys (0.0 for fewer than two keys). With the
    default :func:`word_pieces`, name keys score high (first names and surnames recur) and
    random keys near 0. Pass e.g. ``tokenizer.tokenize`` to measure subword overlap
    instead: the quantity Kaplan, Gekhman et al. (2026, arXiv 2604.15574) tie to
    interference and forgetting.
    """
    keys = sorted({ex.subject for ex in world.examples if ex.subject})
    piece_sets = [set(pieces(key)) for key in keys]
    counts = Counter(piece for piece_set in piece_sets for piece in piece_set)
    shares = [sum(counts[p] > 1 for p in piece_set) / len(piece_set) for piece_set in piece_sets if piece_set]
    if len(keys) < 2 or not shares:
        return 0.0
    return sum(shares) / len(shares)
