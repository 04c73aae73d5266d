"""The ``--backend openai`` settings: which servers, which model, which key, how hard to try.

A stage config that generates (``AnnotateConfig``, ``EvalConfig``) inherits
:class:`ServedSettings`, so every field here is a flag of its command (``--backend``,
``--base-url`` (repeatable), ``--served-model``, ``--api-key-env``, ...). The API key itself
is never a setting: ``api_key_env`` names the environment variable that holds it, so the key
appears neither on a command line nor in a file knowtune writes (``config.yaml`` records the
variable's name only).
"""

from __future__ import annotations

import os
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from knowtune.config import StageConfig
from knowtune.errors import ConfigError

BACKENDS = ("hf", "openai")


class ServedSettings(StageConfig):
    """Where generation runs: in this process (``hf``) or on OpenAI-compatible servers (``openai``)."""

    backend: Literal["hf", "openai"] = "hf"
    """hf: generate in this process; openai: through OpenAI-compatible /v1/completions servers (docs/serving.md)."""
    base_url: list[str] | None = None
    """Server base URL, e.g. http://127.0.0.1:8080/v1 (repeat for replicas: requests are spread over them)."""
    served_model: str | None = None
    """The model name the server serves (default: the one model its /v1/models lists)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the servers' API key (never the key itself)."""
    concurrency: int = Field(default=8, ge=1)
    """Requests in flight per server."""
    request_timeout: float = Field(default=120.0, gt=0)
    """Seconds one request may take before it is retried."""
    max_retries: int = Field(default=8, ge=0)
    """Retries of one request (429, 5xx, timeouts, dropped connections), with exponential backoff and jitter."""
    retry_backoff: float = Field(default=0.5, gt=0)
    """Seconds of the first retry's backoff ceiling; it doubles per retry (full jitter, at most 30 s)."""
    samples_per_request: int | None = Field(default=None, ge=1)
    """Most samples (n) one request asks for (default: the server's slot count where it says, else 16)."""

    @field_validator("base_url")
    @classmethod
    def _urls(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{url!r} is not an http(s) URL (write e.g. http://127.0.0.1:8080/v1)")
        return value

    def served(self) -> bool:
        """Whether generation goes to servers."""
        return self.backend == "openai"

    def check_served(self) -> None:
        """Raise a :class:`ConfigError` naming the flag when the served settings are incomplete."""
        if not self.served():
            return
        if not self.base_url:
            raise ConfigError("--backend openai needs at least one --base-url", fix="pass --base-url http://HOST:PORT/v1 (repeat it for replicas)")
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            raise ConfigError(f"api_key_env: the environment variable {self.api_key_env} is not set or empty",
                              fix=f"export {self.api_key_env}=... before running, or leave --api-key-env out for servers without a key")

    def api_key(self) -> str | None:
        """The API key, read from the environment variable ``api_key_env`` (None without one)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


def host_of(url: str) -> str:
    """``http://10.0.0.5:8000/v1`` -> ``10.0.0.5:8000`` (what the protocol records of a server)."""
    parts = urlsplit(url)
    return parts.netloc.rsplit("@", 1)[-1]
