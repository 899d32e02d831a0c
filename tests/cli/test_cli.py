"""The command line's shape: every command and tool answers --help, one parser per command module, and a
user mistake is a one-line error with exit code 2."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from hybridpref.cli.main import COMMANDS, build_parser, main


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of ``parser``: ("serve",), ("predictor", "build"), ..."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((*prefix, name))
                out += _commands(sub, (*prefix, name))
    return out


ALL = _commands(build_parser())


def test_every_command_module_registers_what_the_docs_name():
    assert set(ALL) >= {
        ("serve",),
        ("up",),
        ("route",),
        ("keys",),
        ("keys", "add"),
        ("keys", "hash"),
        ("evaluate",),
        ("predictor",),
        ("predictor", "build"),
        ("predictor", "add-routing-models"),
        ("judge",),
        ("judge", "train"),
    }
    assert all(callable(getattr(module, "register", None)) for module in COMMANDS)


@pytest.mark.parametrize("command", ALL, ids=" ".join)
def test_help_works_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hybridpref {' '.join(command)}")


def test_version_is_the_installed_distributions(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"hybridpref {version('hybridpref')}"


def test_every_option_says_what_it_does():
    """``--help`` explains every option (the first real use found a dozen bare ones)."""
    bare = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif action.option_strings and not action.help:
                bare.append((" ".join(path), action.option_strings[0]))
        if "``" in (parser.description or "") or ":func:`" in (parser.description or ""):
            bare.append((" ".join(path), "reST markup in the description"))

    walk(build_parser(), [])
    assert bare == []


def test_every_leaf_command_dispatches_to_a_function():
    leaves = [c for c in ALL if not any(len(other) > len(c) and other[: len(c)] == c for other in ALL)]
    for command in leaves:
        chain, sub = [], build_parser()
        for name in command:
            sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
            chain.append(sub)
        assert any(callable(p.get_default("func")) for p in chain), command  # on the leaf or a parent


def test_a_usage_mistake_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hybridpref.cli.main",
            "predictor",
            "add-routing-models",
            "--bundle",
            str(tmp_path),
            "--pool",
            "no-equals-sign",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --pool: 'no-equals-sign': expected NAME=PATH"
    proc = subprocess.run(
        [sys.executable, "-m", "hybridpref.cli.main", "evaluate", "--pool", "x", "--out", str(tmp_path), "--budgets", "lots"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "error: --budgets" in proc.stderr and "Traceback" not in proc.stderr
