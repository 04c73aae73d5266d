"""The state of a study directory (``study.json``): each stage's key and status, the trained runs.

``knowtune study`` skips a stage whose stored key equals the key of its current settings and
inputs and whose status is ``done`` (:mod:`knowtune.study.pipeline`). The file is JSON:

.. code-block:: json

    {"stages": {"annotate": {"key": "...", "status": "done", "seconds": 12.3, "counts": {}}},
     "runs": {"D_0": {"dir": "runs/D_0", "kind": "ratio", "size": 8, "params": {}, "done": true}},
     "provenance": {}, "trained": ["D_0"],
     "methods": {"sft": {"dir": "runs/D_50", "variant": "D_50", "done": true}}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from knowtune.errors import DataError


class StageRecord(BaseModel):
    """One stage: the key of the settings it ran with, its status and time; the stage's own summary
    (``counts``, ``variants``, ``methods``, ``cells``, ``findings``) travels as further keys."""

    model_config = ConfigDict(extra="allow")

    key: str
    status: Literal["running", "done"]
    seconds: float | None = None

    def is_done(self, key: str) -> bool:
        return self.key == key and self.status == "done"


class RunRecord(BaseModel):
    """A trained variant: its run directory (relative to the study; shared by variants with equal data),
    the curated variant's kind, size and parameters."""

    dir: str
    kind: str
    size: int
    params: dict[str, Any] = Field(default_factory=dict)
    done: bool = False


class MethodRecord(BaseModel):
    """A method of ``compare_methods:``: its run directory (a trained variant's when reused) and variant."""

    dir: str
    variant: str
    done: bool = False


class StudyState(BaseModel):
    """Everything ``study.json`` holds."""

    stages: dict[str, StageRecord] = Field(default_factory=dict)
    runs: dict[str, RunRecord] = Field(default_factory=dict)
    provenance: dict[str, Any] | None = None
    trained: list[str] | None = None
    methods: dict[str, MethodRecord] | None = None

    @classmethod
    def load(cls, path: Path) -> StudyState:
        """The state saved in ``path``; an empty state when there is none."""
        if not path.is_file():
            return cls()
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise DataError(path, f"not a study state: {error}", fix="delete the study directory (or pass a new --out) to start over") from None

    def to_json(self) -> dict[str, Any]:
        """The JSON record (unset optional parts left out; a stage's ``seconds`` only once it is done)."""
        record = self.model_dump(mode="json", exclude_none=True, exclude={"stages"})
        stages = {name: stage.model_dump(mode="json") for name, stage in self.stages.items()}
        for stage in stages.values():
            if stage["seconds"] is None:
                del stage["seconds"]
        return {"stages": stages, **record}

    def stage_done(self, name: str, key: str) -> bool:
        return name in self.stages and self.stages[name].is_done(key)

    def run_done(self, name: str, study_dir: Path) -> bool:
        """The variant ``name`` finished (its run directory holds ``provenance.json``)."""
        run = self.runs.get(name)
        return run is not None and run.done and (study_dir / run.dir / "provenance.json").is_file()

    def method_done(self, name: str, study_dir: Path) -> bool:
        """The compared method ``name`` finished."""
        method = (self.methods or {}).get(name)
        return method is not None and method.done and (study_dir / method.dir / "provenance.json").is_file()

