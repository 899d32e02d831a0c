"""One typed settings object per process, built at the entry point from ``HYBRIDPREF_*``
environment variables and CLI flags (flags win). Nothing reads the environment at import time.

``Settings`` is a set of sections, one per concern; a service reads the sections it needs::

    settings.server.port_for("router")   settings.tls.cert_file    settings.auth.keys_file
    settings.limits.max_batch            settings.router.default_strategy
    settings.tagger.profile              settings.judge.backend    settings.predictor.bundle_path

Each section is a ``pydantic_settings.BaseSettings`` that reads its own variables when built: a field's
variable is the section's ``env_prefix`` + the field name in upper case (``JudgeSettings.backend`` ->
``HYBRIDPREF_JUDGE_BACKEND``); a field whose variable does not follow that rule names it in
``validation_alias``. Build overrides per section, as dicts or section objects; the fields not given
still come from the environment::

    Settings(judge={"backend": "replay"}, router=RouterSettings(default_strategy="greedy"))

**Adding a setting**: add a typed attribute with a docstring (it is the documentation) to the section it
belongs to, or add a section class (its own ``env_prefix``) and a field for it on ``Settings``. Then run
``python scripts/settings_doc.py`` to regenerate the table in docs/operations.md;
tests/server/test_settings.py fails while the table is stale.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

ServiceName = Literal["router", "tagger", "judge", "predictor"]

DEFAULT_PORTS: dict[str, int] = {"router": 50050, "tagger": 50051, "judge": 50052, "predictor": 50053}
DEFAULT_METRICS_PORTS: dict[str, int] = {"router": 9150, "tagger": 9151, "judge": 9152, "predictor": 9153}


def _section_config(env_prefix: str) -> SettingsConfigDict:
    # extra="forbid": a mistyped override fails instead of being ignored (unknown environment
    # variables are never read, so they stay harmless); attribute docstrings become descriptions.
    return SettingsConfigDict(env_prefix=env_prefix, extra="forbid", validate_by_name=True, use_attribute_docstrings=True)


class ServerSettings(BaseSettings):
    """The gRPC server every service runs: binding, metrics, logs, message sizes and connections."""

    model_config = _section_config("HYBRIDPREF_")

    host: str = "127.0.0.1"
    """Bind address of the gRPC and metrics ports (the image and the Kubernetes manifests set ``0.0.0.0``)."""
    port: int | None = None
    """gRPC port; unset = the service's default (see *Ports*); 0 = a free ephemeral port (tests, embedded stacks)."""
    metrics_port: int | None = None
    """Prometheus ``/metrics`` port; unset = the service's default (see *Ports*); 0 = ephemeral; -1 = no metrics."""
    metrics_host: str = ""
    """Bind address of the metrics port; empty = ``host``. The NetworkPolicy restricts who may scrape."""
    health_port: int | None = None
    """With TLS on: a plaintext port serving only ``grpc.health.v1`` for the kubelet's gRPC probes (they cannot
    speak TLS). Unset = off."""
    grace_period_s: float = Field(20.0, ge=0)
    """Seconds in-flight RPCs get to finish after SIGTERM."""
    max_message_mb: int = Field(64, ge=1)
    """Largest gRPC message accepted or sent, MiB (servers and channels alike)."""
    max_concurrent_rpcs: int = Field(256, ge=1)
    """Most calls a server runs at once (health checks and reflection not counted: they are always
    answered); more are refused with RESOURCE_EXHAUSTED and RetryInfo."""
    max_calls_per_connection: int = Field(32, ge=1)
    """Most calls one client connection runs at once, so one client cannot take the whole server."""
    stream_idle_s: float = Field(30.0, ge=0)
    """A request stream (or a unary request still arriving) with no message for this long is closed with
    DEADLINE_EXCEEDED, freeing its slot. 0 = no limit."""
    max_deadline_s: float = Field(1800.0, ge=0)
    """Longest a call may run; applies when the caller sets no deadline or a longer one. 0 = no cap."""
    max_connection_age_s: float = Field(0.0, ge=0)
    """Servers close connections older than this (GOAWAY; in-flight calls still finish), so clients re-resolve
    DNS and spread over replicas added since. 0 = never (the Kubernetes config sets 300)."""
    keepalive_s: float = Field(20.0, gt=0)
    """Channels to backends: seconds between keepalive pings (a dead peer is detected in seconds)."""
    reconnect_backoff_max_s: float = Field(2.0, gt=0)
    """Channels to backends: longest reconnect back-off, so a returning backend is found again within this,
    whatever the outage length."""
    log_level: str = "INFO"
    """``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``."""
    log_format: Literal["json", "console"] = "json"
    """``json`` (one object a line, for log shippers) or ``console``."""

    def port_for(self, service: str) -> int:
        return DEFAULT_PORTS[service] if self.port is None else self.port

    def metrics_port_for(self, service: str) -> int:
        return DEFAULT_METRICS_PORTS[service] if self.metrics_port is None else self.metrics_port

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024


class TLSSettings(BaseSettings):
    """TLS on this service's gRPC port, and on the router's channels to the backends (PEM files)."""

    model_config = _section_config("HYBRIDPREF_TLS_")

    cert_file: str | None = None
    """This service's certificate; with ``key_file``, TLS is on."""
    key_file: str | None = None
    """This service's private key."""
    client_ca_file: str | None = None
    """Mutual TLS: callers must present a certificate signed by this CA (use it for the internal services)."""
    ca_file: str | None = None
    """Router: the CA that signed the backends' certificates (TLS on the channels to them)."""
    client_cert_file: str | None = None
    """Router: client certificate for backends that require mutual TLS."""
    client_key_file: str | None = None
    """Router: the client certificate's key."""
    server_name: str | None = None
    """Router: name to check the backends' certificates against when it differs from the address' host."""

    @property
    def enabled(self) -> bool:
        """TLS on this service's own port."""
        return bool(self.cert_file and self.key_file)


class AuthSettings(BaseSettings):
    """Callers' API keys and quotas (the router; see ``hybridpref.server.auth``)."""

    model_config = _section_config("HYBRIDPREF_API_")

    keys_file: str | None = None
    """Per-vendor API keys (JSON or YAML). Unset = auth off: every caller is trusted."""
    keys_reload_s: float = Field(2.0, gt=0)
    """Seconds between checks of the keys file for changes (keys rotate without a restart)."""
    vendor_max_concurrent: int = Field(32, ge=1)
    """Calls at once for a vendor whose keys-file entry sets no ``max_concurrent``."""


class LimitsSettings(BaseSettings):
    """Request limits, checked before any work (see ``hybridpref_client.core.limits``)."""

    model_config = _section_config("HYBRIDPREF_")

    max_batch: int = Field(20_000, ge=1)
    """Most instances in one unary request (larger: use the streaming RPC)."""
    max_text_chars: int = Field(200_000, ge=1)
    """Longest prompt or response, characters."""
    max_stream_instances: int = Field(1_000_000, ge=1)
    """Most instances in one routing stream (and the largest count budget)."""
    max_simulated_candidates: int = Field(10_000, ge=1)
    """Most candidate mixes a ``simulated`` routing call may ask for."""
    max_budget_cost: float = Field(1e12, gt=0)
    """Largest cost budget a call may ask for."""


class RouterSettings(BaseSettings):
    """The router: its backends, its default strategy, its workers and its readiness."""

    model_config = _section_config("HYBRIDPREF_")

    tagger_address: str = f"127.0.0.1:{DEFAULT_PORTS['tagger']}"
    """gRPC target of the tagger (``host:port`` or ``dns:///host:port``; see *Load balancing*)."""
    judge_address: str = f"127.0.0.1:{DEFAULT_PORTS['judge']}"
    """gRPC target of the judge."""
    predictor_address: str = f"127.0.0.1:{DEFAULT_PORTS['predictor']}"
    """gRPC target of the predictor."""
    default_strategy: str = ""
    """Strategy of calls that name none; empty = ``hybridpref.router.strategies.DEFAULT_STRATEGY`` (chosen by
    the evaluation)."""
    workers: int = Field(4, ge=1, validation_alias="HYBRIDPREF_ROUTER_WORKERS")
    """Worker threads for routing and other CPU work (bounded, owned by the server)."""
    backend_check_s: float = Field(1.0, gt=0)
    """Seconds between checks of the backends' health (the router's readiness follows them)."""
    fail_fast_after_s: float = Field(5.0, gt=0)
    """Seconds a backend's health checks must keep failing before it counts as down and calls to it fail
    fast (UNAVAILABLE with RetryInfo) instead of waiting for their deadline. One failed check only turns
    readiness off: a busy but live backend can miss a check, a frozen or dead one misses them all."""
    pool_stall_s: float = Field(10.0, gt=0)
    """NOT_SERVING when the worker pool has not started a no-op for this long (all workers stuck)."""
    db_url: str = Field("", validation_alias="HYBRIDPREF_DB_URL")
    """The campaign store (``hybridpref.store``, docs/campaigns.md): ``postgresql://user:password@host:5432/db``
    in production (migrated first by ``hybridpref store migrate``, the Kubernetes Job: the router refuses a
    database that is behind), or a SQLite file (``sqlite:///path`` or a bare path; migrated on open). Empty =
    the SQLite file under the user's data directory (the embedded stack and the CLI share it). Opened on the
    first campaign call; routing without a campaign never touches it."""
    required_backends: str = "tagger,judge,predictor"
    """Backends readiness requires (comma-separated); drop ``predictor`` to stay ready for ``random`` /
    ``all_human`` / ``all_lm`` routing while no predictor bundle is deployed."""


class TaggerSettings(BaseSettings):
    """The tagger."""

    model_config = _section_config("HYBRIDPREF_TAGGER_")

    profile: str = "default"
    """``default`` or ``fast`` (cheaper features; the dev overlay)."""


class JudgeSettings(BaseSettings):
    """The judge: its backend and the backend's options."""

    model_config = _section_config("HYBRIDPREF_JUDGE_")

    backend: Literal["learned", "embedded", "openai", "replay"] = "learned"
    """``learned`` (the packaged CPU preference model, calibrated; see ``judge/MODEL_CARD.md``), ``embedded``
    (a local LM, SmolLM2 on CPU), ``openai`` (any OpenAI-compatible endpoint), ``replay`` (labels recorded in
    the input)."""
    model_path: str | None = None
    """``learned`` / ``embedded``: a model to use instead of the packaged one."""
    replay_key: str = "gpt4"
    """``replay``: whose recorded labels to return when a call names none."""
    openai_base_url: str | None = None
    """``openai``: endpoint base URL, e.g. ``http://vllm:8000/v1``."""
    openai_model: str | None = None
    """``openai``: model name the endpoint serves."""
    openai_api_key_file: str | None = None
    """``openai``: file holding the API key (Kubernetes: from the Secret ``hybridpref-judge-openai``, key
    ``api-key``)."""
    openai_concurrency: int = 4
    """``openai``: requests in flight to the endpoint at once."""
    template: str = "multipref"
    """Prompt template of calls that name none."""


class PredictorSettings(BaseSettings):
    """The predictor: the bundle it serves."""

    model_config = _section_config("HYBRIDPREF_")

    bundle_path: str | None = None
    """The model bundle to serve; unset = the bundle packaged with hybridpref."""
    bundle_watch_s: float = Field(10.0, ge=0)
    """Seconds between checks of the bundle path for a new bundle (hot reload); 0 = off."""


class Settings(BaseModel):
    """All sections; each service reads the ones it needs. ``Settings()`` reads the environment."""

    model_config = ConfigDict(extra="forbid")

    server: ServerSettings = Field(default_factory=ServerSettings)
    tls: TLSSettings = Field(default_factory=TLSSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)
    tagger: TaggerSettings = Field(default_factory=TaggerSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    predictor: PredictorSettings = Field(default_factory=PredictorSettings)

    @field_validator("*", mode="before")
    @classmethod
    def _section_from_dict(cls, value: Any, info: ValidationInfo) -> Any:
        """A dict builds its section through the section's constructor, so the fields it does not
        name still come from the environment (plain model validation would skip it)."""
        if isinstance(value, dict):
            section = cls.model_fields[info.field_name].annotation  # type: ignore[index]
            return section(**value)  # type: ignore[misc]
        return value

    def replace(self, **sections: dict[str, Any]) -> Settings:
        """A copy with some fields of some sections replaced: ``settings.replace(auth={"keys_file": None})``."""
        update = {name: getattr(self, name).model_copy(update=fields) for name, fields in sections.items()}
        return self.model_copy(update=update)

    def grpc_options(self) -> list[tuple[str, int]]:
        """Explicit message-size limits for servers and channels alike."""
        size = self.server.max_message_bytes
        return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]

    def server_options(self) -> list[tuple[str, int]]:
        """Server: message limits, and accept the clients' keepalive pings (else it would
        answer them with GOAWAY "too_many_pings")."""
        server = self.server
        options = [
            *self.grpc_options(),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", int(min(server.keepalive_s, 10.0) * 1000)),
            ("grpc.http2.max_ping_strikes", 0),
        ]
        if server.max_connection_age_s > 0:  # no grace option: gRPC's default lets in-flight calls finish
            options.append(("grpc.max_connection_age_ms", int(server.max_connection_age_s * 1000)))
        return options

    def channel_options(self) -> list[tuple[str, int | str]]:
        """Client channels to backends: keepalive detects a dead peer in seconds; a short
        reconnect back-off finds a returning backend fast (gRPC's default grows to 120 s)."""
        backoff_max = int(self.server.reconnect_backoff_max_s * 1000)
        options: list[tuple[str, int | str]] = [
            *self.grpc_options(),
            ("grpc.keepalive_time_ms", int(self.server.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.initial_reconnect_backoff_ms", min(250, backoff_max)),
            ("grpc.min_reconnect_backoff_ms", min(250, backoff_max)),
            ("grpc.max_reconnect_backoff_ms", backoff_max),
        ]
        if self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return options


# ----------------------------------------------------------------------------- documentation


def sections() -> dict[str, type[BaseSettings]]:
    """Section name -> its class, in ``Settings`` order."""
    return {name: field.annotation for name, field in Settings.model_fields.items()}  # type: ignore[misc]


def env_name(section: type[BaseSettings], name: str, field: FieldInfo) -> str:
    """The environment variable a section's field reads."""
    if isinstance(field.validation_alias, str):
        return field.validation_alias.upper()
    return (section.model_config.get("env_prefix", "") + name).upper()


def environment_variables() -> dict[str, str]:
    """Every variable the settings read -> ``section.field``."""
    return {
        env_name(cls, name, field): f"{section}.{name}"
        for section, cls in sections().items()
        for name, field in cls.model_fields.items()
    }


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if value == "":
        return '`""`'
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def settings_table() -> str:
    """The Markdown table of every setting (docs/operations.md embeds it; scripts/settings_doc.py
    writes it there): one block per section, a row per field, the meaning from its docstring."""
    lines: list[str] = []
    for section, cls in sections().items():
        lines += [
            f"**`{section}`**: {(cls.__doc__ or '').replace('``', '`')}",
            "",
            "| variable | field | default | meaning |",
            "|---|---|---|---|",
        ]
        for name, field in cls.model_fields.items():
            meaning = " ".join((field.description or "").split()).replace("``", "`")
            lines.append(f"| `{env_name(cls, name, field)}` | `{section}.{name}` | {_default(field)} | {meaning} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
