"""The embedded default world: a slice of EntityQuestions shipped inside the package.

EntityQuestions: Sciavolino, Zhong, Lee and Chen, "Simple Entity-Centric Questions
Challenge Dense Retrievers", EMNLP 2021 (MIT licence, Princeton NLP; see
``embedded/LICENSE`` and ``embedded/ATTRIBUTION.md``). Rebuild with
``python -m knowtune.world.entityquestions --source <EntityQuestions dir>``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from knowtune.world.spec import World

EMBEDDED_DIR = Path(__file__).parent / "embedded"
#: Names that ``--data`` / ``--world`` options accept for the embedded world.
EMBEDDED_ALIASES = ("embedded", "default")


@lru_cache(maxsize=1)
def load_embedded_world() -> World:
    """The embedded world (cached: it is read-only package data)."""
    return World.load(EMBEDDED_DIR)


def resolve_data_path(spec: str | Path) -> Path:
    """Map ``embedded``/``default`` to the embedded world's directory; other values are paths."""
    return EMBEDDED_DIR if str(spec) in EMBEDDED_ALIASES else Path(spec)


def resolve_world(spec: str | Path) -> World:
    """``embedded``/``default`` or a directory written by :meth:`World.save`."""
    return load_embedded_world() if str(spec) in EMBEDDED_ALIASES else World.load(spec)
