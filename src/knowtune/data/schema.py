"""The one QA example schema every knowtune stage reads and writes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Split = Literal["train", "dev", "test"]
SPLITS: tuple[str, ...] = ("train", "dev", "test")


class QAExample(BaseModel):
    """A closed-book question with its gold answers.

    ``id`` is unique within a dataset; ``relation`` groups examples that share a
    question template (the unit SliCK draws exemplars from); ``subject``/``object``
    are the entities of the underlying fact when known.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    relation: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answers: tuple[str, ...] = Field(min_length=1)
    split: Split
    subject: str | None = None
    object: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("question")
    @classmethod
    def _question_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("question is blank")
        return value

    @field_validator("answers")
    @classmethod
    def _answers_not_blank(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not isinstance(a, str) or not a.strip() for a in value):
            raise ValueError("every answer must be a non-blank string")
        return value

    def to_record(self) -> dict[str, Any]:
        """A plain JSON-serialisable dict (answers as a list)."""
        record = self.model_dump()
        record["answers"] = list(self.answers)
        return record
