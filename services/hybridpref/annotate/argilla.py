"""Argilla v2 hand-off: the same pending pairs as Label Studio's tasks, in the layout Argilla's SDK
writes with ``Dataset.to_disk`` and reads with ``rg.Dataset.from_disk(path, client=...)``:

    <dir>/records.json           a list of records {"id", "fields", "metadata", "suggestions", "responses",
                                 "vectors", "status"}; id = the instance id
    <dir>/.argilla/settings.json fields prompt / response_a / response_b (Markdown), a label question
                                 ``preference`` (the 5-point scale: codes A2 A1 tie B1 B2 as values),
                                 an optional text question ``rationale``, terms metadata ``instance_id``
                                 and ``campaign``, overlap distribution = the campaign's votes per pair
    <dir>/.argilla/dataset.json  the dataset model (name, guidelines, distribution)

Written by hand (no Argilla dependency at run time); tests/annotate/test_annotate_labelstudio.py holds it to the
SDK's own classes. Responses are in the STORED order, as in Label Studio.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hybridpref.annotate.scale import SCALE
from hybridpref.store.api import PendingPair

FIELDS = (("prompt", "Prompt"), ("response_a", "Response A"), ("response_b", "Response B"))
GUIDELINES = (
    "Read the prompt and both responses, then say which response is better and how clearly. "
    "Choose Tie only when neither is better. The rationale is optional."
)


def _field(name: str, title: str) -> dict[str, Any]:
    return {
        "name": name,
        "title": title,
        "required": True,
        "description": None,
        "type": "text",
        "settings": {"type": "text", "use_markdown": True},
    }


def _metadata(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "title": name,
        "visible_for_annotators": False,
        "settings": {"type": "terms", "values": None, "visible_for_annotators": False},
    }


def settings(votes_per_pair: int) -> dict[str, Any]:
    """The dataset settings (``rg.Settings.serialize()`` shape)."""
    preference = {
        "name": "preference",
        "title": "Which response is better?",
        "description": None,
        "required": True,
        "type": "label_selection",
        "settings": {
            "type": "label_selection",
            "visible_options": None,
            "options": [{"value": c.code, "text": c.text} for c in SCALE],
        },
    }
    rationale = {
        "name": "rationale",
        "title": "Why? (optional)",
        "description": None,
        "required": False,
        "type": "text",
        "settings": {"type": "text", "use_markdown": False},
    }
    return {
        "guidelines": GUIDELINES,
        "fields": [_field(n, t) for n, t in FIELDS],
        "questions": [preference, rationale],
        "metadata": [_metadata("instance_id"), _metadata("campaign")],
        "vectors": [],
        "allow_extra_metadata": False,
        "distribution": {"strategy": "overlap", "min_submitted": max(1, votes_per_pair)},
        "mapping": None,
    }


def records(campaign: str, pairs: Iterable[PendingPair]) -> list[dict[str, Any]]:
    """One record per pair (``rg.Record.to_dict()`` shape, no responses yet)."""
    return [
        {
            "id": p.instance_id,
            "fields": {"prompt": p.prompt, "response_a": p.response_a, "response_b": p.response_b},
            "metadata": {"instance_id": p.instance_id, "campaign": campaign},
            "suggestions": {},
            "responses": {},
            "vectors": {},
            "status": "pending",
        }
        for p in pairs
    ]


def write_dataset(path: Path, campaign: str, votes_per_pair: int, pairs: Iterable[PendingPair]) -> int:
    """Write the dataset directory at ``path`` (must not exist or be empty); returns the record count."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty")
    (path / ".argilla").mkdir(parents=True, exist_ok=True)
    cfg = settings(votes_per_pair)
    dataset = {
        "name": campaign,
        "status": "draft",
        "guidelines": cfg["guidelines"],
        "allow_extra_metadata": False,
        "distribution": cfg["distribution"],
    }
    rows = records(campaign, pairs)
    (path / ".argilla" / "settings.json").write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
    (path / ".argilla" / "dataset.json").write_text(json.dumps(dataset, ensure_ascii=False), encoding="utf-8")
    (path / "records.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return len(rows)
