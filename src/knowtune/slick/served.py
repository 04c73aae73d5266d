"""The SliCK audit through OpenAI-compatible servers: :class:`ServedBackend`, a drop-in for ``HFBackend``.

``knowtune annotate --backend openai`` plans, scores and stores exactly as in-process
(:mod:`knowtune.slick.annotate`); only generation moves to the servers. Per request (one
few-shot prompt of Gekhman et al., EMNLP 2024, arXiv 2405.05904, section 3):

* the prompt goes as text: the text of its token ids under the local tokenizer (``--model``),
  so it is already normalised (NFKC for the default model) and the server must turn it back
  into the very same ids. That is checked: every response's ``usage.prompt_tokens`` must equal
  the local count, and each prefix and the first prompt of each prefix in every call are
  tokenized by the server's ``/tokenize`` (llama.cpp, vLLM) and compared id by id;
* the greedy answer is a ``temperature=0`` completion; the samples of a prompt are
  ``temperature=T, top_k=K, top_p=1, min_p=0`` completions with ``n`` up to
  ``samples_per_request`` (llama.cpp caps ``n`` at its slot count), split into requests that
  ask for samples i..i+n-1 with seed ``base + i``. vLLM and llama.cpp give completion c of a
  request the seed ``seed + c``, so sample i has seed ``base + i`` however the samples are split
  and a rerun (resume, retry) draws the same samples. ``base`` is derived from the sample keys of
  :mod:`knowtune.slick.sampling` (seed, example id, prompt index);
* stop at the stop string, at most ``max_new_tokens`` tokens.

Completions come back as text and are re-encoded with the local tokenizer for the scorer,
which decodes them again (the answer is the text before the stop string, as in-process).
The server's sampler is its own: samples (hence WeaklyKnown vs Unknown) are not the in-process
ones, greedy answers agree up to the servers' arithmetic. :func:`served_protocol` records the
backend, the servers' hosts, the model name the servers report and the fingerprint of the
tokenizer that checked the prompts, so results of other servers or models are never mixed in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from knowtune.errors import KnowtuneError
from knowtune.provenance import config_hash
from knowtune.serving.client import CompletionRequest, CompletionsClient, ServerInfo
from knowtune.serving.config import ServedSettings
from knowtune.slick.generation import GREEDY, Request

DEFAULT_SAMPLES_PER_REQUEST = 16
SERVED_SAMPLER = "server-side: top_k, temperature, top_p 1, min_p 0; sample i of a prompt seeded base + i, base from the sample keys v1"
_SEED_SPAN = 1 << 31  # seeds stay within llama.cpp's and vLLM's non-negative 31-bit range, base + sample index included
_MAX_SAMPLES = 1 << 16
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt")


def seed_base(sample_keys: Sequence[int]) -> int:
    """The server seed of sample 0 of a prompt (sample i gets ``base + i``), from its first sample key."""
    return sample_keys[0] % (_SEED_SPAN - _MAX_SAMPLES)


def tokenizer_fingerprint(model_dir: str | Path) -> str:
    """A content hash of the tokenizer files of ``model_dir`` (what checked the served prompts)."""
    digest = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        path = Path(model_dir) / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class ServedBackend:
    """``HFBackend``'s interface (``set_prefixes``, ``generate``, ``generate_keeping_prefills``,
    ``tokenizer``) over a :class:`CompletionsClient` (see the module doc)."""

    def __init__(self, client: CompletionsClient, tokenizer, *, stop: str, max_new_tokens: int, temperature: float, top_k: int,
                 samples_per_request: int | None = None, log: Callable[[str], None] | None = None):
        self.client = client
        self.tokenizer = tokenizer
        self.stop, self.max_new_tokens = stop, max_new_tokens
        self.temperature, self.top_k = temperature, top_k
        info = client.info or client.connect()
        self.samples_per_request = samples_per_request or info.slots or DEFAULT_SAMPLES_PER_REQUEST
        self.bos = getattr(tokenizer, "bos_token_id", None)
        self.prefix_ids: list[tuple[int, ...]] = []
        self._checked: set[tuple[int, ...]] = set()
        self._server_tokenizes: bool | None = None
        self.engine_note = (f"backend: {info.model} on {', '.join(info.hosts)}, up to {self.samples_per_request} samples per request")
        if log is not None:
            log(self.engine_note)

    def set_prefixes(self, prefixes: list[list[int]]) -> None:
        """The prefixes requests refer to; the server must tokenize each new one as the local tokenizer does."""
        self.prefix_ids = [tuple(ids) for ids in prefixes]
        self._check([p for p in dict.fromkeys(self.prefix_ids) if p and p not in self._checked])

    def generate(self, requests: list[Request]) -> list[list[list[int]]]:
        """Generated token ids per request, per row (greedy row first where asked), as the local tokenizer encodes the server's text."""
        firsts = {}
        for r in requests:
            firsts.setdefault(r.prefix_index, r.prompt_ids)
        self._check([ids for ids in firsts.values() if ids not in self._checked])
        texts = self._texts([r.prompt_ids for r in requests])
        calls, owner = [], []
        for i, (request, text) in enumerate(zip(requests, texts)):
            for call in self._calls(request, text):
                calls.append(call)
                owner.append(i)
        order = sorted(range(len(calls)), key=lambda c: calls[c].route)  # one prefix after another: the server's prompt cache hits
        completed = dict(zip(order, self.client.complete([calls[c] for c in order])))
        rows: list[list[str]] = [[] for _ in requests]
        for c, i in enumerate(owner):
            rows[i].extend(completed[c])
        flat = [text for texts_ in rows for text in texts_]
        encoded = iter(self.tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else [])
        return [[list(next(encoded)) for _ in texts_] for texts_ in rows]

    def generate_keeping_prefills(self, requests: list[Request]):
        """:meth:`generate`; a server keeps its own prompt cache, so there is no prefill to hand back."""
        return self.generate(requests), [None] * len(requests)

    def _calls(self, request: Request, text: str) -> list[CompletionRequest]:
        """The completions requests of one prompt: its greedy row, then its samples in groups of ``samples_per_request``."""
        common = dict(prompt=text, max_tokens=self.max_new_tokens, stop=self.stop, route=request.prefix_index, prompt_tokens=len(request.prompt_ids))
        samples = [k for k in request.keys if k != GREEDY]
        calls = [CompletionRequest(**common)] if GREEDY in request.keys else []
        if samples:
            base = seed_base(samples)
            for start in range(0, len(samples), self.samples_per_request):
                n = min(self.samples_per_request, len(samples) - start)
                calls.append(CompletionRequest(**common, n=n, temperature=self.temperature, top_k=self.top_k, seed=base + start))
        return calls

    def _texts(self, prompts: Sequence[Sequence[int]]) -> list[str]:
        """The text of each prompt's ids, without a leading BOS (the server adds its own, as the check confirms)."""
        rows = [list(ids[1:]) if self.bos is not None and ids[:1] == (self.bos,) else list(ids) for ids in prompts]
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return backend.decode_batch(rows, skip_special_tokens=False)
        return self.tokenizer.batch_decode(rows, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _check(self, prompts: list[tuple[int, ...]]) -> None:
        """Compare the server's tokenization of ``prompts`` (their text) with the local ids, where it has ``/tokenize``."""
        if not prompts or self._server_tokenizes is False:
            return
        adds_bos = any(ids[:1] == (self.bos,) for ids in prompts) if self.bos is not None else False
        served = self.client.tokenize(self._texts(prompts), add_special=adds_bos)
        self._server_tokenizes = served is not None
        for ids, got in zip(prompts, served or []):
            if tuple(got) != ids:
                at = next((i for i, (a, b) in enumerate(zip(ids, got)) if a != b), min(len(ids), len(got)))
                text = self._texts([ids[max(0, at - 3):at + 3]])[0]
                raise KnowtuneError(
                    f"the server tokenizes a prompt differently from the local tokenizer: from token {at} (around {text!r}) "
                    f"it has {list(got[at:at + 4])}, the local tokenizer {list(ids[at:at + 4])}",
                    fix="serve the model with the tokenizer of --model (for llama.cpp: a GGUF from `knowtune models export-gguf`), "
                        "or pass the served model's own tokenizer as --model")
            self._checked.add(ids)


def load_tokenizer(model_dir: str | Path):
    """The tokenizer of ``model_dir`` alone (a served audit needs no local weights)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as error:  # transformers raises OSError, ValueError, KeyError ...: one message
        raise KnowtuneError(f"{model_dir}: the tokenizer fails to load: {type(error).__name__}: {error}",
                            fix="with --backend openai, --model names the served model's tokenizer (a directory holding it, a cached hub id, or default)") from None


def served_protocol(protocol: dict[str, Any], info: ServerInfo, tokenizer_hash: str) -> dict[str, Any]:
    """The audit protocol of a served run: the in-process protocol with the server's sampler and a ``backend``
    record (backend, the servers' hosts, the model name they report, the tokenizer that checks the prompts)."""
    decoding = {**protocol["decoding"], "sampler": SERVED_SAMPLER, "dtype": "server"}
    backend = {"name": "openai", "hosts": sorted(info.hosts), "served_model": info.model, "tokenizer": tokenizer_hash}
    return {**protocol, "decoding": decoding, "backend": backend}


@dataclass
class ServedAudit:
    """What ``annotate --backend openai`` swaps in: the connected servers, the protocol and store key of their results,
    and the backend. Results are keyed by the served model's name and the tokenizer's fingerprint (not local weights)."""

    settings: ServedSettings
    client: CompletionsClient
    tokenizer_hash: str

    @classmethod
    def connect(cls, settings: ServedSettings, model_dir: str | Path, log: Callable[[str], None] | None = None) -> "ServedAudit":
        client = CompletionsClient(settings, log=log)
        client.connect()
        return cls(settings, client, tokenizer_fingerprint(model_dir))

    @property
    def fingerprint(self) -> str:
        return "served-" + config_hash({"served_model": self.client.info.model, "tokenizer": self.tokenizer_hash})[:12]

    def plan(self, plan):
        """``plan`` (an ``AuditPlan``) with the served protocol and its hash."""
        from knowtune.slick.protocol import protocol_hash

        protocol = served_protocol(plan.protocol, self.client.info, self.tokenizer_hash)
        return replace(plan, protocol=protocol, protocol_hash=protocol_hash(protocol))

    def backend(self, tokenizer, *, stop: str, max_new_tokens: int, temperature: float, top_k: int,
                log: Callable[[str], None] | None = None) -> ServedBackend:
        return ServedBackend(self.client, tokenizer, stop=stop, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                             samples_per_request=self.settings.samples_per_request, log=log)


def served_greedy_answers(audit: ServedAudit, tokenizer, prompts: list[str], *, task) -> list[str]:
    """:func:`knowtune.recall.greedy_answers` through the servers: the answer to each prompt text
    (encoded by ``task`` as every stage does; the text before the stop string), prompts checked as in the audit."""
    from knowtune.matching import extract_answer
    from knowtune.slick.tokens import decode_batch

    ids = task.prompts(tokenizer).encode(prompts)
    backend = audit.backend(tokenizer, stop=task.generation.stop, max_new_tokens=task.generation.max_new_tokens, temperature=1.0, top_k=1)
    backend.set_prefixes([])
    outputs = backend.generate([Request(0, tuple(row), (GREEDY,)) for row in ids])
    return [extract_answer(text, task.generation.stop) for text in decode_batch(tokenizer, [rows[0] for rows in outputs])]
