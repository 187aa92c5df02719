"""Service configuration: one typed settings object, read from environment variables.

Every field has a documented default and an environment variable of the same name in upper case
(``REDIS_URL``, ``ITEM_CACHE_SIZE``, ...). Build it once at start-up (``Settings()``), never at
import, so that a bad value fails the process before it serves anything, with a message naming
the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.schema import DEFAULT_HISTORY_LEN


class Settings(BaseSettings):
    """Settings of the scoring service and its feature store."""

    model_config = SettingsConfigDict(extra="ignore", validate_default=True)

    redis_url: str = Field(
        default="redis://localhost:6379/0",
        description=(
            "Redis holding the feature store: redis://[:password@]host:port/db, or rediss:// "
            "for TLS (see REDIS_TLS_*)."
        ),
    )
    redis_cluster: bool = Field(
        default=False,
        description=(
            "REDIS_URL names one seed node of a Redis Cluster (redis:// or rediss://, db 0): "
            "the client discovers the others, follows MOVED/ASK redirects and failovers, and "
            "sends each request's reads to every node it needs in parallel."
        ),
    )
    redis_tls_ca_file: Path | None = Field(
        default=None,
        description=(
            "CA certificates (PEM) that a rediss:// REDIS_URL's server certificate must chain "
            "to; unset: the system's CAs. Only with rediss://."
        ),
    )
    redis_tls_cert_file: Path | None = Field(
        default=None,
        description=(
            "Client certificate (PEM) for a Redis that requires one (tls-auth-clients yes); "
            "with REDIS_TLS_KEY_FILE. Only with rediss://."
        ),
    )
    redis_tls_key_file: Path | None = Field(
        default=None, description="Private key (PEM) of REDIS_TLS_CERT_FILE."
    )
    redis_timeout_s: float = Field(
        default=0.25,
        gt=0,
        description=(
            "Connect and reply timeout of online reads and appends, in seconds. A request that "
            "waits longer fails with StoreTimeout instead of holding a worker. Bulk loads use "
            "their own, longer timeout (--timeout)."
        ),
    )
    redis_max_connections: int = Field(
        default=64,
        ge=1,
        description="Size of the one shared Redis connection pool of a service process.",
    )
    feature_key_prefix: str = Field(
        default="qin",
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description=(
            "Prefix of every feature-store key, so that several deployments can share a Redis. "
            "Letters, digits, '_', '.' and '-' only: braces would break the Cluster hash tags."
        ),
    )
    item_cache_size: int = Field(
        default=100_000,
        ge=0,
        description=(
            "Items kept in the in-process item cache (about 0.55 KB each; 100,000 covers "
            "MicroLens' 91,718). 0 disables the cache: every item is read from Redis."
        ),
    )
    feature_versions_kept: int = Field(
        default=2,
        ge=1,
        description="Feature versions kept after a bulk load switches: the live one and older.",
    )
    history_len: int = Field(
        default=DEFAULT_HISTORY_LEN,
        ge=1,
        description=(
            "Most recent behaviours kept per user by the loader and by appends, and returned "
            "by reads (the model reads the last 64)."
        ),
    )

    # ---------------------------------------------------------------------------------------
    # HTTP and model

    model_path: Path = Field(
        default=Path("artifacts/demo/model.onnx"),
        description="The exported serving graph (python -m export). Loaded at start-up.",
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port the HTTP server binds.")
    provider: Literal["auto", "cuda", "cpu"] = Field(
        default="auto",
        description=(
            "onnxruntime execution provider. auto: CUDA when the session really gets it, else "
            "CPU (logged); cuda: CUDA or refuse to start; cpu: CPU only."
        ),
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description=(
            "onnxruntime intra-op threads of the CPU provider; 0 = one per core less one (at "
            "least 1), leaving a core to the event loop that parses requests and reads Redis."
        ),
    )
    ort_spinning: bool = Field(
        default=False,
        description=(
            "Let onnxruntime's idle threads spin for work. Off: spinning saves microseconds per "
            "call but burns cores the event loop needs (measured here: 5.3 vs 3.2 ms of CPU per "
            "request)."
        ),
    )
    max_candidates: int = Field(
        default=1000,
        ge=1,
        description="Most candidates one /score request may carry (more: 422).",
    )
    max_history: int = Field(
        default=1000,
        ge=0,
        description=(
            "Most item ids an explicit request history may carry (more: 422). Only the last "
            "HISTORY_LEN are used."
        ),
    )
    batch_max_candidates: int = Field(
        default=2048,
        ge=1,
        description=(
            "A model batch closes when it holds this many candidates (requests are never split, "
            "so it is at least MAX_CANDIDATES)."
        ),
    )
    batch_max_wait_ms: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Longest a queued request waits for others to join its batch, in milliseconds. The "
            "model runs one batch at a time, so under load batches fill while it is busy even at "
            "0 (the default: on CPU a wait only adds latency, since cost grows with candidates); "
            "on a GPU, 0.5-2 ms buys larger batches at a latency cost."
        ),
    )
    batch_pad: Literal["auto", "always", "never"] = Field(
        default="auto",
        description=(
            "Pad each batch's candidates to a power of two (a bucket). auto: on CUDA only, where "
            "fixed shapes let kernels and buffers be reused; on CPU padding only costs time."
        ),
    )
    queue_max_candidates: int = Field(
        default=16384,
        ge=1,
        description=(
            "Candidates waiting for the model at most; a request that would exceed it is shed "
            "at once with 429 instead of queueing without bound."
        ),
    )
    max_in_flight: int = Field(
        default=128,
        ge=1,
        description=(
            "/score requests between arrival and answer at most; one more is answered 429 at "
            "once, before its body is read. Bounds memory and the latency of admitted requests "
            "when the event loop itself is the bottleneck (the queue bound only sees requests "
            "that got as far as the model)."
        ),
    )
    admission_latency_ms: float = Field(
        default=0.0,
        ge=0,
        description=(
            "When > 0, the in-flight limit adapts (at most MAX_IN_FLIGHT) so that 90% of /score "
            "answers take at most this many milliseconds. It is judged once per round of answers "
            "(the limit's worth, at least 20): a round with more than 10% slow answers cuts it by "
            "half their share, a round in which it refused requests raises it by one, and a limit "
            "that refused nobody shrinks to twice the concurrency seen (not below 16), so a surge "
            "after a calm spell is not let in whole. Set it near the unloaded p99 (what the "
            "service itself measures, without the network) to keep admitted requests fast under "
            "overload; a looser target lets a queue build first."
        ),
    )
    request_timeout_s: float = Field(
        default=1.0,
        gt=0,
        description=(
            "Deadline of a /score request from arrival. A request still waiting for features or "
            "the model past it gets 504 and is dropped from its batch if not yet scored."
        ),
    )
    shutdown_drain_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description=(
            "On SIGTERM, seconds the service keeps serving while /readyz answers 503, so that a "
            "load balancer that health-checks it stops sending requests before it closes; then "
            "it stops accepting connections and answers the requests it has. 0 closes at once. "
            "A second SIGTERM, or SIGINT (Ctrl-C), does not wait."
        ),
    )
    degraded_mode: Literal["off", "empty_history"] = Field(
        default="off",
        description=(
            "When Redis is unreachable or too slow: off = answer 503/504 at once (the caller "
            "falls back); empty_history = score anyway with an empty history and the cached "
            "item features (uncached items as unseen), marked degraded in the answer and in "
            "qin_degraded_requests_total."
        ),
    )
    api_key: SecretStr | None = Field(
        default=None,
        description=(
            "When set, /score requires it (header 'Authorization: Bearer KEY' or 'X-API-Key: "
            "KEY'); unset, /score is open (a service behind a private network)."
        ),
    )
    admin_api_key: SecretStr | None = Field(
        default=None,
        description=(
            "Required by the admin endpoints (POST /admin/reload), same headers; unset, they "
            "answer 403 (SIGHUP still reloads)."
        ),
    )
    max_body_bytes: int = Field(
        default=1_000_000,
        ge=1024,
        description="Largest request body accepted; larger ones get 413 before being read.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Log level of the service and of uvicorn."
    )

    def redis_tls(self, url: str | None = None) -> dict[str, str]:
        """redis-py connection arguments for the TLS files, for ``url`` (default REDIS_URL):
        empty for a plain redis:// URL (then no TLS file may be set: the validator says so)."""
        if not (url or self.redis_url).startswith("rediss://"):
            return {}
        return {
            argument: str(path)
            for field, argument in _TLS_FILES.items()
            if (path := getattr(self, field)) is not None
        }

    @model_validator(mode="after")
    def _tls_files_fit(self) -> Settings:
        files = {field.upper(): getattr(self, field) for field in _TLS_FILES}
        given = [name for name, path in files.items() if path is not None]
        if given and not self.redis_url.startswith("rediss://"):
            scheme = self.redis_url.split("://", 1)[0]  # never the URL: it may hold a password
            raise ValueError(f"{', '.join(given)} need a rediss:// REDIS_URL, not {scheme}://")
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise ValueError("REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together")
        for name, path in files.items():
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file: {path}")
        return self

    @model_validator(mode="after")
    def _cluster_url_fits(self) -> Settings:
        url = self.redis_url
        scheme = url.split("://", 1)[0]
        if "cluster=" in url.partition("?")[2]:
            raise ValueError("REDIS_URL: say REDIS_CLUSTER=true instead of a cluster= parameter")
        if not self.redis_cluster:
            return self
        if scheme not in ("redis", "rediss"):
            raise ValueError(
                f"REDIS_CLUSTER needs a redis:// or rediss:// REDIS_URL, not {scheme}://"
            )
        database = urlsplit(url).path.strip("/")
        if database not in ("", "0"):
            raise ValueError(
                f"REDIS_CLUSTER: a Redis Cluster has only db 0, REDIS_URL names db {database}"
            )
        return self

    @model_validator(mode="after")
    def _batch_holds_a_request(self) -> Settings:
        if self.batch_max_candidates < self.max_candidates:
            raise ValueError(
                f"BATCH_MAX_CANDIDATES ({self.batch_max_candidates}) must be at least "
                f"MAX_CANDIDATES ({self.max_candidates}): a request is never split"
            )
        if self.queue_max_candidates < self.max_candidates:
            raise ValueError(
                f"QUEUE_MAX_CANDIDATES ({self.queue_max_candidates}) must be at least "
                f"MAX_CANDIDATES ({self.max_candidates})"
            )
        return self


#: TLS file settings and the redis-py connection argument each one becomes.
_TLS_FILES = {
    "redis_tls_ca_file": "ssl_ca_certs",
    "redis_tls_cert_file": "ssl_certfile",
    "redis_tls_key_file": "ssl_keyfile",
}


def settings_markdown() -> str:
    """The configuration table of the README, generated from the fields (so it cannot drift)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = default if not isinstance(default, Path) else default.as_posix()
        text = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{name.upper()}` | `{shown}` | {text} |")
    return "\n".join(rows)
