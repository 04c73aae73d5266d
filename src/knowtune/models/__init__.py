"""Finding and loading models: the one loader every stage uses.

The default base model (a ~1.6M-parameter ``LlamaForCausalLM`` pretrained by
``knowtune pretrain`` on the embedded world) ships inside the package in
``knowtune/models/default/``; ``knowtune models default`` prints its directory.

:func:`load` turns a model spec (``default``, a local directory written by
``save_pretrained``, or a Hugging Face Hub id already in the local cache; knowtune never
downloads) plus a device (``auto``/``cpu``/``cuda``) and a dtype (``auto``/``float32``/
``bfloat16``/``float16``) into ``(model in eval mode, tokenizer)``. ``annotate``, ``train``
(student and teacher), ``evaluate``, ``models recall`` and the study all load through it.
"""

from __future__ import annotations

from pathlib import Path

from knowtune.errors import KnowtuneError

DEFAULT_MODEL_DIR = Path(__file__).parent / "default"
DEFAULT_ALIASES = ("default",)
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
#: Files that hold a tokenizer's vocabulary (tokenizer_config.json alone holds none: transformers then
#: tries converters and fails with messages about protobuf or sentencepiece).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")
_INCOMPLETE_FIX = "copy or download the model again (the file is incomplete), or re-save it with model.save_pretrained(DIR)"
_SPEC_FIX = "pass --model default, a local directory written by save_pretrained, or a Hub id already in the local Hugging Face cache"


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


def resolve_model_dir(spec: str | Path) -> Path:
    """The local directory of ``spec``; a hub id must already be in the local cache (offline)."""
    directory = model_dir_of(spec)
    if directory is None:
        raise KnowtuneError(f"model {str(spec)!r} is neither a local directory nor in the local Hugging Face cache (knowtune never downloads)",
                            fix=f"download it first (`huggingface-cli download {spec}`), or {_SPEC_FIX}")
    return directory


def fingerprint_of(spec: str | Path) -> str:
    """A content fingerprint of the model (see :func:`knowtune.provenance.model_fingerprint`)."""
    from knowtune.provenance import model_fingerprint

    return model_fingerprint(resolve_model_dir(spec))


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without a GPU is an error."""
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise KnowtuneError(f"device: {device!r} is not one of {', '.join(DEVICES)}", fix="use --device auto, cpu or cuda")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KnowtuneError("device: cuda was requested but no CUDA GPU is visible", fix="use --device cpu or --device auto")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` -> bfloat16 on CUDA, float32 on the CPU; other names are kept."""
    if dtype not in DTYPES:
        raise KnowtuneError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}", fix="use --dtype auto, float32, bfloat16 or float16")
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id: many causal LMs ship without a pad token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def check_model(spec: str | Path) -> Path:
    """The local directory of ``spec`` once its files are complete: config, weights (not truncated)
    and tokenizer files; a :class:`KnowtuneError` naming the missing or broken file otherwise.
    Cheap (reads headers only): every command calls it before any heavy work."""
    from transformers import AutoConfig

    directory = resolve_model_dir(spec)
    _check_files(directory, str(spec))
    try:
        config = AutoConfig.from_pretrained(directory)
    except Exception as error:  # an unknown model_type (a newer architecture), a bad value: ValueError, KeyError ...
        raise KnowtuneError(f"model {str(spec)!r} could not be loaded: transformers cannot read {directory / 'config.json'}: {type(error).__name__}: {error}",
                            fix="upgrade transformers if the model is of a newer architecture, or restore config.json "
                                "(copy or download the model again, or re-save it with model.save_pretrained(DIR))") from None
    _check_shapes(directory, str(spec), config)
    return directory


def _check_shapes(directory: Path, spec: str, config) -> None:
    """Every tensor of the safetensors files whose name the architecture of ``config`` has must have its shape
    (built on the meta device: no memory). Catches weights saved for another config before they are loaded."""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    files = [path for path in _weight_files(directory, spec) if path.suffix == ".safetensors"]
    if not files or getattr(config, "quantization_config", None) is not None:  # quantized tensors are packed in other shapes
        return
    try:
        with torch.device("meta"):
            expected = {name: tuple(tensor.shape) for name, tensor in AutoModelForCausalLM.from_config(config).state_dict().items()}
    except Exception:
        return  # not buildable from its config alone: from_pretrained reports it
    for path in files:
        with open(path, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        for name, entry in header.items():
            if name in expected and tuple(entry["shape"]) != expected[name]:
                raise KnowtuneError(f"model {spec!r} could not be loaded: {path} holds {name} of shape {tuple(entry['shape'])}, "
                                    f"but {directory / 'config.json'} makes it {expected[name]}",
                                    fix="pass the config.json saved with these weights (copy or download the model again, or re-save it with save_pretrained)")


#: Config keys that bound a model's sequence length, in the order they are consulted.
_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_length(directory: str | Path) -> tuple[int | None, str | None]:
    """The longest sequence (tokens) the model in ``directory`` takes and the ``config.json`` key
    that says so; ``(None, None)`` when its config sets no bound (ALiBi models such as BLOOM)."""
    import json

    config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    for block in (config, config.get("text_config") or {}):
        for key in _LENGTH_KEYS:
            if isinstance(block.get(key), int) and block[key] > 0:
                return block[key], key
    return None, None


def _check_files(directory: Path, spec: str) -> None:
    """Name what is missing from a model directory before transformers gives a less direct error."""
    if not (directory / "config.json").is_file():
        raise KnowtuneError(f"{directory}: not a Hugging Face model directory (no config.json)", fix=_SPEC_FIX)
    if not any((directory / name).is_file() for name in _WEIGHT_FILES):
        adapter = (directory / "adapter_config.json").is_file()
        raise KnowtuneError(
            f"model {spec!r} could not be loaded: {directory} has config.json but no weights ({' / '.join(_WEIGHT_FILES[::2])})",
            fix="point --model at a train run's OUT/model (the merged model), not OUT/adapter" if adapter
            else "save the model with model.save_pretrained(DIR), or pass the directory that holds its weights",
        )
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES) and not any(directory.glob("*.tiktoken")):
        raise KnowtuneError(f"model {spec!r} could not be loaded: {directory} has no tokenizer files (none of {', '.join(_TOKENIZER_FILES)}"
                            f"{' beside its tokenizer_config.json' if (directory / 'tokenizer_config.json').is_file() else ''})",
                            fix="save the tokenizer beside the model: tokenizer.save_pretrained(DIR)")
    _check_config(directory, spec)
    for weights in _weight_files(directory, spec):
        _check_weights(weights, spec)


def _check_config(directory: Path, spec: str) -> None:
    """``config.json`` must be a JSON object naming a ``model_type``."""
    import json

    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise KnowtuneError(f"model {spec!r} could not be loaded: {directory / 'config.json'} is not valid JSON ({error})",
                            fix="restore config.json (copy or download the model again, or re-save it with model.save_pretrained(DIR))") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise KnowtuneError(f"model {spec!r} could not be loaded: {directory / 'config.json'} names no model_type",
                            fix="restore config.json (copy or download the model again, or re-save it with model.save_pretrained(DIR))")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        path = directory / name
        try:
            json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (ValueError, UnicodeDecodeError) as error:
            raise KnowtuneError(f"model {spec!r} could not be loaded: {path} is truncated or not valid JSON ({error})", fix=_INCOMPLETE_FIX) from None


def _weight_files(directory: Path, spec: str) -> list[Path]:
    """The weight files transformers would read: the single file, or every shard an index lists."""
    import json

    for name in _WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        try:
            shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise KnowtuneError(f"model {spec!r} could not be loaded: {path} is not a valid weight index ({error})", fix=_INCOMPLETE_FIX) from None
        missing = [shard for shard in shards if not (directory / shard).is_file()]
        if missing:
            raise KnowtuneError(f"model {spec!r} could not be loaded: {path} lists weight shards that are missing: {', '.join(missing)}",
                                fix=_INCOMPLETE_FIX)
        return [directory / shard for shard in shards]
    return []


def _check_weights(path: Path, spec: str) -> None:
    """A truncated or corrupt weight file fails here, naming the file, before any tensor is allocated.

    A safetensors file is an 8-byte little-endian header length, a JSON header giving each
    tensor's byte range, then the tensor bytes: its size must be exactly 8 + header + the last
    range's end. A ``.bin`` file is a zip archive whose directory sits at its end.
    """
    import json
    import zipfile

    size = path.stat().st_size
    if path.suffix == ".bin":
        if not zipfile.is_zipfile(path):
            raise KnowtuneError(f"model {spec!r} could not be loaded: {path} is truncated or corrupt (not a complete PyTorch archive)", fix=_INCOMPLETE_FIX)
        return
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = handle.read(length) if 0 < length <= size - 8 else b""
    try:
        tensors = json.loads(header.decode("utf-8")) if header else None
        end = max((entry["data_offsets"][1] for key, entry in tensors.items() if key != "__metadata__"), default=0)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError):
        tensors = None
    if tensors is None:
        raise KnowtuneError(f"model {spec!r} could not be loaded: {path} is truncated or corrupt (its {size}-byte file has no valid safetensors header)",
                            fix=_INCOMPLETE_FIX)
    if 8 + length + end != size:
        raise KnowtuneError(f"model {spec!r} could not be loaded: {path} is truncated or corrupt (its header describes {8 + length + end} bytes, "
                            f"the file has {size})", fix=_INCOMPLETE_FIX)


def load_tokenizer(directory: Path, spec: str):
    """The tokenizer saved in model ``directory``; a :class:`KnowtuneError` naming the model when it does not load."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory)
    except Exception as error:  # transformers raises OSError, ValueError, KeyError, ImportError ...: one message
        raise KnowtuneError(f"model {spec!r} could not be loaded: its tokenizer in {directory} fails to load: {type(error).__name__}: {error}",
                            fix="save the model's own tokenizer beside it with tokenizer.save_pretrained(DIR)") from None


def _dtype_kwargs(dtype: str) -> dict:
    """``from_pretrained``'s dtype keyword: ``dtype`` from transformers 4.56 on, ``torch_dtype`` before."""
    import torch
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: getattr(torch, dtype)}


def load(spec: str | Path, device: str = "auto", dtype: str = "auto"):
    """``(model, tokenizer)`` of the causal LM ``spec``, in eval mode on ``device`` in ``dtype``.

    ``spec``: ``default``, a local directory, or a hub id already in the local cache.
    ``device``: ``auto`` (CUDA when visible, else CPU), ``cpu`` or ``cuda``. ``dtype``:
    ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32``, ``bfloat16`` or ``float16``.
    Every failure is a :class:`KnowtuneError` that names the model and the fix.
    """
    from transformers import AutoModelForCausalLM

    directory = resolve_model_dir(spec)
    device = resolve_device(device)
    _check_files(directory, str(spec))
    tokenizer = load_tokenizer(directory, str(spec))
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, **_dtype_kwargs(resolve_dtype(dtype, device)))
    except Exception as error:
        raise KnowtuneError(f"model {str(spec)!r} could not be loaded as a causal language model: {type(error).__name__}: {error}",
                            fix="point --model at a causal LM saved with save_pretrained (config.json, weights, tokenizer)") from None
    return model.to(device).eval(), tokenizer
