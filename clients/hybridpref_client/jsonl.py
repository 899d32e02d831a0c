"""JSONL in/out for vendors: instances in (the shared data schema), decisions out."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from hybridpref_client.core.instances import PreferenceInstance, read_jsonl
from hybridpref_client.messages import RouteResult


def read_instances(path: str | Path, limit: int | None = None) -> list[PreferenceInstance]:
    """Instances from JSONL; a bad row raises ``InvalidInput`` naming its line and field."""
    return read_jsonl(str(path), limit=limit)


# The decisions file's schema, the same whatever the strategy (name -> JSON type; "?" = may be null).
DECISION_SCHEMA: dict[str, str] = {
    "id": "string",
    "route": "string (HUMAN | LM)",
    "lm_label": "string? (null: not judged)",
    "lm_confidence": "number",
    "gain": "number",
    "top_tags": "list of {tag: string, contribution: number}",
    "judge_order_inconsistent": "boolean",
    "human_cost": "number",
    "expected_gain": "number? (null: not computed)",
    "reason": "string",
    # campaigns (always present; false without one): the stored decision came back for a re-sent id, and
    # the human route came from the campaign's random exploration share
    "replayed": "boolean",
    "exploration": "boolean",
}


def write_decisions(path: str | Path, result: RouteResult) -> None:
    """One JSON object per decision, in request order, with the keys of ``DECISION_SCHEMA`` in that
    order whatever the strategy (files of different strategies load together, e.g. with
    ``datasets.load_dataset("json", data_files=[...])``)."""
    with open(path, "w", encoding="utf-8") as fh:
        for d in result.decisions:
            row = asdict(d)
            row["top_tags"] = [{"tag": t, "contribution": float(c)} for t, c in d.top_tags]
            fh.write(json.dumps({key: row[key] for key in DECISION_SCHEMA}, ensure_ascii=False) + "\n")
