"""The fast Hugging Face backend: batched greedy and sampled answers with shared prefixes.

SliCK (Gekhman et al., EMNLP 2024, arXiv 2405.05904, section 3) needs, per question,
N_ex = 10 four-shot prompts x (1 greedy + 16 samples at T = 0.5, top-k 40). Done naively
that is 170 generations, each re-encoding a long few-shot prompt. Here:

* the KV cache of each (relation, exemplar set) prefix is computed once
  (:meth:`HFBackend.set_prefixes`) and shared by every question of the relation: rows of
  one prefix attend to a single copy of it (:mod:`knowtune.slick.prefix_attention`), or
  to a copy gathered per row;
* each request (one prompt) is prefilled once and its cache is then repeated for its
  rows (1 greedy + 16 sampled share one prefill);
* all rows decode together in a loop of batched tensor ops; finished rows (a stop string
  token, EOS or ``max_new_tokens``) leave the batch
  (``DynamicCache.batch_select_indices``); there is no per-row Python work per token.

Both are used for a model only once verified to reproduce its own results
(:mod:`knowtune.slick.engine`); otherwise the exact path (:mod:`knowtune.slick.exact`)
decodes. Sampling (:mod:`knowtune.slick.sampling`) is keyed per row, so every sample is
reproducible whatever batch or path it runs in.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from knowtune.compat import cache_argument, cache_layers, output_cache, require_layered_cache
from knowtune.errors import KnowtuneError
from knowtune.slick.engine import ENGINES, EXACT, SHARED, attention_window, choose_engine
from knowtune.slick.exact import ExactRows, exact_prefill
from knowtune.slick.kvcache import preallocated_cache
from knowtune.slick.prefill import Prefill, compact_prefills  # noqa: F401 (compact_prefills: part of this module's API)
from knowtune.slick.prefix_attention import SharedPrefix, shared_prefix_attention_enabled, shared_prefix_obstacle, supports_shared_prefix
from knowtune.slick.sampling import gumbel_noise
from knowtune.slick.tokens import decode_batch, eos_token_ids, stop_token_mask

GREEDY = -1
_COMPACT_SHARE = 0.25  # done rows leave the batch once they are this share of it
_HEADROOM = 8  # cache positions reserved for generated tokens before the storage has to grow
_PAD_SLACK = 1.3  # a batch's prompt tokens, padding included, stay within this factor of the real ones
_PREFIX_BATCH = 64  # few-shot prefixes prefilled together


@dataclass(frozen=True)
class Request:
    """One prompt: the index of its prefix (exemplar set), its full token ids, and its rows.

    ``keys`` has one entry per generated row: :data:`GREEDY` for a greedy row, otherwise
    a 32-bit sampling key (:mod:`knowtune.slick.sampling`). All rows share one prefill;
    ``prefill``, when given (from :meth:`HFBackend.generate_keeping_prefills`), replaces
    it. ``alive``, when given, tells from a sampled row's text so far whether it can still
    become a correct answer (:mod:`knowtune.slick.pruning`); rows that cannot stop early.
    """

    prefix_index: int
    prompt_ids: tuple[int, ...]
    keys: tuple[int, ...]
    prefill: Prefill | None = None
    alive: Callable[[str], bool] | None = None


class HFBackend:
    """Batched few-shot generation for one Hugging Face causal LM (model in eval mode).

    ``engine`` chooses how rows see their prefix (:mod:`knowtune.slick.engine`): ``auto``
    (default) takes the fastest path verified on this model at the first :meth:`generate`;
    ``shared-prefix``, ``per-row-copy`` (verified too: a path that fails is a
    :class:`KnowtuneError`) or ``exact``. ``log`` receives one line saying which path
    is used and why. After the first call, ``engine`` and ``engine_note`` say it.
    """

    def __init__(self, model, tokenizer, *, stop: str | list[str], max_new_tokens: int, temperature: float, top_k: int, batch_size: int,
                 engine: str = "auto", log: Callable[[str], None] | None = None):
        require_layered_cache()
        if engine not in ENGINES:
            raise KnowtuneError(f"engine: unknown value {engine!r}", fix=f"use one of {', '.join(ENGINES)}")
        self.model = model
        self.tokenizer = tokenizer
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.batch_size = batch_size
        self.requested, self.log = engine, log
        self.engine: str | None = None
        self.engine_note: str | None = None
        self.window = attention_window(model.config)
        vocab = model.get_output_embeddings().weight.shape[0]
        self.is_stop = stop_token_mask(tokenizer, vocab, stop, eos_token_ids(model, tokenizer)).to(self.device)
        params = inspect.signature(model.forward).parameters
        keep = [name for name in ("logits_to_keep", "num_logits_to_keep") if name in params]
        self.keep = {keep[0]: 1} if keep else {}
        self.cache_arg = cache_argument(model)
        self.prefix_ids: list[tuple[int, ...]] = []
        self._computed: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}  # ids -> per layer (Hkv, L, D)
        self._stacked: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer (n_prefixes, Hkv, Lmax, D)

    def set_prefixes(self, prefixes: list[list[int]]) -> None:
        """Make ``prefixes`` the ones requests refer to (by index). The fast paths prefill
        each once (when first needed); prefixes computed for an earlier call are reused."""
        self.prefix_ids = [tuple(ids) for ids in prefixes]
        self._stacked = None

    @torch.inference_mode()
    def _prefix_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The current prefixes' keys and values, per layer (n_prefixes, Hkv, Lmax, D), computed once."""
        if self._stacked is None:
            wanted = list(dict.fromkeys(self.prefix_ids))
            new = [ids for ids in wanted if ids not in self._computed]
            computed = {ids: self._computed[ids] for ids in wanted if ids in self._computed}
            for start in range(0, len(new), _PREFIX_BATCH):
                computed.update(zip(new[start:start + _PREFIX_BATCH], self._prefill_prefixes(new[start:start + _PREFIX_BATCH])))
            self._computed = computed
            self._stacked = self._stack([computed[ids] for ids in self.prefix_ids])
        return self._stacked

    def _prefill_prefixes(self, prefixes: list[tuple[int, ...]]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Keys and values of each prefix, per layer (Hkv, L, D), from one left-padded forward."""
        width = max(max(len(ids) for ids in prefixes), 1)
        ids = torch.zeros((len(prefixes), width), dtype=torch.long)
        mask = torch.zeros((len(prefixes), width), dtype=torch.long)
        for row, prefix in enumerate(prefixes):
            if prefix:
                ids[row, width - len(prefix):] = torch.tensor(prefix)
                mask[row, width - len(prefix):] = 1
        mask[:, -1] = 1  # an empty prefix still needs one visible position; its keys are not kept
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), position_ids=positions.to(self.device), use_cache=True)
        layers = cache_layers(output_cache(out))
        return [[(k[row, :, width - len(prefix):], v[row, :, width - len(prefix):]) for k, v in layers] for row, prefix in enumerate(prefixes)]

    @staticmethod
    def _stack(prefixes: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, all prefixes right-aligned in (n_prefixes, Hkv, Lmax, D), zeros before shorter ones."""
        length = max(layers[0][0].shape[1] for layers in prefixes)
        stacked = []
        for layer, (k0, v0) in enumerate(prefixes[0]):
            keys = k0.new_zeros((len(prefixes), k0.shape[0], length, k0.shape[2]))
            values = v0.new_zeros((len(prefixes), v0.shape[0], length, v0.shape[2]))
            for p, layers in enumerate(prefixes):
                k, v = layers[layer]
                keys[p, :, length - k.shape[1]:] = k
                values[p, :, length - v.shape[1]:] = v
            stacked.append((keys, values))
        return stacked

    def generate(self, requests: list[Request]) -> list[list[list[int]]]:
        """Generated token ids per request, per row (stop token included, nothing after it)."""
        return self._generate(requests, keep=False)[0]

    def generate_keeping_prefills(self, requests: list[Request]) -> tuple[list[list[list[int]]], list[Prefill | None]]:
        """Like :meth:`generate`, plus each request's :class:`Prefill` (None where it is not
        kept: on the per-row-copy and exact paths) for decoding more rows of the same prompt later."""
        return self._generate(requests, keep=True)

    def _generate(self, requests: list[Request], keep: bool):
        results: list = [None] * len(requests)
        prefills: list[Prefill | None] = [None] * len(requests)
        if requests and self.engine is None:
            choose_engine(self, requests)
        for batch in self._batches(requests):
            path = self.engine if self._fits_window([requests[b] for b in batch]) else EXACT
            outputs, kept = self._decode([requests[b] for b in batch], keep, path)
            for b, output, prefill in zip(batch, outputs, kept):
                results[b], prefills[b] = output, prefill
        return results, prefills

    def _batches(self, requests: list[Request]) -> list[list[int]]:
        """Request indices per batch: at most ``batch_size`` rows; on the fast paths, by
        length so that padding stays within ``_PAD_SLACK``; on the exact path, of one length."""
        exact = self.engine == EXACT
        resumed = [r.prefill is not None for r in requests]
        length = [len(r.prompt_ids) - (0 if exact else r.prefill.shared if r.prefill else self.shared_length(r)) for r in requests]
        sort_keys = [(resumed[i], length[i], r.prefix_index) for i, r in enumerate(requests)]
        order = sorted(range(len(requests)), key=sort_keys.__getitem__)
        batches, batch = [], []
        rows = tokens = 0
        for i in order:
            if batch and (rows + len(requests[i].keys) > self.batch_size or resumed[i] != resumed[batch[0]]
                          or (length[i] != length[batch[0]] if exact else (len(batch) + 1) * length[i] > _PAD_SLACK * (tokens + length[i]))):
                batches.append(batch)
                batch, rows, tokens = [], 0, 0
            batch.append(i)
            rows += len(requests[i].keys)
            tokens += length[i]
        return [*batches, batch] if batch else batches

    def _fits_window(self, requests: list[Request]) -> bool:
        """Whether a fast-path batch stays within the model's attention window (if it has one):
        the fast paths lay prefix, padding and answer out in one span the window would cut."""
        if self.window is None or self.engine == EXACT:
            return True
        suffix = max(len(r.prompt_ids) - (r.prefill.shared if r.prefill else self.shared_length(r)) for r in requests)
        span = max(map(len, self.prefix_ids), default=0) + suffix + self.max_new_tokens
        return span <= self.window

    def static_obstacle(self, path: str, probe: list[Request]) -> str | None:
        """What rules ``path`` out for this model before any probe (None: nothing does)."""
        if path == SHARED and not supports_shared_prefix(self.model):
            return shared_prefix_obstacle(self.model) or "it is not supported for this model"
        if not self._fits_window(probe):
            return f"its {self.window}-token attention window is shorter than the prompts and answers"
        return None

    def shared_length(self, request: Request) -> int:
        """How many leading prompt tokens the cached prefix covers (at least one token is left)."""
        prefix = self.prefix_ids[request.prefix_index]
        limit = min(len(prefix), len(request.prompt_ids) - 1)
        n = 0
        while n < limit and prefix[n] == request.prompt_ids[n]:
            n += 1
        return n

    def _suffixes(self, requests: list[Request]):
        """Left-padded prompt parts after the shared prefix: ids and mask (R, S), positions, shared lengths."""
        shared = [self.shared_length(r) for r in requests]
        suffixes = [r.prompt_ids[n:] for r, n in zip(requests, shared)]
        width = max(len(s) for s in suffixes)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(requests), width), pad, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.bool)
        for row, suffix in enumerate(suffixes):
            ids[row, width - len(suffix):] = torch.tensor(suffix)
            mask[row, width - len(suffix):] = True
        positions = (torch.tensor(shared).unsqueeze(1) + mask.long().cumsum(1) - 1).clamp(min=0)  # (R, S)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device), shared

    def _prefill_state(self, requests: list[Request], shared_prefix: bool):
        """The prefill inputs: ids, positions, the row mask that decoding extends (R, L) bool,
        the mask given to the model, the cache, and the SharedPrefix (None on the per-row-copy path)."""
        ids, suffix_mask, positions, shared = self._suffixes(requests)
        rows, width = ids.shape
        capacity = width + min(self.max_new_tokens, _HEADROOM)  # grows if a row runs longer
        if shared_prefix:
            prefix = self._shared_prefix([r.prefix_index for r in requests], shared)
            empty = [(k.new_empty((rows, k.shape[1], 0, k.shape[3])), v.new_empty((rows, v.shape[1], 0, v.shape[3])))
                     for k, v in zip(prefix.keys, prefix.values)]
            causal = torch.ones((width, width), dtype=torch.bool, device=self.device).tril()
            mask4d = (causal & suffix_mask[:, None, :]) | torch.eye(width, dtype=torch.bool, device=self.device)  # (R, S, S)
            return ids, positions, suffix_mask, _bias(mask4d.unsqueeze(1)), preallocated_cache(empty, capacity), prefix
        stacked = self._prefix_kv()
        length = stacked[0][0].shape[2]
        index = torch.tensor([r.prefix_index for r in requests], device=self.device)
        past = torch.zeros((rows, length), dtype=torch.bool, device=self.device)
        for row, (request, n) in enumerate(zip(requests, shared)):
            start = length - len(self.prefix_ids[request.prefix_index])
            past[row, start:start + n] = True
        cache = preallocated_cache([(k.index_select(0, index), v.index_select(0, index)) for k, v in stacked], length + capacity)
        mask = torch.cat([past, suffix_mask], dim=1)
        return ids, positions, mask, mask.long(), cache, None

    def _forward(self, ids, mask, positions, cache, prefix):
        """One model call; returns float32 logits of the last position (R, V)."""
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, self.cache_arg: cache, "use_cache": True, **self.keep}
        if prefix is None:
            out = self.model(**inputs)
        else:
            with shared_prefix_attention_enabled(self.model):
                out = self.model(**inputs, knowtune_prefix=prefix)
        return out.logits[:, -1, :].float()

    @torch.inference_mode()
    def _decode(self, requests: list[Request], keep: bool, path: str):
        """Prefill every request once (or take its kept Prefill), repeat each cache for its
        rows, decode all rows together. Returns (rows per request, Prefill or None per request)."""
        if path == EXACT and len({len(r.prompt_ids) for r in requests}) > 1:  # the exact path never pads
            by_length: dict[int, list[int]] = {}
            for i, r in enumerate(requests):
                by_length.setdefault(len(r.prompt_ids), []).append(i)
            rows: list = [None] * len(requests)
            for members in by_length.values():
                for i, output in zip(members, self._decode([requests[i] for i in members], keep, path)[0]):
                    rows[i] = output
            return rows, [None] * len(requests)
        repeats = torch.tensor([len(r.keys) for r in requests], device=self.device)
        expand = torch.repeat_interleave(torch.arange(len(requests), device=self.device), repeats)  # (N,)
        keys = torch.tensor([k for r in requests for k in r.keys], dtype=torch.int64, device=self.device)
        logits, state, kept = self.start(requests, keep, path, expand, keys)
        alive = [r.alive if key != GREEDY else None for r in requests for key in r.keys]
        tokens = self._loop(logits.index_select(0, expand), state, alive if any(alive) else None)
        rows, r = [], 0
        for request in requests:
            rows.append(tokens[r:r + len(request.keys)])
            r += len(request.keys)
        return rows, kept

    def start(self, requests: list[Request], keep: bool, path: str, expand: torch.Tensor, keys: torch.Tensor):
        """Prefill ``requests`` on ``path``: (logits per request (R, V), the state of their rows
        (``expand`` (N,): the request of each row, ``keys`` (N,) its sampling key), kept Prefills)."""
        kept: list[Prefill | None] = [None] * len(requests)
        rows = torch.arange(len(expand), device=self.device)
        if path == EXACT:
            logits, cache = exact_prefill(self.model, [r.prompt_ids for r in requests], self.device, self.keep)
            return logits, ExactRows(self.model, cache, self.cache_arg, self.keep, len(requests[0].prompt_ids), expand, keys, rows), kept
        if requests[0].prefill is not None:
            logits, mask, next_pos, cache, prefix = self._resume_state(requests)
        else:
            ids, positions, mask, model_mask, cache, prefix = self._prefill_state(requests, path == SHARED)
            logits = self._forward(ids, model_mask, positions, cache, prefix)
            next_pos = positions[:, -1] + 1
            if keep and prefix is not None:
                kept = self._prefills(requests, cache, logits, next_pos, mask)
        state = _Rows(self, cache=cache, pending=expand, mask=mask.index_select(0, expand), prefix=_select_prefix(prefix, expand),
                      next_pos=next_pos.index_select(0, expand), keys=keys, active=rows)
        return logits, state, kept

    def _prefills(self, requests, cache, logits, next_pos, mask) -> list[Prefill | None]:
        """Each request's own keys/values (views without the left padding), logits and position."""
        layers = cache_layers(cache)
        if len({tuple(k.shape) for k, _ in layers} | {tuple(v.shape) for _, v in layers}) != 1:  # layers of different shapes:
            return [None] * len(requests)  # decode later rows from a fresh prefill
        kv = torch.stack([torch.stack([k, v]) for k, v in layers])  # (layers, 2, R, Hkv, S, D)
        lengths, positions = mask.sum(1).tolist(), next_pos.tolist()
        return [Prefill(kv, r, n, logits[r], positions[r], self.shared_length(request)) for r, (request, n) in enumerate(zip(requests, lengths))]

    def _resume_state(self, requests: list[Request]):
        """(logits, row mask, next positions, cache, SharedPrefix) rebuilt from kept Prefills."""
        prefills = [r.prefill for r in requests]
        width = max(p.length for p in prefills)
        layers, _, _, kv_heads, _, dim = prefills[0].batch_kv.shape
        kv = prefills[0].kv.new_zeros((layers, 2, len(requests), kv_heads, width, dim))
        mask = torch.zeros((len(requests), width), dtype=torch.bool, device=self.device)
        for r, p in enumerate(prefills):  # right-aligned, as after a left-padded prefill
            kv[:, :, r, :, width - p.length:] = p.kv
            mask[r, width - p.length:] = True
        prefix = self._shared_prefix([r.prefix_index for r in requests], [p.shared for p in prefills])
        logits = torch.stack([p.logits for p in prefills])
        next_pos = torch.tensor([p.next_pos for p in prefills], device=self.device)
        cache = preallocated_cache([(kv[i, 0], kv[i, 1]) for i in range(layers)], width + min(self.max_new_tokens, _HEADROOM))
        return logits, mask, next_pos, cache, prefix

    def _shared_prefix(self, indices: list[int], shared: list[int]) -> SharedPrefix:
        """The SharedPrefix of a batch whose row r uses prefix ``indices[r]`` and shares its
        first ``shared[r]`` tokens."""
        slots = sorted(set(indices))
        stacked = self._prefix_kv()
        lengths = [len(self.prefix_ids[i]) for i in slots]
        width = max(lengths)  # the batch's prefixes, right-aligned over their last `width` positions
        full = stacked[0][0].shape[2]
        index = torch.tensor(slots, device=self.device)

        def pick(x: torch.Tensor) -> torch.Tensor:  # (n_prefixes, Hkv, Lmax, D) -> (G, Hkv, width, D)
            return (x if len(slots) == x.shape[0] else x.index_select(0, index))[:, :, full - width:]

        keys = [pick(k) for k, _ in stacked]
        values = [pick(v) for _, v in stacked]
        slot_of = {p: i for i, p in enumerate(slots)}
        row_slot = [slot_of[p] for p in indices]
        row_bias = None
        if any(n < len(self.prefix_ids[p]) for p, n in zip(indices, shared)) or min(lengths) < width:
            start = torch.tensor([width - lengths[s] for s in row_slot], device=self.device).unsqueeze(1)
            span = torch.arange(width, device=self.device).unsqueeze(0)
            seen = (span >= start) & (span < start + torch.tensor(shared, device=self.device).unsqueeze(1))
            row_bias = _bias(seen)
        return SharedPrefix.build(keys, values, torch.tensor(row_slot, device=self.device), row_bias)

    def _choose(self, logits: torch.Tensor, keys: torch.Tensor, step: int) -> torch.Tensor:
        """Greedy argmax for GREEDY rows; Gumbel-max over top-k(logits / T) for the others. (A,)

        Sampling: argmax_j (l_j / T + G_j) over the top-k tokens j draws j with probability
        softmax(top-k(l) / T)_j (the Gumbel-max trick), as ``generate(do_sample=True)`` does.
        """
        greedy_rows = keys == GREEDY
        if bool(greedy_rows.all()):
            return logits.argmax(-1)
        token = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
        sampled = (~greedy_rows).nonzero().squeeze(1)
        values, index = logits.index_select(0, sampled).topk(min(self.top_k, logits.shape[-1]), dim=-1, sorted=False)  # (S, k)
        pick = (values / self.temperature + gumbel_noise(keys.index_select(0, sampled), step, index)).argmax(-1, keepdim=True)
        token[sampled] = index.gather(1, pick).squeeze(1)
        if bool(greedy_rows.any()):
            greedy = greedy_rows.nonzero().squeeze(1)
            token[greedy] = logits.index_select(0, greedy).argmax(-1)
        return token

    def _loop(self, logits: torch.Tensor, state: "_Rows | ExactRows", alive: list | None = None) -> list[list[int]]:
        """Decode all rows step by step. A row that emits a stop token is done; done rows leave
        the batch as soon as they are at least ``_COMPACT_SHARE`` of it (one copy of the cache
        for many rows, instead of one per step). After 1, 2, 4, 8, ... tokens, sampled rows
        whose ``alive`` check fails are done too (their text so far is returned)."""
        out = torch.full((logits.shape[0], self.max_new_tokens), -1, dtype=torch.long, device=self.device)  # (N, T)
        done = torch.zeros(logits.shape[0], dtype=torch.bool, device=self.device)  # (A,)
        for step in range(self.max_new_tokens):
            token = self._choose(logits, state.keys, step)  # (A,)
            out[state.active, step] = token.masked_fill(done, -1)
            done = done | self.is_stop[token]
            if alive is not None and ((step + 1) & step) == 0:  # after 1, 2, 4, 8, ... tokens
                done = done | self._rejected(out, state.active, done, alive, step)
            n_done = int(done.sum())
            if step == self.max_new_tokens - 1 or n_done == done.shape[0]:
                break
            if n_done and (state.pending is not None or n_done >= _COMPACT_SHARE * done.shape[0]):
                idx = (~done).nonzero().squeeze(1)
                token, done = token[idx], done[idx]
                state.select(idx)
            logits = state.advance(token)
        lengths = (out >= 0).sum(1).tolist()  # tokens are written left to right, so -1 only trails
        return [row[:n] for row, n in zip(out.tolist(), lengths)]

    def _rejected(self, out: torch.Tensor, active: torch.Tensor, done: torch.Tensor, alive: list, step: int) -> torch.Tensor:
        """(A,) bool: running rows whose text so far can no longer become a correct answer."""
        rows = [(a, r) for a, (r, d) in enumerate(zip(active.tolist(), done.tolist())) if not d and alive[r] is not None]
        rejected = torch.zeros_like(done)
        if rows:
            tokens = out.index_select(0, torch.tensor([r for _, r in rows], device=self.device))[:, :step + 1].tolist()
            texts = decode_batch(self.tokenizer, tokens)
            dead = [a for (a, r), text in zip(rows, texts) if not alive[r](text)]
            rejected[dead] = True
        return rejected


@dataclass
class _Rows:
    """The rows in flight on a fast path: their cache, attention mask over it, shared prefix,
    next positions, sampling keys, output rows.

    Right after the prefill the cache holds one row per request and ``pending`` maps rows
    to requests: the cache is repeated for the rows only before the first decoding step,
    after the rows that are already done (stop token, or rejected) have left.
    """

    backend: HFBackend
    cache: object
    pending: torch.Tensor | None  # (A,) request row of each row, until the cache is expanded
    mask: torch.Tensor  # (A, Lr) bool
    prefix: SharedPrefix | None
    next_pos: torch.Tensor  # (A,)
    keys: torch.Tensor  # (A,)
    active: torch.Tensor  # (A,) row index in the output

    def select(self, idx: torch.Tensor) -> None:
        """Keep rows ``idx`` (finished rows leave the batch)."""
        if self.pending is not None:
            self.pending = self.pending[idx]
        else:
            self.cache.batch_select_indices(idx)
        self.mask, self.next_pos, self.keys, self.active = self.mask[idx], self.next_pos[idx], self.keys[idx], self.active[idx]
        self.prefix = _select_prefix(self.prefix, idx)

    def materialize(self) -> None:
        """Repeat the per-request cache for the rows still running (one copy)."""
        if self.pending is not None:
            self.cache.batch_select_indices(self.pending)
            self.pending = None

    def advance(self, token: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (A,); float32 logits of the next position (A, V)."""
        self.materialize()
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        mask = self.mask if self.prefix is None else _bias(self.mask[:, None, None, :])
        logits = self.backend._forward(token.unsqueeze(1), mask, self.next_pos.unsqueeze(1), self.cache, self.prefix)
        self.next_pos = self.next_pos + 1
        return logits


def _select_prefix(prefix: SharedPrefix | None, idx: torch.Tensor) -> SharedPrefix | None:
    return None if prefix is None else prefix.select(idx)


def _bias(mask: torch.Tensor) -> torch.Tensor:
    """Additive attention bias from a bool mask: 0 where True, -inf where False (float32)."""
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(~mask, float("-inf"))
