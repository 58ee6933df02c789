"""The import rules of the layout (docs: DESIGN.md, "Layout"), checked on the source tree.

- the API process never loads torch: importing a module of server/ does not import it (the worker
  child and the `generate` command are the exceptions: they run the model);
- pipelines/ (torch and diffusers) never imports FastAPI, Starlette or server/;
- server/client/ imports nothing else of server/: it can ship on its own;
- nothing under server/ imports the command line (server.cli) but the command line itself;
- the domain (server/predictions/) knows no HTTP, SQL or torch, and no part of the server above it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH_ALLOWED = {"server.workers.process", "server.cli.generate"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything the file imports, at any depth (function bodies too).
    ``from a import b`` yields both ``a`` and ``a.b``: b may be a module."""
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the file's package
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _violations(folder: str, bad, allowed_files=lambda path: False) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in _sources(folder)
        if not allowed_files(path)
        for line, name in _imports(path)
        if bad(path, name)
    ]


def test_importing_the_server_does_not_load_torch():
    modules = [
        name
        for name in map(_module_name, _sources("server"))
        if name not in TORCH_ALLOWED and not name.endswith("__main__")
    ]
    # One fresh interpreter imports them in turn and names the first one that brought torch in.
    probe = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'torch' in sys.modules:\n"
        "        print(json.dumps(name)); break\n"
        "else:\n"
        "    print(json.dumps(None))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    culprit = json.loads(done.stdout.strip().splitlines()[-1])
    assert culprit is None, f"importing {culprit} loads torch (the API process must not)"


def test_pipelines_import_neither_fastapi_nor_the_server():
    def bad(path: Path, name: str) -> bool:
        return any(_within(name, top) for top in ("fastapi", "starlette", "server"))

    assert _violations("pipelines", bad) == []


def test_the_client_imports_nothing_else_of_the_server():
    def bad(path: Path, name: str) -> bool:
        return _within(name, "server") and not _within(name, "server.client")

    assert _violations("server/client", bad) == []


def test_only_the_command_line_imports_the_command_line():
    def bad(path: Path, name: str) -> bool:
        return _within(name, "server.cli")

    def is_cli(path: Path) -> bool:
        return _within(_module_name(path), "server.cli")

    assert _violations("server", bad, allowed_files=is_cli) == []


def test_the_domain_knows_no_http_sql_torch_nor_the_layers_above_it():
    outside = ("fastapi", "starlette", "sqlite3", "psycopg", "torch", "diffusers")

    def bad(path: Path, name: str) -> bool:
        if any(_within(name, top) for top in outside):
            return True
        return _within(name, "server") and not _within(name, "server.predictions")

    assert _violations("server/predictions", bad) == []
