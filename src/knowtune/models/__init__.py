"""Finding and loading models: the embedded default checkpoint, local dirs, hub ids.

The default base model (a ~1.6M-parameter ``LlamaForCausalLM`` pretrained by
``knowtune pretrain`` on the embedded world) ships inside the package in
``knowtune/models/default/``; ``knowtune models default`` prints its directory.
"""

from __future__ import annotations

from pathlib import Path

from knowtune.errors import KnowtuneError

DEFAULT_MODEL_DIR = Path(__file__).parent / "default"
DEFAULT_ALIASES = ("default",)


def default_model_dir() -> Path:
    """The directory of the shipped default checkpoint."""
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        raise KnowtuneError(
            f"the default model is missing from {DEFAULT_MODEL_DIR}",
            fix="rebuild it with `knowtune pretrain --default` (about 10 minutes on 2 CPU cores)",
        )
    return DEFAULT_MODEL_DIR


def resolve_model(spec: str | Path) -> Path | str:
    """``default`` -> the shipped checkpoint; an existing path -> that path; else a hub id."""
    if str(spec) in DEFAULT_ALIASES:
        return default_model_dir()
    path = Path(spec)
    if path.exists():
        if not (path / "config.json").is_file():
            raise KnowtuneError(f"{path}: not a Hugging Face model directory (no config.json)", fix="point --model at a directory written by save_pretrained, a hub id, or `default`")
        return path
    return str(spec)


def model_dir_of(spec: str | Path) -> Path | None:
    """The local directory holding a model (a hub id resolves through the local cache), if any."""
    resolved = resolve_model(spec)
    if isinstance(resolved, Path):
        return resolved
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(resolved, local_files_only=True))
    except Exception:
        return None


def fingerprint_of(spec: str | Path) -> str:
    """A content fingerprint of the model (see :func:`knowtune.provenance.model_fingerprint`)."""
    from knowtune.provenance import model_fingerprint

    directory = model_dir_of(spec)
    if directory is None:
        raise KnowtuneError(f"model {spec!r} is neither a local directory nor in the local Hugging Face cache", fix="download it first, or pass a local directory")
    return model_fingerprint(directory)


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id: many causal LMs ship without a pad token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def load_model_and_tokenizer(spec: str | Path, *, device: str = "cpu", dtype=None):
    """``(model, tokenizer)`` in eval mode; a clear error if either cannot be loaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_model(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        model = AutoModelForCausalLM.from_pretrained(resolved, torch_dtype=dtype)
    except (OSError, ValueError, KeyError) as error:
        raise KnowtuneError(f"cannot load model {spec!r}: {error}", fix="pass a local model directory, a hub id already in the local cache, or `default`") from None
    return model.to(device).eval(), tokenizer
