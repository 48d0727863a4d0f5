"""Server settings: one frozen pydantic-settings model, read from arguments and `DRIFTLOOP_SERVE_*` env.

The API keys are the exception: they come from `DRIFTLOOP_API_KEY` (admin: may score, load,
unload and set traffic; the release plane sends it) and `DRIFTLOOP_SCORE_API_KEY` (may score and
read metadata and /metrics, nothing else), or explicit arguments, never from command-line flags,
so they do not show up in `ps`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    """Everything `driftloop serve` can tune. Defaults fit a 2-core laptop (see docs/serving.md).

    Units are in the field names: `_ms`, `_s`, `_bytes`, `_rows`.
    """

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_SERVE_", frozen=True, extra="forbid")

    repository: Path = Field(description="model repository root: <repository>/<model>/<version>/")
    models: list[str] = Field(default_factory=list, description="models to load at start; empty = all found")
    # Micro-batching. Delay 0: batches form from what queued while the previous batch ran, which
    # adds no latency at low load; a 2 ms delay cost throughput and p99 in bench/serve_batching.py.
    max_batch_size: int = Field(256, ge=1, description="rows per session.run; 1 disables merging")
    max_queue_delay_ms: float = Field(0.0, ge=0, description="how long a batch waits to fill")
    max_queue_rows: int = Field(8192, ge=1, description="rows waiting in the queue before 429")
    intra_op_threads: int = Field(1, ge=0, description="ONNX Runtime intra-op threads (0 = ORT default)")
    warmup_rows: int = Field(
        64, ge=0, description="reference rows scored once before a version takes traffic"
    )
    # Validation limits.
    max_body_bytes: int = Field(1 << 20, ge=1, description="request body limit (413 past it)")
    max_rows: int = Field(10_000, ge=1, description="rows per request (413 past it)")
    max_string_length: int = Field(64, ge=1, description="characters per BYTES value")
    # Prediction log; None disables it.
    log_dir: Path | str | None = Field(
        None, description="prediction log root: <log_dir>/<model>/date=YYYY-MM-DD/; a folder or a URL (s3://bucket/prefix)"
    )
    flush_interval_s: float = Field(2.0, gt=0, description="the most a kill -9 can lose, in seconds of rows")
    max_rows_per_file: int = Field(
        100_000, ge=1, description="a log file is written at latest at this many rows"
    )
    metrics_textfile_dir: Path | None = Field(
        None,
        description="re-expose every *.prom file of this folder on /metrics (the drift check's gauges: monitor.metrics_dir)",
    )
    tracing: bool = Field(
        False, description="OpenTelemetry spans per request, configured by OTEL_* variables (serving/tracing.py)"
    )
    # Security.
    api_key: str | None = Field(
        None, description="admin key: if set, every endpoint but health needs it (or the score key)"
    )
    score_api_key: str | None = Field(
        None, description="score-only key: scoring, metadata and /metrics; needs `api_key` set too"
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After of a 429")
    # TLS (uvicorn's): both or neither.
    ssl_certfile: Path | None = Field(None, description="PEM certificate chain; serve HTTPS")
    ssl_keyfile: Path | None = Field(None, description="PEM private key of the certificate")

    @model_validator(mode="after")
    def _keys_and_tls(self) -> ServeSettings:
        if self.score_api_key and not self.api_key:
            raise ValueError(
                "score_api_key: a score-only key needs an admin key too (DRIFTLOOP_API_KEY); "
                "without one the repository routes would be open"
            )
        if self.score_api_key and self.score_api_key == self.api_key:
            raise ValueError("score_api_key: must differ from the admin key")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile / ssl_keyfile: give both or neither")
        return self


def api_key_from_env() -> str | None:
    """The admin API key from `DRIFTLOOP_API_KEY`, or None when unset or empty."""
    import os

    return os.environ.get("DRIFTLOOP_API_KEY") or None


def score_api_key_from_env() -> str | None:
    """The score-only API key from `DRIFTLOOP_SCORE_API_KEY`, or None when unset or empty."""
    import os

    return os.environ.get("DRIFTLOOP_SCORE_API_KEY") or None
