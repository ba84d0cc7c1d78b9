"""The parser against what the docs, the README and the error messages tell users to type."""

import argparse
import re
from pathlib import Path

import pytest

from unlearn_audit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")
NOT_OURS = {"--no-deps": "pip's", "--flag": "config.py's docstring names the pattern, not a flag",
            "--max-children": "mutmut's (docs/testing.md)", "--all": "mutmut's (docs/testing.md)",
            "--durations": "pytest's (docs/testing.md)", "--dist": "pytest-xdist's (docs/testing.md)",
            **dict.fromkeys(("--allow-requantize", "--imatrix", "--output-tensor-type", "--outtype", "--pure",
                             "--tensor-type", "--token-embedding-type"),
                            "llama.cpp's (llama-quantize, convert_hf_to_gguf.py), named where gguf-* follows them")}


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: sp for a in parser._actions if isinstance(a, argparse._SubParsersAction)
            for name, sp in a.choices.items()}


def parser_flags() -> set[str]:
    parser = build_parser()
    parsers = [parser, *subparsers(parser).values()]
    return {flag for p in parsers for a in p._actions for flag in a.option_strings}


def script_flags() -> set[str]:
    """Flags of the bench/ and examples/ scripts, which the docs also quote."""
    files = [*ROOT.glob("bench/*.py"), *ROOT.glob("examples/**/*.py")]
    return {m.group(1) for f in files for m in re.finditer(r"add_argument\(\s*\"(--[a-z0-9-]+)\"", f.read_text())}


def test_every_flag_the_docs_and_messages_name_exists():
    known = parser_flags() | script_flags() | set(NOT_OURS)
    texts = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("src/unlearn_audit/**/*.py")]
    missing = {(flag, str(f.relative_to(ROOT))) for f in texts for flag in FLAG.findall(f.read_text())
               if flag not in known}
    assert not missing, sorted(missing)


@pytest.mark.parametrize("command", sorted(subparsers(build_parser())))
def test_help_states_each_default_once(command):
    sub = subparsers(build_parser())[command]
    for action in sub._actions:
        if action.help and action.help != argparse.SUPPRESS:
            assert action.help.count("default") <= 1, (command, action.option_strings, action.help)


def test_every_parser_flag_is_in_the_generated_reference_of_the_commands_doc():
    """The other direction: docs/commands.md's flag reference is what the parser says, flag for flag and help
    for help (regenerate with `python -m unlearn_audit.cli --flag-reference`)."""
    from unlearn_audit.cli import FLAGS_BEGIN, FLAGS_END, flag_reference

    doc = (ROOT / "docs" / "commands.md").read_text()
    section = doc[doc.index(FLAGS_BEGIN): doc.index(FLAGS_END) + len(FLAGS_END)]
    assert section == flag_reference()
    missing = sorted(f for f in parser_flags() if f.startswith("--") and f != "--help" and f"`{f}`" not in section)
    assert not missing, missing


def test_exit_code_3_is_documented_where_users_read_exit_codes():
    from unlearn_audit.cli import EXIT_CODES
    from unlearn_audit.scoring import Gate

    assert f"{Gate.OVER_UNLEARNED.exit_code} over-unlearned" in EXIT_CODES
    assert EXIT_CODES in " ".join(build_parser().format_help().split())  # `unlearn-audit --help` lists audit's
    assert "**3**" in (ROOT / "README.md").read_text()


def test_the_parser_answers_bad_input_without_loading_the_training_stack():
    """A mistyped flag is answered in about a second: building the parser reads the options' dataclasses,
    and none of them may pull in transformers' Trainer, peft or the unlearning trainer (they cost ~5 s of
    imports before the one-line error; they load once there is work)."""
    import subprocess
    import sys

    probe = ("import sys; from unlearn_audit.cli import build_parser; build_parser(); "
             "heavy = [m for m in ('transformers.trainer', 'peft', 'unlearn_audit.unlearn.trainer', "
             "'unlearn_audit.training.core') if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
