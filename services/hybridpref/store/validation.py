"""Checks of what the campaign store is given, before anything is written: campaign settings, routed
batches, labels, names. Each returns or raises field violations named as the store's API names them; every
one is an ``InvalidInput`` for the caller, never a database error (a NUL character, an out-of-range number
or an over-long name would otherwise surface as PostgreSQL's error, an INTERNAL one)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import hybridpref.store.models as m
from hybridpref.store.api import CampaignSpec, Candidate, HumanLabel
from hybridpref.store.engine import EncodedJSON
from hybridpref_client.core.errors import FieldViolation, InvalidInput, quote
from hybridpref_client.core.instances import is_blank, parse_label

MAX_RATIONALE = 20_000
MAX_EXPECTED = 10**12  # expected_instances: far past any stream, well inside a BIGINT
PREFERENCES = ("A", "B", "tie")
STRENGTHS = (1, 2)
JSON_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def validate_spec(spec: CampaignSpec) -> None:
    v: list[FieldViolation] = []
    for field, value, limit in (("vendor", spec.vendor, m.MAX_VENDOR), ("name", spec.name, m.MAX_NAME)):
        err = name_error(value, limit)
        if err:
            v.append(FieldViolation(field, err))
    for field, value in (("strategy", spec.strategy), ("judge", spec.judge)):
        if not isinstance(value, str) or len(value) > m.MAX_SHORT:
            v.append(FieldViolation(field, f"expected a string of at most {m.MAX_SHORT} characters"))
    if spec.budget_kind not in ("count", "cost"):
        v.append(FieldViolation("budget.kind", f"expected count or cost, got {quote(spec.budget_kind)}"))
    total = spec.budget_total
    if not isinstance(total, (int, float)) or not math.isfinite(total) or total < 0:
        v.append(FieldViolation("budget.total", f"must be a finite number >= 0, got {total!r}"))
    elif spec.budget_kind == "count" and float(total) != int(total):
        v.append(FieldViolation("budget.total", f"a count budget is a whole number of labels, got {total}"))
    if not isinstance(spec.votes_per_pair, int) or not 1 <= spec.votes_per_pair <= 100:
        v.append(FieldViolation("votes_per_pair", f"must be in 1..100, got {spec.votes_per_pair!r}"))
    if spec.expected_instances is not None and not expected_ok(spec.expected_instances):
        v.append(
            FieldViolation("expected_instances", f"must be an integer in 1..{MAX_EXPECTED:,}, got {spec.expected_instances!r}")
        )
    share = spec.exploration_share
    if not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        v.append(FieldViolation("exploration_share", f"must be in [0, 1], got {share!r}"))
    if v:
        raise InvalidInput(v)


def validate_batch(
    batch_id: str, candidates: Sequence[Candidate], model_version: str, bundle_version: str
) -> tuple[list[str | None], list[tuple[EncodedJSON, EncodedJSON, EncodedJSON]]]:
    """Check a batch before anything is stored; returns the candidates' canonical LM label names and
    their (signals, features, metadata) as JSON text."""
    v: list[FieldViolation] = []
    err = name_error(batch_id, m.MAX_BATCH_ID)
    if err:
        v.append(FieldViolation("batch_id", err))
    for field, value in (("model_version", model_version), ("bundle_version", bundle_version)):
        if not isinstance(value, str) or len(value) > m.MAX_SHORT:
            v.append(FieldViolation(field, f"expected a string of at most {m.MAX_SHORT} characters"))
    seen: dict[str, int] = {}
    lm_labels: list[str | None] = []
    encoded: list[tuple[EncodedJSON, EncodedJSON, EncodedJSON]] = []
    for i, c in enumerate(candidates):
        where = f"candidates[{i}]"
        err = name_error(c.instance_id, m.MAX_INSTANCE_ID)
        if err:
            v.append(FieldViolation(f"{where}.instance_id", err))
        elif c.instance_id in seen:
            v.append(
                FieldViolation(
                    f"{where}.instance_id", f"duplicate id {quote(c.instance_id)} (first at candidates[{seen[c.instance_id]}])"
                )
            )
        else:
            seen[c.instance_id] = i
        for field in ("prompt", "response_a", "response_b"):
            if not isinstance(getattr(c, field), str):
                v.append(FieldViolation(f"{where}.{field}", "expected a string"))
            elif "\x00" in getattr(c, field):  # PostgreSQL's text cannot hold it; refused on SQLite alike
                v.append(FieldViolation(f"{where}.{field}", "contains a NUL character (U+0000)"))
        if not finite(c.score):
            v.append(FieldViolation(f"{where}.score", f"must be a finite number, got {c.score!r}"))
        if not finite(c.cost) or c.cost <= 0:
            v.append(FieldViolation(f"{where}.cost", f"must be a positive finite number, got {c.cost!r}"))
        for field in ("lm_confidence", "expected_correction"):
            value = getattr(c, field)
            if value is not None and not finite(value):
                v.append(FieldViolation(f"{where}.{field}", f"must be a finite number or empty, got {value!r}"))
        if c.lm_confidence is not None and finite(c.lm_confidence) and not 0 <= c.lm_confidence <= 1:
            v.append(FieldViolation(f"{where}.lm_confidence", f"must be in [0, 1], got {c.lm_confidence}"))
        lm_labels.append(canonical_lm_label(c.lm_label, f"{where}.lm_label", v))
        texts = []
        for field in ("signals", "features", "metadata"):
            value = getattr(c, field)
            try:
                if not isinstance(value, Mapping):
                    raise TypeError(f"expected an object, got {type(value).__name__}")
                texts.append(EncodedJSON(JSON_ENCODER.encode(value)))
            except (TypeError, ValueError) as exc:
                v.append(FieldViolation(f"{where}.{field}", f"must be a JSON object without NaN or infinity ({exc})"))
        if len(texts) == 3:
            encoded.append((texts[0], texts[1], texts[2]))
    if v:
        raise InvalidInput(v)
    return lm_labels, encoded


def canonical_lm_label(value: str | None, where: str, v: list[FieldViolation]) -> str | None:
    """Canonical ``Label`` name of an LM label (names, or A / B / tie); ``None`` stays ``None``."""
    if value is None or value == "":
        return None
    try:
        label = parse_label(value)
    except ValueError as exc:
        v.append(FieldViolation(where, str(exc)))
        return None
    return label.name if label is not None else None


def label_error(i: int, item: HumanLabel) -> str:
    """Why item ``i`` cannot be stored ("" when it can): the first bad field, named."""
    where = f"labels[{i}]"
    if not isinstance(item, HumanLabel):
        return f"{where}: expected a HumanLabel, got {type(item).__name__}"
    err = name_error(item.instance_id, m.MAX_INSTANCE_ID)
    if err:
        return f"{where}.instance_id: {err}"
    err = name_error(item.annotator, m.MAX_ANNOTATOR)
    if err:
        return f"{where}.annotator: {err}"
    if canonical_preference(item.preference) is None:
        return f"{where}.preference: expected A, B or tie, got {quote(item.preference)}"
    if item.strength is not None:
        if isinstance(item.strength, bool) or item.strength not in STRENGTHS:
            return f"{where}.strength: expected 1 (slightly) or 2 (clearly) or empty, got {item.strength!r}"
        if canonical_preference(item.preference) == "tie":
            return f"{where}.strength: a tie has no strength"
    if not isinstance(item.rationale, str) or len(item.rationale) > MAX_RATIONALE:
        return f"{where}.rationale: expected a string of at most {MAX_RATIONALE} characters"
    if "\x00" in item.rationale:  # PostgreSQL's text cannot hold it; refused on SQLite alike
        return f"{where}.rationale: contains a NUL character (U+0000)"
    if item.labelled_at is not None and not isinstance(item.labelled_at, datetime):
        return f"{where}.labelled_at: expected a datetime or empty, got {item.labelled_at!r}"
    if not isinstance(item.source, str) or not item.source or len(item.source) > m.MAX_SHORT:
        return f"{where}.source: expected a non-empty string of at most {m.MAX_SHORT} characters"
    return ""


def canonical_preference(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return {"a": "A", "b": "B", "tie": "tie"}.get(value.strip().lower())


def name_error(value: Any, limit: int) -> str:
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if not value or is_blank(value):
        return "missing"
    if len(value) > limit:
        return f"longer than {limit} characters"
    if any(ord(ch) < 32 for ch in value):
        return "contains control characters"
    return ""


def check_name(field: str, value: Any, limit: int) -> None:
    err = name_error(value, limit)
    if err:
        raise InvalidInput(FieldViolation(field, err))


def expected_ok(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_EXPECTED


def has_nul(*values: Any) -> bool:
    """A caller's lookup value holding U+0000: nothing stored has one, and PostgreSQL refuses it in a query."""
    return any(isinstance(v, str) and "\x00" in v for v in values)


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def clip_id(item: Any) -> str:
    value = getattr(item, "instance_id", "")
    return value[: m.MAX_INSTANCE_ID] if isinstance(value, str) else ""
