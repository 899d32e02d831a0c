"""Each campaign's own correction model, learned from the human labels it gets back (issue 19), gRPC-free.

When a batch of a campaign is routed, P(LM label wrong) comes from :meth:`CampaignModels.model_for`: the
bundle's panel correction model until the campaign's returned labels say a refit is not worse, then the
refit. The recipe is the one the streaming simulation measured (``benchmarks/stream_sim.py``,
docs/EVALUATION.md "Learning from the campaign's labels"), from :mod:`hybridpref.routing_model.online`:

* **refit**: maximum a posteriori logistic regression on every returned label whose pair has a non-tie human
  majority (y = the LM label differs from it), prior centred on the bundle model (``PRIOR_STRENGTH`` labels'
  worth), monotone columns kept >= 0; the panel features are read back from the decisions the router stored
  (``Candidate.features``, :data:`~hybridpref.routing_model.panel_correction.PANEL_FEATURES` names);
* **promotion** (``ModelLineage``): 5-fold cross-validation over the returned labels (folds by a stable hash
  of the instance id); the refit routes only when its held-out log loss on verdict rows is not above the
  bundle model's on the same labels, with at least ``MIN_LABELS`` verdict labels;
* **P(human wrong)**: where pairs have several votes, Dawid-Skene (crowd-kit) per-annotator error rates; the
  model's P(human vote wrong) is moved to the campaign's vote-weighted rate;
* **expected corrections**: the interval for the labels a batch's human votes will change (what the
  campaign's ``realised_corrections`` counts) is recalibrated with what the labelled batches realised
  (``CorrectionsCalibrator``, replayed batch by batch over the routing model's out-of-sample P(LM wrong) of
  those pairs: the bundle model's, or the adapted recipe's by cross-validation; before ``min_labels`` labels per
  stratum: the bundle model's held-out transfer range).

**When it refits.** A fitted model is cached per (vendor, campaign) with the number of votes the campaign had
then (``Campaign.labels_returned``); :meth:`model_for` costs one campaign-row read and returns the cached
model until ``refit_every`` new votes have arrived (or the bundle's model changed), then refits in the calling
thread (reads every returned label: linear in the campaign's labels; ~10 ms per 1,000 labels for the six
fits of a promotion check). :meth:`labels_arrived` (called after labels are stored) refits in a background
thread once that many new votes are in, so routing usually finds the model fresh and pays nothing.

**Versions.** ``<bundle panel version>+adapted-<labels>@<8 hex of the coefficients>`` for a promoted refit
(the same labels give the same version, after a restart too), else the bundle's version; the router records
the version that scored each decision (``decide_batch(model_version=...)``) and shows it in the summary.

Exploration: the campaign's ``exploration_share`` (default 0) is spent by the store's policy; the simulation
measured that at 10-20% it costs more share of the oracle's gain than the refit wins back (docs/EVALUATION.md).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from hybridpref.router.model import PanelRunner, RoutingModel
from hybridpref.routing_model import online
from hybridpref.routing_model.panel_correction import PanelCorrectionModel

# Measured by the streaming simulation (docs/EVALUATION.md): prior worth 20 labels, promotion after >= 30
# verdict labels, 5 folds.
PRIOR_STRENGTH = 20.0
MIN_LABELS = 30
FOLDS = 5
# New votes before a cached model is refitted: a refit is cheap, but a campaign may send a label per call.
REFIT_EVERY = 20
# Campaign models kept in memory (least recently used dropped first; a dropped one is refitted when asked).
MAX_CAMPAIGNS = 256

log = structlog.get_logger()


@dataclass(frozen=True)
class CampaignModel:
    """What routes a campaign's next batch, and what its returned labels said.

    ``panel``: the correction model and its version; ``base_version``: the bundle's panel model it starts from;
    ``adapted``: a promoted refit routes (else the bundle's model, perhaps with the campaign's human error
    rate); ``labels``: labelled pairs the refit read (non-tie human majority, panel features stored);
    ``votes``: the campaign's returned votes when it was fitted; ``proposal``: the last refit's held-out check;
    ``calibrator``: expected corrections recalibrated on the labelled batches; ``annotator_error``: Dawid-Skene
    P(vote wrong) per annotator (pairs with several votes only); ``human_rate``: the campaign's vote-weighted
    annotator error rate moved into P(human wrong), or None."""

    panel: PanelRunner
    base_version: str
    adapted: bool = False
    labels: int = 0
    votes: int = 0
    proposal: dict[str, Any] = field(default_factory=dict)
    calibrator: online.CorrectionsCalibrator = field(default_factory=online.CorrectionsCalibrator)
    annotator_error: dict[str, float] = field(default_factory=dict)
    human_rate: float | None = None

    @property
    def version(self) -> str:
        return self.panel.version

    def expected_changes(self, p_lm_wrong: np.ndarray, no_verdict: np.ndarray) -> online.Interval:
        """Interval (90%) for how many of these human-routed rows' bought labels will differ from the LM label
        (a non-tie human majority against the LM label, as the campaign's ``realised_corrections`` counts),
        from the routing model's P(LM wrong), recalibrated on the campaign's labelled batches."""
        return self.calibrator.interval(np.asarray(p_lm_wrong, dtype=np.float64), np.asarray(no_verdict, dtype=bool))

    def interval_note(self, no_verdict: np.ndarray | None = None) -> str:
        """One sentence for the summary: where the campaign's expected-corrections interval comes from, for a
        batch whose human-routed rows have ``no_verdict`` (the strata it has; default both)."""
        present = {False, True} if no_verdict is None else {bool(v) for v in np.asarray(no_verdict, dtype=bool)}
        fitted = [k for k in present if self.calibrator.strata[k].fit(self.calibrator.min_labels) is not None]
        if present and len(fitted) == len(present):
            how = "recalibrated on the campaign's own realised corrections"
        elif fitted:
            how = "partly recalibrated on the campaign's realised corrections (one stratum has too few labels yet)"
        else:
            lo, hi = self.calibrator.prior_range
            how = f"the correction model's held-out range ({lo:.2f}x to {hi:.2f}x) until {self.calibrator.min_labels} labels are back"
        who = (
            f"adapted model {self.version} (refitted on {self.labels} returned labels)"
            if self.adapted
            else f"model {self.version}"
        )
        return f"campaign: routed by {who}; expected label changes of this batch: {how}"

    def describe(self) -> dict[str, Any]:
        """JSON-able summary: version, adapted, labels, votes, last proposal, human error rate."""
        return {
            "version": self.version,
            "base_version": self.base_version,
            "adapted": self.adapted,
            "labels": self.labels,
            "votes": self.votes,
            "proposal": dict(self.proposal),
            "human_rate": self.human_rate,
            "annotators": len(self.annotator_error),
        }


StoreSource = Callable[[], Any]  # -> CampaignStore (the router's StoreProvider.get: opened on first use)


class CampaignModels:
    """Per-campaign correction models over a campaign store (:class:`~hybridpref.store.api.CampaignStore`).

    ``store``: the store, or a function returning it (opened lazily). Thread-safe: routing calls from the
    router's worker pool may ask for the same campaign at once; one refit per campaign runs at a time."""

    def __init__(
        self,
        store: Any,
        *,
        refit_every: int = REFIT_EVERY,
        strength: float = PRIOR_STRENGTH,
        min_labels: int = MIN_LABELS,
        folds: int = FOLDS,
        max_campaigns: int = MAX_CAMPAIGNS,
    ):
        self._store: StoreSource = store if callable(store) else (lambda: store)
        self.refit_every = int(refit_every)
        self.strength = float(strength)
        self.min_labels = int(min_labels)
        self.folds = int(folds)
        self.max_campaigns = int(max_campaigns)
        self._cache: OrderedDict[tuple[str, str], CampaignModel] = OrderedDict()
        self._bases: dict[tuple[str, str], PanelRunner] = {}  # the bundle model each campaign last routed with
        self._locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()
        self._background: ThreadPoolExecutor | None = None
        self.refits = 0  # refits run so far (tests and metrics read it)

    # ------------------------------------------------------------------ the entry points

    def model_for(self, vendor: str, campaign: str, bundle: RoutingModel) -> CampaignModel:
        """The model that routes ``campaign``'s next batch (blocking; call it off the event loop).

        ``bundle``: the routing model of the loaded bundle; it must have a panel model (``bundle.panel``).
        Returns the cached model while fewer than ``refit_every`` new votes came back since it was fitted and
        the bundle's panel model is the same; else refits now. Raises the store's ``NotFound`` for a campaign
        the vendor does not have."""
        if bundle.panel is None:
            raise ValueError("a campaign model adapts the bundle's panel correction model; this bundle has none")
        key = (vendor, campaign)
        votes = int(self._store().get_campaign(vendor, campaign).labels_returned)
        with self._guard:
            self._bases[key] = bundle.panel
            cached = self._fresh(key, bundle.panel, votes)
        if cached is not None:
            return cached
        with self._locks[key]:  # one refit per campaign at a time; a waiting caller takes its result
            with self._guard:
                cached = self._fresh(key, bundle.panel, votes)
            if cached is not None:
                return cached
            model = self.fit(vendor, campaign, bundle.panel)
            with self._guard:
                self._cache[key] = model
                self._cache.move_to_end(key)
                while len(self._cache) > self.max_campaigns:
                    self._cache.popitem(last=False)
            return model

    def labels_arrived(self, vendor: str, campaign: str) -> None:
        """Labels were stored for ``campaign``: when ``refit_every`` new votes are in and the campaign has routed
        with a bundle model in this process, refit in a background thread, so the next routing call finds its
        model fresh. Never raises (a failed background refit is logged; routing refits again when asked)."""
        key = (vendor, campaign)
        with self._guard:
            base = self._bases.get(key)
            if base is None:
                return
            if self._background is None:
                self._background = ThreadPoolExecutor(1, thread_name_prefix="campaign-refit")
            pool = self._background
        pool.submit(self._refresh_quietly, vendor, campaign, base)

    def current(self, vendor: str, campaign: str) -> CampaignModel | None:
        """The cached model of ``campaign`` (None before it routed in this process)."""
        with self._guard:
            return self._cache.get((vendor, campaign))

    def close(self) -> None:
        if self._background is not None:
            self._background.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ fitting

    def fit(self, vendor: str, campaign: str, base: PanelRunner) -> CampaignModel:
        """Refit ``campaign``'s model from everything it has returned (see the module docstring)."""
        store = self._store()
        votes = int(store.get_campaign(vendor, campaign).labels_returned)
        model = fit_campaign_model(
            base,
            store.returned_labels(vendor, campaign),
            votes=votes,
            strength=self.strength,
            min_labels=self.min_labels,
            folds=self.folds,
        )
        self.refits += 1
        log.info(
            "campaign_model_fitted",
            vendor=vendor,
            campaign=campaign,
            version=model.version,
            labels=model.labels,
            adapted=model.adapted,
            votes=votes,
        )
        return model

    def _fresh(self, key: tuple[str, str], base: PanelRunner, votes: int) -> CampaignModel | None:
        cached = self._cache.get(key)
        if cached is None or cached.base_version != base.version or votes - cached.votes >= self.refit_every:
            return None
        self._cache.move_to_end(key)
        return cached

    def _refresh_quietly(self, vendor: str, campaign: str, base: PanelRunner) -> None:
        try:
            votes = int(self._store().get_campaign(vendor, campaign).labels_returned)
            with self._guard:
                if self._fresh((vendor, campaign), base, votes) is not None:
                    return
            self.model_for(vendor, campaign, _Bundle(base))  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - a background refit must never take the process down
            log.warning("campaign_refit_failed", vendor=vendor, campaign=campaign, error=str(exc)[:300])


def fit_campaign_model(
    base: PanelRunner,
    returned: Iterable[tuple[Any, Any, Sequence[Any]]],
    *,
    votes: int = 0,
    strength: float = PRIOR_STRENGTH,
    min_labels: int = MIN_LABELS,
    folds: int = FOLDS,
) -> CampaignModel:
    """A campaign's model from its returned labels: ``returned`` = ``CampaignStore.returned_labels`` rows
    (``Candidate``, ``StoredDecision``, ``[HumanLabel]``; rows whose decision stored no panel features are left
    out), ``base`` = the bundle's panel model and version (see the module docstring for the recipe). Pure: the
    same rows give the same model and version (``benchmarks/stream_sim.py`` runs it on in-memory rows)."""
    rows = [r for r in returned if _has_panel_features(r[0].features)]
    bundle_model: PanelCorrectionModel = base.model
    labels = online.returned_labels(rows)
    annotators = online.annotator_error_rates(labels.votes)
    rate = _vote_weighted_rate(annotators, labels.votes)
    lineage = online.ModelLineage(bundle_model, strength=strength, min_labels=min_labels, folds=folds)
    used, y = online.lm_wrong_target(labels.lm, labels.human)
    routing, adapted = bundle_model, False
    proposal: dict[str, Any] = {}
    if len(used):
        proposed = lineage.propose([labels.ids[i] for i in used], labels.x[used], y)
        proposal = {
            "labels": int(len(used)),
            "verdict_labels": proposed.labels,
            "heldout_loss": proposed.heldout_loss,
            "bundle_loss": proposed.bundle_loss,
            "promoted": proposed.promoted,
        }
        if proposed.promoted:
            routing, adapted = proposed.model, True
    if rate is not None:
        routing = online.with_human_rate(routing, rate)
    if adapted:
        version = f"{base.version}+adapted-{len(used)}@{_digest(routing)}"
    elif rate is not None:
        version = f"{base.version}+human-rate@{_digest(routing)}"
    else:
        version = base.version
    # the calibrator learns how the routing model's own out-of-sample P(LM wrong) relates to realised changes
    if adapted:
        p = online.out_of_fold_p(
            bundle_model, labels.ids, labels.x, labels.human != 0, np.asarray(y, dtype=bool), strength=strength, folds=folds
        )
    else:
        p = bundle_model.p_lm_wrong(labels.x) if len(labels.ids) else np.zeros(0)
    calibrator = _calibrator(rows, p, labels, bundle_model)
    proposal["version"] = version
    return CampaignModel(
        PanelRunner(routing, version), base.version, adapted, int(len(used)), votes, proposal, calibrator, annotators, rate
    )


def _calibrator(
    rows: Sequence[tuple[Any, Any, Sequence[Any]]],
    p: np.ndarray,
    labels: online.ReturnedLabels,
    prior_model: PanelCorrectionModel,
) -> online.CorrectionsCalibrator:
    """The expected-changes calibrator replayed over the campaign's labelled human-routed pairs, batch by
    batch in routing order: per pair ``p`` (P(LM wrong) of the model that routes now, out of sample: the
    bundle model's, or an adapted model's by cross-validation) against whether its non-tie human majority
    changed the LM label. ``labels``: :func:`online.returned_labels` of ``rows`` (aligned); before enough
    labels the interval keeps ``prior_model``'s held-out transfer range."""
    from hybridpref.routing_model.correction import transfer_range

    prior = transfer_range(prior_model.metrics) or online.CorrectionsCalibrator().prior_range
    calib = online.CorrectionsCalibrator(prior_range=prior)
    batches: OrderedDict[str, list[int]] = OrderedDict()
    for i, (_, decision, _) in enumerate(rows):
        if decision.human:
            batches.setdefault(decision.batch_id, []).append(i)
    for members in batches.values():
        idx = np.array(members)
        changed = (labels.human[idx] != 0) & (labels.human[idx] != labels.lm[idx])
        calib.observe(p[idx], changed.astype(np.float64), labels.x[idx, online.NO_VERDICT] > 0.5)
    return calib


@dataclass(frozen=True)
class _Bundle:
    """The part of a ``RoutingModel`` that :meth:`CampaignModels.model_for` reads (background refits)."""

    panel: PanelRunner


def _has_panel_features(features: dict[str, Any]) -> bool:
    """Whether a stored decision carries the panel model's features (a decision routed by the ONNX model, or
    before this code, does not: its row cannot enter the refit)."""
    return "disagree" in features and "no_verdict" in features


def _vote_weighted_rate(rates: dict[str, float], votes: Iterable[tuple[str, str, str]]) -> float | None:
    """The campaign's P(vote wrong): annotator error rates weighted by their votes; None without rates."""
    if not rates:
        return None
    counts: dict[str, int] = defaultdict(int)
    for _, annotator, _ in votes:
        if annotator in rates:
            counts[annotator] += 1
    total = sum(counts.values())
    return float(sum(rates[a] * n for a, n in counts.items()) / total) if total else None


def _digest(model: PanelCorrectionModel) -> str:
    return hashlib.sha256(json.dumps(model.to_json(), sort_keys=True, default=float).encode()).hexdigest()[:8]
