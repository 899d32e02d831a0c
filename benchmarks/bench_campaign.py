"""Benchmarks of routing for a campaign (issue 20), in process on the router's core (``RouterCore``: the code
the router runs after the gRPC conversion), with the fast tagger, the pools' recorded judge replayed, the
packaged bundle, and the campaign store in a fresh SQLite file (``--engine postgres``: a throwaway
PostgreSQL server with its durable defaults, tests/support/postgres.py).

``stream`` (targets: spend within 2% of the total and never over it; label accuracy within 2 points of
routing the whole pool at once with the same strategy): for each shared pool (``mtbench_human_gpt4``,
``pandalm``, ``llmbar``), the pool in a seeded random order is cut into 20 batches of random sizes and
routed batch by batch for one campaign with a 25% count budget and the stream size announced
(``expected_instances``); the reference routes the whole pool in one request with ``fraction=0.25``,
same strategy (``hybrid``, the default), same seed. Label accuracy is the evaluation harness's metric 1:
the bought human label where routed to humans, the replayed LM label elsewhere, against the pool's
held-out reference (``hybridpref.offline.evaluation.harness.label_correct``'s rule: a tie or a missing
label counts wrong, rows without a reference are left out). Repeated over ``--seeds`` batch cuts.

``throughput`` (target: persistence costs at most 15% of routing throughput): ``--instances`` instances
(the three pools' rows, repeated with fresh ids) routed in batches of ``--batch``, per-request budget
(``fraction=0.25``) against the same batches for a campaign (25% count budget, the stream announced),
strategy ``hybrid``. ``--tags live`` (default): the fast tagger tags each batch as the router does;
``--tags cached``: tags computed once and served from memory to both runs, so the figure is the routing
after tagging, where persistence weighs most. Each batch is routed both ways in turn (the order
alternating), so that the shared machine's drifting load weighs on both alike; the figure is the ratio of
the summed times. The heap is settled first as a service does once loaded (``settle_heap``). Also reported:
``store_s``, the campaign runs' time inside the store's ``decide_batch``; ``database_s``, of it the time
in the database driver (the insert's executemany / COPY, the queries and the commit); and
``cost_beside_the_database``, the persistence cost with the database's share taken out (what the router and
the store add around it).

``floor``: the database's own insert and commit of the same rows, through the driver without the router or
the store's code (:func:`cmd_floor`): what no change to either can take away.

    .venv/bin/python benchmarks/bench_campaign.py stream
    .venv/bin/python benchmarks/bench_campaign.py throughput --instances 100000
    .venv/bin/python benchmarks/bench_campaign.py floor --instances 100000 [--engine postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from hybridpref.router.budget import Budget  # noqa: E402
from hybridpref.router.campaign import CampaignRoute, StoreProvider  # noqa: E402
from hybridpref.router.core import RouteOptions, RouterCore  # noqa: E402
from hybridpref.router.strategies import DEFAULT_STRATEGY, strategy_spec  # noqa: E402
from hybridpref.server.deadline import Deadline  # noqa: E402
from hybridpref.server.runtime import settle_heap  # noqa: E402
from hybridpref.server.settings import Settings  # noqa: E402
from hybridpref.store.api import CampaignSpec  # noqa: E402
from hybridpref.store.sql import SqlCampaignStore  # noqa: E402
from hybridpref_client.core.instances import Label, PreferenceInstance  # noqa: E402

POOLS = ("mtbench_human_gpt4", "pandalm", "llmbar")
VENDOR = "bench"
SHARE = 0.25
TAG_CHUNK = 2_000


class CachedTagger:
    """The fast tagger, each instance tagged once (by id) and served from memory afterwards (``live``:
    tagged on every call, as the router does)."""

    def __init__(self, tagger, live: bool = False) -> None:
        from tests.support.local_router import LocalTagger

        self.inner = LocalTagger(tagger)
        self.live = live
        self.cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.bins = ""
        self.seconds = 0.0

    async def tag(self, instances: Sequence[PreferenceInstance], deadline):
        from hybridpref.router.backends import RouterTags

        missing = [i for i in instances if i.id not in self.cache]
        for start in range(0, len(missing), TAG_CHUNK):  # the tagger core's largest batch
            part = missing[start : start + TAG_CHUNK]
            started = time.perf_counter()
            tagged = await self.inner.tag(part, deadline)
            self.seconds += time.perf_counter() - started
            self.bins = tagged.reference_bins_id
            for inst, t, m in zip(part, tagged.tag_matrix, tagged.measures):
                self.cache[inst.id] = (t, m)
        rows = [self.cache[i.id] for i in instances]
        if self.live:
            self.cache.clear()
        return RouterTags(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), self.bins)


def make_core(store: SqlCampaignStore, live_tags: bool = False):
    from hybridpref.judge.core import Judge
    from hybridpref.predictor.core import Predictor, default_bundle_path
    from hybridpref.tagger.core import Tagger
    from tests.support.local_router import LocalJudge, LocalModelSource

    tagger = CachedTagger(Tagger("fast"), live=live_tags)
    core = RouterCore(
        Settings(),
        tagger,
        LocalJudge(Judge.from_config("replay", default_judge="gpt4")),
        LocalModelSource(Predictor(default_bundle_path())),
        campaigns=StoreProvider(store=store),
    )
    return core, tagger


def options(judge: str, seed: int, budget: Budget | None = None, campaign: CampaignRoute | None = None) -> RouteOptions:
    return RouteOptions(
        budget=budget, strategy=strategy_spec(DEFAULT_STRATEGY), seed=seed, replay_judge=judge, explain_top_k=0, campaign=campaign
    )


def route(core: RouterCore, instances: Sequence[PreferenceInstance], opts: RouteOptions):
    return asyncio.run(core.route(list(instances), opts, Deadline(None)))


def cut(n: int, batches: int, rng: np.random.Generator) -> list[int]:
    """``batches`` random sizes (each >= 1) summing to ``n``: the vendor's batches are unequal."""
    weights = rng.dirichlet(np.full(batches, 2.0))
    sizes = np.maximum(1, np.floor(weights * n).astype(int))
    sizes[-1] += n - sizes.sum()
    while sizes[-1] < 1:  # rounding pushed the last one under: take from the largest
        k = int(np.argmax(sizes[:-1]))
        sizes[k] -= 1
        sizes[-1] += 1
    return [int(s) for s in sizes]


def with_verdicts(instances: Sequence[PreferenceInstance], judge: str) -> list[PreferenceInstance]:
    """The pool's rows, those the judge gave no parsable verdict (a null in the data) recorded as a tie: the
    same "no verdict" to the router's signals, and wrong for metric 1 either way, as in the harness."""
    from hybridpref.common.recorded_judges import resolve_judge

    out = []
    for inst in instances:
        try:
            resolve_judge(inst.lm_labels.keys(), judge)
            out.append(inst)
        except LookupError:
            out.append(dataclasses.replace(inst, lm_labels={**inst.lm_labels, judge: Label.TIE}))
    return out


def accuracy(pool, positions: dict[str, int], decisions) -> float:
    """Metric 1 over the rows with a reference: the bought human label where routed, the LM label elsewhere."""
    from hybridpref.common.signals import label_sign

    correct, counted = 0, 0
    for d in decisions:
        i = positions[d.id]
        reference = int(pool.reference[i])
        if reference == 0:
            continue
        label = int(pool.human[i]) if d.human else label_sign(d.lm_label if d.lm_label != Label.UNSPECIFIED else None)
        counted += 1
        correct += label == reference and label != 0
    return correct / counted


def open_store(engine: str, workdir: Path, server=None) -> SqlCampaignStore:
    if engine == "sqlite":
        return SqlCampaignStore.open(f"sqlite:///{workdir / f'store-{time.monotonic_ns()}.db'}", upgrade=True)
    return SqlCampaignStore.open(server.create_database("bench"), upgrade=True)


def cmd_stream(args) -> dict:
    from hybridpref.offline.pools import load_pool

    out: dict = {"pools": {}}
    with tempfile.TemporaryDirectory() as tmp, _server(args.engine) as server:
        for name in POOLS:
            pool = load_pool(Path(args.data_dir) / name)
            instances = with_verdicts(pool.instances, pool.default_judge)
            positions = {inst.id: i for i, inst in enumerate(instances)}
            n, total = len(instances), math.floor(SHARE * len(instances))
            per_seed = []
            for seed in range(args.seeds):
                store = open_store(args.engine, Path(tmp), server)
                core, _ = make_core(store)
                whole = route(core, instances, options(pool.default_judge, seed, Budget.fraction(SHARE)))
                acc_whole = accuracy(pool, positions, whole.decisions)
                store.create_campaign(CampaignSpec(VENDOR, f"{name}-{seed}", "count", total, expected_instances=n))
                rng = np.random.default_rng([seed, 7])
                order = [instances[i] for i in rng.permutation(n)]
                decisions, spent_after, start = [], [], 0
                for b, size in enumerate(cut(n, args.batches, rng)):
                    campaign = CampaignRoute(VENDOR, f"{name}-{seed}", f"batch-{b}", "count")
                    outcome = route(core, order[start : start + size], options(pool.default_judge, seed, campaign=campaign))
                    decisions += outcome.decisions
                    spent_after.append(outcome.campaign.budget_spent)
                    start += size
                spent = store.get_campaign(VENDOR, f"{name}-{seed}").spent
                acc_stream = accuracy(pool, positions, decisions)
                per_seed.append(
                    {
                        "seed": seed,
                        "budget": total,
                        "spent": spent,
                        "spent_share": spent / total,
                        "over": spent > total,
                        "max_spent_midway": max(spent_after),
                        "half_way_spent_share": spent_after[args.batches // 2 - 1] / total,
                        "accuracy_whole": acc_whole,
                        "accuracy_stream": acc_stream,
                        "accuracy_diff_points": 100 * (acc_stream - acc_whole),
                        "humans_whole": sum(d.human for d in whole.decisions),
                    }
                )
                asyncio.run(core.close())
                store.close()
                print(json.dumps({"pool": name, **per_seed[-1]}), file=sys.stderr, flush=True)
            out["pools"][name] = {
                "n": n,
                "judge": pool.default_judge,
                "runs": per_seed,
                "worst_spend_gap": max(abs(1 - r["spent_share"]) for r in per_seed),
                "ever_over": any(r["over"] for r in per_seed),
                "mean_accuracy_diff_points": float(np.mean([r["accuracy_diff_points"] for r in per_seed])),
                "worst_accuracy_diff_points": float(min(r["accuracy_diff_points"] for r in per_seed)),
            }
    return out


def synthetic_stream(n: int, data_dir: Path) -> list[PreferenceInstance]:
    """``n`` instances: the three pools' rows in turn with fresh ids, the pool's default judge's recorded
    label under the one key ``judge`` (one replay judge for the whole stream)."""
    from hybridpref.offline.pools import load_pool

    rows = []
    for name in POOLS:
        pool = load_pool(data_dir / name)
        for inst in pool.instances:
            label = inst.lm_labels.get(pool.default_judge)
            if label is None:
                continue
            rows.append(dataclasses.replace(inst, lm_labels={"judge": label}, human_label=None))
    out = []
    for k in range(n):
        base = rows[k % len(rows)]
        out.append(dataclasses.replace(base, id=f"s{k}"))
    return out


def cmd_throughput(args) -> dict:
    instances = synthetic_stream(args.instances, Path(args.data_dir))
    batches = [instances[k : k + args.batch] for k in range(0, len(instances), args.batch)]
    seconds = {"request_budget": 0.0, "campaign": 0.0}
    with tempfile.TemporaryDirectory() as tmp, _server(args.engine) as server:
        store = open_store(args.engine, Path(tmp), server)
        core, tagger = make_core(store, live_tags=args.tags == "live")
        if args.tags == "cached":
            for batch in batches:  # tag everything once, outside the timings
                asyncio.run(tagger.tag(batch, Deadline(None)))
        else:  # warm the tagger's and the judge's models once
            asyncio.run(tagger.tag(batches[0][:50], Deadline(None)))
        route(core, batches[0][:50], options("judge", 0, Budget.fraction(SHARE)))
        settle_heap()  # as a service does once loaded (hybridpref.server.server)
        store.create_campaign(CampaignSpec(VENDOR, "c", "count", int(SHARE * len(instances)), expected_instances=len(instances)))
        spent_in = _time_store(store)  # from here on, only the campaign runs use the store
        # A/B per batch, the order alternating: the machine's load drifts, and both configurations see the same.
        for b, batch in enumerate(batches):
            configs = ("request_budget", "campaign") if b % 2 == 0 else ("campaign", "request_budget")
            for config in configs:
                opts = (
                    options("judge", 0, campaign=CampaignRoute(VENDOR, "c", f"b{b}", "count"))
                    if config == "campaign"
                    else options("judge", 0, Budget.fraction(SHARE))
                )
                started = time.perf_counter()
                route(core, batch, opts)
                seconds[config] += time.perf_counter() - started
            print(json.dumps({"batch": b, **{k: round(v, 2) for k, v in seconds.items()}}), file=sys.stderr, flush=True)
        spent, total = store.budget(VENDOR, "c")
        asyncio.run(core.close())
        store.close()
    rate = {k: len(instances) / v for k, v in seconds.items()}
    return {
        "instances": len(instances),
        "batch": args.batch,
        "engine": args.engine,
        "tags": args.tags,
        "tagging_s": tagger.seconds,
        "seconds": seconds,
        "instances_per_s": rate,
        "persistence_cost": 1 - rate["campaign"] / rate["request_budget"],
        # inside the campaign runs: the store's decide_batch, and of it the database driver's calls
        "store_s": spent_in["store"],
        "database_s": spent_in["database"],
        "cost_beside_the_database": 1 - seconds["request_budget"] / (seconds["campaign"] - spent_in["database"]),
        "campaign_spent": [spent, total],
    }


def cmd_floor(args) -> dict:
    """The database's own cost of the rows a campaign stores, without the router or the store's code: the
    throughput stream's instances as decision rows (their real texts, the signals and metadata as JSON text,
    28 packed features), written straight through the driver into a migrated store database (same table,
    same indexes) in batches of ``--batch``: sqlite3's executemany + COMMIT, or psycopg's COPY + COMMIT."""
    from datetime import UTC, datetime

    from hybridpref.store.sql import BATCH_COLUMNS, DECISION_COLUMNS

    instances = synthetic_stream(args.instances, Path(args.data_dir))
    signals = '{"order_flip":false,"p_a":0.8731,"agreement":0.5,"p_lm_wrong":0.2312,"lm_labels":{"judge":"B"}}'
    features = np.linspace(0.0, 1.0, 28).astype("<f8").tobytes()
    insert_s = commit_s = 0.0
    with tempfile.TemporaryDirectory() as tmp, _server(args.engine) as server:
        store = open_store(args.engine, Path(tmp), server)
        store.create_campaign(CampaignSpec(VENDOR, "c", "count", 1))
        campaign_id = store.get_campaign(VENDOR, "c").id
        with store._write.begin() as conn:
            set_id = store._feature_set_id(conn, tuple(f"feature_{k}" for k in range(28)))
        names = ", ".join(f'"{c}"' for c in (*DECISION_COLUMNS, *BATCH_COLUMNS))
        now = datetime.now(UTC)
        raw = store.engine.raw_connection()
        try:
            driver = raw.driver_connection
            for start in range(0, len(instances), args.batch):
                batch = instances[start : start + args.batch]
                shared = (campaign_id, f"b{start}", 0.5, "{}", "", "", now if args.engine == "postgres" else now.isoformat())
                rows = [
                    (i.id, i.prompt_text, i.response_a, i.response_b, 0.5, 1.0, k % 4 == 0, False, "A_BETTER", 0.9, 0.1)
                    + (signals, json.dumps(i.metadata), set_id, features)
                    + shared
                    for k, i in enumerate(batch)
                ]
                started = time.perf_counter()
                if args.engine == "postgres":
                    with driver.cursor() as cursor, cursor.copy(f"COPY decisions ({names}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                else:
                    driver.execute("BEGIN IMMEDIATE")
                    marks = ", ".join("?" for _ in (*DECISION_COLUMNS, *BATCH_COLUMNS))
                    driver.executemany(f"INSERT INTO decisions ({names}) VALUES ({marks})", rows)
                inserted = time.perf_counter()
                driver.commit() if args.engine == "postgres" else driver.execute("COMMIT")
                insert_s += inserted - started
                commit_s += time.perf_counter() - inserted
        finally:
            raw.close()
            store.close()
    n = len(instances)
    return {
        "instances": n,
        "batch": args.batch,
        "engine": args.engine,
        "insert_us_per_row": insert_s / n * 1e6,
        "commit_us_per_row": commit_s / n * 1e6,
        "database_us_per_row": (insert_s + commit_s) / n * 1e6,
    }


def _time_store(store: SqlCampaignStore) -> dict[str, float]:
    """Wrap the store's ``decide_batch`` and the database driver's calls with timers (seconds summed into the
    returned dict as the campaign runs go): how much of the persistence cost is the database's own."""
    spent = {"store": 0.0, "database": 0.0}

    def timed(key: str, fn):
        def run(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - started

        return run

    store.decide_batch = timed("store", store.decide_batch)  # type: ignore[method-assign]
    store._insert = timed("database", store._insert)  # type: ignore[method-assign]  (executemany / COPY)
    dialect = store.engine.dialect
    for name in ("do_execute", "do_execute_no_params", "do_executemany", "do_commit"):  # every other query
        setattr(dialect, name, timed("database", getattr(dialect, name)))
    return spent


class _server:
    """A throwaway PostgreSQL server for ``--engine postgres`` (durable defaults); nothing for SQLite."""

    def __init__(self, engine: str):
        self.engine = engine
        self.server = None

    def __enter__(self):
        if self.engine == "postgres":
            from support.postgres import PostgresServer, find_bin_dir

            self.server = PostgresServer(find_bin_dir(), durable=True).start()
        return self.server

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    stream = sub.add_parser("stream")
    stream.add_argument("--seeds", type=int, default=3)
    stream.add_argument("--batches", type=int, default=20)
    throughput = sub.add_parser("throughput")
    throughput.add_argument("--instances", type=int, default=100_000)
    throughput.add_argument("--batch", type=int, default=5_000)
    throughput.add_argument(
        "--tags",
        choices=["live", "cached"],
        default="live",
        help="live: the fast tagger tags every batch, as the router does (the target's figure); "
        "cached: tags computed once, so the figure is the routing after tagging",
    )
    floor = sub.add_parser("floor", help="the database's own insert + commit of the rows a campaign stores")
    floor.add_argument("--instances", type=int, default=100_000)
    floor.add_argument("--batch", type=int, default=5_000)
    for p in (stream, throughput, floor):
        p.add_argument("--data-dir", default=None, help="the shared pools (default: $HYBRIDPREF_DATA_DIR, else ../shared/data)")
        p.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    if args.data_dir is None:
        from hybridpref.offline.pools import default_data_dir

        args.data_dir = str(default_data_dir(ROOT))
    started = time.perf_counter()
    commands = {"stream": cmd_stream, "throughput": cmd_throughput, "floor": cmd_floor}
    result = commands[args.command](args)
    result.update(
        machine=f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
        date=time.strftime("%Y-%m-%d"),
        wall_s=round(time.perf_counter() - started, 1),
        command=args.command,
    )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
