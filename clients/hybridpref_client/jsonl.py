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


def write_decisions(path: str | Path, result: RouteResult) -> None:
    """One JSON object per decision, in request order."""
    with open(path, "w", encoding="utf-8") as fh:
        for d in result.decisions:
            row = asdict(d)
            row["top_tags"] = [{"tag": t, "contribution": c} for t, c in d.top_tags]
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
