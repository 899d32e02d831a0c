"""The campaign's dataset out: row builders for the two export formats and JSONL / Parquet writers.

``trl`` (one schema whatever the strategy; TRL's preference format plus provenance), one row per
routed instance that has a label:

=================  =====================================================================================
``id``             the instance id
``prompt``         the prompt as routed
``chosen``         the preferred response (``response_a`` for a tie: see ``tie``)
``rejected``       the other response
``label_source``   ``human`` (majority of the returned human votes) or ``lm`` (the LM label: LM-routed,
                   or human-routed with no vote back yet)
``judge``          the campaign's judge key ("" = the judge service)
``confidence``     human: share of the votes that gave the final label; lm: the judge's confidence (or null)
``votes``          human votes behind the label (0 for ``lm``)
``tie``            true when the final label is a tie (tie votes won, A and B level, or an LM tie):
                   kept and flagged; drop these rows to train a reward model
``campaign``       campaign name; ``batch``: the batch id that routed the instance
``human_routed``   the instance was routed to humans (false: LM-routed; its audit votes do not change it)
=================  =====================================================================================

Instances with neither a human vote nor an LM label are left out (there is nothing to train on).

``trl-chat``: the same rows in TRL's conversational form: ``prompt`` a list of ``{role, content}`` turns (the
instance's ``messages`` when it was routed with a conversation, else one ``user`` turn holding the prompt),
``chosen`` and ``rejected`` one ``assistant`` turn each; the provenance columns as in ``trl``.

``pool``: the shared-data pool schema that ``hybridpref evaluate`` and the predictor build read
(``id, source, prompt, response_a, response_b, human_label, human_votes, lm_labels``), one row per
instance with at least one human vote (bought or audit): ``human_votes`` oldest first, ``human_label``
their majority, ``lm_labels`` {judge key: A/B/tie} plus any recorded panel in the decision's
``signals["lm_labels"]``; extra columns (campaign, batch, human_routed, exploration, score,
expected_correction) are ignored by the pool reader and useful to a refit (exploration rows are an
unbiased sample).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hybridpref.store.api import CampaignSpec, ExportFormat
from hybridpref.store.stats import majority
from hybridpref_client.core.instances import Label

DEFAULT_JUDGE_KEY = "judge"  # the pool's lm_labels key when the campaign used the judge service
PARQUET_ROWS_PER_GROUP = 20_000
# Decision columns each format reads (the store selects the id, then these, in this order).
TRL_COLUMNS = ("instance_id", "prompt", "response_a", "response_b", "human", "lm_label", "lm_confidence", "batch_id")
TRL_CHAT_COLUMNS = (*TRL_COLUMNS, "meta")
POOL_COLUMNS = (*TRL_COLUMNS, "signals", "exploration", "score", "expected_correction")


# Stored LM label name -> "A" / "B" / "tie" (the final label of an LM-labelled row).
LM_VERDICT = {label.name: label.winner or "tie" for label in Label if label != Label.UNSPECIFIED}


def trl_row(spec: CampaignSpec, d: Any, votes: list[Any]) -> dict[str, Any] | None:
    """The ``trl`` row of decision ``d`` (a row with :data:`TRL_COLUMNS`) with its label rows ``votes``
    (``None``: nothing to export)."""
    instance_id, prompt, response_a, response_b, human, lm_label, lm_confidence, batch_id = d[1:9]
    if votes and human:
        counts = Counter(v.preference for v in votes)
        final = majority(counts)
        source, confidence, n_votes = "human", max(counts.values()) / len(votes), len(votes)
    elif lm_label:
        final, source, confidence, n_votes = LM_VERDICT[lm_label], "lm", lm_confidence, 0
    else:
        return None
    chosen, rejected = (response_b, response_a) if final == "B" else (response_a, response_b)
    return {
        "id": instance_id,
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "label_source": source,
        "judge": spec.judge,
        "confidence": confidence,
        "votes": n_votes,
        "tie": final == "tie",
        "campaign": spec.name,
        "batch": batch_id,
        "human_routed": bool(human),
    }


def trl_chat_row(spec: CampaignSpec, d: Any, votes: list[Any]) -> dict[str, Any] | None:
    """The ``trl-chat`` row of decision ``d`` (a row with :data:`TRL_CHAT_COLUMNS`)."""
    row = trl_row(spec, d, votes)
    if row is None:
        return None
    return {
        **row,
        "prompt": conversation(d.meta, row["prompt"]),
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
    }


def conversation(meta: Mapping[str, Any] | None, prompt: str) -> list[dict[str, str]]:
    """The turns before the two responses: the instance's ``messages`` as routed (kept in the decision's
    metadata), else one user turn holding ``prompt``."""
    messages = (meta or {}).get("messages")
    if isinstance(messages, list) and messages:
        return [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))} for m in messages]
    return [{"role": "user", "content": prompt}]


def pool_row(spec: CampaignSpec, d: Any, votes: list[Any]) -> dict[str, Any] | None:
    """The ``pool`` row of decision ``d`` (``None`` without a human vote)."""
    if not votes:
        return None
    lm_labels: dict[str, str] = {}
    recorded = (d.signals or {}).get("lm_labels")
    if isinstance(recorded, Mapping):
        lm_labels.update({str(k): str(v) for k, v in recorded.items() if isinstance(v, str)})
    if d.lm_label:
        lm_labels[spec.judge or DEFAULT_JUDGE_KEY] = LM_VERDICT[d.lm_label]
    return {
        "id": d.instance_id,
        "source": f"campaign:{spec.name}",
        "prompt": d.prompt,
        "response_a": d.response_a,
        "response_b": d.response_b,
        "human_label": majority(Counter(v.preference for v in votes)),
        "human_votes": [v.preference for v in votes],
        "lm_labels": lm_labels,
        "campaign": spec.name,
        "batch": d.batch_id,
        "human_routed": bool(d.human),
        "exploration": bool(d.exploration),
        "score": d.score,
        "expected_correction": d.expected_correction,
    }


def parquet_schema(fmt: ExportFormat):
    """Fixed Arrow schema per format: an export has the same columns and types whatever its rows."""
    import pyarrow as pa

    common = [("campaign", pa.string()), ("batch", pa.string()), ("human_routed", pa.bool_())]
    if fmt in ("trl", "trl-chat"):
        text = pa.string() if fmt == "trl" else pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
        return pa.schema(
            [
                ("id", pa.string()),
                ("prompt", text),
                ("chosen", text),
                ("rejected", text),
                ("label_source", pa.string()),
                ("judge", pa.string()),
                ("confidence", pa.float64()),
                ("votes", pa.int32()),
                ("tie", pa.bool_()),
                *common,
            ]
        )
    return pa.schema(
        [
            ("id", pa.string()),
            ("source", pa.string()),
            ("prompt", pa.string()),
            ("response_a", pa.string()),
            ("response_b", pa.string()),
            ("human_label", pa.string()),
            ("human_votes", pa.list_(pa.string())),
            ("lm_labels", pa.map_(pa.string(), pa.string())),
            *common,
            ("exploration", pa.bool_()),
            ("score", pa.float64()),
            ("expected_correction", pa.float64()),
        ]
    )


def write_export(rows: Iterable[dict[str, Any]], path: str | Path, fmt: ExportFormat) -> int:
    """Write ``rows`` to ``path`` (``.parquet`` -> Parquet, anything else -> JSONL); returns the row
    count. The file appears whole or not at all (written beside it, fsynced, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        n = (_write_parquet if path.suffix.lower() == ".parquet" else _write_jsonl)(rows, Path(tmp), fmt)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def _write_jsonl(rows: Iterable[dict[str, Any]], path: Path, fmt: ExportFormat) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False))
            fh.write("\n")
            n += 1
        fh.flush()
        os.fsync(fh.fileno())
    return n


def _write_parquet(rows: Iterable[dict[str, Any]], path: Path, fmt: ExportFormat) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema(fmt)
    n = 0
    with pq.ParquetWriter(path, schema) as writer:
        buffer: list[dict[str, Any]] = []
        for row in rows:
            buffer.append(row)
            if len(buffer) >= PARQUET_ROWS_PER_GROUP:
                writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
                n += len(buffer)
                buffer = []
        if buffer or n == 0:
            writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
            n += len(buffer)
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    return n
