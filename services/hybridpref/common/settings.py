"""One typed settings object per process, built at the entry point from
``HYBRIDPREF_*`` environment variables and CLI flags (flags win). Nothing reads the
environment at import time."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ServiceName = Literal["router", "tagger", "judge", "predictor"]

DEFAULT_PORTS: dict[str, int] = {"router": 50050, "tagger": 50051, "judge": 50052, "predictor": 50053}
DEFAULT_METRICS_PORTS: dict[str, int] = {"router": 9150, "tagger": 9151, "judge": 9152, "predictor": 9153}


class Settings(BaseSettings):
    """Settings shared by all four services; each reads the fields it needs.

    ``port``/``metrics_port`` default per service (see ``DEFAULT_PORTS``); 0 means
    "pick a free ephemeral port" (tests, embedded stacks); -1 disables metrics.
    """

    model_config = SettingsConfigDict(env_prefix="HYBRIDPREF_", extra="ignore")

    host: str = "127.0.0.1"
    port: int | None = None
    metrics_port: int | None = None
    # Downstream addresses (router only).
    tagger_address: str = f"127.0.0.1:{DEFAULT_PORTS['tagger']}"
    judge_address: str = f"127.0.0.1:{DEFAULT_PORTS['judge']}"
    predictor_address: str = f"127.0.0.1:{DEFAULT_PORTS['predictor']}"
    # Predictor: bundle to serve; None = the bundle packaged with hybridpref.
    bundle_path: str | None = None
    # Predictor: seconds between checks of the bundle folder for a new bundle (hot reload); 0 = off.
    bundle_watch_s: float = Field(10.0, ge=0)
    # Tagger.
    tagger_profile: str = "default"
    # Judge.
    judge_backend: Literal["embedded", "openai", "replay"] = "embedded"
    judge_model_path: str | None = None
    judge_replay_key: str = "gpt4"
    judge_openai_base_url: str | None = None
    judge_openai_model: str | None = None
    judge_openai_api_key_file: str | None = None
    judge_openai_concurrency: int = 4
    judge_template: str = "multipref"
    # Router.
    default_strategy: str = ""  # "" = hybridpref.router.strategies.DEFAULT_STRATEGY (chosen by the evaluation)
    # Server.
    grace_period_s: float = Field(20.0, ge=0)
    max_message_mb: int = Field(64, ge=1)
    max_batch: int = Field(20_000, ge=1)
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"

    def port_for(self, service: str) -> int:
        return DEFAULT_PORTS[service] if self.port is None else self.port

    def metrics_port_for(self, service: str) -> int:
        return DEFAULT_METRICS_PORTS[service] if self.metrics_port is None else self.metrics_port

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    def grpc_options(self) -> list[tuple[str, int]]:
        """Explicit message-size limits for servers and channels alike."""
        size = self.max_message_bytes
        return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
