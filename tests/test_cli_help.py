"""The command line as a new user meets it: one-line flag errors, --version, complete help, README in sync."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

import stablekit
from stablekit import cli
from stablekit.cli import build_parser, main
from stablekit.formats import SAVE_FORMATS
from stablekit.formats.archs import ARCHS
from stablekit.formats.assemble import PREDICTION_TYPES
from stablekit.metadata.outputs import FORMATS
from stablekit.samplers.registry import SAMPLER_NAMES, SCHEDULE_NAMES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its full name ("generate", "shapes eval", ...)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {k}": v for k, v in _subparsers(sub).items()})
    return found


COMMANDS = {"stablekit": build_parser(), **_subparsers(build_parser())}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")}


def _choices(parser: argparse.ArgumentParser, flag: str) -> tuple:
    return tuple(next(a for a in parser._actions if flag in a.option_strings).choices)


def test_a_flag_type_error_is_one_line_with_a_pointer_to_help(capsys):
    assert main(["generate", "a cat", "--cfg", "high"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        "stablekit generate: error: argument --cfg: invalid float value: 'high'; see 'stablekit generate --help'\n")
    assert main(["generat"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'generat'" in err and "usage:" not in err
    assert main(["convert", "a", "b", "--dtype", "fp8"]) == 2
    assert "see 'stablekit convert --help'" in capsys.readouterr().err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"stablekit {stablekit.__version__}\n"


def test_a_command_module_that_fails_to_import_is_reported_not_skipped(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "not_a_module"])
    with pytest.raises(ModuleNotFoundError, match="stablekit.cli.not_a_module"):
        build_parser()
    assert {"generate", "inspect", "convert", "png-info", "shapes"} <= set(COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_and_flag_is_described(name):
    parser = COMMANDS[name]
    assert parser.description, f"stablekit {name} has no description"
    missing = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert not missing, f"stablekit {name}: no help for {missing}"


def test_generate_help_names_every_mode():
    text = COMMANDS["generate"].format_help()
    for word in ("txt2img", "img2img", "inpainting", "embedded", "64"):
        assert word in text


def _readme_generate_table() -> list[str]:
    start = README.index("| flag | meaning | default |")
    rows = README[start:].split("\n\n")[0].splitlines()[2:]
    return [row.strip().strip("|").split(" | ")[0].strip() for row in rows]


def test_readme_flag_table_equals_generate_help():
    listed = {flag for cell in _readme_generate_table() for flag in re.findall(r"--[a-z][a-z0-9-]*", cell)}
    assert listed == _flags(COMMANDS["generate"])


def test_choices_come_from_the_library_tables():
    generate, convert = COMMANDS["generate"], COMMANDS["convert"]
    assert _choices(generate, "--arch") == _choices(convert, "--arch") == ARCHS
    assert _choices(convert, "--dtype") == ("fp32", "fp16", "bf16")
    assert _choices(generate, "--dtype") == ("auto",) + _choices(convert, "--dtype")  # auto: generate/acceleration.py
    assert _choices(convert, "--prediction-type") == PREDICTION_TYPES and _choices(convert, "--to") == SAVE_FORMATS
    assert _choices(generate, "--format") == tuple(FORMATS)
    # The README lists the same choices, in the same order.
    table = dict((cell.split()[0].strip("`"), cell) for cell in _readme_generate_table())
    assert "|".join(_choices(generate, "--dtype")) in table["--dtype"].replace("\\|", "|")
    assert "|".join(ARCHS) in table["--arch"].replace("\\|", "|")
    assert "|".join(FORMATS) in table["--format"].replace("\\|", "|")
    assert ", ".join(SAMPLER_NAMES) in README and ", ".join(SCHEDULE_NAMES) in README
    sampler_help = next(a for a in generate._actions if "--sampler" in a.option_strings).help
    assert ", ".join(SAMPLER_NAMES) in sampler_help


def test_every_docs_page_is_linked_from_the_readme():
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert pages and [p for p in pages if f"(docs/{p})" not in README] == []


def test_docs_are_current():
    generation = (ROOT / "docs" / "generation.md").read_text()
    assert not re.search(r"img2img[^.]*planned|inpainting[^.]*planned", generation)
    assert "--init-image" in README and "--mask" in README and "64x64" in README
