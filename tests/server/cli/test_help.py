"""`fluxserve` help stands alone: every option of every command says what it does and its default,
`serve --help` names the environment, and `--version` prints the package version."""

from __future__ import annotations

import argparse
from importlib.metadata import version

import pytest

from server.cli import build_parser, main
from server.cli.helptext import walk_parsers


def every_parser() -> list[tuple[str, argparse.ArgumentParser]]:
    return [(" ".join(("fluxserve", *path)), parser) for path, parser in walk_parsers(build_parser())]


def test_every_command_is_walked():
    commands = {name for name, _ in every_parser()}
    for expected in (
        "fluxserve serve",
        "fluxserve worker",
        "fluxserve generate",
        "fluxserve tiny-model",
        "fluxserve keys create",
        "fluxserve db check",
        "fluxserve backup",
        "fluxserve doctor",
        "fluxserve weights check",
        "fluxserve client generate",
        "fluxserve client batch",
    ):
        assert expected in commands


@pytest.mark.parametrize("command, parser", every_parser(), ids=[name for name, _ in every_parser()])
def test_every_argument_of_every_command_has_help(command: str, parser: argparse.ArgumentParser):
    missing = [
        "/".join(action.option_strings) or action.dest
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()
    ]
    assert missing == [], f"{command}: arguments without help: {missing}"


@pytest.mark.parametrize("command, parser", every_parser(), ids=[name for name, _ in every_parser()])
def test_help_shows_each_options_default(command: str, parser: argparse.ArgumentParser):
    text = parser.format_help()
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            helped = action.help or ""
            assert "default" in helped.lower() or f"(default: {action.default})" in text, (
                f"{command} {action.option_strings[0]}"
            )


def test_a_subcommand_help_shows_ranges_and_defaults(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["client", "generate", "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "1 to 50 (default 28" in out
    assert "0 to 10 (default 3.5" in out
    assert "seconds per request, above 0 (default 30)" in out


def test_serve_help_names_the_environment_and_the_config_file(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name in (
        "FLUXSERVE_<KEY>",
        "FLUXSERVE_<SECTION>__<KEY>",
        "FLUXSERVE_MODEL__WEIGHTS",
        "FLUXSERVE_API_KEYS",
    ):
        assert name in out
    assert "--config FILE" in out and "Configuration reference" in out


def test_version_prints_the_package_version_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"fluxserve {version('fluxserve')}"
