"""`fluxserve client generate|batch`: use a running fluxserve server from the command line.

    fluxserve client generate "a red fox" --url http://127.0.0.1:8000 --key KEY -o fox.webp
    fluxserve client generate "a fox, TOK style" --model black-forest-labs-flux-dev-lora \
        --lora owner/some-flux-lora --lora-scale 0.8 -o fox.webp
    fluxserve client batch prompts.jsonl --out runs/foxes --max-in-flight 10

``--url`` defaults to $FLUXSERVE_URL (else http://127.0.0.1:8000), ``--key`` to $FLUXSERVE_API_KEY.
"""

from __future__ import annotations

import argparse
import base64
import mimetypes
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:8000"
IMAGE_SUFFIXES = ("webp", "jpg", "jpeg", "png")
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))


# The flux-dev inputs a ``generate`` command line takes: (flag, input name, type, help). One table
# for this command and ``fluxserve generate`` (which takes the values as text: the input parser then
# names a bad one the way the API does).
GENERATE_OPTIONS: tuple[tuple[str, str, type | None, str | None], ...] = (
    (
        "--aspect-ratio",
        "aspect_ratio",
        None,
        "1:1, 16:9, 21:9, 3:2, 2:3, 4:5, 5:4, 3:4, 4:3, 9:16 or 9:21 (default 1:1); ignored with --image",
    ),
    ("--megapixels", "megapixels", None, "1 or 0.25 (default 1); 0.25 halves both sides"),
    ("--seed", "seed", int, "0 to 2**63-1 (default: random; the one used is printed)"),
    ("--num-outputs", "num_outputs", int, "images to make, 1 to 4 (default 1)"),
    ("--steps", "num_inference_steps", int, "denoising steps, 1 to 50 (default 28; flux-schnell: 1 to 4, 4)"),
    ("--guidance", "guidance", float, "guidance scale, 0 to 10 (default 3.5; flux-dev only)"),
    ("--image", "image", None, None),  # a file, not an input: each command says what it does with it
    (
        "--prompt-strength",
        "prompt_strength",
        float,
        "with --image: 0 to 1 (default 0.8); 1 replaces the source entirely",
    ),
    ("--output-format", "output_format", None, "webp, jpg or png (default: from -o's extension)"),
    ("--output-quality", "output_quality", int, "0 to 100 (default 80); ignored for png"),
)
INPUT_OPTIONS = tuple(name for _, name, _, _ in GENERATE_OPTIONS if name != "image")
# The LoRA inputs of black-forest-labs-flux-dev-lora (a server-side model: `client generate` only).
LORA_OPTIONS: tuple[tuple[str, str, type | None, str], ...] = (
    ("--lora", "lora_weights", None, "LoRA source: an adapter name, https URL, owner/repo or CivitAI URL"),
    ("--lora-scale", "lora_scale", float, "its strength, -1 to 3 (default 1)"),
    ("--extra-lora", "extra_lora", None, "a second LoRA, combined with the first"),
    ("--extra-lora-scale", "extra_lora_scale", float, "its strength, -1 to 3 (default 1)"),
)
DEFAULT_MODEL = "flux-dev"
LORA_MODEL = "black-forest-labs-flux-dev-lora"


def add_input_options(parser: argparse.ArgumentParser, image_help: str, typed: bool = True) -> None:
    """The options of GENERATE_OPTIONS, all defaulting to None; ``typed=False`` keeps them text."""
    for flag, name, kind, help_ in GENERATE_OPTIONS:
        parser.add_argument(
            flag,
            default=None,
            dest=name,
            type=kind if typed else None,
            help=image_help if name == "image" else help_,
        )


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``client`` subcommand (with ``generate`` and ``batch``) to ``fluxserve``."""
    p = sub.add_parser("client", help="use a running fluxserve server (generate, batch)")
    commands = p.add_subparsers(dest="client_command", required=True)

    gen = commands.add_parser("generate", help="one prediction: wait with a progress bar, write the image(s)")
    gen.add_argument("prompt", help="text to draw (up to 10,000 characters)")
    _add_connection(gen)
    gen.add_argument(
        "-o",
        "--output",
        required=True,
        help="output file; several outputs get -0, -1... before the extension",
    )
    add_input_options(gen, image_help="img2img source image file (sent inline as a data: URL)")
    for flag, name, kind, help_ in LORA_OPTIONS:
        gen.add_argument(flag, default=None, dest=name, type=kind, help=help_)
    gen.add_argument(
        "--wait-timeout",
        type=float,
        default=None,
        help="give up waiting after this many seconds (default: wait until it ends)",
    )
    gen.set_defaults(func=cmd_generate)

    batch = commands.add_parser(
        "batch",
        help="run a JSONL file of inputs (one object per line) into a folder; resumable",
        description="Runs every line of INPUTS (flux-dev inputs as JSON objects) and writes "
        "NNNNNN-<prompt-slug>-i.ext images plus manifest.jsonl to --out, with the steps of the images "
        "running shown on stderr (a terminal). Run it again to resume: finished lines are skipped and "
        "submitted ones are polled by id, never created twice.",
    )
    batch.add_argument("inputs", help="JSONL file: one JSON object of flux-dev inputs per line")
    batch.add_argument("--out", required=True, help="output folder (images, manifest.jsonl, pending.jsonl)")
    _add_connection(batch)
    batch.add_argument(
        "--max-in-flight",
        type=int,
        default=10,
        help="predictions in flight at once, 1 or more (default 10; the server's limit per key is "
        "limits.max_in_flight, 10 by default: more only meets 429s, waited out)",
    )
    batch.add_argument(
        "--file-names",
        choices=("prompt", "number"),
        default="prompt",
        help="prompt: NNNNNN-<slug of the prompt>-i.ext; number: NNNNNN-i.ext (default: prompt)",
    )
    batch.set_defaults(func=cmd_batch)


def _add_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help=f"server address (default: $FLUXSERVE_URL or {DEFAULT_URL})")
    p.add_argument(
        "--model",
        default=None,
        help=f"model slug (default {DEFAULT_MODEL}; {LORA_MODEL} when a LoRA option is given; "
        "the server's /v1/models lists them)",
    )
    p.add_argument("--key", default=None, help="API key (default: $FLUXSERVE_API_KEY)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request, above 0 (default 30)")


def _client(args: argparse.Namespace, **kwargs: Any):
    from server.client.api import FluxClient

    url = args.url or os.environ.get("FLUXSERVE_URL") or DEFAULT_URL
    key = args.key or os.environ.get("FLUXSERVE_API_KEY") or None
    uses_lora = any(getattr(args, name, None) is not None for _, name, _, _ in LORA_OPTIONS)
    model = args.model or (LORA_MODEL if uses_lora else DEFAULT_MODEL)
    return FluxClient(url, key, timeout=args.timeout, model=model, **kwargs)


def image_data_url(path: str | Path) -> str:
    """A file as a ``data:`` URL (PNG, JPEG or WEBP, told from its bytes, else its name)."""
    data = Path(path).read_bytes()
    mime = next((m for magic, m in _MAGIC if data.startswith(magic)), None)
    if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    mime = mime or mimetypes.guess_type(str(path))[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def output_paths(output: str, fmt: str, count: int) -> list[Path]:
    """Where the images go: ``output`` for one, ``stem-i.ext`` for several (as `fluxserve generate`)."""
    path = Path(output)
    if path.suffix.lstrip(".").lower() not in IMAGE_SUFFIXES:
        path = path.with_name(path.name + "." + fmt)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]


def _print_error(exc: Exception) -> None:
    print(f"error: {exc}", file=sys.stderr)


def inputs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """flux-dev inputs from a ``generate`` command line (this one or ``fluxserve generate``): the
    prompt, the options given, and the output format from ``-o``'s suffix unless given."""
    inputs: dict[str, Any] = {"prompt": args.prompt}
    names = INPUT_OPTIONS + tuple(name for _, name, _, _ in LORA_OPTIONS)
    inputs.update({name: getattr(args, name) for name in names if getattr(args, name, None) is not None})
    if "output_format" not in inputs:
        ext = Path(args.output).suffix.lstrip(".").lower()
        inputs["output_format"] = {"jpeg": "jpg"}.get(ext, ext) if ext in IMAGE_SUFFIXES else "webp"
    return inputs


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from server.client.api import FluxAPIError, WaitTimeout, output_urls, parse_progress, parse_seed

    inputs = inputs_from_args(args)
    if args.image:
        try:
            inputs["image"] = image_data_url(args.image)
        except OSError as exc:
            print(f"error: --image: {exc}", file=sys.stderr)
            return 2

    with _client(args) as client:
        try:
            prediction_id = client.create(inputs)
        except FluxAPIError as exc:
            _print_error(exc)
            return 2 if exc.status == 400 else 1
        except KeyboardInterrupt:
            print("\ninterrupted while creating the prediction", file=sys.stderr)
            return 130
        bar = tqdm(total=None, unit="step", desc="queued", file=sys.stderr, delay=0.2)

        def progress(prediction: dict[str, Any]) -> None:
            if prediction.get("status") == "processing":
                bar.set_description("denoising", refresh=False)
            step = parse_progress(prediction.get("logs"))
            if step is not None:
                done, total = step
                if bar.total != total:
                    bar.total = total
                bar.update(done - bar.n)

        try:
            print(f"prediction {prediction_id}", file=sys.stderr)
            prediction = client.wait(prediction_id, on_progress=progress, timeout=args.wait_timeout)
        except KeyboardInterrupt:
            bar.close()
            try:
                client.cancel(prediction_id)
                print(f"\ninterrupted: cancelled prediction {prediction_id}", file=sys.stderr)
            except FluxAPIError as exc:
                print(f"\ninterrupted; cancelling {prediction_id} failed: {exc}", file=sys.stderr)
            return 130
        except WaitTimeout as exc:
            bar.close()
            print(f"error: {exc}; it keeps running on the server", file=sys.stderr)
            return 1
        except FluxAPIError as exc:
            bar.close()
            _print_error(exc)
            return 1
        bar.close()

        if prediction.get("status") != "success":
            print(
                f"error: prediction {prediction.get('status')}: {prediction.get('error') or ''}".rstrip(),
                file=sys.stderr,
            )
            return 1
        urls = output_urls(prediction)
        if not urls:
            print("error: the prediction succeeded but returned no images", file=sys.stderr)
            return 1
        fmt = Path(urlsplit(urls[0]).path).suffix.lstrip(".") or str(inputs["output_format"])
        try:
            for path, url in zip(output_paths(args.output, fmt, len(urls)), urls, strict=True):
                data = client.download(url)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                print(f"wrote {path}")
        except (FluxAPIError, OSError) as exc:
            _print_error(exc)
            return 1
        for url in urls:
            print(f"url: {url}")
        share = client.share_url(prediction)
        if share is not None:
            print(f"share: {share}")
    for line in (prediction.get("logs") or "").splitlines():
        if line.startswith("Warning:"):
            print(line, file=sys.stderr)
        elif line.startswith("LoRA "):  # which adapters ran, and how long each took to get
            print(line)
    predict_time = (prediction.get("metrics") or {}).get("predict_time")
    shown = f"{predict_time:.2f} s" if isinstance(predict_time, int | float) else "unknown"
    print(f"Using seed: {parse_seed(prediction.get('logs'))}; predict time {shown}")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from server.client.batch import BatchLocked, BatchRunner

    if args.max_in_flight < 1:
        print("error: --max-in-flight must be at least 1", file=sys.stderr)
        return 2
    if not Path(args.inputs).is_file():
        print(f"error: {args.inputs} is not a file", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            os._exit(130)  # second signal: leave now (running lines resume by id next time)
        stop.set()
        print(
            "\nstopping after the creates in progress (again to quit at once)...", file=sys.stderr, flush=True
        )

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        # 429s are waited out by the runner (it can notice a stop while it waits).
        with _client(args, rate_limit_retries=0) as client:
            summary = BatchRunner(
                client,
                args.inputs,
                args.out,
                max_in_flight=args.max_in_flight,
                stop=stop,
                file_names=args.file_names,
            ).run()
    except BatchLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(str(summary))
    if summary.interrupted:
        return 130
    return 1 if summary.failed or summary.unfinished else 0
