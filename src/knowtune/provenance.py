"""What made an output: config, model fingerprint, seed and knowtune version."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from knowtune import __version__

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
#: Files changed this recently are hashed without caching (file times are coarser than a nanosecond, as git's "racy" files).
_RACY_NS = 2_000_000_000


def model_fingerprint(model_dir: str | Path) -> str:
    """A content hash of a saved model: its config, tokenizer files and weights.

    Two directories holding the same checkpoint get the same fingerprint; any change of
    weights, tokenizer or config changes it. Weight files are hashed in full (sha256), once per
    process while no file changes (the pre-flight check and the command both ask).
    """
    model_dir = Path(model_dir).resolve()
    names = sorted(
        p.name
        for p in model_dir.iterdir()
        if p.is_file()
        and (p.suffix in _WEIGHT_SUFFIXES or p.name in {"config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"})
    )
    stats = {name: (model_dir / name).stat() for name in names}
    stamp = tuple((name, s.st_size, s.st_ino, s.st_mtime_ns, s.st_ctime_ns) for name, s in stats.items())
    if time.time_ns() - max((s.st_ctime_ns for s in stats.values()), default=0) < _RACY_NS:
        return _hash_files.__wrapped__(model_dir, stamp)  # a file this fresh may change again within the clock's resolution
    return _hash_files(model_dir, stamp)


@lru_cache(maxsize=64)
def _hash_files(model_dir: Path, stamp: tuple[tuple[str, int, int, int, int], ...]) -> str:
    """The fingerprint of the files named in ``stamp`` (name, size, inode, mtime, ctime: a changed file is hashed again)."""
    digest = hashlib.sha256()
    for name, *_ in stamp:
        digest.update(name.encode())
        with open(model_dir / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def provenance(config: dict[str, Any] | None = None, *, seed: int | None = None, model_fingerprint: str | None = None, **extra: Any) -> dict[str, Any]:
    """The record stored beside every output."""
    import torch
    import transformers

    record: dict[str, Any] = {
        "knowtune_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "model_fingerprint": model_fingerprint,
        "config": config,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    record.update(extra)
    return record


def config_hash(obj: Any) -> str:
    """A stable short hash of a JSON-serialisable object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
