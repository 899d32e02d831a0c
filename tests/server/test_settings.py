"""The settings sections: every HYBRIDPREF_* variable the flat settings class read still works, overrides
keep the environment for the fields they do not name, and docs/operations.md lists every field."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from pydantic import ValidationError

from hybridpref.server.settings import JudgeSettings, Settings, environment_variables, sections

ROOT = Path(__file__).resolve().parents[2]

# The variables of the flat settings class (before the sections), and where each lives now: the
# deployed contract, so written out here rather than derived from the code under test.
LEGACY = {
    "HOST": "server.host",
    "PORT": "server.port",
    "METRICS_PORT": "server.metrics_port",
    "METRICS_HOST": "server.metrics_host",
    "HEALTH_PORT": "server.health_port",
    "GRACE_PERIOD_S": "server.grace_period_s",
    "MAX_MESSAGE_MB": "server.max_message_mb",
    "MAX_CONCURRENT_RPCS": "server.max_concurrent_rpcs",
    "MAX_DEADLINE_S": "server.max_deadline_s",
    "MAX_CONNECTION_AGE_S": "server.max_connection_age_s",
    "KEEPALIVE_S": "server.keepalive_s",
    "RECONNECT_BACKOFF_MAX_S": "server.reconnect_backoff_max_s",
    "LOG_LEVEL": "server.log_level",
    "LOG_FORMAT": "server.log_format",
    "TLS_CERT_FILE": "tls.cert_file",
    "TLS_KEY_FILE": "tls.key_file",
    "TLS_CLIENT_CA_FILE": "tls.client_ca_file",
    "TLS_CA_FILE": "tls.ca_file",
    "TLS_CLIENT_CERT_FILE": "tls.client_cert_file",
    "TLS_CLIENT_KEY_FILE": "tls.client_key_file",
    "TLS_SERVER_NAME": "tls.server_name",
    "API_KEYS_FILE": "auth.keys_file",
    "API_KEYS_RELOAD_S": "auth.keys_reload_s",
    "MAX_BATCH": "limits.max_batch",
    "MAX_TEXT_CHARS": "limits.max_text_chars",
    "MAX_STREAM_INSTANCES": "limits.max_stream_instances",
    "MAX_SIMULATED_CANDIDATES": "limits.max_simulated_candidates",
    "MAX_BUDGET_COST": "limits.max_budget_cost",
    "TAGGER_ADDRESS": "router.tagger_address",
    "JUDGE_ADDRESS": "router.judge_address",
    "PREDICTOR_ADDRESS": "router.predictor_address",
    "DEFAULT_STRATEGY": "router.default_strategy",
    "ROUTER_WORKERS": "router.workers",
    "BACKEND_CHECK_S": "router.backend_check_s",
    "POOL_STALL_S": "router.pool_stall_s",
    "REQUIRED_BACKENDS": "router.required_backends",
    "TAGGER_PROFILE": "tagger.profile",
    "JUDGE_BACKEND": "judge.backend",
    "JUDGE_MODEL_PATH": "judge.model_path",
    "JUDGE_REPLAY_KEY": "judge.replay_key",
    "JUDGE_OPENAI_BASE_URL": "judge.openai_base_url",
    "JUDGE_OPENAI_MODEL": "judge.openai_model",
    "JUDGE_OPENAI_API_KEY_FILE": "judge.openai_api_key_file",
    "JUDGE_OPENAI_CONCURRENCY": "judge.openai_concurrency",
    "JUDGE_TEMPLATE": "judge.template",
    "BUNDLE_PATH": "predictor.bundle_path",
    "BUNDLE_WATCH_S": "predictor.bundle_watch_s",
}
# Variables added since the sections (name -> field); with LEGACY, every variable the settings read.
ADDED = {
    "MAX_CALLS_PER_CONNECTION": "server.max_calls_per_connection",
    "STREAM_IDLE_S": "server.stream_idle_s",
    "API_VENDOR_MAX_CONCURRENT": "auth.vendor_max_concurrent",
    "DB_URL": "router.db_url",
    "FAIL_FAST_AFTER_S": "router.fail_fast_after_s",
}
# A value per type that differs from every default, so reading it proves the variable was read.
LITERAL = {"server.log_format": "console", "judge.backend": "replay"}


def _value(path: str, default: object) -> tuple[str, object]:
    if path in LITERAL:
        return LITERAL[path], LITERAL[path]
    if isinstance(default, bool):
        raise AssertionError(path)
    if isinstance(default, float):
        return "3.5", 3.5
    if isinstance(default, int) or path.endswith("port"):
        return "7", 7
    return f"v-{path}", f"v-{path}"


def _get(settings: Settings, path: str) -> object:
    section, name = path.split(".")
    return getattr(getattr(settings, section), name)


def test_every_legacy_variable_sets_its_field(monkeypatch):
    defaults = Settings()
    expected = {}
    for name, path in (LEGACY | ADDED).items():
        text, value = _value(path, _get(defaults, path))
        monkeypatch.setenv(f"HYBRIDPREF_{name}", text)
        expected[path] = value
    settings = Settings()
    assert {path: _get(settings, path) for path in (LEGACY | ADDED).values()} == expected
    # and the documented list is exactly these variables: none lost, none renamed
    assert environment_variables() == {f"HYBRIDPREF_{name}": path for name, path in (LEGACY | ADDED).items()}


def test_overrides_win_and_keep_the_environment_for_other_fields(monkeypatch):
    monkeypatch.setenv("HYBRIDPREF_JUDGE_BACKEND", "openai")
    monkeypatch.setenv("HYBRIDPREF_JUDGE_OPENAI_MODEL", "m-from-env")
    monkeypatch.setenv("HYBRIDPREF_ROUTER_WORKERS", "9")
    settings = Settings(judge={"backend": "replay"}, router={"default_strategy": "greedy"})
    assert (settings.judge.backend, settings.judge.openai_model) == ("replay", "m-from-env")
    assert (settings.router.default_strategy, settings.router.workers) == ("greedy", 9)
    assert Settings(judge=JudgeSettings(template="t")).judge.backend == "openai"
    copy = settings.replace(router={"workers": 2})
    assert (copy.router.workers, settings.router.workers, copy.judge.openai_model) == (2, 9, "m-from-env")


def test_mistyped_names_and_bad_values_fail():
    with pytest.raises(ValidationError):
        Settings(judge={"backnd": "replay"})
    with pytest.raises(ValidationError):
        Settings(judge_backend="replay")  # the flat keyword of the old class
    with pytest.raises(ValidationError):
        Settings(router={"workers": 0})


def test_every_field_is_documented():
    for section, cls in sections().items():
        assert cls.__doc__, section
        for name, field in cls.model_fields.items():
            assert field.description and len(field.description) > 10, f"{section}.{name} needs a docstring"


def test_operations_doc_lists_every_setting():
    spec = importlib.util.spec_from_file_location("settings_doc", ROOT / "scripts" / "settings_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.DOC.read_text(encoding="utf-8")
    assert module.with_table(text) == text, "docs/operations.md is stale: run python scripts/settings_doc.py"
    for variable, path in environment_variables().items():
        assert f"| `{variable}` | `{path}` |" in text
