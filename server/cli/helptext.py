"""How `fluxserve ... --help` is laid out: every option's default shown, the package version, and
the environment `serve` reads. Torch-free and quick: it runs on every `--help`."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

SERVE_EPILOG = """\
environment (precedence: these options > environment > config file > defaults):
  FLUXSERVE_<KEY>              a top-level setting, e.g. FLUXSERVE_PORT=8080, FLUXSERVE_DATA_DIR=/data
  FLUXSERVE_<SECTION>__<KEY>   a nested one, with a double underscore: FLUXSERVE_MODEL__WEIGHTS=/models/flux,
                               FLUXSERVE_LIMITS__MAX_IN_FLIGHT=4, FLUXSERVE_WORKERS__COUNT=2
  FLUXSERVE_API_KEYS           static API keys, separated by commas or whitespace (none and no stored
                               key: open mode, loopback only)
  HF_HOME                      the Hugging Face cache that `weights: auto` reads (never downloads)
config file: --config FILE, YAML (examples in configs/); every key and its default is listed in
README.md, "Configuration reference". `fluxserve doctor --config FILE` checks the weights first."""


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already names its default or
    there is none worth showing (None, False). Text with line breaks (an epilog) is kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.option_strings
            and action.default not in (None, False, argparse.SUPPRESS)
            and "default" not in text.lower()
        ):
            text += " (default: %(default)s)"
        return text

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def package_version() -> str:
    """The installed fluxserve distribution's version ("unknown" when run from an uninstalled tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fluxserve")
    except PackageNotFoundError:
        return "unknown"


def walk_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser under ``parser`` (itself first), with the subcommand words that reach it."""
    yield path, parser
    seen: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                if id(child) in seen:  # an alias: the same parser under another name
                    continue
                seen.add(id(child))
                yield from walk_parsers(child, (*path, name))


def use_formatter(parser: argparse.ArgumentParser) -> None:
    """Give every parser of the tree the defaults-showing formatter."""
    for _, each in walk_parsers(parser):
        each.formatter_class = DefaultsHelpFormatter
