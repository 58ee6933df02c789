"""Print the README's table of every config key, its environment variable, default and meaning.

Usage: .venv/bin/python scripts/config_reference.py [--update-readme]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from pydantic import BaseModel

from server.config import Settings


def rows(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from rows(annotation, f"{prefix}{name}.")
            continue
        key = f"{prefix}{name}"
        env = "FLUXSERVE_" + key.upper().replace(".", "__")
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump()
        yield key, env, json.dumps(default), (field.description or "").replace("|", "\\|")


def table() -> str:
    lines = ["| key | environment variable | default | meaning |", "|---|---|---|---|"]
    for key, env, default, doc in rows(Settings):
        lines.append(f"| `{key}` | `{env}` | `{default}` | {doc} |")
    return "\n".join(lines)


def main() -> None:
    if "--update-readme" not in sys.argv:
        print(table())
        return
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    marked = re.compile(r"(<!-- config-table:start -->\n).*?(\n<!-- config-table:end -->)", re.S)
    readme.write_text(marked.sub(lambda m: m.group(1) + table() + m.group(2), text))


if __name__ == "__main__":
    main()
