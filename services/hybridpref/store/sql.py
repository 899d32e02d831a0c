"""``SqlCampaignStore``: the campaign store (:class:`hybridpref.store.api.CampaignStore`) on SQLAlchemy 2,
for SQLite and PostgreSQL.

Isolation: every method starts from the campaign found by (vendor, name); every other table is reached
through that campaign's id. A vendor never sees, counts or changes another vendor's rows, and another
vendor's campaign is reported as :class:`NotFound` like a missing one.

Concurrency: writes that read-then-write (``decide_batch``, ``submit_labels``, ``delete_label``) run in
one transaction holding the campaign row's lock (PostgreSQL ``SELECT ... FOR UPDATE``; SQLite
``BEGIN IMMEDIATE``, the database's write lock). Spend is reserved in the campaign row in the same
transaction as the decisions, so routers sharing one database can never spend the same units twice,
and a crash before the commit leaves nothing half-written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import secrets
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from sqlalchemy import ARRAY, Connection, Engine, bindparam, exists, false, func, insert, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

import hybridpref.store.models as m
from hybridpref.store.api import (
    AnnotatorStats,
    Campaign,
    CampaignSpec,
    CampaignStatus,
    Candidate,
    ExportFormat,
    FeatureVector,
    HumanLabel,
    LabelResult,
    PendingPair,
    StoredDecision,
)
from hybridpref.store.engine import (
    EncodedJSON,
    create_store_engine,
    current_revision,
    head_revision,
    migrate,
    write_engine,
)
from hybridpref.store.policy import batch_seed, plan_batch, update_sample
from hybridpref.store.stats import annotator_stats, expected_count_interval, majority, wilson
from hybridpref.store.validation import (
    MAX_EXPECTED,
    CheckedBatch,
    canonical_preference,
    check_name,
    clip_id,
    expected_ok,
    finite,
    has_nul,
    label_error,
    validate_batch,
    validate_spec,
)
from hybridpref_client.core.errors import AlreadyExists, FieldViolation, InvalidInput, NotFound, NotReady, quote
from hybridpref_client.core.instances import Label

# Rows per query when streaming (export, refit) and ids per IN (...) list.
CHUNK = 2_000
# A decision's columns that vary per row, in the order ``_decision_rows`` writes them; then those that a
# batch shares (written once per batch: ``BATCH_COLUMNS``).
DECISION_COLUMNS = (
    "instance_id",
    "prompt",
    "response_a",
    "response_b",
    "score",
    "cost",
    "human",
    "exploration",
    "lm_label",
    "lm_confidence",
    "expected_correction",
    "signals",
    "meta",
    "feature_set_id",
    "feature_values",
)
BATCH_COLUMNS = ("campaign_id", "batch_id", "threshold", "features", "model_version", "bundle_version", "created_at")
NO_FEATURES = EncodedJSON("{}")  # ``features`` of the rows whose features are packed (revision 0004) or absent
LABEL_COLUMNS = (
    "campaign_id",
    "decision_id",
    "annotator",
    "preference",
    "strength",
    "rationale",
    "labelled_at",
    "source",
    "audit",
    "updated_at",
)
MAX_PENDING_LIMIT = 1_000
# One strict, compact encoder for the JSON columns (json.dumps would build an encoder per value).


class SqlCampaignStore:
    """The campaign store on one database. Thread-safe (one connection per call from the pool)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._write = write_engine(engine)
        self._postgres = engine.dialect.name == "postgresql"

    @classmethod
    def open(cls, url: str | None = None, *, upgrade: bool = False, **engine_kwargs: Any) -> SqlCampaignStore:
        """Open the store at ``url`` (see :func:`hybridpref.store.engine.resolve_url`).

        ``upgrade=True`` migrates the database to the newest revision first (the embedded SQLite
        default); otherwise a database that is not at the newest revision raises :class:`NotReady`
        naming the command that migrates it (production runs migrations as a separate job)."""
        engine = create_store_engine(url, **engine_kwargs)
        if upgrade:
            migrate(engine)
        else:
            have, want = current_revision(engine), head_revision()
            if have != want:
                engine.dispose()
                raise NotReady(
                    f"the campaign store's database is at revision {have or 'none'}, this code needs "
                    f"{want}: run `hybridpref store migrate --db URL` first"
                )
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    # ---- campaigns -------------------------------------------------------------------------------

    def create_campaign(self, spec: CampaignSpec) -> Campaign:
        """Store a new campaign; :class:`AlreadyExists` when the vendor already has one of that name."""
        validate_spec(spec)
        now = _now()
        try:
            with self._write.begin() as conn:
                conn.execute(
                    insert(m.campaigns).values(
                        vendor=spec.vendor,
                        name=spec.name,
                        budget_kind=spec.budget_kind,
                        budget_total=float(spec.budget_total),
                        strategy=spec.strategy,
                        judge=spec.judge,
                        votes_per_pair=spec.votes_per_pair,
                        expected_instances=spec.expected_instances,
                        exploration_share=float(spec.exploration_share),
                        created_at=now,
                        spent=0.0,
                        routed=0,
                        human_routed=0,
                    )
                )
                return self._campaign(conn, self._row(conn, spec.vendor, spec.name))
        except IntegrityError as exc:
            raise AlreadyExists(f"campaign {quote(spec.name)} already exists") from exc

    def close_campaign(self, vendor: str, name: str) -> Campaign:
        """Close the campaign: no new instance is routed for it (a re-sent one still gets its stored decision);
        labels, status and export go on. Closing again keeps the first ``closed_at``."""
        with self._write.begin() as conn:
            row = self._row(conn, vendor, name, lock=True)
            if row.closed_at is None:
                conn.execute(update(m.campaigns).where(m.campaigns.c.id == row.id).values(closed_at=_now()))
            return self._campaign(conn, self._row(conn, vendor, name))

    def update_campaign(
        self,
        vendor: str,
        name: str,
        *,
        budget_total: float | None = None,
        expected_instances: int | None = None,
        budget_kind: str | None = None,
    ) -> Campaign:
        """Change what paces the spending: the total budget (a top-up, or a cut down to no less than what is
        spent) and the stream's expected size (no less than what is routed); ``None`` leaves a field as it is.
        Under the campaign row's lock, so a batch being routed sees the old values or the new, never half."""
        v: list[FieldViolation] = []
        if budget_total is not None and (
            not isinstance(budget_total, (int, float)) or not math.isfinite(budget_total) or budget_total < 0
        ):
            v.append(FieldViolation("budget.total", f"must be a finite number >= 0, got {budget_total!r}"))
        if expected_instances is not None and not expected_ok(expected_instances):
            v.append(
                FieldViolation("expected_instances", f"must be an integer in 1..{MAX_EXPECTED:,}, got {expected_instances!r}")
            )
        if v:
            raise InvalidInput(v)
        with self._write.begin() as conn:
            row = self._row(conn, vendor, name, lock=True)
            changes: dict[str, Any] = {}
            if budget_kind is not None and budget_kind != row.budget_kind:  # the caller's unit: checked, never converted
                raise InvalidInput(
                    FieldViolation(
                        "budget", f"the campaign's budget is a {row.budget_kind} budget; give budget.{row.budget_kind}"
                    )
                )
            if budget_total is not None:
                if row.budget_kind == "count" and float(budget_total) != int(budget_total):
                    v.append(FieldViolation("budget.total", f"a count budget is a whole number of labels, got {budget_total}"))
                elif budget_total < row.spent:
                    v.append(FieldViolation("budget.total", f"{budget_total:g} is below what is already spent ({row.spent:g})"))
                changes["budget_total"] = float(budget_total)
            if expected_instances is not None:
                if expected_instances < row.routed:
                    v.append(
                        FieldViolation(
                            "expected_instances", f"{expected_instances} is below what is already routed ({row.routed})"
                        )
                    )
                changes["expected_instances"] = expected_instances
            if v:
                raise InvalidInput(v)
            if changes:
                conn.execute(update(m.campaigns).where(m.campaigns.c.id == row.id).values(**changes))
            return self._campaign(conn, self._row(conn, vendor, name))

    def get_campaign(self, vendor: str, name: str) -> Campaign:
        with self.engine.connect() as conn:
            return self._campaign(conn, self._row(conn, vendor, name))

    def budget(self, vendor: str, name: str) -> tuple[float, float]:
        """(units spent, total) of the campaign: its row alone (``get_campaign`` also counts labels and
        pending pairs, which grows with the campaign). What the router reports after each batch."""
        c = m.campaigns.c
        with self.engine.connect() as conn:
            row = conn.execute(select(c.spent, c.budget_total).where(c.vendor == vendor, c.name == name)).first()
        if row is None:
            raise NotFound(f"no campaign {quote(name)}")
        return float(row.spent), float(row.budget_total)

    def list_campaigns(self, vendor: str) -> list[Campaign]:
        """The vendor's campaigns, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(m.campaigns).where(m.campaigns.c.vendor == vendor).order_by(m.campaigns.c.id)).all()
            return [self._campaign(conn, row) for row in rows]

    # ---- routing ---------------------------------------------------------------------------------

    def decide_batch(
        self,
        vendor: str,
        name: str,
        batch_id: str,
        candidates: Sequence[Candidate],
        model_version: str = "",
        bundle_version: str = "",
    ) -> list[StoredDecision]:
        """Decide and store a batch; one decision per candidate, in the candidates' order.

        Ids the campaign already stored come back as stored (``replayed=True``) and spend nothing;
        the new ones are routed by the spending policy (:mod:`hybridpref.store.policy`) in the same
        transaction that reserves their spend. Raises :class:`InvalidInput` (nothing stored) when a
        candidate is malformed, :class:`NotFound` for an unknown campaign."""
        checked = validate_batch(batch_id, candidates, model_version, bundle_version)
        if not candidates:
            self.get_campaign(vendor, name)
            return []
        with self._write.begin() as conn:
            row = self._row(conn, vendor, name, lock=True)
            stored = self._stored_decisions(conn, row.id, [c.instance_id for c in candidates])
            fresh = [i for i, c in enumerate(candidates) if c.instance_id not in stored]
            closed = _utc(row.closed_at)
            if fresh and closed is not None:
                raise NotReady(
                    f"campaign {quote(name)} was closed at {closed.isoformat()}: it routes no new instance "
                    f"({len(fresh)} in this batch); create a new campaign"
                )
            decided: dict[str, StoredDecision] = {}
            if fresh:
                set_ids = self._feature_set_ids(conn, {f.names for i in fresh if (f := checked.features[i]) is not None})
                decided = self._decide_fresh(
                    conn, row, batch_id, candidates, fresh, checked, set_ids, model_version, bundle_version
                )
        return [decided.get(c.instance_id) or stored[c.instance_id] for c in candidates]

    def _decide_fresh(
        self,
        conn: Connection,
        row,
        batch_id: str,
        candidates: Sequence[Candidate],
        fresh: list[int],
        checked: CheckedBatch,
        set_ids: Mapping[tuple[str, ...], int],
        model_version: str,
        bundle_version: str,
    ) -> dict[str, StoredDecision]:
        """Route the ``fresh`` candidates (positions in ``candidates``) by the spending policy, store them
        and reserve their spend in the campaign row."""
        scores = np.array([candidates[i].score for i in fresh], dtype=np.float64)
        costs = np.array([candidates[i].cost for i in fresh], dtype=np.float64)
        history = np.frombuffer(row.score_sample or b"", dtype="<f8")
        seed = batch_seed(row.id, batch_id)
        plan = plan_batch(
            scores,
            costs,
            history=history,
            budget_kind=row.budget_kind,
            budget_left=row.budget_total - row.spent,
            seen=row.routed,
            expected_instances=row.expected_instances,
            exploration_share=row.exploration_share,
            seed=seed,
        )
        human, exploration = plan.human.tolist(), plan.exploration.tolist()
        threshold = plan.threshold if math.isfinite(plan.threshold) else None
        shared = (row.id, batch_id, threshold, NO_FEATURES, model_version, bundle_version, _now())
        self._insert(
            conn,
            m.decisions,
            DECISION_COLUMNS,
            _decision_rows(candidates, fresh, checked, set_ids, human, exploration),
            dict(zip(BATCH_COLUMNS, shared)),
            driver_ready=True,
        )
        spent = row.spent + plan.spend
        if spent > row.budget_total:  # float sums of costs: never report more than the total
            spent = row.budget_total
        sample = update_sample(history, row.routed, scores, seed).astype("<f8").tobytes()
        conn.execute(
            update(m.campaigns)
            .where(m.campaigns.c.id == row.id)
            .values(
                spent=spent,
                routed=m.campaigns.c.routed + len(fresh),
                human_routed=m.campaigns.c.human_routed + int(plan.human.sum()),
                score_sample=sample,
            )
        )
        out = {}
        for k, i in enumerate(fresh):
            c = candidates[i]
            out[c.instance_id] = StoredDecision(
                instance_id=c.instance_id,
                human=human[k],
                score=float(c.score),
                cost=float(c.cost),
                batch_id=batch_id,
                exploration=exploration[k],
                replayed=False,
                lm_label=checked.lm_labels[i],
                model_version=model_version,
                lm_confidence=c.lm_confidence,
                expected_correction=c.expected_correction,
            )
        return out

    # ---- feature sets (revision 0004) ------------------------------------------------------------

    def _feature_set_ids(self, conn: Connection, names: set[tuple[str, ...]]) -> dict[tuple[str, ...], int]:
        """The ``feature_sets`` id of each list of names, in the open transaction (stored where new). Looked up
        per batch, never cached across calls: one indexed query a batch, and a restored or shared database
        can never be handed an id that means other names there."""
        return {n: self._feature_set_id(conn, n) for n in names}

    def _feature_set_id(self, conn: Connection, names: tuple[str, ...]) -> int:
        text, digest = _feature_set_key(names)
        fs = m.feature_sets.c
        found = conn.execute(select(fs.id).where(fs.digest == digest)).scalar()
        if found is None:  # two routers may race here: the unique digest keeps one row, and both read it
            dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
            values = {"digest": digest, "names": EncodedJSON(text)}
            conn.execute(dialect.insert(m.feature_sets).values(values).on_conflict_do_nothing(index_elements=["digest"]))
            found = conn.execute(select(fs.id).where(fs.digest == digest)).scalar_one()
        return int(found)

    def _feature_names(self, conn: Connection, ids: set[int] | None = None) -> dict[int, tuple[str, ...]]:
        """Names of the feature sets ``ids`` (all: ``None``); the table holds one row per distinct list."""
        query = select(m.feature_sets.c.id, m.feature_sets.c.names)
        if ids is not None:
            query = query.where(m.feature_sets.c.id.in_(sorted(ids)))
        return {r.id: tuple(r.names) for r in conn.execute(query)}

    def _features_of(self, r, names: dict[int, tuple[str, ...]]) -> Mapping[str, float]:
        """A decision row's features: packed (revision 0004; ``names`` by feature set, completed from the
        database when the row's set is newer) or the JSON object of earlier rows."""
        if r.feature_set_id is None or r.feature_values is None:
            return dict(r.features or {})
        if r.feature_set_id not in names:
            with self.engine.connect() as conn:
                names.update(self._feature_names(conn, {r.feature_set_id}))
        return FeatureVector(names[r.feature_set_id], bytes(r.feature_values))

    def _candidate(self, r, names: dict[int, tuple[str, ...]]) -> Candidate:
        return Candidate(
            instance_id=r.instance_id,
            prompt=r.prompt,
            response_a=r.response_a,
            response_b=r.response_b,
            score=r.score,
            cost=r.cost,
            lm_label=r.lm_label,
            lm_confidence=r.lm_confidence,
            signals=dict(r.signals or {}),
            features=self._features_of(r, names),
            expected_correction=r.expected_correction,
            metadata=dict(r.meta or {}),
        )

    def _stored_decisions(self, conn: Connection, campaign_id: int, ids: Sequence[str]) -> dict[str, StoredDecision]:
        d = m.decisions.c
        out: dict[str, StoredDecision] = {}
        for chunk in _chunks(ids, CHUNK):
            query = select(
                d.instance_id,
                d.human,
                d.score,
                d.cost,
                d.batch_id,
                d.exploration,
                d.lm_label,
                d.model_version,
                d.lm_confidence,
                d.expected_correction,
            ).where(d.campaign_id == campaign_id, self._in(d.instance_id, chunk))
            for r in conn.execute(query):
                out[r.instance_id] = _decision(r, replayed=True)
        return out

    def _insert(
        self,
        conn: Connection,
        table,
        columns: Sequence[str],
        rows: Iterable[tuple[Any, ...]],
        shared: Mapping[str, Any] | None = None,
        driver_ready: bool = False,
    ) -> None:
        """Insert rows (tuples in ``columns`` order, plus the ``shared`` columns' values, the same for every
        row) in the open transaction: COPY on PostgreSQL (one round trip; psycopg's executemany sends one
        statement per row), a prepared executemany on SQLite. ``rows`` is consumed once, as it is written.
        ``driver_ready``: the rows hold only values both drivers take as they are (str, numbers, bool,
        bytes, None; JSON already text), so SQLite skips the columns' bind processors for them."""
        shared = dict(shared or {})
        names = ", ".join(f'"{c}"' for c in (*columns, *shared))
        driver: Any = conn.connection.driver_connection  # psycopg's (COPY) or sqlite3's connection
        if self._postgres:
            tail = tuple(shared.values())
            with driver.cursor() as cursor:
                with cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
                    for row in rows:
                        copy.write_row(row + tail)
            return

        # SQLite: the driver's executemany on tuples, each value through its column type's bind processor
        # (datetimes, booleans, JSON), without building a parameter dict per row (measured: ~2x faster); the
        # shared values are processed once.
        def bound(column: str):
            return table.c[column].type._cached_bind_processor(conn.dialect)

        tail = tuple(p(v) if (p := bound(c)) is not None else v for c, v in shared.items())
        processors = [] if driver_ready else [(k, p) for k, c in enumerate(columns) if (p := bound(c)) is not None]
        marks = ", ".join("?" for _ in (*columns, *shared))
        cursor = driver.cursor()  # sqlite3's executemany takes the rows lazily
        try:
            cursor.executemany(f'INSERT INTO "{table.name}" ({names}) VALUES ({marks})', _bound_rows(rows, processors, tail))
        finally:
            cursor.close()

    # ---- labels ----------------------------------------------------------------------------------

    def submit_labels(self, vendor: str, name: str, labels: Sequence[HumanLabel]) -> list[LabelResult]:
        """Store human labels; one result per item, in order.

        A malformed item or an id the campaign never routed is ``rejected`` (``error`` names the
        field) and the rest is stored. Per (instance, annotator) a label is stored once: the same
        (preference, strength, rationale) again is ``unchanged``, a different one ``replaced`` (still
        one vote). A label on an LM-routed instance is stored with ``audit=True``."""
        errors = [label_error(i, item) for i, item in enumerate(labels)]
        results: list[LabelResult | None] = [
            LabelResult(i, clip_id(item), "rejected", error=err) if err else None
            for i, (item, err) in enumerate(zip(labels, errors, strict=True))
        ]
        valid = [i for i, r in enumerate(results) if r is None]
        with self._write.begin() as conn:
            row = self._row(conn, vendor, name, lock=True)
            targets = self._decision_ids(conn, row.id, {labels[i].instance_id for i in valid})
            current = self._current_labels(conn, [t[0] for t in targets.values()], {labels[i].annotator for i in valid})
            state: dict[tuple[int, str], dict[str, Any]] = {}
            now = _now()
            for i in valid:
                item = labels[i]
                if item.instance_id not in targets:
                    results[i] = LabelResult(
                        i,
                        item.instance_id,
                        "rejected",
                        error=f"labels[{i}].instance_id: no routed instance {quote(item.instance_id)} in campaign {quote(name)}",
                    )
                    continue
                decision_id, human = targets[item.instance_id]
                key = (decision_id, item.annotator)
                new = dict(
                    preference=canonical_preference(item.preference),
                    strength=item.strength,
                    rationale=item.rationale,
                    labelled_at=_utc(item.labelled_at) or now,
                    source=item.source,
                    audit=not human,
                    updated_at=now,
                )
                old = state.get(key) or current.get(key)
                status: Literal["stored", "unchanged", "replaced"]
                if old is None:
                    status = "stored"
                elif (old["preference"], old["strength"], old["rationale"]) == (
                    new["preference"],
                    new["strength"],
                    new["rationale"],
                ):
                    status = "unchanged"
                else:
                    status = "replaced"
                if status != "unchanged":
                    new["id"] = old.get("id") if old else None
                    state[key] = new
                results[i] = LabelResult(i, item.instance_id, status, audit=not human)
            self._write_labels(conn, row.id, state)
        return [r for r in results if r is not None]

    def _write_labels(self, conn: Connection, campaign_id: int, state: dict[tuple[int, str], dict[str, Any]]) -> None:
        inserts, updates = [], []
        for (decision_id, annotator), values in state.items():
            row_id = values.pop("id")
            if row_id is None:
                inserts.append(dict(values, campaign_id=campaign_id, decision_id=decision_id, annotator=annotator))
            else:
                updates.append(dict(values, row_id=row_id))
        self._insert(conn, m.labels, LABEL_COLUMNS, [tuple(row[c] for c in LABEL_COLUMNS) for row in inserts])
        if updates:
            conn.execute(
                update(m.labels)
                .where(m.labels.c.id == bindparam("row_id"))
                .values(
                    preference=bindparam("preference"),
                    strength=bindparam("strength"),
                    rationale=bindparam("rationale"),
                    labelled_at=bindparam("labelled_at"),
                    source=bindparam("source"),
                    audit=bindparam("audit"),
                    updated_at=bindparam("updated_at"),
                ),
                updates,
            )

    def _decision_ids(self, conn: Connection, campaign_id: int, ids: set[str]) -> dict[str, tuple[int, bool]]:
        d = m.decisions.c
        out: dict[str, tuple[int, bool]] = {}
        for chunk in _chunks(sorted(ids), CHUNK):
            for r in conn.execute(
                select(d.instance_id, d.id, d.human).where(d.campaign_id == campaign_id, self._in(d.instance_id, chunk))
            ):
                out[r.instance_id] = (r.id, bool(r.human))
        return out

    def _current_labels(
        self, conn: Connection, decision_ids: list[int], annotators: set[str]
    ) -> dict[tuple[int, str], dict[str, Any]]:
        lab = m.labels.c
        out: dict[tuple[int, str], dict[str, Any]] = {}
        for chunk in _chunks(sorted(decision_ids), CHUNK):
            query = select(lab.id, lab.decision_id, lab.annotator, lab.preference, lab.strength, lab.rationale).where(
                self._in(lab.decision_id, chunk)
            )
            if len(annotators) <= CHUNK:
                query = query.where(self._in(lab.annotator, sorted(annotators)))
            for r in conn.execute(query):
                if r.annotator in annotators:
                    out[(r.decision_id, r.annotator)] = dict(
                        id=r.id, preference=r.preference, strength=r.strength, rationale=r.rationale
                    )
        return out

    def delete_label(self, vendor: str, name: str, instance_id: str, annotator: str) -> bool:
        """Undo: remove ``annotator``'s label on ``instance_id``. False when there was none."""
        with self._write.begin() as conn:
            row = self._row(conn, vendor, name, lock=True)
            if has_nul(instance_id, annotator):
                return False
            decision = conn.execute(
                select(m.decisions.c.id).where(m.decisions.c.campaign_id == row.id, m.decisions.c.instance_id == instance_id)
            ).scalar()
            if decision is None:
                return False
            result = conn.execute(m.labels.delete().where(m.labels.c.decision_id == decision, m.labels.c.annotator == annotator))
            return result.rowcount > 0

    def retract_labels(self, vendor: str, name: str, annotator: str, instance_ids: Sequence[str] | None = None) -> int:
        """Remove ``annotator``'s labels from the campaign (all of them, or those on ``instance_ids``); returns how
        many were removed. Their pairs want votes again. For an annotator found to label at random: the
        campaign's status, export and refits then read only the others' votes."""
        check_name("annotator", annotator, m.MAX_ANNOTATOR)
        lab, d = m.labels.c, m.decisions.c
        with self._write.begin() as conn:
            row = self._row(conn, vendor, name, lock=True)
            where = [lab.campaign_id == row.id, lab.annotator == annotator]
            if instance_ids is None:
                return conn.execute(m.labels.delete().where(*where)).rowcount
            removed = 0
            for chunk in _chunks(sorted({i for i in instance_ids if isinstance(i, str) and not has_nul(i)}), CHUNK):
                decisions = select(d.id).where(d.campaign_id == row.id, self._in(d.instance_id, chunk))
                removed += conn.execute(m.labels.delete().where(*where, lab.decision_id.in_(decisions))).rowcount
            return removed

    def pending_pairs(self, vendor: str, name: str, annotator: str, limit: int = 1, after: str = "") -> list[PendingPair]:
        """Human-routed pairs that still need votes and that ``annotator`` has not labelled, oldest
        decision first (deterministic: two calls on the same state give the same pairs). ``after``: the
        instance id of the last pair of the previous page; this page starts after its decision (a cursor,
        not an offset: labels stored between two pages shift nothing)."""
        if not 1 <= limit <= MAX_PENDING_LIMIT:
            raise InvalidInput(FieldViolation("limit", f"must be in 1..{MAX_PENDING_LIMIT}, got {limit}"))
        for field, value in (("annotator", annotator), ("after", after)):
            if has_nul(value):
                raise InvalidInput(FieldViolation(field, "contains a NUL character (U+0000)"))
        d, lab = m.decisions.c, m.labels.c
        with self.engine.connect() as conn:
            row = self._row(conn, vendor, name)
            votes = select(func.count()).where(lab.decision_id == d.id).scalar_subquery()
            mine = exists().where(lab.decision_id == d.id, lab.annotator == annotator)
            where = [d.campaign_id == row.id, d.human == true(), votes < row.votes_per_pair, ~mine]
            if after:
                cursor = conn.execute(select(d.id).where(d.campaign_id == row.id, d.instance_id == after)).scalar()
                if cursor is None:
                    raise InvalidInput(FieldViolation("after", f"{quote(after)} is not an instance of campaign {quote(name)}"))
                where.append(d.id > cursor)
            query = (
                select(d.instance_id, d.prompt, d.response_a, d.response_b, votes.label("votes"))
                .where(*where)
                .order_by(d.id)
                .limit(limit)
            )
            return [
                PendingPair(r.instance_id, r.prompt, r.response_a, r.response_b, int(r.votes), row.votes_per_pair)
                for r in conn.execute(query)
            ]

    def lm_expectations(self, vendor: str, name: str, instance_ids: Sequence[str]) -> dict[str, tuple[str | None, float | None]]:
        """instance id -> (its stored LM label name, the agreement the routing expected of it: ``1 -
        signals["p_lm_wrong"]`` from the bundle's correction model, else the LM confidence, else ``None``), for
        the ids the campaign routed. What the router's agreement metrics compare returned votes with."""
        d = m.decisions.c
        out: dict[str, tuple[str | None, float | None]] = {}
        with self.engine.connect() as conn:
            row = self._row(conn, vendor, name)
            for chunk in _chunks(sorted({i for i in instance_ids if not has_nul(i)}), CHUNK):
                query = select(d.instance_id, d.lm_label, d.lm_confidence, d.signals).where(
                    d.campaign_id == row.id, self._in(d.instance_id, chunk)
                )
                for r in conn.execute(query):
                    p_wrong = (r.signals or {}).get("p_lm_wrong")
                    expected = 1.0 - float(p_wrong) if p_wrong is not None and finite(p_wrong) else r.lm_confidence
                    out[r.instance_id] = (r.lm_label, expected)
        return out

    # ---- reading back ----------------------------------------------------------------------------

    def export_rows(self, vendor: str, name: str, fmt: ExportFormat = "trl") -> Iterator[dict[str, Any]]:
        """Stream the campaign's dataset, one dict per instance in routing order (see
        :mod:`hybridpref.store.export` for the two row schemas). Reads in chunks of ``CHUNK`` rows in one
        read transaction (one snapshot on PostgreSQL)."""
        from hybridpref.store.export import POOL_COLUMNS, TRL_CHAT_COLUMNS, TRL_COLUMNS, pool_row, trl_chat_row, trl_row

        formats = {"trl": (trl_row, TRL_COLUMNS), "trl-chat": (trl_chat_row, TRL_CHAT_COLUMNS), "pool": (pool_row, POOL_COLUMNS)}
        if fmt not in formats:
            raise InvalidInput(FieldViolation("format", f"expected trl, trl-chat or pool, got {quote(fmt)}"))
        campaign = self.get_campaign(vendor, name)  # NotFound before the first row
        make, columns = formats[fmt]
        lab = m.labels.c
        for decision, votes in self._walk(
            vendor, name, [m.decisions.c[c] for c in columns], [lab.decision_id, lab.preference], labelled_only=fmt == "pool"
        ):
            out = make(campaign.spec, decision, votes)
            if out is not None:
                yield out

    def returned_labels(self, vendor: str, name: str) -> Iterator[tuple[Candidate, StoredDecision, list[HumanLabel]]]:
        """Every instance with at least one human label (audit labels included), in routing order:
        the candidate as routed, its decision and its labels (oldest first). For refits."""
        with self.engine.connect() as conn:
            names = self._feature_names(conn)
        for decision, votes in self._walk(vendor, name, list(m.decisions.c), list(m.labels.c), labelled_only=True):
            yield self._candidate(decision, names), _decision(decision), [_human_label(decision.instance_id, v) for v in votes]

    def _walk(
        self, vendor: str, name: str, columns: list[Any], label_columns: list[Any], labelled_only: bool
    ) -> Iterator[tuple[Any, list[Any]]]:
        """(decision row, its label rows oldest first) in decision id order; only ``columns`` of the
        decisions and ``label_columns`` of the labels are read.

        Two streamed queries (server-side cursors on PostgreSQL, fetched ``CHUNK`` rows at a time)
        merged on the decision id, in one read transaction (one snapshot on PostgreSQL): linear in the
        campaign's size, whatever the planner knows about the tables."""
        d, lab = m.decisions.c, m.labels.c
        read = self.engine.execution_options(isolation_level="REPEATABLE READ") if self._postgres else self.engine
        columns = [d.id, *(c for c in columns if c.name != "id")]
        label_columns = [lab.decision_id, *(c for c in label_columns if c.name != "decision_id")]
        with read.connect() as conn, conn.begin():
            row = self._row(conn, vendor, name)
            query = select(*columns).where(d.campaign_id == row.id)
            if labelled_only:
                query = query.where(exists().where(lab.decision_id == d.id))
            streamed = conn.execution_options(yield_per=CHUNK)
            decisions = streamed.execute(query.order_by(d.id))
            votes = iter(
                streamed.execute(
                    select(*label_columns).where(lab.campaign_id == row.id).order_by(lab.decision_id, lab.labelled_at, lab.id)
                )
            )
            vote = next(votes, None)
            for decision in decisions:
                mine = []
                while vote is not None and vote.decision_id <= decision.id:
                    if vote.decision_id == decision.id:
                        mine.append(vote)
                    vote = next(votes, None)
                yield decision, mine

    def status(self, vendor: str, name: str) -> CampaignStatus:
        """Budget, labels and what the returned labels say about the judge and the promised corrections.

        ``agreement``: share of labelled pairs (human-routed and audit) whose human majority equals the
        LM label, over pairs where both are non-tie (Wilson 95%); ``audit_agreement``: the same over
        audit pairs only (an unbiased sample of LM-routed pairs; human-routed pairs were picked where the
        judge is doubtful, so their agreement is lower by design). ``realised_corrections``: human-routed
        pairs whose non-tie human majority differs from the LM label (a tie or missing LM label counts
        as differing); ``expected_corrections``: the sum of ``expected_correction`` over the same pairs
        (those that have one), with a normal-approximation 95% interval. That sum is *net* (a human label
        also undoes right LM labels), so it is not a forecast of the realised count; ``expected_changes``
        is: the sum of the stored P(LM wrong) over the human-routed pairs with a non-tie majority that
        carry one, beside ``realised_changes`` over the same pairs."""
        d, lab = m.decisions.c, m.labels.c
        with self.engine.connect() as conn, conn.begin():
            row = self._row(conn, vendor, name)
            campaign = self._campaign(conn, row)
            votes_by: dict[int, Counter[str]] = defaultdict(Counter)
            info: dict[int, tuple[bool, str | None, float | None, float | None]] = {}
            query = (
                select(lab.decision_id, lab.annotator, d.human, d.lm_label, d.expected_correction, d.signals, lab.preference)
                .join(m.labels, lab.decision_id == d.id)
                .where(d.campaign_id == row.id)
            )
            rows = conn.execute(query).all()
            for r in rows:
                votes_by[r.decision_id][r.preference] += 1
                p_wrong = (r.signals or {}).get("p_lm_wrong")
                info[r.decision_id] = (bool(r.human), r.lm_label, r.expected_correction, p_wrong if finite(p_wrong) else None)
            votes = (
                select(d.id, func.count(lab.id).label("n"))
                .select_from(m.decisions)
                .outerjoin(m.labels, lab.decision_id == d.id)
                .where(d.campaign_id == row.id, d.human == true())
                .group_by(d.id)
                .subquery()
            )
            pending = conn.execute(
                select(func.coalesce(func.sum(row.votes_per_pair - votes.c.n), 0)).where(votes.c.n < row.votes_per_pair)
            ).scalar()
        agree, compared, audit_agree, audit_compared = 0, 0, 0, 0
        realised, promised, n_known = 0, [], 0
        changed, p_changes = 0, []
        for decision_id, counts in votes_by.items():
            human, lm_label, expected, p_wrong = info[decision_id]
            verdict = majority(counts)
            lm = _winner(lm_label)
            if verdict != "tie" and lm is not None:
                compared += 1
                agree += verdict == lm
                if not human:
                    audit_compared += 1
                    audit_agree += verdict == lm
            if human:
                realised += verdict != "tie" and verdict != lm
                if expected is not None:
                    promised.append(expected)
                    n_known += 1
                if verdict != "tie" and p_wrong is not None:
                    changed += verdict != lm
                    p_changes.append(float(p_wrong))
        return CampaignStatus(
            campaign=campaign,
            budget_left=max(0.0, campaign.spec.budget_total - campaign.spent),
            labels_pending=int(pending or 0),
            agreement=wilson(agree, compared),
            realised_corrections=int(realised),
            expected_corrections=expected_count_interval(promised),
            audit_agreement=wilson(audit_agree, audit_compared),
            expected_known=n_known,
            realised_changes=changed,
            expected_changes=expected_count_interval(p_changes),
            changes_known=len(p_changes),
            annotators=annotator_stats(rows),
        )

    def annotator_stats(self, vendor: str, name: str) -> list[AnnotatorStats]:
        """Per annotator, most votes first: votes returned, agreement with the other votes' majority on the same
        pairs (leave-one-out) and with the LM label, each with its Wilson 95% interval (see
        :class:`AnnotatorStats`). Audit votes count too: they are votes on the same task. Part of
        :meth:`status`, which reads the labels once for both."""
        return self.status(vendor, name).annotators

    # ---- annotator tokens (the annotation page, issue 17) ----------------------------------------

    def create_annotator_token(self, vendor: str, annotator: str) -> str:
        """A new secret token for ``annotator`` of ``vendor``; only its sha256 is stored, so the
        returned token is shown once."""
        check_name("vendor", vendor, m.MAX_VENDOR)
        check_name("annotator", annotator, m.MAX_ANNOTATOR)
        token = secrets.token_urlsafe(32)
        with self._write.begin() as conn:
            conn.execute(
                insert(m.annotator_tokens).values(
                    vendor=vendor, annotator=annotator, token_sha256=_sha256(token), created_at=_now(), revoked=False
                )
            )
        return token

    def annotator_for_token(self, token: str) -> tuple[str, str] | None:
        """(vendor, annotator) of a valid, unrevoked token; ``None`` otherwise."""
        t = m.annotator_tokens.c
        if has_nul(token):
            return None
        with self.engine.connect() as conn:
            r = conn.execute(select(t.vendor, t.annotator).where(t.token_sha256 == _sha256(token), t.revoked == false())).first()
        return (r.vendor, r.annotator) if r else None

    def revoke_annotator_tokens(self, vendor: str, annotator: str) -> int:
        """Revoke every token of ``annotator`` of ``vendor``; returns how many were live."""
        t = m.annotator_tokens.c
        if has_nul(vendor, annotator):
            return 0
        with self._write.begin() as conn:
            result = conn.execute(
                update(m.annotator_tokens)
                .where(t.vendor == vendor, t.annotator == annotator, t.revoked == false())
                .values(revoked=True)
            )
            return result.rowcount

    # ---- helpers ---------------------------------------------------------------------------------

    def _in(self, column, values: Sequence[str]):
        """``column IN values``; on PostgreSQL ``= ANY(array)``: one parameter instead of one per value
        (psycopg parses the statement's parameters on every call)."""
        if self._postgres:
            return column == func.any(bindparam(None, list(values), type_=ARRAY(column.type)))
        return column.in_(values)

    def _row(self, conn: Connection, vendor: str, name: str, lock: bool = False):
        if has_nul(vendor, name):  # no stored name has one (they are checked), and PostgreSQL refuses it in a query
            raise NotFound(f"no campaign {quote(name)}")
        query = select(m.campaigns).where(m.campaigns.c.vendor == vendor, m.campaigns.c.name == name)
        if lock and self._postgres:
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"no campaign {quote(name)}")
        return row

    def _campaign(self, conn: Connection, row) -> Campaign:
        d, lab = m.decisions.c, m.labels.c
        returned = conn.execute(select(func.count()).select_from(m.labels).where(lab.campaign_id == row.id)).scalar()
        votes = select(func.count()).where(lab.decision_id == d.id).scalar_subquery()
        pending = conn.execute(
            select(func.count())
            .select_from(m.decisions)
            .where(d.campaign_id == row.id, d.human == true(), votes < row.votes_per_pair)
        ).scalar()
        spec = CampaignSpec(
            vendor=row.vendor,
            name=row.name,
            budget_kind=row.budget_kind,
            budget_total=row.budget_total,
            strategy=row.strategy,
            judge=row.judge,
            votes_per_pair=row.votes_per_pair,
            expected_instances=row.expected_instances,
            exploration_share=row.exploration_share,
        )
        return Campaign(
            id=row.id,
            spec=spec,
            created_at=_utc(row.created_at) or row.created_at,
            spent=row.spent,
            routed=row.routed,
            human_routed=row.human_routed,
            labels_returned=int(returned or 0),
            pairs_pending=int(pending or 0),
            closed_at=_utc(row.closed_at),
        )


# ---- conversions -----------------------------------------------------------------------------------


def _winner(lm_label: str | None) -> str | None:
    """ "A" / "B" / None (tie or missing) of a stored LM label name."""
    return Label[lm_label].winner if lm_label else None


@functools.lru_cache(maxsize=64)
def _feature_set_key(names: tuple[str, ...]) -> tuple[str, str]:
    """(the names as compact JSON, its sha256): how ``feature_sets`` stores and finds a list of names."""
    text = json.dumps(list(names), separators=(",", ":"))
    return text, hashlib.sha256(text.encode()).hexdigest()


def _decision_rows(
    candidates: Sequence[Candidate],
    fresh: Sequence[int],
    checked: CheckedBatch,
    set_ids: Mapping[tuple[str, ...], int],
    human: Sequence[bool],
    exploration: Sequence[bool],
) -> Iterator[tuple[Any, ...]]:
    """The ``fresh`` candidates' rows in :data:`DECISION_COLUMNS` order, zipped from columns as the insert
    takes them (no batch of row tuples kept alive)."""
    rows = [candidates[i] for i in fresh]
    features = [checked.features[i] for i in fresh]
    return zip(
        [c.instance_id for c in rows],
        [c.prompt for c in rows],
        [c.response_a for c in rows],
        [c.response_b for c in rows],
        [float(c.score) for c in rows],
        [float(c.cost) for c in rows],
        human,
        exploration,
        [checked.lm_labels[i] for i in fresh],
        [c.lm_confidence for c in rows],
        [c.expected_correction for c in rows],
        [checked.signals[i] for i in fresh],
        [checked.metadata[i] for i in fresh],
        [None if f is None else set_ids[f.names] for f in features],
        [None if f is None else f.packed for f in features],
    )


def _bound_rows(
    rows: Iterable[tuple[Any, ...]], processors: Sequence[tuple[int, Any]], tail: tuple[Any, ...]
) -> Iterator[tuple[Any, ...]]:
    """``rows`` with their values through the columns' bind processors, ``tail`` appended."""
    for row in rows:
        if processors:
            values = list(row)
            for k, process in processors:
                values[k] = process(values[k])
            row = tuple(values)
        yield row + tail


def _decision(r, replayed: bool = False) -> StoredDecision:
    """A decision row (any query with the columns below) as the store's ``StoredDecision``."""
    return StoredDecision(
        instance_id=r.instance_id,
        human=bool(r.human),
        score=r.score,
        cost=r.cost,
        batch_id=r.batch_id,
        exploration=bool(r.exploration),
        replayed=replayed,
        lm_label=r.lm_label,
        model_version=r.model_version,
        lm_confidence=r.lm_confidence,
        expected_correction=r.expected_correction,
    )


def _human_label(instance_id: str, v) -> HumanLabel:
    return HumanLabel(
        instance_id=instance_id,
        annotator=v.annotator,
        preference=v.preference,
        strength=v.strength,
        rationale=v.rationale,
        labelled_at=_utc(v.labelled_at),
        source=v.source,
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    """Aware UTC datetime; a naive one (SQLite returns them) is taken as UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start : start + size]
