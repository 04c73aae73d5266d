"""``knowtune study``: annotate, curate, train every variant (evaluating every epoch), analyse.

Output layout (``out``)::

    config.yaml            the resolved StudyConfig
    study.json             stage states (key, status, seconds), the trained runs, provenance
    audit/                 ``knowtune annotate`` output (SliCK categories of every audited example)
    variants/              ``knowtune curate`` output (variants.json and one folder per variant)
    runs/<variant>/        ``knowtune train`` output (metrics.jsonl: train fit, dev, test, OOD per epoch)
    runs/methods/<method>/ the ``compare_methods:`` runs (a method that equals a trained variant reuses its run)
    keys/                  the ``key_overlap:`` experiment (one folder per cell, summary.json)
    analysis.json          ES/CONV, linear model, Table 2, IDK table, findings (+ provenance)
    runs/<variant>/shift*.json  with ``reaudit: true``: the knowledge shift at CONV and ES (:func:`Study.shift`)

Each stage stores a key (a hash of its settings and inputs) in ``study.json`` and is skipped
when the key is unchanged and its outputs exist; an interrupted stage resumes (annotate and
train resume by themselves). Evaluation happens inside training: every epoch answers the
training, dev, test and OOD questions (docs/train.md), and the analysis reads those records.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from knowtune.config import save_config
from knowtune.data.schema import QAExample
from knowtune.data.splits import Splits
from knowtune.errors import KnowtuneError
from knowtune.io import atomic_write_json
from knowtune.provenance import config_hash, provenance
from knowtune.study.analysis import Run, analyse
from knowtune.study.config import StudyConfig
from knowtune.study.state import MethodRecord, RunRecord, StageRecord, StudyState

STATE_FILE = "study.json"
SAMPLE_FILE = "examples.jsonl"
ANALYSIS_FILE = "analysis.json"
Log = Callable[[str], None]


def data_fingerprint(spec: str | Path) -> str:
    """A content hash of a dataset file or directory (every file under it), or of the name when it is not a path."""
    from knowtune.world.embedded import resolve_data_path

    path = resolve_data_path(spec)
    digest = hashlib.sha256()
    if not path.exists():
        digest.update(str(spec).encode())
        return digest.hexdigest()[:16]
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def sample_examples(examples: list[QAExample], per_split: dict[str, int | None], seed: int) -> list[QAExample]:
    """Per (split, relation), ``per_split[split]`` examples drawn with ``Random(f"{seed}:{split}:{relation}")``
    from those sorted by id (all when None or when fewer); returned sorted by id."""
    import random

    groups: dict[tuple[str, str], list[QAExample]] = {}
    for example in sorted(examples, key=lambda e: e.id):
        groups.setdefault((example.split, example.relation), []).append(example)
    chosen = []
    for (split, relation), group in sorted(groups.items()):
        n = per_split.get(split)
        chosen += group if n is None or n >= len(group) else random.Random(f"{seed}:{split}:{relation}").sample(group, n)
    return sorted(chosen, key=lambda e: e.id)


class Study:
    """One study directory: its config, stage states and the steps that fill it."""

    def __init__(self, config: StudyConfig, log: Log = print):
        if not config.out:
            raise KnowtuneError("no output directory given", fix="pass --out DIR or set out: in the study config")
        self.config = config.resolved()
        self.out = Path(self.config.out)
        self.log = log
        self.state = StudyState()

    # -- set-up -----------------------------------------------------------------------------
    def open(self) -> None:
        """Check that ``out`` holds no study with other settings, then record this config."""
        from knowtune.models import fingerprint_of

        saved = self.out / "config.yaml"
        if saved.is_file():
            from knowtune.config import load_config

            previous = load_config(StudyConfig, saved).comparable()
            current = self.config.comparable()
            differing = sorted(_differences(previous, current))
            finished = [name for name, stage in StudyState.load(self.out / STATE_FILE).stages.items() if stage.status == "done"]
            if differing and finished:
                raise KnowtuneError(f"{self.out} holds a study with other settings ({', '.join(differing)} differ)",
                                    fix="rerun with the settings of its config.yaml to resume, or pass a new --out")
            if differing:  # e.g. a model that failed to load, now corrected: nothing was finished under the old settings
                self.log(f"{self.out}: no stage finished under its earlier settings ({', '.join(differing)} differ); using these")
        self.state = StudyState.load(self.out / STATE_FILE)
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.config, saved)
        self.model_fingerprint = fingerprint_of(self.config.model)
        self.data_path = self._prepare_data()
        self.data_fingerprint = data_fingerprint(self.data_path)

    def _prepare_data(self) -> Path:
        """The dataset every stage reads: the configured one, or its seeded sample in ``OUT/data/examples.jsonl``."""
        from knowtune.data import load_examples, save_examples
        from knowtune.world.embedded import resolve_data_path

        source = resolve_data_path(self.config.data)
        if self.config.sample is None:
            return source
        examples = sample_examples(load_examples(source), self.config.sample.model_dump(), self.config.study_seed)
        target = self.out / "data" / SAMPLE_FILE
        if not target.is_file() or load_examples(target) != examples:
            save_examples(examples, target)
        return target

    def _save_state(self) -> None:
        self.state.provenance = provenance(self.config.model_dump(mode="json"), seed=self.config.study_seed,
                                           model_fingerprint=self.model_fingerprint, data_fingerprint=self.data_fingerprint)
        atomic_write_json(self.out / STATE_FILE, self.state.to_json())

    def _stage(self, name: str, key: str, done: bool, work: Callable[[], dict[str, Any] | None]) -> str:
        """Run ``work`` unless the stage's stored key equals ``key`` and ``done``; returns ``ran`` or ``skipped``."""
        if self.state.stage_done(name, key) and done:
            self.log(f"[{name}] done earlier, skipped")
            return "skipped"
        self.log(f"[{name}] running")
        started = time.perf_counter()
        self.state.stages[name] = StageRecord(key=key, status="running")
        self._save_state()
        info = work() or {}
        self.state.stages[name] = StageRecord(key=key, status="done", seconds=round(time.perf_counter() - started, 1), **info)
        self._save_state()
        self.log(f"[{name}] done in {self.state.stages[name].seconds:.0f} s")
        return "ran"

    # -- stages ----------------------------------------------------------------------------
    def annotate(self) -> str:
        from knowtune.data import load_examples
        from knowtune.study import workers

        relations = sorted({e.relation for e in load_examples(self.data_path) if e.split == "train"})
        cfg = self.config.annotate_config(self.out, self.data_path, relations)
        settings = cfg.model_dump(mode="json", exclude={"model", "data", "out", "device", "batch_size", "chunk_size"})
        key = config_hash({"annotate": settings, "model": self.model_fingerprint, "data": self.data_fingerprint})
        summary = self.out / "audit" / "summary.json"
        done = summary.is_file() and json.loads(summary.read_text(encoding="utf-8")).get("complete") is True

        def work() -> dict[str, Any]:
            result = workers.annotate(cfg, self.out / "audit", self.config.workers, self.log)
            if not result.get("complete"):
                raise KnowtuneError(f"{self.out / 'audit'}: the audit is incomplete", fix="rerun the same study command: it resumes")
            return {"counts": result["overall"]["counts"]}

        return self._stage("annotate", key, done, work)

    def curate(self) -> str:
        from knowtune.curate import run_curate

        cfg = self.config.curate_config(self.out, self.data_path)
        key = config_hash({"curate": cfg.model_dump(mode="json", exclude={"annotations", "data", "out"}),
                           "annotate": self.state.stages["annotate"].key})
        done = (self.out / "variants" / "variants.json").is_file()

        def work() -> dict[str, Any]:
            index = run_curate(cfg)
            return {"variants": {v["name"]: v["size"] for v in index["variants"]}}

        return self._stage("curate", key, done, work)

    def train(self) -> str:
        """Train every selected variant (a variant whose data equals an earlier one's reuses its run)."""
        index = self.variant_index()
        names = self.selected_variants(index)
        splits = self.eval_splits()
        categories = self.categories()
        key = config_hash({"train": self.config.comparable()["train"], "curate": self.state.stages["curate"].key,
                           "variants": names, "eval": _ids(splits)})
        done = all(self.state.run_done(n, self.out) for n in names)

        def work() -> dict[str, Any]:
            from knowtune.data import load_examples
            from knowtune.study import workers

            owner: dict[str, str] = {}  # data key -> the variant whose run holds it
            jobs: list[workers.TrainJob] = []
            runs_of: dict[str, list[str]] = {}
            for name in names:
                examples = load_examples(self.out / "variants" / index[name]["train"])
                data_key = config_hash([(e.id, list(e.answers)) for e in examples])
                if data_key in owner:
                    self.log(f"[train] {name}: same examples as {owner[data_key]}, reusing its run")
                else:
                    owner[data_key] = name
                    run_dir = self.out / "runs" / name
                    if (run_dir / "provenance.json").is_file():
                        self.log(f"[train] {name}: finished earlier, checking its settings")
                    jobs.append(workers.TrainJob(name, self.config.train, self.config.model, splits.with_train(examples), categories, run_dir))
                runs_of.setdefault(owner[data_key], []).append(name)

            def finished(owner_name: str) -> None:
                for name in runs_of[owner_name]:
                    self.state.runs[name] = RunRecord(dir=f"runs/{owner_name}", kind=index[name]["kind"], size=index[name]["size"],
                                                      params=self._params(name), done=True)
                self._save_state()
                self.log(f"[train] {owner_name} finished")

            workers.train(jobs, self.config.workers, self.log, finished)
            return {"variants": names}

        self.state.trained = names
        return self._stage("train", key, done, work)

    def compare(self) -> str:
        """Train every method of ``compare_methods:`` (Kaplan, Gekhman et al. 2026) on its variant."""
        compare = self.config.compare_methods
        if compare is None:
            return "skipped"
        index = self.variant_index()
        variants = compare.variants()
        missing = sorted({v for v in variants.values() if v not in index})
        if missing:
            raise KnowtuneError(f"compare_methods needs the variants {', '.join(missing)}, which curation did not build",
                                fix="check curate.unknown_ratios, curate.variants and curate.idk_base_ratio")
        plans = compare.plans(self.config.train)
        splits, categories = self.eval_splits(), self.categories()
        run_keys = {"device", "eval_batch_size", "report_to"}
        key = config_hash({"compare": {m: [p.variant, p.config.model_dump(mode="json", exclude=run_keys)] for m, p in plans.items()},
                           "curate": self.state.stages["curate"].key, "eval": _ids(splits)})
        if self.state.methods is None:
            self.state.methods = {}
        methods = self.state.methods
        done = all(self.state.method_done(m, self.out) for m in plans)

        def work() -> dict[str, Any]:
            from knowtune.data import load_examples
            from knowtune.study import workers

            jobs: list[workers.TrainJob] = []
            for method, plan in plans.items():
                variant, config = plan.variant, plan.config
                reused = self.state.runs.get(variant)
                if reused and reused.done and config == self.config.train:
                    self.log(f"[compare] {method}: the same settings and data as the trained variant {variant}, reusing its run")
                    methods[method] = MethodRecord(dir=reused.dir, variant=variant, done=True)
                    continue
                examples = load_examples(self.out / "variants" / index[variant]["train"])
                jobs.append(workers.TrainJob(method, config, self.config.model, splits.with_train(examples), categories,
                                             self.out / "runs" / "methods" / method))
                methods[method] = MethodRecord(dir=f"runs/methods/{method}", variant=variant)
            self._save_state()

            def finished(method: str) -> None:
                methods[method].done = True
                self._save_state()
                self.log(f"[compare] {method} finished")

            workers.train(jobs, self.config.workers, self.log, finished)
            return {"methods": list(plans)}

        return self._stage("compare", key, done, work)

    def shift(self) -> str:
        """``reaudit: true``: each trained run's models audited again (:func:`knowtune.study.shift.reaudit_runs`)."""
        from knowtune.study.shift import reaudit_runs, shift_done

        runs = {info.dir: name for name, info in self.state.runs.items() if name in (self.state.trained or [])}
        key = config_hash({"train": self.state.stages["train"].key, "annotate": self.state.stages["annotate"].key, "runs": sorted(runs)})
        done = shift_done(self.out, runs)
        return self._stage("shift", key, done, lambda: reaudit_runs(self.out, self.variant_index(), runs, self.config.study_seed, self.log))

    def baselines(self) -> str:
        """``compare_methods.baselines``: P(True) and answer-time verification on test questions
        (:func:`knowtune.study.methods.measure_baselines`, after the compare stage)."""
        from knowtune.data import load_examples
        from knowtune.study.methods import BASELINES_FILE, measure_baselines
        from knowtune.train.sft import training_task

        compare = self.config.compare_methods
        key = config_hash({"compare": self.state.stages["compare"].key, "annotate": self.state.stages["annotate"].key,
                           "questions": compare.baseline_questions})
        audit_task = self.config.annotate.task_spec()
        pool = [e for e in load_examples(self.data_path) if e.split == audit_task.fewshot.exemplars_from]
        work = lambda: {"questions": measure_baselines(  # noqa: E731
            self.out, self.config.model, self.eval_splits().test, pool, self.categories(), audit_task=audit_task,
            train_task=training_task(self.config.train), seed=self.config.study_seed, questions=compare.baseline_questions,
            sft_dir=self.state.methods["sft"].dir, idk_dir=self.state.methods["idk"].dir)["questions"]}
        return self._stage("baselines", key, (self.out / BASELINES_FILE).is_file(), work)

    def table2(self) -> str:
        """``table2:``: train the single-category sets and D_Natural (:func:`knowtune.study.table2.run_stage`)."""
        from knowtune.study import table2

        return table2.run_stage(self)

    def retrieval(self) -> str:
        """``retrieval_route:``: SFT against SFT on Known + retrieval and retrieval alone, after the compare stage
        (:func:`knowtune.study.retrieval_route.run_stage`)."""
        from knowtune.study import retrieval_route

        return retrieval_route.run_stage(self)

    def keys(self) -> str:
        """The key-overlap experiment of ``key_overlap:`` (Kaplan, Gekhman et al. 2026); it skips finished cells itself."""
        from knowtune.study.keys import SUMMARY_FILE, run_key_overlap

        config = self.config.key_overlap
        key = config_hash(config.comparable())
        done = (self.out / "keys" / SUMMARY_FILE).is_file()

        def work() -> dict[str, Any]:
            summary = run_key_overlap(config, self.out / "keys", log=lambda line: self.log(f"[keys] {line}"))
            return {"cells": len(summary["rows"])}

        return self._stage("keys", key, done, work)

    def key_overlap(self) -> dict[str, Any] | None:
        """The key-overlap summary (rows and finding), or None without a ``key_overlap:`` section."""
        from knowtune.study.keys import SUMMARY_FILE

        if self.config.key_overlap is None:
            return None
        return json.loads((self.out / "keys" / SUMMARY_FILE).read_text(encoding="utf-8"))

    def method_runs(self) -> list[Any]:
        """The compared methods' runs, as :func:`knowtune.study.methods.compare` takes them."""
        from knowtune.study.methods import MethodRun
        from knowtune.train.callbacks import read_metrics

        compare = self.config.compare_methods
        if compare is None:
            return []
        runs = []
        for method in compare.methods:
            info = self.state.methods["sft" if method == "sft_es" else method]
            runs.append(MethodRun(method, info.variant, read_metrics(self.out / info.dir / "metrics.jsonl"),
                                  read="es" if method == "sft_es" else "conv"))
        return runs

    def analyse(self) -> str:
        from knowtune.study import retrieval_route, table2
        from knowtune.study.findings import section_findings
        from knowtune.study.methods import compare, method_findings

        runs = self.runs()
        method_runs = self.method_runs()
        keys = self.key_overlap()
        parts = {n: p for n, p in (("table2", table2.analysis_part(self)), ("retrieval", retrieval_route.analysis_part(self))) if p is not None}
        key = config_hash({"variants": {run.name: run.metrics for run in runs}, "methods": {r.method: r.metrics for r in method_runs},
                           "keys": keys and keys["rows"], **({"parts": parts} if parts else {}),
                           **({"baselines": self.state.stages["baselines"].key} if "baselines" in self.state.stages else {})})
        done = (self.out / ANALYSIS_FILE).is_file()

        def work() -> dict[str, Any]:
            analysis = analyse(runs)
            if method_runs:
                analysis["methods"] = compare(method_runs, self.config.compare_methods.held_out)
                analysis["findings"] += method_findings(analysis["methods"])
            if self.config.compare_methods is not None and self.config.compare_methods.baselines:
                from knowtune.study.methods import BASELINES_FILE, baseline_findings

                baselines = json.loads((self.out / BASELINES_FILE).read_text(encoding="utf-8"))
                analysis["baselines"] = {k: baselines[k] for k in ("questions", "verification", "idk")}
                analysis["findings"] += baseline_findings(baselines)
            if keys is not None:
                from knowtune.study.keys import namelike_keys_forget_more

                analysis["key_overlap"] = {"rows": keys["rows"], "seconds": keys.get("seconds")}
                analysis["findings"].append(namelike_keys_forget_more(keys["rows"]))
            analysis.update(parts)
            analysis["findings"] += section_findings(parts)
            analysis["provenance"] = provenance(self.config.model_dump(mode="json"), seed=self.config.study_seed,
                                                model_fingerprint=self.model_fingerprint, data_fingerprint=self.data_fingerprint)
            atomic_write_json(self.out / ANALYSIS_FILE, analysis)
            return {"findings": {f["name"]: f["holds"] for f in analysis["findings"]}}

        return self._stage("analyse", key, done, work)

    # -- inputs ----------------------------------------------------------------------------
    def variant_index(self) -> dict[str, dict[str, Any]]:
        index = json.loads((self.out / "variants" / "variants.json").read_text(encoding="utf-8"))
        return {entry["name"]: entry for entry in index["variants"]}

    def selected_variants(self, index: dict[str, dict[str, Any]]) -> list[str]:
        """``train_variants`` in the given order, or every curated variant except D_Filtered."""
        wanted = self.config.train_variants or [n for n, e in index.items() if e["kind"] != "filtered"]
        missing = [n for n in wanted if n not in index]
        if missing:
            raise KnowtuneError(f"train_variants names {', '.join(missing)}, which curation did not build (built: {', '.join(index)})",
                                fix="pick names from that list, or add the kinds or ratios that make them to the curate: section")
        return wanted

    def _params(self, name: str) -> dict[str, Any]:
        manifest = json.loads((self.out / "variants" / name / "manifest.json").read_text(encoding="utf-8"))
        return manifest.get("params", {})

    def eval_splits(self) -> Splits:
        """Dev, in-distribution test and OOD test examples (:func:`knowtune.data.splits.load_splits`; its
        ``train`` are the dataset's, which each run replaces by its variant's)."""
        from knowtune.data.splits import load_splits

        return load_splits(self.data_path, dev=self.config.dev, test=self.config.test, ood=self.config.ood)

    def categories(self) -> dict[str, str]:
        from knowtune.evaluate import load_categories

        return load_categories(self.out / "audit")

    def runs(self) -> list[Run]:
        """The trained runs, as the analysis takes them."""
        from knowtune.train.callbacks import read_metrics

        runs = []
        for name in self.state.trained or []:
            info = self.state.runs[name]
            runs.append(Run(name=name, kind=info.kind, metrics=read_metrics(self.out / info.dir / "metrics.jsonl"),
                            ratio=info.params.get("ratio"), size=info.size, params=info.params))
        return runs


def _ids(splits: Splits) -> dict[str, list[str]]:
    """The ids of the held-out examples: part of the train and compare stages' keys."""
    return {name: [e.id for e in examples] for name, examples in splits.evaluation.items()}


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def run_study(config: StudyConfig, *, log: Log = print) -> dict[str, Any]:
    """Run (or resume) every stage; returns ``{"stages": {name: "ran" | "skipped"}, "analysis": ...}``."""
    from knowtune.study import launch

    study = launch.LaunchedStudy(config, log) if launch.launched() else Study(config, log)
    study.open()
    stages = {"annotate": study.annotate(), "curate": study.curate(), "train": study.train()}
    if config.compare_methods is not None:
        stages["compare"] = study.compare()
        if config.compare_methods.baselines:
            stages["baselines"] = study.baselines()
    if config.table2 is not None:
        stages["table2"] = study.table2()
    if config.retrieval_route is not None:
        stages["retrieval"] = study.retrieval()
    if config.key_overlap is not None:
        stages["keys"] = study.keys()
    if config.reaudit:
        stages["shift"] = study.shift()
    stages["analyse"] = study.analyse()
    analysis = json.loads((study.out / ANALYSIS_FILE).read_text(encoding="utf-8"))
    return {"out": str(study.out), "stages": stages, "analysis": analysis}
