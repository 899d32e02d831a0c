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
    # Judge. "learned": the packaged CPU preference model (fast, calibrated); "embedded": a local LM
    # (SmolLM2 GGUF by default); judge_model_path overrides the model of either.
    judge_backend: Literal["learned", "embedded", "openai", "replay"] = "learned"
    judge_model_path: str | None = None
    judge_replay_key: str = "gpt4"
    judge_openai_base_url: str | None = None
    judge_openai_model: str | None = None
    judge_openai_api_key_file: str | None = None
    judge_openai_concurrency: int = 4
    judge_template: str = "multipref"
    # Router.
    default_strategy: str = ""  # "" = hybridpref.router.strategies.DEFAULT_STRATEGY (chosen by the evaluation)
    # Router: worker threads for routing and other CPU work (bounded, owned by the server).
    router_workers: int = Field(4, ge=1)
    # Router: seconds between checks of the backends' health (its readiness follows them).
    backend_check_s: float = Field(1.0, gt=0)
    # Router: NOT_SERVING when its worker pool has not started a no-op for this long (all workers stuck).
    pool_stall_s: float = Field(10.0, gt=0)
    # Router: backends its readiness requires (comma-separated; drop "predictor" to stay ready for
    # random / all_human / all_lm routing while no predictor bundle is deployed).
    required_backends: str = "tagger,judge,predictor"
    # Server.
    grace_period_s: float = Field(20.0, ge=0)
    max_message_mb: int = Field(64, ge=1)
    max_batch: int = Field(20_000, ge=1)
    max_concurrent_rpcs: int = Field(256, ge=1)
    # Longest a call may run; applies when the caller sets no deadline or a longer one. 0 = no cap.
    max_deadline_s: float = Field(1800.0, ge=0)
    # Metrics HTTP bind address ("" = same as ``host``); NetworkPolicy restricts who may scrape.
    metrics_host: str = ""
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    # Request limits (checked before any work; see hybridpref_client.core.limits).
    max_text_chars: int = Field(200_000, ge=1)
    max_stream_instances: int = Field(1_000_000, ge=1)
    max_simulated_candidates: int = Field(10_000, ge=1)
    max_budget_cost: float = Field(1e12, gt=0)
    # TLS on this service's gRPC port (PEM files). Both set = TLS on; a client CA = mutual TLS
    # (callers must present a certificate signed by it: use it for the internal services).
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    # TLS for the router's channels to the backends: the CA that signed their certificates,
    # and a client certificate + key when the backends require mutual TLS.
    tls_ca_file: str | None = None
    tls_client_cert_file: str | None = None
    tls_client_key_file: str | None = None
    # Name to check the backends' certificates against when it differs from the address' host.
    tls_server_name: str | None = None
    # With TLS on: a plaintext port serving only grpc.health.v1 for the kubelet's gRPC probes
    # (they cannot speak TLS). None = off.
    health_port: int | None = None
    # Router: per-vendor API keys (JSON or YAML; see hybridpref.server.auth). None = auth off.
    api_keys_file: str | None = None
    # Seconds between checks of the keys file for changes (rotation without restart).
    api_keys_reload_s: float = Field(2.0, gt=0)
    # Client channels to backends: keepalive pings and reconnect back-off (a returning backend
    # is found again within ``reconnect_backoff_max_s``, whatever the outage length).
    keepalive_s: float = Field(20.0, gt=0)
    reconnect_backoff_max_s: float = Field(2.0, gt=0)
    # Servers: close connections older than this (GOAWAY; in-flight calls still finish), so clients
    # re-resolve DNS and spread over replicas added since. 0 = never (the Kubernetes config sets it).
    max_connection_age_s: float = Field(0.0, ge=0)

    def port_for(self, service: str) -> int:
        return DEFAULT_PORTS[service] if self.port is None else self.port

    def metrics_port_for(self, service: str) -> int:
        return DEFAULT_METRICS_PORTS[service] if self.metrics_port is None else self.metrics_port

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert_file and self.tls_key_file)

    def grpc_options(self) -> list[tuple[str, int]]:
        """Explicit message-size limits for servers and channels alike."""
        size = self.max_message_bytes
        return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]

    def server_options(self) -> list[tuple[str, int]]:
        """Server: message limits, and accept the clients' keepalive pings (else it would
        answer them with GOAWAY "too_many_pings")."""
        options = [
            *self.grpc_options(),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", int(min(self.keepalive_s, 10.0) * 1000)),
            ("grpc.http2.max_ping_strikes", 0),
        ]
        if self.max_connection_age_s > 0:  # no grace option: gRPC's default lets in-flight calls finish
            options.append(("grpc.max_connection_age_ms", int(self.max_connection_age_s * 1000)))
        return options

    def channel_options(self) -> list[tuple[str, int | str]]:
        """Client channels to backends: keepalive detects a dead peer in seconds; a short
        reconnect back-off finds a returning backend fast (gRPC's default grows to 120 s)."""
        backoff_max = int(self.reconnect_backoff_max_s * 1000)
        options: list[tuple[str, int | str]] = [
            *self.grpc_options(),
            ("grpc.keepalive_time_ms", int(self.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.initial_reconnect_backoff_ms", min(250, backoff_max)),
            ("grpc.min_reconnect_backoff_ms", min(250, backoff_max)),
            ("grpc.max_reconnect_backoff_ms", backoff_max),
        ]
        if self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return options
