"""The task spec: how a closed-book QA question becomes tokens, and how an answer is read back.

In the spirit of an lm-evaluation-harness task YAML (prompt template, stop strings, metric
options, a version; e.g. ``lm_eval/tasks/nq_open/nq_open.yaml``), one validated, versioned,
hashed :class:`TaskSpec` holds every setting that decides what a model is shown and how
its answer is scored, for every stage:

* ``fewshot``: SliCK's k-shot prompt (Gekhman et al., EMNLP 2024, arXiv 2405.05904,
  section 3: ``Q: <question>`` / ``A: <answer>`` exemplar lines, then ``Q: <question>`` /
  ``A:``), used by ``annotate``, ``models recall`` and ``evaluate --format fewshot``. The
  exemplar sets themselves are drawn by :mod:`knowtune.slick.exemplars`.
* ``finetune``: the fine-tuning prompt (paper section 2: ``Answer the following question.
  <question>``), the target's ``answer_prefix`` and the abstention phrase, used by
  ``train`` (training rows and per-epoch evaluation) and ``evaluate``.
* ``tokens``: how prompt text becomes token ids: special tokens as the tokenizer adds them
  by default (a BOS for Llama-2, Mistral or Gemma tokenizers) or none, and whether the
  tokenizer's chat template wraps the prompt as one user turn.
* ``generation``: the stop string and the answer length cap.
* ``match``: the answer normalisation (:class:`knowtune.matching.MatchConfig`).

Every stage encodes prompts with :meth:`Prompts.encode`, so BOS and templates cannot
differ between the audit, fine-tuning and evaluation. The dev/test/OOD rule is not part of
the spec: it is :func:`knowtune.data.splits.split_examples`, shared by every stage.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from knowtune.config import StageConfig
from knowtune.errors import ConfigError, KnowtuneError
from knowtune.matching import MatchConfig, StopRule
from knowtune.provenance import config_hash

TASK_VERSION = 1
TASK_FILE = "task.yaml"
DEFAULT_TEMPLATE = "Answer the following question. {question}\n"
DEFAULT_IDK = "I don't know"
_SENTINEL = "\u2063KNOWTUNE_QUESTION\u2063"


def check_template(value: str, key: str, fields: tuple[str, ...]) -> str:
    """``value`` names every one of ``fields`` and formats with ``question``/``answer`` only."""
    missing = [f for f in fields if f not in value]
    if missing:
        raise ValueError(f"{key} must contain {', '.join(missing)}")
    try:
        value.format(question="q", answer="a")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"{key} has an unknown or malformed field ({error}); write literal braces as {{{{ }}}}") from None
    return value


def _question_slot(value: str) -> str:
    if "{question}" not in value:
        raise ValueError("must contain {question}, e.g. 'Answer the following question. {question}\\n'")
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must be non-blank text, e.g. \"I don't know\"")
    return value


#: Validated string types shared by every config that holds these prompt parts.
ExemplarTemplate = Annotated[str, AfterValidator(lambda v: check_template(v, "exemplar_template", ("{question}", "{answer}")))]
QueryTemplate = Annotated[str, AfterValidator(lambda v: check_template(v, "query_template", ("{question}",)))]
FinetuneTemplate = Annotated[str, AfterValidator(_question_slot)]
IdkPhrase = Annotated[str, AfterValidator(_non_blank)]


class FewShotPrompt(StageConfig):
    """SliCK's k-shot prompt: ``instruction``, k rendered exemplars, then the query line."""

    instruction: str = ""
    exemplar_template: ExemplarTemplate = "Q: {question}\nA: {answer}\n"
    query_template: QueryTemplate = "Q: {question}\nA:"
    k: int = Field(4, ge=0)
    exemplars_from: Literal["dev", "train", "test"] = "dev"


class FinetunePrompt(StageConfig):
    """The fine-tuning input ``template`` (``{question}`` replaced literally, other braces are
    text), the target's ``answer_prefix`` and the abstention answer ``idk_phrase``."""

    template: FinetuneTemplate = DEFAULT_TEMPLATE
    answer_prefix: str = ""
    idk_phrase: IdkPhrase = DEFAULT_IDK


class Tokenization(StageConfig):
    """``add_special_tokens``: True = the special tokens ``tokenizer(text)`` puts before a text
    (a BOS for Llama-2/Mistral/Gemma tokenizers, nothing for GPT-2/Qwen/knowtune's own; never
    an EOS after it), False = none.
    ``chat_template``: wrap each prompt as one user turn of the tokenizer's chat template
    (which writes its own special tokens, so none are added on top)."""

    add_special_tokens: bool = True
    chat_template: bool = False


class Generation(StageConfig):
    """The answer ends at the first ``stop`` string (one, or the earliest of several) or EOS, after at most ``max_new_tokens``."""

    stop: StopRule = "\n"
    max_new_tokens: int = Field(24, ge=1)


#: Flat config keys (``knowtune annotate/train/evaluate``) -> (section, field) of the spec.
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "instruction": ("fewshot", "instruction"), "exemplar_template": ("fewshot", "exemplar_template"),
    "query_template": ("fewshot", "query_template"), "k": ("fewshot", "k"), "exemplars_from": ("fewshot", "exemplars_from"),
    "prompt_template": ("finetune", "template"), "answer_prefix": ("finetune", "answer_prefix"), "idk_phrase": ("finetune", "idk_phrase"),
    "add_special_tokens": ("tokens", "add_special_tokens"), "chat_template": ("tokens", "chat_template"),
    "stop": ("generation", "stop"), "max_new_tokens": ("generation", "max_new_tokens"),
}


class TaskSpec(StageConfig):
    """Prompts, tokenization, stop rule and answer normalisation of closed-book QA (module docstring)."""

    version: Literal[1] = TASK_VERSION
    fewshot: FewShotPrompt = Field(default_factory=FewShotPrompt)
    finetune: FinetunePrompt = Field(default_factory=FinetunePrompt)
    tokens: Tokenization = Field(default_factory=Tokenization)
    generation: Generation = Field(default_factory=Generation)
    match: MatchConfig = Field(default_factory=MatchConfig)

    def hash(self) -> str:
        """The short stable hash of the spec (sorted-key JSON, sha256)."""
        return config_hash(self.model_dump(mode="json"))

    def updated(self, **keys: Any) -> "TaskSpec":
        """A copy with flat keys (:data:`FLAT_KEYS`, plus ``match``) replaced; validated."""
        record = self.model_dump(mode="json")
        for key, value in keys.items():
            if key == "match":
                record["match"] = value.model_dump(mode="json") if isinstance(value, MatchConfig) else value
            elif key in FLAT_KEYS:
                section, name = FLAT_KEYS[key]
                record[section][name] = value
            else:
                raise KeyError(f"{key!r} is not a task key; task keys: {', '.join([*FLAT_KEYS, 'match'])}")
        return TaskSpec.model_validate(record)

    def flat(self) -> dict[str, Any]:
        """The spec as flat config keys (inverse of :meth:`updated`)."""
        record = {key: getattr(getattr(self, section), name) for key, (section, name) in FLAT_KEYS.items()}
        return {**record, "match": self.match}

    def prompts(self, tokenizer) -> "Prompts":
        """This spec bound to ``tokenizer``: render and encode prompts."""
        return Prompts(self, tokenizer)


DEFAULT_TASK = TaskSpec()


def load_task(path: str | Path) -> TaskSpec:
    """A :class:`TaskSpec` from a YAML file (an unknown key or bad value names the key)."""
    from knowtune.config import load_config

    if not Path(path).is_file():
        raise ConfigError(f"task: {path}: task file not found", fix="pass an existing task YAML to --task (keys in docs/task.md)")
    return load_config(TaskSpec, path)


def save_task(task: TaskSpec, out_dir: str | Path) -> Path:
    """Write ``task.yaml`` (the spec, with its hash in a comment) into ``out_dir``."""
    import yaml

    from knowtune.io import atomic_write_text

    path = Path(out_dir) / TASK_FILE
    text = f"# knowtune task spec, hash {task.hash()}\n" + yaml.safe_dump(task.model_dump(mode="json"), sort_keys=False)
    atomic_write_text(path, text)
    return path


def resolve_task(config: StageConfig, keys: Sequence[str] | Mapping[str, str]) -> TaskSpec:
    """The task of a stage config: its ``task`` file (if any), then its task ``keys``.

    ``keys`` are flat task keys (:data:`FLAT_KEYS`) that are fields of ``config``, or a
    mapping of flat task keys to dotted field paths (``{"prompt_template": "prompt.template"}``).
    Without a task file every key is taken; with one, only the keys the user set (YAML or
    flags), so that flags override the file as they override a ``--config`` file.
    """
    path = getattr(config, "task", None)
    base = load_task(path) if path else DEFAULT_TASK
    paths = keys if isinstance(keys, Mapping) else {key: key for key in keys}
    chosen = {}
    for key, dotted in paths.items():
        value, was_set = _field(config, dotted)
        if not path or was_set:
            chosen[key] = value
    try:
        return base.updated(**chosen)
    except ValueError as error:
        raise ConfigError(f"task settings: {error}", fix="fix the key named above (in the --task file or the stage config)") from None


def _field(config: StageConfig, dotted: str) -> tuple[Any, bool]:
    """The value at a dotted field path of ``config`` and whether every step of it was set explicitly."""
    value, was_set = config, True
    for name in dotted.split("."):
        was_set = was_set and name in value.model_fields_set
        value = getattr(value, name)
    return value, was_set


_LEADING: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def leading_special_ids(tokenizer) -> list[int]:
    """The ids ``tokenizer(text)`` puts before the text's own tokens (a BOS, or nothing), read
    once per tokenizer from a probe text."""
    if tokenizer not in _LEADING:
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
        _LEADING[tokenizer] = list(full[:start])
    return list(_LEADING[tokenizer])


class Prompts:
    """A :class:`TaskSpec` bound to a tokenizer: the one place prompts are rendered and encoded."""

    def __init__(self, task: TaskSpec, tokenizer):
        self.task = task
        self.tokenizer = tokenizer
        if task.tokens.chat_template and not getattr(tokenizer, "chat_template", None):
            raise KnowtuneError(
                "chat_template is on but the tokenizer has no chat template",
                fix="set chat_template: false (plain prompt text), or use the chat model's own tokenizer",
            )

    def few_shot_text(self, exemplars: Sequence, question: str) -> str:
        """Instruction, the k exemplars (``QAExample``s), then the query line (no chat wrapping)."""
        fewshot = self.task.fewshot
        shots = "".join(fewshot.exemplar_template.format(question=e.question, answer=e.answers[0]) for e in exemplars)
        return fewshot.instruction + shots + fewshot.query_template.format(question=question)

    def fewshot(self, exemplars: Sequence, question: str) -> str:
        """The full few-shot prompt of ``question`` after ``exemplars``."""
        return self._wrap(self.few_shot_text(exemplars, question))

    def prefix(self, exemplars: Sequence) -> str:
        """The text every few-shot prompt of this exemplar set starts with: all before the query line."""
        text = self.fewshot(exemplars, _SENTINEL)
        query_head = self.task.fewshot.query_template.split("{question}")[0]
        return text[: text.index(_SENTINEL) - len(query_head)]

    def finetune(self, question: str) -> str:
        """The fine-tuning prompt of ``question``."""
        return self._wrap(self.task.finetune.template.replace("{question}", question))

    def _wrap(self, text: str) -> str:
        if not self.task.tokens.chat_template:
            return text
        messages = [{"role": "user", "content": text}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt text, preceded (when ``tokens.add_special_tokens``, and no chat
        template writes its own) by the special tokens the tokenizer puts before a text: its BOS.
        Tokens it would append after the text (an EOS, with ``add_eos_token``) are never added:
        the model continues the prompt."""
        if not texts:
            return []
        lead = leading_special_ids(self.tokenizer) if self.task.tokens.add_special_tokens and not self.task.tokens.chat_template else []
        return [lead + list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def encode_answers(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of answer texts that follow a prompt (never any special token)."""
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
