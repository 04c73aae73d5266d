"""Loading the audited model: any Hugging Face causal LM and its tokenizer, on CPU or CUDA."""

from __future__ import annotations

from pathlib import Path

import torch

from knowtune.errors import KnowtuneError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise KnowtuneError("device: cuda was requested but no CUDA GPU is visible", fix="use --device cpu or --device auto")
    return device


def resolve_model_dir(spec: str) -> Path:
    """``default``, a local directory or a Hub id -> a local directory holding the model
    (a Hub id is downloaded into, or read from, the Hugging Face cache)."""
    from knowtune.models import resolve_model

    resolved = resolve_model(spec)
    if isinstance(resolved, Path):
        return resolved
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(resolved))
    except Exception as error:  # hub/network errors: one actionable message
        raise KnowtuneError(
            f"model {spec!r} is not a local directory and could not be fetched from the Hugging Face Hub: {type(error).__name__}: {error}",
            fix="pass --model default, a local directory saved with save_pretrained, or a Hub id you can access "
                "(huggingface-cli login for gated models)",
        ) from None


def load_model(model_dir: str | Path, device: str, dtype: str):
    """(model in eval mode on ``device`` in ``dtype``, tokenizer) for a saved causal LM."""
    import transformers
    from packaging.version import Version
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype_key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, **{dtype_key: _DTYPES[dtype]})
    except Exception as error:
        raise KnowtuneError(
            f"model {str(model_dir)!r} could not be loaded as a causal language model: {type(error).__name__}: {error}",
            fix="point --model at a directory with config.json, weights and tokenizer files (save_pretrained output) of a causal LM",
        ) from None
    model.to(device)
    model.eval()
    return model, tokenizer
