"""The start-up summary: what an operator needs to know about a server that just started.

Logged once by the app's start (logger ``fluxserve``), one item a line::

    fluxserve 0.1.0 started
      API          http://127.0.0.1:8000/v1/prediction (Replicate: /v1/predictions)
      playground   http://127.0.0.1:8000/
      docs         http://127.0.0.1:8000/docs
      data folder  /srv/fluxserve-data
      store        /srv/fluxserve-data/fluxserve.db
      outputs      /srv/fluxserve-data/outputs
      keys         2 in the config, 1 stored
      model        flux-dev (+ flux-dev-lora): weights auto, device auto, dtype auto
      workers      2: 0 on GPU 0 (flux-dev), 1 on GPU 1 (flux-dev)

What each worker loaded, from where (folder, hf-cache, tiny) and on which device follows when it
is ready, one line per worker (the supervisor's ``worker N ready``); then ``ready: ...`` once all
of them are.
"""

from __future__ import annotations

from importlib import metadata

from server.services import AppState


def _version() -> str:
    try:
        return metadata.version("fluxserve")
    except metadata.PackageNotFoundError:  # run from a tree that was never installed
        return "(not installed)"


def summary_lines(state: AppState, *, runs_workers: bool, stored_keys: int) -> list[str]:
    """The summary, a line per item (the first a heading). ``stored_keys``: active stored keys."""
    settings = state.settings
    base = settings.base_url
    items: list[tuple[str, str]] = [
        ("API", f"{base}/v1/prediction (Replicate: /v1/predictions)"),
        ("playground", f"{base}/"),
        ("docs", f"{base}/docs"),
        ("data folder", str(settings.data_path)),
        ("store", settings.store_name),
        ("outputs", _outputs(settings)),
        ("keys", _key_mode(state, stored_keys)),
    ]
    for spec in settings.model_specs:
        faces = f"{spec.name} (+ {spec.lora_slug})" if spec.serves_lora else spec.name
        items.append(("model", f"{faces}: weights {spec.weights}, device {spec.device}, dtype {spec.dtype}"))
    items.append(("workers", _workers(state) if runs_workers else "none here (an API replica)"))
    width = max(len(label) for label, _ in items) + 2
    return [f"fluxserve {_version()} started"] + [f"  {label.ljust(width)}{value}" for label, value in items]


def _outputs(settings) -> str:
    if settings.outputs.backend == "s3":
        s3 = settings.outputs.s3
        return f"s3 bucket {s3.bucket}" + (f" at {s3.endpoint_url}" if s3.endpoint_url else "")
    return str(settings.outputs_path)


def _key_mode(state: AppState, stored_keys: int) -> str:
    if state.keyring.open:
        return "none: open mode, reachable from this machine only (set FLUXSERVE_API_KEYS)"
    static = len(set(state.settings.api_keys))
    return f"{static} in the config, {stored_keys} stored"


def _workers(state: AppState) -> str:
    plan = state.supervisor.slot_plan()
    if not plan:
        return "0: nothing runs predictions here (workers.count: 0)"
    several = len(state.settings.model_specs) > 1
    places = []
    for index, gpu, spec in plan:
        where = f"GPU {gpu}" if gpu is not None else ("CPU" if spec.device == "cpu" else spec.device)
        places.append(f"{index} on {where}" + (f" ({spec.name})" if several else ""))
    return f"{len(plan)}: " + ", ".join(places)
