"""The key-overlap experiment: do name-like entity keys make fine-tuning forget more?

Kaplan, Gekhman et al., "Why Fine-Tuning Encourages Hallucinations and How to Fix It"
(arXiv 2604.15574, 2026) trace SFT-induced hallucination to factual forgetting driven by
interference among overlapping representations. Their mechanism study fine-tunes on
synthetic facts (10^3..10^6 entities) whose subjects are name-like keys (recombined name
pieces) or random UUID keys: name-like keys forget 38-41% of held-out facts, random keys
0-4%; held-out entities' hidden states drift (cosine) ~5% during format learning for every
key type and ~11% with name-like keys. This module repeats that design in miniature.

Per cell (key type x world size), with one seed for every cell, so the key types form a
paired design (same facts, same splits, same corpus layout; only the subjects' names differ);
``repeats`` > 1 runs every cell again with seeds ``seed + 1``, ``seed + 2``, ... (another world,
corpus, pretraining and fine-tuning each time, still paired across key types):

1. World (:func:`~knowtune.world.synthetic.generate_synthetic_world`, split by entity):
   ``train`` = *known* entities whose facts are fine-tuned on, ``dev`` = *held-out known*
   entities, ``test`` = *new* entities.
2. Pretraining (:func:`~knowtune.pretrain.pretrain`) of a tiny Llama and its BPE tokenizer
   on a corpus built from the known entities only: new entities never appear in it.
3. Format stage: ``format_epochs`` of SFT on the known fine-tuning facts (the paper's
   format-learning stage). Its model is the **reference**, so format learning is not
   counted as forgetting.
4. Fine-tuning (plain SFT, :func:`~knowtune.train.sft.train_model`) from the reference on
   the known fine-tuning facts plus the new facts (about half each, as the paper's 8k
   Known + 8k Unknown).

Measures, on the held-out known facts H (never fine-tuned on) and the new facts N:

    forgetting        = |{f in H : ref correct, ft wrong}| / |{f in H : ref correct}|
    new_fact_learning = |{f in N : ft correct}| / |N|
    drift             = (1/|H|) sum_f (1 - cos(h_ref(f), h_ft(f)))     (knowtune.drift)
    format_drift      = the same between the pretrained base and the reference

with h the hidden state at the last subject token of the fine-tuning prompt. Every run of a cell
writes ``<out>/<key_type>-<entities>[-run<r>]/result.json`` last, so a rerun skips finished runs.
With repeats, a cell's measures are the means over its runs, and ``forgetting_se`` the standard
error of that mean across runs (between-seed spread), not the binomial error of a single run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from knowtune.config import StageConfig, save_config
from knowtune.drift import DEFAULT_LAYER
from knowtune.errors import KnowtuneError
from knowtune.pretrain import PretrainConfig
from knowtune.provenance import config_hash
from knowtune.study.methods import distinct_choices
from knowtune.study.workers import process_pool, single_thread, stderr_log
from knowtune.train.config import TrainConfig
from knowtune.world.corpus import CorpusConfig
from knowtune.world.synthetic import CATALOGUE, KeyType, SyntheticRelation, SyntheticWorldConfig

Log = Callable[[str], None]
RESULT_FILE = "result.json"
CELL_FILE = "cell.json"
SUMMARY_FILE = "summary.json"
NAME_KEY = "name"
#: Keys that may differ between two runs of one output directory (speed only).
RUN_KEYS = ("workers",)
#: The default relations: every catalogue relation whose objects are not entities (a
#: ``person`` object would put new entities' keys into the known entities' corpus).
DEFAULT_RELATIONS = [r.id for r in CATALOGUE if r.object_kind != "person"][:4]


def _default_pretrain() -> PretrainConfig:
    """A pretraining small enough for a cell to take well under a minute on one core (docs/mechanism.md)."""
    corpus = CorpusConfig(never_seen_share=0.0, conflict_share=0.0, min_exposures=20, max_exposures=20)
    return PretrainConfig(corpus=corpus, vocab_size=1024, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256,
                          seq_len=64, batch_size=16, epochs=12.0, learning_rate=6e-3, warmup_steps=30, save_every_steps=2000)


def _default_finetune() -> TrainConfig:
    return TrainConfig(epochs=20, learning_rate=3e-4, batch_size=16, eval_every_epoch=False, max_eval_examples=None)


class KeyOverlapConfig(StageConfig):
    """Settings of the key-overlap experiment (docs/mechanism.md documents every key).

    ``finetune_known_share`` + ``held_out_share`` + ``new_share`` = 1: the entity shares of
    known entities fine-tuned on, known entities held out, and new (never pretrained on)
    entities. ``pretrain`` and ``finetune`` take their ``seed`` from ``seed`` unless they set
    their own. ``workers`` > 1 runs cells in parallel single-threaded processes.
    """

    ADDED_DEFAULTS = {"repeats": 1}  # added later: one-run configs and their stage hashes stay as they were saved

    key_types: list[KeyType] = Field(default_factory=lambda: ["name", "random"])
    """Entity key types compared: name, random, uuid."""
    sizes: list[int] = Field(default_factory=lambda: [100, 200, 300])
    """World sizes (entities per world)."""
    relations: int | list[str | SyntheticRelation] = Field(default_factory=lambda: list(DEFAULT_RELATIONS))
    """Relations: a count (the first N of the catalogue) or catalogue ids / relation specs."""
    finetune_known_share: float = Field(0.35, gt=0.0, lt=1.0)
    """Share of entities that are known and fine-tuned on."""
    held_out_share: float = Field(0.3, gt=0.0, lt=1.0)
    """Share of entities that are known and held out (forgetting is measured on them)."""
    new_share: float = Field(0.35, gt=0.0, lt=1.0)
    """Share of entities that are new (never in the pretraining corpus)."""
    seed: int = 0
    """Seed of every cell (worlds, pretraining, fine-tuning) unless they set their own."""
    repeats: int = Field(1, ge=1)
    """Runs of every cell, the r-th with every seed plus r - 1: a cell's measures are the means over its runs."""
    format_epochs: int = Field(1, ge=1)
    """Epochs of the format stage whose model is the reference."""
    drift_layer: int = DEFAULT_LAYER
    """hidden_states index of the drift: 0 = embeddings, -1 = last layer."""
    workers: int = Field(2, ge=1)
    """Cells run at a time, each a single-threaded process."""
    pretrain: PretrainConfig = Field(default_factory=_default_pretrain)
    """Pretraining of each cell's base model."""
    finetune: TrainConfig = Field(default_factory=_default_finetune)
    """Fine-tuning of each cell (plain SFT)."""

    @field_validator("key_types")
    @classmethod
    def _distinct_key_types(cls, value: list[str]) -> list[str]:
        return distinct_choices(value, "names no key type; give at least one, e.g. [name, random]", "a key type")

    @field_validator("sizes")
    @classmethod
    def _distinct_sizes(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("give at least one world size (number of entities), e.g. [100, 200, 300]")
        if len(set(value)) != len(value) or any(n < 1 for n in value):
            raise ValueError(f"sizes must be distinct positive entity counts, got {value}")
        return sorted(value)

    @model_validator(mode="after")
    def _check(self) -> "KeyOverlapConfig":
        shares = self.finetune_known_share + self.held_out_share + self.new_share
        if abs(shares - 1.0) > 1e-6:
            raise ValueError(f"finetune_known_share + held_out_share + new_share must sum to 1, got {shares:g}")
        if self.finetune.method != "sft":
            raise ValueError("finetune.method must be sft: the experiment measures forgetting under plain SFT")
        if self.finetune.early_stopping_patience is not None or self.finetune.save_best:
            raise ValueError("finetune.early_stopping_patience and finetune.save_best need dev data, which the experiment does not use; unset them")
        for key_type in self.key_types:
            for n in self.sizes:
                world = self.world_config(key_type, n)
                people = [r.id for r in world.resolved_relations() if r.object_kind == "person"]
                if people:
                    raise ValueError(f"relations {people} have entities as objects, which would put new entities' keys into the corpus; leave them out")
                counts = _split_counts(world)
                if min(counts.values()) == 0:
                    raise ValueError(f"sizes: {n} entities leave the {min(counts, key=counts.get)} group empty ({counts}); use at least {_min_size(self)} entities")
        return self

    def world_config(self, key_type: str, entities: int, run: int = 0) -> SyntheticWorldConfig:
        """The world of one cell's run ``run`` (0-based): every cell shares its run's seed, so key types are paired."""
        return SyntheticWorldConfig(name=f"keys-{key_type}-{entities}", seed=self.seed + run, num_entities=entities, relations=self.relations,
                                    key_type=key_type, split_by="entity", train_share=self.finetune_known_share,
                                    dev_share=self.held_out_share, test_share=self.new_share)

    def pretrain_config(self, run: int = 0) -> PretrainConfig:
        """Pretraining of run ``run``: its seeds are ``seed`` (or the section's own) plus ``run``."""
        seed = self.pretrain.seed if "seed" in self.pretrain.model_fields_set else self.seed
        corpus_seed = self.pretrain.corpus.seed if "seed" in self.pretrain.corpus.model_fields_set else self.seed
        return self.pretrain.model_copy(update={"seed": seed + run, "corpus": self.pretrain.corpus.model_copy(update={"seed": corpus_seed + run})})

    def finetune_config(self, run: int = 0) -> TrainConfig:
        seed = self.finetune.seed if "seed" in self.finetune.model_fields_set else self.seed
        return self.finetune.model_copy(update={"seed": seed + run})

    def comparable(self) -> dict[str, Any]:
        """The settings that decide results (``workers`` left out; ``repeats`` only when above 1, as saved before it existed)."""
        return self.model_dump(mode="json", exclude=set(RUN_KEYS))


def _split_counts(world: SyntheticWorldConfig) -> dict[str, int]:
    """Entities per group under the world's shares (the generator's cumulative rounding)."""
    n = world.num_entities
    train = round(n * world.train_share)
    dev = round(n * (world.train_share + world.dev_share)) - train
    return {"finetune_known": train, "held_out": dev, "new": n - train - dev}


def _min_size(config: KeyOverlapConfig) -> int:
    return math.ceil(1 / min(config.finetune_known_share, config.held_out_share, config.new_share)) + 1


def cell_name(key_type: str, entities: int, run: int = 0) -> str:
    """The folder of a cell's run (0-based): ``name-100``, then ``name-100-run2``, ``name-100-run3``, ..."""
    return f"{key_type}-{entities}" + (f"-run{run + 1}" if run else "")


class CellSettings(BaseModel):
    """Everything that decides one cell's result: its identity on disk (``cell.json``, the settings hash)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_type: KeyType
    entities: int
    world: SyntheticWorldConfig
    pretrain: PretrainConfig
    finetune: TrainConfig
    format_epochs: int
    drift_layer: int

    @classmethod
    def of(cls, config: KeyOverlapConfig, key_type: str, entities: int, run: int = 0) -> CellSettings:
        """Run ``run`` of the cell (``key_type``, ``entities``) of ``config``, read back from its JSON record as a resumed cell reads it."""
        record = {"key_type": key_type, "entities": entities, "world": config.world_config(key_type, entities, run).model_dump(mode="json"),
                  "pretrain": config.pretrain_config(run).model_dump(mode="json"), "finetune": config.finetune_config(run).model_dump(mode="json"),
                  "format_epochs": config.format_epochs, "drift_layer": config.drift_layer}
        return cls.model_validate(record)

    @property
    def name(self) -> str:
        return cell_name(self.key_type, self.entities)

    def record(self) -> dict[str, Any]:
        """The JSON record (``cell.json``)."""
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class CellJob:
    """One cell to run into ``cell_dir`` (in this process or a worker process)."""

    settings: CellSettings
    cell_dir: Path

    def run(self, log: Log) -> dict[str, Any]:
        return run_cell(self.settings, self.cell_dir, log=lambda line: log(f"[{self.cell_dir.name}] {line}"))


def run_key_overlap(config: KeyOverlapConfig, out_dir: str | Path, *, log: Log = print) -> dict[str, Any]:
    """Run every (key type, size) cell's runs not finished yet under ``out_dir``; return and save the summary.

    The summary (``out_dir/summary.json``) holds the config, one row per cell (see
    :func:`run_cell`; with ``repeats`` > 1 the means over its runs, :func:`cell_means`, and
    every run's row under ``runs``) and the finding :func:`namelike_keys_forget_more`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    cells = [(key_type, n, run) for run in range(config.repeats) for n in config.sizes for key_type in config.key_types]
    jobs = [CellJob(CellSettings.of(config, k, n, run), out_dir / cell_name(k, n, run)) for k, n, run in cells]
    start = time.monotonic()
    if config.workers == 1 or len(jobs) == 1:
        runs = [job.run(log) for job in jobs]
    else:
        log(f"{len(jobs)} cell runs, {config.workers} at a time in parallel single-threaded processes (largest worlds first)")
        order = sorted(range(len(jobs)), key=lambda i: (-cells[i][1], cells[i][2]))
        with process_pool(config.workers) as pool:
            done = dict(zip(order, pool.map(_run_job_in_process, [jobs[i] for i in order])))
        runs = [done[i] for i in range(len(jobs))]
    for row, (_, _, run) in zip(runs, cells):
        row["seed"] = config.seed + run
    rows = cell_means(runs) if config.repeats > 1 else runs
    confound = memorisation_confound(runs)
    summary = {"config": config.comparable(), "rows": rows, **({"runs": runs} if config.repeats > 1 else {}),
               "finding": namelike_keys_forget_more(rows), "memorisation": confound, "seconds": round(time.monotonic() - start, 1)}
    from knowtune.io import atomic_write_json

    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    for pair in confound["pairs"]:
        log(f"{pair['entities']} entities, seed {pair['seed']}, name vs {pair['other']}: reference held-out accuracy "
            f"{_pct(pair['name_accuracy'])} vs {_pct(pair['other_accuracy'])}, forgetting gap {100 * pair['forgetting_gap']:+.1f} points")
    if confound["correlation"] is not None:
        log(f"forgetting gap against reference-accuracy gap (name - other) over {len(confound['pairs'])} paired runs: "
            f"Pearson r {confound['correlation']:+.2f}")
    log(summary["finding"]["detail"])
    return summary


def _run_job_in_process(job: CellJob) -> dict[str, Any]:
    single_thread()
    return job.run(stderr_log())


def _check_cell_dir(cell_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The saved result when ``cell_dir`` holds this cell finished; refuse a cell with other settings."""
    saved_path = cell_dir / CELL_FILE
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
        if saved != settings:
            differing = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            raise KnowtuneError(f"{cell_dir} holds a cell run with other settings ({', '.join(differing)} differ)",
                                fix="pass a new output directory, or delete that cell directory to rerun it")
    result = cell_dir / RESULT_FILE
    return json.loads(result.read_text(encoding="utf-8")) if result.is_file() else None


def run_cell(cell: CellSettings, cell_dir: Path, *, log: Log = print) -> dict[str, Any]:
    """One (key type, size) cell: world, pretraining, format stage, fine-tuning, measures (module docstring).

    Each stage reuses its finished output in ``cell_dir``; ``result.json`` is written last and
    holds the summary row, the settings hash and provenance.
    """
    from knowtune.data.splits import Splits
    from knowtune.io import atomic_write_json
    from knowtune.pretrain import pretrain
    from knowtune.provenance import model_fingerprint, provenance
    from knowtune.train.sft import train_model
    from knowtune.world.spec import World
    from knowtune.world.synthetic import generate_synthetic_world

    cell_dir = Path(cell_dir)
    settings = cell.record()
    done = _check_cell_dir(cell_dir, settings)
    if done is not None:
        log(f"finished earlier, skipped ({cell_dir / RESULT_FILE})")
        return done["row"]
    atomic_write_json(cell_dir / CELL_FILE, settings)
    timing: dict[str, float] = {}
    clock = time.monotonic()
    world = generate_synthetic_world(cell.world)
    known_train, held_out, new = world.split("train"), world.split("dev"), world.split("test")
    base_dir = cell_dir / "base"
    if not (base_dir / "provenance.json").is_file():
        corpus_world = World(name=world.name, relations=world.relations, examples=tuple(ex for ex in world.examples if ex.split != "test"))
        pretrain(corpus_world, cell.pretrain, base_dir, log=log)
    timing["pretrain_s"], clock = time.monotonic() - clock, time.monotonic()
    tune = cell.finetune
    quiet = lambda line: None  # noqa: E731 - train_model's per-epoch lines would drown the cell's log
    reference = train_model(tune.model_copy(update={"epochs": cell.format_epochs}), base_dir, Splits(train=known_train),
                            out_dir=cell_dir / "format", log=quiet).model_dir
    timing["format_s"], clock = time.monotonic() - clock, time.monotonic()
    categories = {**{ex.id: "HighlyKnown" for ex in known_train}, **{ex.id: "Unknown" for ex in new}}
    tuned = train_model(tune, reference, Splits(train=[*known_train, *new]), categories, cell_dir / "finetune", log=quiet)
    timing["finetune_s"], clock = time.monotonic() - clock, time.monotonic()
    row = {"key_type": cell.key_type, "entities": cell.entities, "facts_finetune_known": len(known_train),
           "facts_held_out": len(held_out), "facts_new": len(new)}
    row.update(_measure(world, held_out, {"base": base_dir, "reference": reference, "finetuned": tuned.model_dir}, tune, cell.drift_layer))
    last = tuned.at_epoch(tuned.epochs_run)
    row["new_fact_learning"] = last.get("train/exact_match/Unknown")
    row["known_fit_after"] = last.get("train/exact_match/HighlyKnown")
    timing["measure_s"] = time.monotonic() - clock
    row["seconds"] = round(sum(timing.values()), 1)
    log(_describe(row) + f" ({row['seconds']:.0f} s)")
    record = {"row": row, "timing": {k: round(v, 1) for k, v in timing.items()}, "settings_hash": config_hash(settings),
              "provenance": provenance(settings, seed=cell.world.seed, model_fingerprint=model_fingerprint(tuned.model_dir),
                                       base_model_fingerprint=model_fingerprint(base_dir), reference_fingerprint=model_fingerprint(reference))}
    atomic_write_json(cell_dir / RESULT_FILE, record)
    return row


def _measure(world, held_out, model_dirs: Mapping[str, Path], tune: TrainConfig, layer: int) -> dict[str, Any]:
    """Held-out accuracy of each model, forgetting (reference -> fine-tuned), drift, key overlap."""
    from knowtune.drift import cosine_drift, entity_states
    from knowtune.evaluate import evaluate_examples
    from knowtune.models import load
    from knowtune.train.sft import training_task
    from knowtune.world.synthetic import key_overlap

    task = training_task(tune)
    correct, states, tokenizer = {}, {}, None
    for name, directory in model_dirs.items():
        model, tokenizer = load(directory, dtype="float32")
        result = evaluate_examples(model, tokenizer, held_out, task=task, batch_size=tune.eval_batch_size)
        correct[name] = [p.correct for p in result.predictions]
        states[name] = entity_states(model, tokenizer, held_out, layer=layer, template=task.finetune.template, batch_size=tune.eval_batch_size)
    known = [i for i, ok in enumerate(correct["reference"]) if ok]
    lost = sum(not correct["finetuned"][i] for i in known)
    forgetting = lost / len(known) if known else None
    accuracy = {name: sum(flags) / len(flags) for name, flags in correct.items()}
    return {
        "key_overlap": key_overlap(world), "key_overlap_tokens": key_overlap(world, lambda key: tokenizer.tokenize(" " + key)),
        "held_out_accuracy_base": accuracy["base"], "held_out_accuracy_before": accuracy["reference"],
        "held_out_accuracy_after": accuracy["finetuned"], "forgetting": forgetting,
        "forgetting_se": math.sqrt(forgetting * (1 - forgetting) / len(known)) if known else None,
        "drift": cosine_drift(states["reference"], states["finetuned"]), "format_drift": cosine_drift(states["base"], states["reference"]),
        "total_drift": cosine_drift(states["base"], states["finetuned"]),
    }


#: Row measures averaged over a cell's runs (the rest are the first run's, e.g. the fact counts).
MEAN_MEASURES = ("held_out_accuracy_base", "held_out_accuracy_before", "held_out_accuracy_after", "forgetting", "new_fact_learning",
                 "known_fit_after", "drift", "format_drift", "total_drift", "key_overlap", "key_overlap_tokens", "seconds")


def cell_means(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (key type, size): the mean of each measure over the cell's runs.

    ``forgetting_se`` = sample standard deviation of the runs' forgetting / sqrt(runs): the
    spread between seeds (world, corpus, pretraining, fine-tuning), which a single run's
    binomial error leaves out. ``runs`` counts them and ``forgetting_runs`` lists each run's.
    A measure undefined in some run (forgetting when a reference knew no held-out fact) is
    averaged over the runs that have it.
    """
    cells: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for row in runs:
        cells.setdefault((row["key_type"], row["entities"]), []).append(row)
    means = []
    for group in cells.values():
        row = dict(group[0])
        row.pop("seed", None)
        for measure in MEAN_MEASURES:
            values = [r[measure] for r in group if r.get(measure) is not None]
            row[measure] = sum(values) / len(values) if values else None
        defined = [r for r in group if r.get("forgetting") is not None]
        forgetting = [r["forgetting"] for r in defined]
        row["forgetting_se"] = (math.sqrt(sum((f - row["forgetting"]) ** 2 for f in forgetting) / (len(forgetting) - 1) / len(forgetting))
                                if len(forgetting) > 1 else defined[0].get("forgetting_se") if defined else None)
        row["runs"] = len(group)
        row["forgetting_runs"] = [r.get("forgetting") for r in group]
        means.append(row)
    return means


def memorisation_confound(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Does the name-vs-other forgetting gap follow how well each reference memorised its facts?

    One pair per (size, seed, other key type) run with a defined forgetting on both sides:
    ``forgetting_gap`` = forgetting(name) - forgetting(other), ``accuracy_gap`` = the same for the
    reference's held-out accuracy. ``correlation`` = Pearson r of the two gaps over the pairs
    (None under 3 pairs or without spread). docs/mechanism.md, "Across seeds and library versions".
    """
    import statistics

    cells: dict[tuple[int, int | None], dict[str, Mapping[str, Any]]] = {}
    for row in runs:
        cells.setdefault((row["entities"], row.get("seed")), {})[row["key_type"]] = row
    pairs = []
    for (entities, seed), cell in sorted(cells.items(), key=lambda item: (item[0][0], item[0][1] or 0)):
        name = cell.get(NAME_KEY)
        for other, row in sorted(cell.items()):
            if name is None or other == NAME_KEY or name.get("forgetting") is None or row.get("forgetting") is None:
                continue
            pairs.append({"entities": entities, "seed": seed, "other": other, "name_accuracy": name["held_out_accuracy_before"],
                          "other_accuracy": row["held_out_accuracy_before"], "forgetting_gap": name["forgetting"] - row["forgetting"],
                          "accuracy_gap": name["held_out_accuracy_before"] - row["held_out_accuracy_before"]})
    correlation = None
    if len(pairs) >= 3:
        try:
            correlation = statistics.correlation([p["accuracy_gap"] for p in pairs], [p["forgetting_gap"] for p in pairs])
        except statistics.StatisticsError:  # one of the gaps is constant
            correlation = None
    return {"pairs": pairs, "correlation": correlation}


def _describe(row: Mapping[str, Any]) -> str:
    return (f"held-out known accuracy {_pct(row['held_out_accuracy_before'])} -> {_pct(row['held_out_accuracy_after'])}, "
            f"forgetting {_pct(row['forgetting'])}, new facts learned {_pct(row['new_fact_learning'])}, "
            f"drift {_pct(row['drift'])} (format stage {_pct(row['format_drift'])}), key overlap {row['key_overlap']:.2f}")


def _paired_sizes(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[int, dict[str, Mapping[str, Any]]], list[str]]:
    by_size: dict[int, dict[str, Mapping[str, Any]]] = {}
    for row in rows:
        by_size.setdefault(row["entities"], {})[row["key_type"]] = row
    others = sorted({row["key_type"] for row in rows} - {NAME_KEY})
    return by_size, others


def namelike_keys_forget_more(summary: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Name-like keys cause more forgetting than random-string keys (Kaplan, Gekhman et al. 2026).

    Test: at every world size that has a ``name`` row, its forgetting is strictly greater
    than that of every other key type at that size (``random``, ``uuid``). ``value`` = the
    mean, over those (size, other key type) pairs, of forgetting(name) - forgetting(other),
    in points. ``holds`` is None when ``name`` or every other key type is missing, or no
    size has both. ``summary`` is a summary dict (with ``rows``) or the rows themselves; with
    ``repeats`` > 1 its rows are the cells' means over their runs (:func:`cell_means`).
    """
    from knowtune.study.findings import finding

    name = "namelike_keys_forget_more"
    rows = summary["rows"] if isinstance(summary, Mapping) else summary
    by_size, others = _paired_sizes(rows)
    if not any(row["key_type"] == NAME_KEY for row in rows) or not others:
        present = sorted({row["key_type"] for row in rows}) or ["none"]
        return finding(name, None, None, f"not tested: needs name keys and another key type (random or uuid); present: {', '.join(present)}")
    gaps, parts, holds = [], [], True
    for size in sorted(by_size):
        cell = by_size[size]
        if NAME_KEY not in cell or not set(others) & set(cell):
            continue
        text = [_forgetting_text(NAME_KEY, cell[NAME_KEY])]
        for other in others:
            if other in cell:
                text.append(_forgetting_text(other, cell[other]))
                if cell[NAME_KEY]["forgetting"] is not None and cell[other]["forgetting"] is not None:
                    gap = cell[NAME_KEY]["forgetting"] - cell[other]["forgetting"]
                    gaps.append(gap)
                    holds = holds and gap > 0
        parts.append(f"{size} entities: forgetting " + " vs ".join(text))
    if not gaps:
        return finding(name, None, None, "not tested: no world size has both name keys and another key type with a defined forgetting; "
                       + ("; ".join(parts) or "no paired sizes"))
    value = 100 * sum(gaps) / len(gaps)
    verdict = "forget more" if holds else "do not forget more"
    detail = (f"name-like keys {verdict} than {'/'.join(others)} keys at every size (mean gap {value:+.1f} points): "
              + "; ".join(parts))
    if all((row.get("runs") or 1) == 1 for row in rows):
        detail += "; one run (seed) per cell: repeats > 1 gives each cell's spread between seeds (docs/mechanism.md)"
    return finding(name, holds, value, detail)


def _forgetting_text(key_type: str, row: Mapping[str, Any]) -> str:
    """``name 37.0%``, plus ``(+-3.6, reference held-out accuracy 75.4%)`` when the row has them, and
    ``mean of 3 runs: 30.1/37.0/44.2`` for a cell with several runs (:func:`cell_means`)."""
    text = f"{key_type} {_pct(row['forgetting'])}"
    if row.get("forgetting_se") is not None and row.get("held_out_accuracy_before") is not None:
        runs = row.get("runs") or 1
        each = "/".join("n/a" if f is None else f"{100 * f:.1f}" for f in row.get("forgetting_runs") or [])
        spread = f", mean of {runs} runs: {each}" if runs > 1 else ""
        text += f" (+-{100 * row['forgetting_se']:.1f}{spread}, reference held-out accuracy {_pct(row['held_out_accuracy_before'])})"
    return text


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
