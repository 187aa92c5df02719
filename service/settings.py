"""Service configuration: one typed settings object, read from environment variables.

Every field has a documented default and an environment variable of the same name in upper case
(``REDIS_URL``, ``ITEM_CACHE_SIZE``, ...). Build it once at start-up (``Settings()``), never at
import, so that a bad value fails the process before it serves anything, with a message naming
the variable.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.schema import DEFAULT_HISTORY_LEN


class Settings(BaseSettings):
    """Settings of the feature store (and, later, of the HTTP service)."""

    model_config = SettingsConfigDict(extra="ignore", validate_default=True)

    redis_url: str = Field(
        default="redis://localhost:6379/0",
        description="Redis holding the feature store (redis://[:password@]host:port/db).",
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
