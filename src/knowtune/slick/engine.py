"""Which decoding path the SliCK backend uses for a model, and the proof that it is exact.

Three paths give the same answers where they work (:mod:`knowtune.slick.generation`):

* ``shared-prefix``: rows attend to one stored copy of their few-shot prefix through a
  custom attention function (:mod:`knowtune.slick.prefix_attention`); fastest;
* ``per-row-copy``: the prefix's keys/values copied into each row's cache, left-padded
  question lines, explicit positions and a 2D mask;
* ``exact``: one prompt length at a time, no padding, the model's own cache, positions
  and masks (:mod:`knowtune.slick.exact`): what ``model.generate`` does, for any model.

A fast path is used for a model only after it has reproduced the exact path on a probe
built from the prompts at hand: longest and shortest prefixes and question lines (so
that prefix and question padding both occur) and a prompt that shares all but the last
token of its prefix. The last-position logits of the prefill and of a few greedy steps
(both paths fed the exact path's greedy tokens) must agree within a tolerance for the
model's dtype. No list of model names is involved: a model that drops the prefix argument
(GPT-2), handles padding or positions its own way (ALiBi, learned offsets), or fails
outright, is caught by what it computes.
"""

from __future__ import annotations

import torch

from knowtune.errors import KnowtuneError
from knowtune.slick.exact import ExactRows, exact_prefill

SHARED, PER_ROW, EXACT = "shared-prefix", "per-row-copy", "exact"
ENGINES = ("auto", SHARED, PER_ROW, EXACT)
LABELS = {SHARED: "shared-prefix attention", PER_ROW: "per-row prefix copies", EXACT: "the exact path"}
PROBE_STEPS = 3  # greedy steps compared after the prefill
# Largest difference of a fast path's logits from the exact path's, relative to max(1, max |logit|):
# batched kernels change the last bits (float32) or more (half precision); a wrong path differs by O(1).
_RTOL = {torch.float32: 1e-3, torch.float64: 1e-6, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def attention_window(config) -> int | None:
    """The attention window the model's config declares (sliding or local attention), or None."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    types = getattr(config, "layer_types", None)
    if types and all(t == "full_attention" for t in types):
        return None
    if getattr(config, "use_sliding_window", True) is False:
        return None
    for name in ("sliding_window", "window_size"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def choose_engine(backend, requests) -> None:
    """Set ``backend.engine`` (and ``backend.engine_note``, also sent to ``backend.log``):
    the requested path, or under ``auto`` the first of shared-prefix, per-row-copy that
    passes :func:`verify`, else the exact path. A requested path that fails is an error."""
    model_name = type(backend.model).__name__
    if backend.requested == EXACT:
        backend.engine, note = EXACT, "engine: the exact path (requested)"
    else:
        candidates = [SHARED, PER_ROW] if backend.requested == "auto" else [backend.requested]
        probe = probe_requests(backend, requests)
        reference, rejected = None, []
        for path in candidates:
            reason = backend.static_obstacle(path, probe)
            if reason is None:
                reference = reference or reference_logits(backend, probe)
                reason = verify(backend, path, probe, reference)
            if reason is None:
                backend.engine = path
                break
            if backend.requested != "auto":
                raise KnowtuneError(f"engine {path!r} cannot be used for {model_name}: {reason}",
                                    fix="use --engine auto (knowtune then picks a path verified for this model) or --engine exact")
            rejected.append(f"{LABELS[path]} unavailable" + (f" for {model_name}" if not rejected else "") + f" ({reason})")
        else:
            backend.engine = EXACT
        chosen = f"using {LABELS[backend.engine]}" + (" (verified against the exact path)" if backend.engine != EXACT else
                                                        " (one prompt length at a time, the model's own cache)")
        note = "engine: " + "; ".join([*rejected, chosen])
    backend.engine_note = note
    if backend.log is not None:
        backend.log(note)


def probe_requests(backend, requests):
    """Up to four greedy requests built from ``requests`` and the current prefixes: the
    longest and the shortest prefix, each with the longest and shortest question line, and
    one prompt that shares all but the last token of its prefix."""
    from knowtune.slick.generation import GREEDY, Request

    prefixes = backend.prefix_ids
    used = sorted({r.prefix_index for r in requests})
    long = max(used, key=lambda i: len(prefixes[i]))
    short = min(used, key=lambda i: len(prefixes[i]))
    suffixes = [r.prompt_ids[backend.shared_length(r):] for r in requests]
    s_long, s_short = max(suffixes, key=len), min(suffixes, key=len)
    if len(s_short) == len(s_long) and len(s_long) > 1:
        s_short = s_long[: len(s_long) // 2]  # a shorter question line, so that padding occurs
    probe = [(long, prefixes[long] + s_short), (short, prefixes[short] + s_long), (long, prefixes[long] + s_long)]
    if len(prefixes[short]) > 1:
        probe.append((short, prefixes[short][:-1] + s_short))
    unique = list(dict.fromkeys((i, tuple(ids)) for i, ids in probe))
    return [Request(i, ids, (GREEDY,)) for i, ids in unique]


def reference_logits(backend, probe) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The exact path's float32 logits (R, V) at the prefill and each of ``PROBE_STEPS``
    greedy steps, one probe prompt at a time (batch 1), and its greedy tokens (R,) per step."""
    logits, tokens = [], []
    with torch.inference_mode():
        for request in probe:
            first, cache = exact_prefill(backend.model, [request.prompt_ids], backend.device, backend.keep)
            state = ExactRows(backend.model, cache, backend.cache_arg, backend.keep, len(request.prompt_ids), None,
                              torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
            row_logits, row_tokens = [first], [first.argmax(-1)]
            for _ in range(PROBE_STEPS):
                row_logits.append(state.advance(row_tokens[-1]))
                row_tokens.append(row_logits[-1].argmax(-1))
            logits.append(row_logits)
            tokens.append(row_tokens)
    return [torch.cat(step) for step in zip(*logits)], [torch.cat(step) for step in zip(*tokens)]


def verify(backend, path: str, probe, reference) -> str | None:
    """None if ``path`` reproduces ``reference`` (:func:`reference_logits`) on ``probe``,
    else the reason it does not (an exception it raised counts as a reason)."""
    ref_logits, ref_tokens = reference
    keys = torch.full((len(probe),), -1, dtype=torch.int64, device=backend.device)
    rows = torch.arange(len(probe), device=backend.device)
    try:
        with torch.inference_mode():
            logits, state, _ = backend.start(probe, False, path, rows, keys)
            got = [logits]
            for step in range(PROBE_STEPS):
                got.append(state.advance(ref_tokens[step].to(backend.device)))
    except Exception as error:  # any failure of a fast path means: do not use it
        return f"it fails: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:160]}"
    if path == SHARED and state.prefix.calls[0] == 0:
        hint = "its attention does not receive knowtune's prefix"
    else:
        hint = None
    error = max(float((a.cpu() - b.cpu()).abs().max()) for a, b in zip(got, ref_logits))
    scale = max(1.0, max(float(r.abs().max()) for r in ref_logits))
    tolerance = _RTOL.get(backend.dtype, 1e-2) * scale
    if error <= tolerance and hint is None:
        return None
    detail = f"logits differ from the exact path by up to {error:.3g} (tolerance {tolerance:.2g})"
    return f"{hint}: {detail}" if hint else detail
