"""The SliCK audit protocol: one validated, serialisable, hashed spec stored with every result.

Gekhman et al., "Does Fine-Tuning LLMs on New Knowledge Encourage Hallucinations?",
EMNLP 2024 (arXiv 2405.05904), section 3: P_Correct(q, a; M, T) is estimated from
N_ex = 10 random 4-shot prompts per relation (exemplars from the dev split of the same
relation), 1 greedy answer and 16 samples at T = 0.5 (top-k 40) per prompt.
Every number is a field of :class:`AnnotateConfig`; :func:`build_protocol` turns the
config plus the drawn exemplar sets into the protocol record whose hash keys every
stored result, so results of another protocol are never mixed in.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import Field, field_validator

from knowtune import __version__
from knowtune.data.formats import DataFields
from knowtune.errors import ConfigError
from knowtune.matching import MatchConfig, StopRule
from knowtune.provenance import config_hash
from knowtune.ptrue import PTrueSettings
from knowtune.serving.config import ServedSettings
from knowtune.task import ExemplarTemplate, QueryTemplate, TaskSpec, resolve_task

PROTOCOL_VERSION = 1
SAMPLER = "gumbel-top-k, counter-based hash noise keyed by (seed, example, prompt, sample, step, token id) v1"


class AnnotateConfig(ServedSettings):
    """Settings of ``knowtune annotate`` (YAML keys = CLI flags with ``-`` for ``_``).

    Protocol fields (they change results, so they enter the protocol hash): ``n_ex``,
    ``k``, ``exemplars_from``, ``seed``, ``n_samples``, ``temperature``, ``top_k``,
    ``max_new_tokens``, ``stop``, the templates, ``chat_template``, ``match``, ``mode``
    and the resolved ``dtype``. The prompt, tokenization, stop and match keys are those of the
    task spec (:mod:`knowtune.task`): ``task`` names a task YAML file, and the keys set here
    override it. Run fields (``device``, ``batch_size``, ``chunk_size``,
    ``shard``, ``prune_samples``, ...) only change speed or which examples one process handles.
    ``backend: openai`` and its fields (:class:`~knowtune.serving.config.ServedSettings`) audit
    through servers; the protocol then records them (:func:`knowtune.slick.served.served_protocol`).
    """

    model: str = "default"
    """Model dir, Hugging Face Hub id, or default (the embedded model)."""
    data: str | None = None
    """Dataset: any format of docs/data.md, or embedded."""
    data_fields: DataFields = Field(default_factory=DataFields)
    """Record keys of the data's fields when they differ from knowtune's (--question-field, --answer-field, ...)."""
    out: str | None = None
    """Output dir (results, protocol, summary); rerunning resumes."""
    splits: list[Literal["train", "dev", "test"]] | None = None
    """Audit only these splits (repeatable; --split is the same flag); default: every split."""
    relations: list[str] | None = None
    """Audit only these relations (comma-separated or repeated)."""
    limit: int | None = Field(default=None, ge=1)
    """Audit only the first N selected examples."""
    mode: Literal["lazy", "exact"] = "lazy"
    """lazy (same categories, far fewer generations) or exact (exact P0 and Ps)."""
    n_ex: int = Field(default=10, ge=1)
    """Few-shot prompts (exemplar sets) per relation."""
    k: int = Field(default=4, ge=0)
    """Exemplars per prompt."""
    exemplars_from: Literal["dev", "train", "test"] = "dev"
    """Split the exemplars come from."""
    seed: int = 0
    """Seed of exemplar draws and samples."""
    n_samples: int = Field(default=16, ge=0)
    """Sampled answers per prompt."""
    temperature: float = Field(default=0.5, gt=0)
    """Sampling temperature."""
    top_k: int = Field(default=40, ge=1)
    """Sampling top-k."""
    max_new_tokens: int = Field(default=24, ge=1)
    """Answer length cap in tokens."""
    stop: StopRule = "\n"
    """Text that ends an answer (repeat for several stop strings, e.g. --stop $'\\n\\n' --stop Q:)."""
    instruction: str = ""
    """Text before the exemplars of every few-shot prompt."""
    exemplar_template: ExemplarTemplate = "Q: {question}\nA: {answer}\n"
    """One exemplar of the few-shot prompt ({question}, {answer})."""
    query_template: QueryTemplate = "Q: {question}\nA:"
    """The question line that ends the few-shot prompt ({question})."""
    chat_template: bool = False
    """Wrap the few-shot text in the tokenizer's chat template."""
    add_special_tokens: bool = True
    """Let the tokenizer add its special tokens (BOS) to every prompt."""
    task: str | None = None
    """A task YAML (docs/task.md); the prompt, tokenization, stop and match keys set here override it."""
    match: MatchConfig = Field(default_factory=MatchConfig)
    """Answer matching: the normalisation and the method (--match exact|contains|f1|judge, docs/annotate.md)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto (CUDA when available), cpu or cuda."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16 or float16."""
    engine: Literal["auto", "shared-prefix", "per-row-copy", "exact"] = "auto"
    """Decoding path: auto (the fastest path verified on the model), shared-prefix, per-row-copy or exact (docs/annotate.md)."""
    prune_samples: bool = True
    """Stop sampled answers that can no longer be correct (exact)."""
    batch_size: int = Field(default=512, ge=1)
    """Sequences decoded together."""
    chunk_size: int = Field(default=256, ge=1)
    """Examples per committed batch."""
    shard: str | None = None
    """i/N: audit only shard i (0-based) of N; join the outputs with `annotate merge`."""
    overwrite: bool = False
    """Discard results of another protocol or model found in --out."""
    method: Literal["slick", "ptrue"] = "slick"
    """slick (the SliCK categories) or ptrue (P(True) of the model's own answer, Kadavath et al. 2022; docs/annotate.md)."""
    ptrue: PTrueSettings = Field(default_factory=PTrueSettings)
    """The P(True) prompt and options (--method ptrue)."""

    @field_validator("shard")
    @classmethod
    def _shard_format(cls, value: str | None) -> str | None:
        if value is not None:
            parse_shard(value)
        return value

    def task_spec(self) -> TaskSpec:
        """The audit's task: the ``task`` file (if any) with this config's prompt keys on top."""
        return resolve_task(self, AUDIT_TASK_KEYS)

    def resolved(self) -> "AnnotateConfig":
        """This config with its task keys filled in from :meth:`task_spec` (as saved beside outputs)."""
        task = self.task_spec()
        flat = task.flat()
        return self.model_copy(update={key: flat[key] for key in AUDIT_TASK_KEYS})


#: The AnnotateConfig keys that are task-spec keys (:data:`knowtune.task.FLAT_KEYS`).
AUDIT_TASK_KEYS = ("instruction", "exemplar_template", "query_template", "k", "exemplars_from", "chat_template",
                   "add_special_tokens", "stop", "max_new_tokens", "match")


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with 0 <= i < N (shards are numbered from 0)."""
    try:
        index_text, count_text = spec.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ConfigError(f"shard: {spec!r} is not of the form i/N", fix="write e.g. --shard 0/4 (shards are numbered 0..N-1)") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard: {spec!r} needs 0 <= i < N", fix=f"use --shard 0/{max(count, 1)} .. --shard {max(count, 1) - 1}/{max(count, 1)}")
    return index, count


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process (unlike ``hash()``)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def in_shard(example_id: str, shard: tuple[int, int] | None) -> bool:
    """Deterministic sharding: example ``id`` belongs to shard ``stable_hash(id) mod N``."""
    return shard is None or stable_hash(example_id) % shard[1] == shard[0]


def build_protocol(config: AnnotateConfig, task: TaskSpec, exemplar_sets: dict[str, list[dict[str, Any]]], dtype: str) -> dict[str, Any]:
    """The full protocol record: everything that decides a result except the model.

    ``task`` gives the prompt, tokenization, stop rule and match (its fine-tuning prompt
    plays no part in the audit). The default match and a single stop string are recorded as
    protocol v1 recorded them (:meth:`MatchConfig.protocol_record`), so earlier stores resume;
    another method, its threshold or judge (model, prompt) and a list of stop strings change the hash. ``exemplar_sets`` maps each relation to its N_ex sets, each
    ``{"ids": [...k ids], "spare": id, "examples": [[question, answer], ...]}``.
    """
    fewshot, generation = task.fewshot, task.generation
    protocol = {
        "protocol_version": PROTOCOL_VERSION,
        "knowtune_version": __version__,
        "mode": config.mode,
        "n_ex": config.n_ex,
        "k": fewshot.k,
        "exemplars_from": fewshot.exemplars_from,
        "seed": config.seed,
        "template": {
            "instruction": fewshot.instruction,
            "exemplar": fewshot.exemplar_template,
            "query": fewshot.query_template,
            "chat_template": task.tokens.chat_template,
        },
        "decoding": {
            "greedy_per_prompt": 1,
            "samples_per_prompt": config.n_samples,
            "temperature": config.temperature,
            "top_k": config.top_k,
            "max_new_tokens": generation.max_new_tokens,
            "stop": generation.stop,
            "dtype": dtype,
            "sampler": SAMPLER,
            "detokenize": "skip special tokens, no clean-up of tokenization spaces",
        },
        "match": task.match.protocol_record(),
        "exemplar_sets": exemplar_sets,
    }
    if not task.tokens.add_special_tokens:  # protocol v1 records before this key encoded with the tokenizer's special tokens
        protocol["template"]["add_special_tokens"] = False
    return protocol


def protocol_hash(protocol: dict[str, Any]) -> str:
    """The short stable hash that keys stored results (sorted-key JSON, sha256)."""
    return config_hash(protocol)
