"""Print the README's table of every config key, its environment variable, default and meaning.

Usage: .venv/bin/python scripts/config_reference.py  (paste the output into README.md)
"""

from __future__ import annotations

import json

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


def main() -> None:
    print("| key | environment variable | default | meaning |")
    print("|---|---|---|---|")
    for key, env, default, doc in rows(Settings):
        print(f"| `{key}` | `{env}` | `{default}` | {doc} |")


if __name__ == "__main__":
    main()
