"""A small in-memory CampaignStore (the contract in hybridpref.store.api) for the annotation tests.

STOP-GAP: the annotation tests use it only while the SQL campaign store (issue 20) has not landed on
this branch; ``store_factory`` in tests/test_annotate_*.py picks the real ``SqlCampaignStore`` once it
can be imported. It implements only what the annotation wing calls, with the semantics the contract
states: one vote per (instance, annotator), re-submitting the same label is "unchanged", a different
one "replaced"; labels for LM-routed instances are audits; human routing spends a count budget in
score order within a batch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from hybridpref_client.core.errors import FieldViolation, InvalidInput

from hybridpref.store.api import (
    Campaign,
    CampaignSpec,
    CampaignStatus,
    Candidate,
    HumanLabel,
    LabelResult,
    PendingPair,
    StoredDecision,
)


class MemoryCampaignStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._campaigns: dict[tuple[str, str], Campaign] = {}
        self._candidates: dict[tuple[str, str], dict[str, Candidate]] = {}
        self._decisions: dict[tuple[str, str], dict[str, StoredDecision]] = {}
        self._labels: dict[tuple[str, str], dict[tuple[str, str], HumanLabel]] = {}
        self._tokens: dict[str, tuple[str, str]] = {}

    # ------------------------------------------------------------------ campaigns

    def create_campaign(self, spec: CampaignSpec) -> Campaign:
        with self._lock:
            key = (spec.vendor, spec.name)
            if key in self._campaigns:
                raise InvalidInput(FieldViolation("name", f"campaign {spec.name!r} exists"))
            campaign = Campaign(id=len(self._campaigns) + 1, spec=spec, created_at=datetime.now(UTC), spent=0.0,
                                routed=0, human_routed=0, labels_returned=0, pairs_pending=0)
            self._campaigns[key] = campaign
            self._candidates[key], self._decisions[key], self._labels[key] = {}, {}, {}
            return campaign

    def get_campaign(self, vendor: str, name: str) -> Campaign:
        with self._lock:
            return self._refresh((vendor, name))

    def list_campaigns(self, vendor: str) -> list[Campaign]:
        with self._lock:
            return [self._refresh(k) for k in self._campaigns if k[0] == vendor]

    def _refresh(self, key: tuple[str, str]) -> Campaign:
        if key not in self._campaigns:
            raise KeyError(f"no campaign {key[1]!r}")
        c = self._campaigns[key]
        decisions = self._decisions[key].values()
        human = [d for d in decisions if d.human]
        votes = self._votes(key)
        pending = sum(1 for d in human if votes.get(d.instance_id, 0) < c.spec.votes_per_pair)
        return replace(c, spent=sum(d.cost for d in human), routed=len(self._decisions[key]), human_routed=len(human),
                       labels_returned=len(self._labels[key]), pairs_pending=pending)

    def _votes(self, key: tuple[str, str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for instance_id, _ in self._labels[key]:
            out[instance_id] = out.get(instance_id, 0) + 1
        return out

    # ------------------------------------------------------------------ routing

    def decide_batch(self, vendor: str, name: str, batch_id: str, candidates: Sequence[Candidate],
                     model_version: str = "", bundle_version: str = "") -> list[StoredDecision]:
        with self._lock:
            key = (vendor, name)
            campaign = self._refresh(key)
            left = campaign.spec.budget_total - campaign.spent
            out: dict[str, StoredDecision] = {}
            for cand in sorted(candidates, key=lambda c: -c.score):
                old = self._decisions[key].get(cand.instance_id)
                if old is not None:
                    out[cand.instance_id] = replace(old, replayed=True)
                    continue
                human = left >= cand.cost
                left -= cand.cost if human else 0
                d = StoredDecision(cand.instance_id, human, cand.score, cand.cost, batch_id, False, False,
                                   cand.lm_label, model_version)
                self._decisions[key][cand.instance_id] = d
                self._candidates[key][cand.instance_id] = cand
                out[cand.instance_id] = d
            return [out[c.instance_id] for c in candidates]

    # ------------------------------------------------------------------ labels

    def submit_labels(self, vendor: str, name: str, labels: Sequence[HumanLabel]) -> list[LabelResult]:
        with self._lock:
            key = (vendor, name)
            self._refresh(key)
            results = []
            for i, label in enumerate(labels):
                decision = self._decisions[key].get(label.instance_id)
                if decision is None:
                    results.append(LabelResult(i, label.instance_id, "rejected", error=f"labels[{i}].instance_id: not routed in this campaign"))
                    continue
                if label.preference not in ("A", "B", "tie"):
                    results.append(LabelResult(i, label.instance_id, "rejected", error=f"labels[{i}].preference: A, B or tie"))
                    continue
                slot = (label.instance_id, label.annotator)
                stamped = replace(label, labelled_at=label.labelled_at or datetime.now(UTC))
                old = self._labels[key].get(slot)
                same = old is not None and (old.preference, old.strength, old.rationale) == (label.preference, label.strength, label.rationale)
                if not same:
                    self._labels[key][slot] = stamped
                status = "unchanged" if same else "replaced" if old is not None else "stored"
                results.append(LabelResult(i, label.instance_id, status, audit=not decision.human))
            return results

    def delete_label(self, vendor: str, name: str, instance_id: str, annotator: str) -> bool:
        with self._lock:
            return self._labels[(vendor, name)].pop((instance_id, annotator), None) is not None

    def pending_pairs(self, vendor: str, name: str, annotator: str, limit: int = 1) -> list[PendingPair]:
        with self._lock:
            key = (vendor, name)
            campaign = self._refresh(key)
            votes = self._votes(key)
            out = []
            for instance_id, d in self._decisions[key].items():  # decision order
                if len(out) >= limit:
                    break
                n = votes.get(instance_id, 0)
                if d.human and n < campaign.spec.votes_per_pair and (instance_id, annotator) not in self._labels[key]:
                    c = self._candidates[key][instance_id]
                    out.append(PendingPair(instance_id, c.prompt, c.response_a, c.response_b, n, campaign.spec.votes_per_pair))
            return out

    def export_rows(self, vendor: str, name: str, fmt: str = "trl") -> Iterator[dict[str, Any]]:
        raise NotImplementedError("not needed by the annotation wing")

    def status(self, vendor: str, name: str) -> CampaignStatus:
        campaign = self.get_campaign(vendor, name)
        with self._lock:
            votes = self._votes((vendor, name))
            wanted = sum(max(0, campaign.spec.votes_per_pair - votes.get(d.instance_id, 0))
                         for d in self._decisions[(vendor, name)].values() if d.human)
        return CampaignStatus(campaign, campaign.spec.budget_total - campaign.spent, wanted, None, 0, None)

    def returned_labels(self, vendor: str, name: str) -> Iterator[tuple[Candidate, StoredDecision, list[HumanLabel]]]:
        with self._lock:
            key = (vendor, name)
            by_instance: dict[str, list[HumanLabel]] = {}
            for (instance_id, _), label in self._labels[key].items():
                by_instance.setdefault(instance_id, []).append(label)
            rows = [(self._candidates[key][i], self._decisions[key][i], labels) for i, labels in by_instance.items()]
        yield from rows

    # ------------------------------------------------------------------ annotator tokens

    def add_annotator_token(self, vendor: str, annotator: str, token_sha256: str) -> None:
        with self._lock:
            self._tokens[token_sha256] = (vendor, annotator)

    def find_annotator_token(self, token_sha256: str) -> tuple[str, str] | None:
        with self._lock:
            return self._tokens.get(token_sha256)

    def revoke_annotator_tokens(self, vendor: str, annotator: str) -> int:
        with self._lock:
            gone = [h for h, who in self._tokens.items() if who == (vendor, annotator)]
            for h in gone:
                del self._tokens[h]
            return len(gone)
