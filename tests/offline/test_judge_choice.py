"""Issue 18 item 2: ``predictor build`` and ``evaluate`` pick a pool's LM judge by one rule, print it
(with the judge's agreement with the human labels), and both take an explicit ``--judge``.

Before: for a pool under a team's own name, build took the most common raw ``lm_labels`` key (one
presentation order of an order-split judge) and evaluate the alphabetically first judge: two
different judges, silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybridpref_client.core.errors import InvalidInput


def team_pool(path: Path, n: int = 40) -> Path:
    """A pool named ``teamB`` (no shared-pool default): ``Alpha/P`` labels every pair in both orders but
    flips on 3 of 4; ``Zeta/P`` labels every pair, consistently, agreeing with the humans on 9 of 10;
    ``beta`` labels half of them."""
    rows = []
    for i in range(n):
        human = "A" if i % 2 else "B"
        other = "B" if human == "A" else "A"
        labels = {
            "Alpha/P/order_ab": "A",
            "Alpha/P/order_ba": "B" if i % 4 else "A",
            "Zeta/P/order_ab": human if i % 10 else other,
            "Zeta/P/order_ba": human if i % 10 else other,
        }
        if i % 2:
            labels["beta"] = "A"
        rows.append(
            {
                "id": f"t{i}",
                "question_id": f"q{i}",
                "prompt": f"Question {i}?",
                "response_a": f"Answer A to {i}.",
                "response_b": f"Answer B to {i}, longer.",
                "human_label": human,
                "lm_labels": labels,
            }
        )
    path.mkdir(parents=True, exist_ok=True)
    (path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_choice(folder: Path, judge: str | None = None):
    from hybridpref.offline.bundle.simulate import load_pool_data, parse_pool_spec

    return load_pool_data(parse_pool_spec(str(folder)), "question_id", 0.2, 0, judge, {}).judge


def evaluate_choice(folder: Path, *flags: str):
    import argparse

    from hybridpref.cli import evaluate as evaluate_cli
    from hybridpref.offline.evaluation.harness import prepare_case

    parser = argparse.ArgumentParser()
    evaluate_cli.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--pool", str(folder), "--out", str(folder / "out"), "--no-rm", *flags])
    return prepare_case(folder / "pairs.jsonl", evaluate_cli.config_from_args(args)).pool.default_judge


def test_build_and_evaluate_pick_the_same_judge_and_print_it(tmp_path, capsys):
    folder = team_pool(tmp_path / "teamB")
    built = build_choice(folder)
    printed_by_build = capsys.readouterr().err
    evaluated = evaluate_choice(folder)
    printed_by_evaluate = capsys.readouterr().err
    assert built == evaluated == "Zeta/P"  # decisive on the most pairs; Alpha flips on 3 of 4
    for printed in (printed_by_build, printed_by_evaluate):
        assert "pool teamB: LM judge 'Zeta/P' (most pairs labelled" in printed and "agrees with the human labels on" in printed


def test_an_explicit_judge_is_used_by_both_and_a_weak_one_is_flagged(tmp_path, capsys):
    folder = team_pool(tmp_path / "teamB")
    assert build_choice(folder, "Alpha/P") == "Alpha/P"
    assert evaluate_choice(folder, "--judge", "Alpha/P") == "Alpha/P"
    assert evaluate_choice(folder, "--lm-judge", "teamB=beta") == "beta"
    err = capsys.readouterr().err
    assert "LM judge 'Alpha/P' (given" in err and "WEAK" in err


def test_an_unknown_judge_is_refused_by_both(tmp_path):
    folder = team_pool(tmp_path / "teamB")
    for call in (lambda: build_choice(folder, "gpt-9"), lambda: evaluate_choice(folder, "--judge", "gpt-9")):
        with pytest.raises(InvalidInput) as info:
            call()
        assert "has no judge 'gpt-9'" in str(info.value) and "Zeta/P" in str(info.value)


def test_shared_pools_keep_their_default_judge(tmp_path):
    from conftest import FIXTURES

    from hybridpref.offline.pools import choose_judge, load_pool

    pool = load_pool(FIXTURES / "ppm_pools" / "llmbar" / "pairs.jsonl")
    choice = choose_judge("llmbar", pool.instances)
    assert (choice.judge, choice.rule) == ("GPT-4/Vanilla_NoRules", "shared pool default") == (pool.default_judge, choice.rule)
