"""Pre-flight checks: what each command can verify before any heavy work.

``annotate``, ``curate``, ``train``, ``evaluate`` and ``study`` call their ``preflight_*`` before
they take the output lock, load a model or write a file, so that a bad input fails in well
under a second with a :class:`~knowtune.errors.KnowtuneError` (exit 2) naming the file, key or
example and the fix, and leaves nothing behind. Checked: the output path is writable; the model
directory is complete (config, untruncated weights, a tokenizer that loads); values that are
valid for the library but meaningless on the command line (``--k 0``); every example fits the
model's context (:func:`check_lengths`); the audit that ``train``/``evaluate`` read was made
with the right model (:func:`check_audit_model`); a study's ``train_variants`` name variants
its curation builds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable

from knowtune.errors import ConfigError, KnowtuneError

ALLOW_AUDIT_FLAG = "--allow-other-model-audit"
#: Character length below which a text cannot exceed a token budget (a character is at most 4 UTF-8 bytes, each at most one token).
_BYTES_PER_CHAR = 4


# -- paths ------------------------------------------------------------------------------------
def check_out(out: str | Path | None, flag: str = "--out") -> None:
    """``out`` is a directory, or can be made one: not a file, and its nearest existing ancestor is a writable directory."""
    if out is None:
        return
    path = Path(out)
    if path.exists():
        if not path.is_dir():
            raise KnowtuneError(f"{flag} {path} exists and is not a directory", fix=f"pass another {flag}, or move that file away")
        if not os.access(path, os.W_OK | os.X_OK):
            raise KnowtuneError(f"{flag} {path}: the directory is not writable", fix=f"pass an {flag} you can write to, or fix its permissions")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise KnowtuneError(f"{flag} {path}: {parent} is a file, so no directory can be made there", fix=f"pass another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise KnowtuneError(f"{flag} {path}: cannot create it, {parent} is not writable", fix=f"pass an {flag} in a directory you can write to")


# -- models -----------------------------------------------------------------------------------
def check_model(spec: str | Path, flag: str = "--model"):
    """``(directory, tokenizer)`` of a complete model (:func:`knowtune.models.check_model`) whose tokenizer loads."""
    from knowtune.models import check_model as check_files, load_tokenizer

    try:
        directory = check_files(spec)
        return directory, load_tokenizer(directory, str(spec))
    except KnowtuneError as error:
        if flag == "--model":
            raise
        raise KnowtuneError(f"{flag} {spec}: {error}", fix=error.fix) from None


# -- values -----------------------------------------------------------------------------------
def check_annotate_values(config, prefix: str = "") -> None:
    """Values the audit accepts as a library but that make no SliCK audit (Gekhman et al. 2024, sec. 3);
    ``prefix``: the section of a study config (``annotate.``)."""
    flag = "--" + prefix.replace(".", "-")
    if config.k < 1:
        raise ConfigError(f"{prefix}k is 0: SliCK's prompts are k-shot (k exemplars of the relation, the paper uses 4); with none every "
                          "exemplar set is the same prompt", fix=f"pass {flag}k 1 or more (default 4)")
    if config.n_samples < 1:
        raise ConfigError(f"{prefix}n_samples is 0: WeaklyKnown needs sampled answers (P_correct(q, a; T > 0) > 0), so no example could be WeaklyKnown",
                          fix=f"pass {flag}n-samples 1 or more (default 16)")


def check_train_values(config, prefix: str = "") -> None:
    """A training run that cannot change the weights is a mistake, not an experiment."""
    if config.learning_rate == 0:
        raise ConfigError(f"{prefix}learning_rate is 0: training would leave every weight as it is",
                          fix=f"pass --{prefix.replace('.', '-')}learning-rate above 0 (default {type(config).model_fields['learning_rate'].default})")


def check_eval_values(config) -> None:
    """A few-shot evaluation needs at least one shot."""
    if config.prompt.kind == "fewshot" and config.task_spec().flat()["k"] < 1:
        raise ConfigError("prompt.shots is 0 with --format fewshot: a few-shot prompt needs at least one exemplar",
                          fix="pass --shots 1 or more, or --format finetuned for the plain question")


# -- context length ---------------------------------------------------------------------------
def check_lengths(examples: Iterable, tokenizer, model_dir: str | Path, *, reserve: int = 0, answers: bool = False,
                  data: str = "--data") -> None:
    """Every example's question (and, when ``answers``, its longest answer) plus ``reserve`` tokens
    (the answer to generate) fits the model's context; the first that does not is named.

    An example that cannot fit alone can never be audited, evaluated or trained on: refused
    before a model is loaded (transformers would otherwise try to allocate its attention).
    Texts short enough in characters are not tokenized (a character is at most 4 tokens).
    """
    from knowtune.models import context_length

    limit, key = context_length(model_dir)
    if limit is None:
        return
    budget = limit - reserve
    for example in examples:
        texts = [example.question, *([max(example.answers, key=len)] if answers and example.answers else [])]
        if sum(len(t) for t in texts) * _BYTES_PER_CHAR <= budget:
            continue
        tokens = sum(_count_tokens(tokenizer, text, budget) for text in texts)
        if tokens > budget:
            what = "question and answer are" if answers else "question is"
            raise KnowtuneError(
                f"{data}: example {example.id!r}: its {what} {sum(len(t) for t in texts):,} characters, {'over ' if tokens > budget + 1 else ''}"
                f"{tokens:,} tokens; the model takes {limit:,} tokens ({key} in {Path(model_dir) / 'config.json'})"
                + (f", {reserve} of them kept for the generated answer" if reserve else ""),
                fix=f"shorten or drop example {example.id!r}, or use a model with a longer context")


def check_fewshot_lengths(config, tokenizer, model_dir: str | Path, *, reserve: int) -> None:
    """The audit's longest few-shot prompt of each exemplar set (its exemplars, then the
    relation's longest question) plus ``reserve`` fits the model's context: an example that
    fits alone may not once ``k`` exemplars precede it."""
    from knowtune.models import context_length
    from knowtune.slick.annotate import plan_audit

    limit, key = context_length(model_dir)
    if limit is None:
        return
    plan = plan_audit(config, "float32")
    builder = plan.task.prompts(tokenizer)
    longest: dict[str, Any] = {}
    for _, example in plan.examples:
        if len(example.question) > len(getattr(longest.get(example.relation), "question", "")):
            longest[example.relation] = example
    for relation, example in sorted(longest.items()):
        for index, exemplar_set in enumerate(plan.sets[relation]):
            tokens = len(builder.encode([builder.fewshot(exemplar_set.for_example(example.id), example.question)])[0])
            if tokens + reserve > limit:
                raise KnowtuneError(
                    f"--data {config.data}: the few-shot prompt of example {example.id!r} (relation {relation!r}, exemplar set "
                    f"{index}) is {tokens:,} tokens; with {reserve} kept for the answer it exceeds the model's {limit:,} "
                    f"({key} in {Path(model_dir) / 'config.json'})",
                    fix="lower --k (exemplars per prompt), shorten the longest questions and answers, "
                        "or use a model with a longer context")


def _count_tokens(tokenizer, text: str, budget: int) -> int:
    """Tokens of ``text``, counting only a prefix long enough to exceed ``budget`` (a 5 MB text is not tokenized whole)."""
    prefix = text[: (budget + 1) * 64]
    count = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    if len(prefix) < len(text) and count <= budget:
        count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return count


# -- which model an audit belongs to ----------------------------------------------------------
def audit_fingerprint(path: str | Path) -> str | None:
    """The model fingerprint recorded by the audit at ``path`` (its directory or annotations.jsonl), if any."""
    path = Path(path)
    header = (path if path.is_dir() else path.parent) / "protocol.json"
    return _read_json(header).get("model_fingerprint") if header.is_file() else None


def curated_audit_fingerprint(data: str | Path) -> str | None:
    """The fingerprint of the audit a curated variant (``knowtune curate`` OUT/VARIANT/train.jsonl) was built from, if any."""
    manifest = (Path(data) if Path(data).is_dir() else Path(data).parent) / "manifest.json"
    if not manifest.is_file():
        return None
    source = _read_json(manifest).get("source")
    return source.get("model_fingerprint") if isinstance(source, dict) else None


def model_lineage(spec: str | Path) -> list[str]:
    """Fingerprints of the model ``spec`` and of the models it was fine-tuned from, newest first.

    A ``knowtune train`` run writes its model to OUT/model (and OUT/best) and records the base
    model and its fingerprint in OUT/provenance.json; the chain is followed while the base is
    itself a local train output.
    """
    from knowtune.models import fingerprint_of, model_dir_of

    chain = [fingerprint_of(spec)]
    directory = model_dir_of(spec)
    for _ in range(8):
        record = directory.parent / "provenance.json" if directory is not None else None
        if record is None or directory.name not in ("model", "best") or not record.is_file():
            break
        saved = _read_json(record)
        if not saved.get("model_fingerprint") or "base_model" not in saved:
            break
        chain.append(saved["model_fingerprint"])
        try:
            directory = model_dir_of(saved["base_model"])
        except KnowtuneError:
            break
    return list(dict.fromkeys(chain))


def check_audit_model(audit: str | None, expected: Sequence[str], *, model: str, what: str, allow: bool,
                      log: Callable[[str], None] | None = None) -> None:
    """The audit fingerprint ``audit`` is one of ``expected`` (the model's, or its base models'), unless ``allow``.

    SliCK categories describe what one model knows (Gekhman et al. 2024, sec. 3): another
    model's audit labels other facts Known. ``train`` expects the audit of the model it
    fine-tunes; ``evaluate`` that of the model or of the base model it was fine-tuned from
    (the normal case: a fine-tuned model is scored per category of its base's audit).
    Audits without a fingerprint (hand-made files) or made through a served backend
    (``served-...``, keyed by the servers' model) cannot be compared and pass with a note.
    """
    if audit is None or audit in expected:
        return
    if audit.startswith("served-"):
        if log is not None:
            log(f"note: the audit ({what}) was made through a served backend ({audit}); knowtune cannot check that it audited {model!r}")
        return
    if allow:
        if log is not None:
            log(f"note: the audit ({what}) was made with model {audit}, not {model!r} ({expected[0]}); used as {ALLOW_AUDIT_FLAG} asks")
        return
    bases = f" or the models it was fine-tuned from ({', '.join(expected[1:])})" if len(expected) > 1 else ""
    raise KnowtuneError(f"{what} is the audit of another model (fingerprint {audit}), not of --model {model} ({expected[0]}){bases}",
                        fix=f"audit this model with `knowtune annotate --model {model}` and pass that --out, "
                            f"or pass {ALLOW_AUDIT_FLAG} to use these categories anyway")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise KnowtuneError(f"{path}: cannot be read as JSON ({error})", fix="restore the file, or rerun the command that wrote it") from None
    return value if isinstance(value, dict) else {}


# -- per command ------------------------------------------------------------------------------
def preflight_annotate(config) -> None:
    """``knowtune annotate``: out, values, model (only its tokenizer when served) and the length of every example."""
    if not config.out:
        raise KnowtuneError("no output directory given", fix="pass --out DIR")
    check_out(config.out)
    resolved = config.resolved()
    if getattr(config, "method", "slick") == "slick":
        check_annotate_values(resolved)
    directory, tokenizer = _model_or_tokenizer(config)
    if config.data:
        check_lengths(_examples(config.data, config.data_fields), tokenizer, directory, reserve=resolved.max_new_tokens, data=f"--data {config.data}")
        if getattr(config, "method", "slick") == "slick":
            check_fewshot_lengths(config, tokenizer, directory, reserve=resolved.max_new_tokens)


def preflight_evaluate(config, *, allow_other_audit: bool = False, log: Callable[[str], None] | None = None) -> None:
    """``knowtune evaluate``: out, values, model (only its tokenizer when served), example lengths and the audit's model."""
    check_out(config.out)
    check_eval_values(config)
    directory, tokenizer = _model_or_tokenizer(config)
    if not config.data:
        return
    reserve = config.task_spec().flat()["max_new_tokens"]
    check_lengths(_examples(config.data, config.data_fields), tokenizer, directory, reserve=reserve, data=f"--data {config.data}")
    audit, what = _audit_of(config.annotations, config.data)
    if audit is not None:
        check_audit_model(audit, model_lineage(config.model), model=config.model, what=what, allow=allow_other_audit, log=log)


def preflight_train(config, *, model: str, out: str | Path, data: str, examples: Sequence, annotations: str | Path | None,
                    allow_other_audit: bool = False, log: Callable[[str], None] | None = None) -> None:
    """``knowtune train``: out, the base (and teacher) model, example lengths and the audit's model (that of the base model)."""
    from knowtune.models import fingerprint_of

    check_out(out)
    check_train_values(config)
    directory, tokenizer = check_model(model)
    teacher = config.selfdistill.teacher if config.method == "selfdistill" else None
    if teacher not in (None, "format_stage", "base"):
        check_model(teacher, flag="--selfdistill-teacher")
    check_lengths(examples, tokenizer, directory, answers=True, data=f"--data {data}")
    audit, what = _audit_of(annotations, data)
    if audit is not None:
        check_audit_model(audit, [fingerprint_of(model)], model=model, what=what, allow=allow_other_audit, log=log)


def preflight_curate(config) -> None:
    """``knowtune curate``: the output path (the audit directory is read, and checked, before anything is written)."""
    check_out(config.out)


def preflight_study(config) -> None:
    """``knowtune study``: out, model, values of the audit, variant names and the length of every example."""
    config = config.resolved()
    if not config.out:
        raise KnowtuneError("no output directory given", fix="pass --out DIR or set out: in the study config")
    check_out(config.out)
    check_annotate_values(config.annotate.resolved(), prefix="annotate.")
    check_train_values(config.train, prefix="train.")
    check_variant_names(config.train_variants, config.curate)
    directory, tokenizer = check_model(config.model)
    teacher = config.train.selfdistill.teacher if config.train.method == "selfdistill" else None
    if teacher not in (None, "format_stage", "base"):
        check_model(teacher, flag="--train-selfdistill-teacher")
    reserve = config.annotate.resolved().max_new_tokens
    for spec in (config.data, config.dev, config.test, config.ood):
        if spec:
            check_lengths(_examples(spec), tokenizer, directory, reserve=reserve, answers=True, data=spec)


def curated_variant_names(curate) -> list[str]:
    """The names of the variants ``knowtune curate`` builds with ``curate`` (a CurateConfig), in its order
    (as :func:`knowtune.curate.pipeline.build_variants` names them)."""
    from knowtune.slick.categories import CATEGORIES

    kinds, ratios = set(curate.variants), list(curate.unknown_ratios)
    names = [f"D_{x}" for x in ratios] if "ratio" in kinds else []
    names += [f"D_Known_{x}" for x in ratios if 0 < x < 100] if "known" in kinds else []
    names += [f"D_{c}" for c in CATEGORIES] if "single" in kinds else []
    names += ["D_Natural"] if "natural" in kinds else []
    names += [f"D_IDK_{curate.idk_base_ratio}"] if "idk" in kinds else []
    names += ["D_Filtered"] if "filtered" in kinds else []
    return names


def check_variant_names(wanted: Sequence[str] | None, curate) -> None:
    """Every name in a study's ``train_variants`` is a variant its curation builds (checked before the audit runs)."""
    built = curated_variant_names(curate)
    missing = [name for name in wanted or () if name not in built]
    if missing:
        raise ConfigError(f"train_variants names {', '.join(missing)}, which the curate: section does not build (built: {', '.join(built)})",
                          fix="pick names from that list, or add the kinds or ratios that make them to the curate: section (curate.variants, curate.unknown_ratios)")


def _model_or_tokenizer(config):
    """``(directory, tokenizer)`` of ``config.model``: a complete model, or only its tokenizer when servers
    generate (``--backend openai``: ``--model`` then names the tokenizer)."""
    from knowtune.models import load_tokenizer, resolve_model_dir

    config.check_served()
    if not config.served():
        return check_model(config.model)
    directory = resolve_model_dir(config.model)
    return directory, load_tokenizer(directory, str(config.model))


def _examples(spec: str, fields=None) -> list:
    from knowtune.data import load_examples
    from knowtune.world.embedded import resolve_data_path

    return load_examples(resolve_data_path(spec), fields=fields)


def _audit_of(annotations: str | Path | None, data: str | None) -> tuple[str | None, str]:
    """The fingerprint of the audit whose categories a command reads, and how to name it:
    ``--annotations``, else the audit a curated ``--data`` variant was built from."""
    if annotations is not None:
        from knowtune.evaluate import load_categories

        load_categories(annotations)  # a missing or malformed file fails here
        return audit_fingerprint(annotations), f"--annotations {annotations}"
    if data and Path(data).exists():
        return curated_audit_fingerprint(data), f"--data {data} (a variant curated from an audit)"
    return None, ""
