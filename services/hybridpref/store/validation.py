"""Checks of what the campaign store is given, before anything is written: campaign settings, routed
batches, labels, names. Each returns or raises field violations named as the store's API names them; every
one is an ``InvalidInput`` for the caller, never a database error (a NUL character, an out-of-range number
or an over-long name would otherwise surface as PostgreSQL's error, an INTERNAL one)."""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

import hybridpref.store.models as m
from hybridpref.store.api import CampaignSpec, Candidate, FeatureVector, HumanLabel
from hybridpref.store.engine import EncodedJSON, strict_json
from hybridpref_client.core.errors import FieldViolation, InvalidInput, quote
from hybridpref_client.core.instances import is_blank, parse_label

MAX_RATIONALE = 20_000
MAX_EXPECTED = 10**12  # expected_instances: far past any stream, well inside a BIGINT
PREFERENCES = ("A", "B", "tie")
STRENGTHS = (1, 2)


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


@dataclass
class CheckedBatch:
    """A batch that passed :func:`validate_batch`, column by column in the candidates' order: canonical LM
    label names, signals and metadata as JSON text, the correction features packed (``None``: none)."""

    lm_labels: list[str | None]
    signals: list[EncodedJSON]
    metadata: list[EncodedJSON]
    features: list[FeatureVector | None]


def validate_batch(batch_id: str, candidates: Sequence[Candidate], model_version: str, bundle_version: str) -> CheckedBatch:
    """Check a batch before anything is stored (``InvalidInput`` listing every bad field; nothing is
    stored then); returns what the store writes of each candidate besides its plain fields.

    A batch the router built passes a screen of whole columns at C speed; only a batch that fails it
    goes through the per-field checks, which name each bad field (the same verdicts, slower)."""
    v: list[FieldViolation] = []
    err = name_error(batch_id, m.MAX_BATCH_ID)
    if err:
        v.append(FieldViolation("batch_id", err))
    for field, value in (("model_version", model_version), ("bundle_version", bundle_version)):
        if not isinstance(value, str) or len(value) > m.MAX_SHORT:
            v.append(FieldViolation(field, f"expected a string of at most {m.MAX_SHORT} characters"))
    if not _plainly_valid(candidates):
        seen: dict[str, int] = {}
        for i, c in enumerate(candidates):
            v.extend(_candidate_violations(i, c, seen))
    checked = _encoded(candidates, v)
    if v:
        raise InvalidInput(v)
    return checked


def _plainly_valid(candidates: Sequence[Candidate]) -> bool:
    """True only when every id, text and number of the batch is valid (checked column by column); a
    False sends the batch through :func:`_candidate_violations`, which decides and names."""
    if not candidates:
        return True
    ids = [c.instance_id for c in candidates]
    texts = [t for c in candidates for t in (c.prompt, c.response_a, c.response_b)]
    if set(map(type, ids)) != {str} or set(map(type, texts)) != {str} or len(set(ids)) != len(ids):
        return False
    lengths = list(map(len, ids))
    # printable: no control character (and none of the blank-looking format characters that is_blank counts)
    if min(lengths) < 1 or max(lengths) > m.MAX_INSTANCE_ID or not "".join(ids).isprintable() or any(map(str.isspace, ids)):
        return False
    if any(map(operator.contains, texts, itertools.repeat("\x00"))):
        return False
    try:
        scores, costs = _numbers([c.score for c in candidates]), _numbers([c.cost for c in candidates])
        confidence = _numbers([c.lm_confidence for c in candidates if c.lm_confidence is not None])
        expected = _numbers([c.expected_correction for c in candidates if c.expected_correction is not None])
    except (TypeError, OverflowError):
        return False
    return bool(
        np.isfinite(scores).all()
        and np.isfinite(costs).all()
        and (costs > 0).all()
        and np.isfinite(confidence).all()
        and ((confidence >= 0) & (confidence <= 1)).all()
        and np.isfinite(expected).all()
    )


def _numbers(values: list[Any]) -> np.ndarray:
    """Python floats and ints as an array (``TypeError`` for anything else: bools, None, numpy scalars
    and strings are the per-field checks' to judge)."""
    if not {type(x) for x in values} <= {float, int}:
        raise TypeError("not plain numbers")
    return np.array(values, dtype=np.float64)


def _candidate_violations(i: int, c: Candidate, seen: dict[str, int]) -> list[FieldViolation]:
    """Every bad id, text and number of candidate ``i`` (``seen``: ids so far, for duplicates)."""
    where = f"candidates[{i}]"
    v: list[FieldViolation] = []
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
    return v


def _encoded(candidates: Sequence[Candidate], v: list[FieldViolation]) -> CheckedBatch:
    """The LM labels' canonical names, signals and metadata as strict JSON text and the features packed;
    a field that cannot be is added to ``v``."""
    out = CheckedBatch([], [], [], [])
    label_names: dict[Any, str | None] = {}  # a batch has a handful of distinct LM labels
    names_checked: dict[tuple[str, ...], str] = {}
    for i, c in enumerate(candidates):
        where = f"candidates[{i}]"
        try:
            label = label_names[c.lm_label]
        except (KeyError, TypeError):
            before = len(v)
            label = canonical_lm_label(c.lm_label, f"{where}.lm_label", v)
            if len(v) == before and isinstance(c.lm_label, (str, type(None))):
                label_names[c.lm_label] = label
        out.lm_labels.append(label)
        out.signals.append(_json_object(c.signals, f"{where}.signals", v))
        out.metadata.append(_json_object(c.metadata, f"{where}.metadata", v))
        out.features.append(_packed(c.features, f"{where}.features", v, names_checked))
    return out


def _json_object(value: Any, where: str, v: list[FieldViolation]) -> EncodedJSON:
    try:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected an object, got {type(value).__name__}")
        return strict_json(value)
    except (TypeError, ValueError, RecursionError) as exc:
        v.append(FieldViolation(where, f"must be a JSON object without NaN or infinity ({exc})"))
        return EncodedJSON("{}")


def _packed(value: Any, where: str, v: list[FieldViolation], names_checked: dict[tuple[str, ...], str]) -> FeatureVector | None:
    """The features packed (``None`` when there are none); the names of each distinct list checked once."""
    try:
        if isinstance(value, FeatureVector):  # packed by its maker: values are float64, NaN = unknown
            packed = value
        elif not isinstance(value, Mapping):
            raise TypeError(f"expected an object, got {type(value).__name__}")
        else:
            packed = FeatureVector.of(value)
    except (TypeError, ValueError) as exc:
        v.append(FieldViolation(where, f"must map feature names to finite numbers ({exc})"))
        return None
    if not packed.names:
        return None
    err = names_checked.get(packed.names)
    if err is None:
        err = names_checked[packed.names] = _feature_names_error(packed.names)
    if err:
        v.append(FieldViolation(where, err))
        return None
    return packed


def _feature_names_error(names: tuple[str, ...]) -> str:
    if len(set(names)) != len(names):
        return "feature names repeat"
    for name in names:
        err = name_error(name, m.MAX_SHORT)
        if err:
            return f"feature name {quote(name) if isinstance(name, str) else repr(name)}: {err}"
    return ""


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
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past a float's range
        return False


def clip_id(item: Any) -> str:
    value = getattr(item, "instance_id", "")
    return value[: m.MAX_INSTANCE_ID] if isinstance(value, str) else ""
