"""Server settings: a YAML file (configs/*.yaml) overridden by FLUXSERVE_* environment variables.

Nested keys use a double underscore in the environment: ``FLUXSERVE_MODEL__WEIGHTS=/models/flux``,
``FLUXSERVE_LIMITS__MAX_IN_FLIGHT=4``. ``FLUXSERVE_API_KEYS`` takes a comma-separated list.
Precedence: explicit arguments > environment > YAML file > defaults.
"""

from __future__ import annotations

import json
import re
import ssl
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from pipelines.loras.resolve import AdapterFilesConfig
from pipelines.spec import ModelSpec
from server.api.middleware.hostguard import validate_host_pattern
from server.auth.keyring import parse_static_keys
from server.egress.allowlist import parse_host_rule

MiB = 2**20
# The YAML file ``load_settings`` reads, handed to ``settings_customise_sources`` (a classmethod
# pydantic calls while building Settings). A context variable: set for that one call, in this
# thread or task only, and never seen by child processes.
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("fluxserve_config_file", default=None)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LimitsSettings(_Section):
    requests_per_minute: int = Field(60, description="Creates per minute per API key (0: unlimited).")
    reads_per_minute: int = Field(
        1200, description="Other authenticated requests (polls, lists) per minute per key (0: unlimited)."
    )
    max_in_flight: int = Field(
        10, description="Predictions starting or processing per API key (0: unlimited)."
    )
    max_body_bytes: int = Field(16 * MiB, description="Largest request body; larger gets 413.")
    storage_uri: str = Field(
        "memory://", description="Rate-limit counters: memory:// or redis://host:port/db."
    )


class WorkerSettings(_Section):
    count: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="Worker processes: auto = one per visible GPU, 1 on CPU; 0 = API only (nothing runs "
        "predictions here: /health-check stays STARTING and says so).",
    )
    gpus: list[int] | None = Field(None, description="GPU indices to use (default: all visible).")
    job_timeout_s: float = Field(
        600, description="A prediction running longer ends in error and its worker is replaced."
    )
    max_attempts: int = Field(
        1,
        ge=1,
        description="Runs per prediction when its worker dies; 1 = a lost job ends in error, "
        "never runs twice.",
    )
    lease_s: float = Field(
        30,
        gt=0,
        description="A running prediction's lease: its worker host renews it every third of this; "
        "once it expires (the host died or lost the store) any host sharing the store settles the "
        "prediction like a lost worker's (requeued or ended per max_attempts).",
    )
    host_id: str | None = Field(
        None,
        description="This worker host's name in leases and in /health-check's hosts (default: the "
        "machine's host name). Two worker hosts on one machine need one each, and a data_dir each.",
    )
    load_timeout_s: float = Field(
        1800, description="Model load (and warm-up, compiling included) longer than this is a setup failure."
    )
    compile_cache_dir: str | None = Field(
        None,
        description="torch.compile's caches (inductor, Triton, compiled artifacts), kept so that a "
        "compiled model's second start skips most of the compiling (default: <data_dir>/compile-cache; "
        "`none`: torch's default, usually lost with /tmp).",
    )
    shutdown_grace_s: float = Field(
        60, description="On SIGTERM, how long a running prediction may take to finish."
    )
    progress_interval_s: float = Field(0.25, description="Minimum seconds between progress log lines.")
    overlap_finishing: bool = Field(
        True,
        description="Finish a job's images (decode, safety check, encoding) on a thread of their own "
        "while the GPU already denoises the next job, which is sent as the last step begins: the GPU "
        "does not wait between back-to-back jobs. Off: one job at a time, start to end (as before). "
        "Always finished inline with CPU offload.",
    )
    nice: int = Field(
        0,
        ge=0,
        le=19,
        description="Raise the workers' nice value by this much, so the API answers promptly while a "
        "worker keeps the CPU busy (a CPU-only box; on a GPU the worker mostly waits on the GPU).",
    )


def _check_http_url(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http:// or https:// URL with a host, not {value!r}")
    return value


class S3OutputSettings(_Section):
    bucket: str | None = Field(None, description="The bucket (required with `outputs.backend: s3`).")
    prefix: str = Field(
        "", description="Key prefix inside the bucket: objects are `<prefix>/<id>/out-0.webp`."
    )
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, R2, Ceph...); default: AWS S3 of `region`."
    )
    region: str | None = Field(None, description="Region; default: boto3's (AWS_REGION, ~/.aws/config).")
    access_key_id: str | None = Field(
        None,
        description="Access key; default: boto3's credential chain "
        "(AWS_ACCESS_KEY_ID, ~/.aws, an instance role).",
    )
    secret_access_key: SecretStr | None = Field(
        None,
        description="Secret of `access_key_id` (best given as FLUXSERVE_OUTPUTS__S3__SECRET_ACCESS_KEY).",
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="`path` for endpoints without per-bucket host names (MinIO, most self-hosted)."
    )
    public_base_url: str | None = Field(
        None,
        description="Public bucket or CDN: output URLs are `<public_base_url>/<key>` (no signing). "
        "Unset: presigned URLs.",
    )
    url_expiry_s: int = Field(
        3600,
        ge=1,
        le=7 * 24 * 3600,
        description="Lifetime of a presigned URL. A fresh one is made on every read of a prediction, so it "
        "only has to outlive a download (and a webhook's retries); a leaked one stops working after this.",
    )

    @field_validator("endpoint_url", "public_base_url")
    @classmethod
    def _check_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _check_http_url(value, info.field_name or "URL")

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, value: str | None) -> str | None:
        # S3's bucket naming rules, loosely: the usual mistake is a URL or a path here.
        if value is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]", value):
            raise ValueError(f"{value!r} is not a bucket name (3-63 of a-z 0-9 . - _, no URL, no slash)")
        return value

    @model_validator(mode="after")
    def _key_pair(self) -> S3OutputSettings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key go together: give both or neither")
        return self


class OutputSettings(_Section):
    backend: Literal["local", "s3"] = Field(
        "local",
        description="`local`: a folder served by the API; `s3`: an S3-compatible bucket (`outputs.s3`).",
    )
    s3: S3OutputSettings = Field(default_factory=S3OutputSettings)
    dir: str | None = Field(None, description="Where images are written (default: <data_dir>/outputs).")
    retention_hours: float = Field(
        0, description="Delete output files after this many hours (0: keep forever)."
    )
    require_owner_key: bool = Field(
        False,
        description="Serve output files only to the key that made them. Off: the unguessable URL is enough "
        "(a request carrying another key still gets 404).",
    )
    embed_parameters: bool = Field(
        True,
        description="Write each image's prompt, seed, steps, guidance, size, model and LoRAs into the file "
        "(PNG text chunks, JPEG/WebP EXIF and XMP), as A1111 and ComfyUI read them. Off: output files "
        "carry no metadata at all (`fluxserve generate` follows it too).",
    )
    share_pages: bool = Field(
        True,
        description="Serve the share page /p/{id}: anyone holding the (unguessable) link "
        "sees that prediction's "
        "inputs and images. Off, or with require_owner_key on, /p/{id} answers 404.",
    )

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> OutputSettings:
        if self.backend == "s3" and not self.s3.bucket:
            raise ValueError("outputs.s3.bucket is required with outputs.backend: s3")
        return self


class InputImageSettings(_Section):
    max_bytes: int = Field(10 * MiB, description="Largest input image (data: URL decoded, or downloaded).")
    max_pixels: int = Field(
        40_000_000, description="Largest input image in pixels (decompression bombs refused)."
    )
    fetch_timeout_s: float = Field(15, description="Timeout for downloading an image URL.")
    allow_private_addresses: bool = Field(
        False, description="Allow image and webhook URLs on loopback/private/link-local/metadata addresses."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts, IPs or CIDRs whose private addresses image and webhook URLs may reach: "
        "`images.internal`, `*.corp.example`, `10.0.0.5`, `10.0.0.0/8`, `::1`, `fd00::/8`; with a port "
        "`images.internal:8080`, `10.0.0.0/8:443`, `[::1]:8080`, `[fd00::/8]:443`. Without a port every "
        "port is allowed; with one, only that port. Checked on each redirect hop too; a malformed entry "
        "is refused at start.",
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _check_allowed_hosts(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            parse_host_rule(entry)  # ValueError naming the entry and what is wrong with it
        return entries


class WebhookSettings(_Section):
    attempts: int = Field(3, ge=1, description="Delivery attempts per webhook.")
    interval_s: float = Field(10, ge=0, description="Seconds between attempts.")
    timeout_s: float = Field(10, gt=0, description="Timeout of one delivery attempt.")


class ServerSettings(_Section):
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names served besides loopback (localhost, 127.0.0.0/8, [::1]) "
        "and public_url's host: "
        "`name`, `*.domain` or `*` (any). Empty: without API keys only those; with keys any host. "
        "FLUXSERVE_SERVER__ALLOWED_HOSTS: separated by commas or whitespace.",
    )

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().startswith('["'):
            try:  # a JSON list, as other list settings take it from the environment
                v = json.loads(v)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a valid JSON list ({exc}); or separate names by commas") from None
        if isinstance(v, str):
            v = [h for h in re.split(r"[\s,]+", v) if h]
        if isinstance(v, list):
            return [validate_host_pattern(h) if isinstance(h, str) else h for h in v]
        return v


class LoraSettings(_Section):
    dir: str | None = Field(
        None,
        description="The adapter folder: `lora_weights: my-style` loads `<dir>/my-style.safetensors` "
        "(default: <data_dir>/loras).",
    )
    cache_dir: str | None = Field(
        None,
        description="Where downloaded adapters (URLs, CivitAI) are kept, shared by the workers of a host "
        "(default: <data_dir>/lora-cache). Hugging Face files stay in Hugging Face's own cache.",
    )
    cache_max_gb: float = Field(
        20,
        gt=0,
        description="Disk budget of cache_dir: the least recently used adapters are deleted beyond it.",
    )
    max_download_mb: int = Field(2048, ge=1, description="Largest adapter file downloaded.")
    download_timeout_s: float = Field(600, gt=0, description="Timeout of one adapter download, overall.")
    allow_http: bool = Field(
        False, description="Accept plain http:// adapter URLs (and redirects to them); off: https:// only."
    )
    hub_downloads: bool = Field(
        False,
        description="Download Hugging Face adapters missing from the local Hugging Face cache "
        "(HF_TOKEN for private repos). Off: only adapters already in that cache are used.",
    )
    civitai_base_url: str = Field(
        "https://civitai.com", description="CivitAI, or a mirror of its download and model API."
    )
    civitai_token: SecretStr | None = Field(
        None,
        description="CivitAI API token, sent as a bearer token to civitai_base_url only (best given as "
        "FLUXSERVE_LORAS__CIVITAI_TOKEN).",
    )
    max_loaded: int = Field(
        4,
        ge=2,
        description="Adapters each worker keeps loaded (least recently used unloaded; at least 2, "
        "since one request may name two).",
    )
    hotswap_max_rank: int = Field(
        64, ge=1, description="Highest adapter rank that can be swapped into a compiled transformer."
    )

    @field_validator("civitai_base_url")
    @classmethod
    def _check_civitai_url(cls, value: str) -> str:
        return _check_http_url(value, "civitai_base_url") or value


class PreviewSettings(_Section):
    enabled: bool = Field(
        False,
        description="Make live previews for predictions that do not say (an Eachlabs create's "
        '`"previews": true|false` decides for itself; the playground asks for them). Off: they cost '
        "generation time (docs/benchmarks.md).",
    )
    every_n_steps: int = Field(
        4, ge=1, description="A preview every this many denoising steps, and at the last step."
    )
    max_side: int = Field(256, ge=16, le=1024, description="A preview's longer side, in pixels.")
    taesd: str | None = Field(
        None,
        description="A local AutoencoderTiny folder (TAEF1) that decodes previews into sharper images; "
        "default: the linear latent-to-RGB approximation, which needs no weights.",
    )


class OpenAISettings(_Section):
    model_aliases: dict[str, str] = Field(
        default_factory=dict,
        description="Model names OpenAI clients may send, each standing for a configured model "
        "(e.g. `dall-e-3: flux-dev`); an OpenAI request without `model` runs the first model.",
    )
    wait_timeout_s: float = Field(
        300,
        gt=0,
        description="Longest an OpenAI images request waits for its prediction; then it is cancelled "
        "and the request answers 504.",
    )


class MetricsSettings(_Section):
    require_key: bool = Field(
        False, description="/metrics needs a valid API key (401 without one); no effect without keys."
    )


class _KeyIsEncrypted(Exception):
    """OpenSSL asked for the keyfile's password and none is configured."""


class TLSSettings(_Section):
    certfile: str | None = Field(
        None, description="PEM certificate (chain) file: `serve` speaks HTTPS (also `--ssl-certfile`)."
    )
    keyfile: str | None = Field(
        None, description="PEM private key of the certificate (also `--ssl-keyfile`)."
    )
    keyfile_password: SecretStr | None = Field(
        None,
        description="Password of an encrypted keyfile (best given as FLUXSERVE_TLS__KEYFILE_PASSWORD); "
        "an encrypted keyfile without it is refused at start.",
    )

    @model_validator(mode="after")
    def _both_and_loadable(self) -> TLSSettings:
        # Checked here so a bad pair is a one-line config error, not a traceback from uvicorn.
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together: give both or neither")
        if self.certfile is None or self.keyfile is None:
            return self
        for name, path in (("certfile", self.certfile), ("keyfile", self.keyfile)):
            if not Path(path).expanduser().is_file():
                raise ValueError(f"{name} {path} does not exist")
        # uvicorn opens these paths as given: keep the ones checked here (`~` expanded, absolute).
        self.certfile = str(Path(self.certfile).expanduser().resolve())
        self.keyfile = str(Path(self.keyfile).expanduser().resolve())

        def password() -> bytes:
            # Called by OpenSSL only for an encrypted key. Without this callback OpenSSL would
            # prompt on the terminal, on every command that reads the settings.
            if self.keyfile_password is None:
                raise _KeyIsEncrypted
            return self.keyfile_password.get_secret_value().encode()

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                self.certfile, self.keyfile, password=password
            )
        except _KeyIsEncrypted:
            raise ValueError(
                f"keyfile {self.keyfile} is encrypted: give its password in tls.keyfile_password "
                "(FLUXSERVE_TLS__KEYFILE_PASSWORD)"
            ) from None
        except (ssl.SSLError, OSError) as exc:
            hint = " (is tls.keyfile_password right?)" if self.keyfile_password is not None else ""
            raise ValueError(f"cannot use the certificate and key{hint}: {exc}") from None
        return self

    @property
    def enabled(self) -> bool:
        return self.certfile is not None

    @property
    def password(self) -> str | None:
        """``keyfile_password`` in clear, for uvicorn."""
        return self.keyfile_password.get_secret_value() if self.keyfile_password is not None else None


class Settings(BaseSettings):
    """Everything `fluxserve serve` reads. See README.md for each key."""

    model_config = SettingsConfigDict(
        env_prefix="FLUXSERVE_", env_nested_delimiter="__", extra="forbid", yaml_file=None
    )

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, description="Port to bind.")
    public_url: str | None = Field(
        None,
        description="Base of absolute URLs in answers (e.g. https://flux.example.com); default "
        "http://host:port (https:// with `tls`).",
    )
    data_dir: str = Field("./fluxserve-data", description="The SQLite database and the outputs live here.")
    store_url: str | None = Field(
        None,
        description="Default: sqlite:///<data_dir>/fluxserve.db. Predictions, stored API keys and webhook "
        "deliveries all live in this one file (or database). postgresql://user:password@host:5432/db: "
        "one database that API replicas and worker hosts share (README, Several hosts).",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Static API keys (FLUXSERVE_API_KEYS: separated by commas or whitespace).",
    )
    log_level: str = Field("info", description="debug, info, warning, error.")
    run_wait_timeout_s: float = Field(
        300, description="Longest /v1/prediction/run holds a request before answering with the current state."
    )
    model: ModelSpec = Field(default_factory=ModelSpec)
    models: list[ModelSpec] | None = Field(
        None,
        description="Several models on one server, each a `model:` section (with its `family`, `gpus` or "
        "`workers`); instead of `model:`. Every slug must be unique across them.",
    )
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    workers: WorkerSettings = Field(default_factory=WorkerSettings)
    outputs: OutputSettings = Field(default_factory=OutputSettings)
    input_images: InputImageSettings = Field(default_factory=InputImageSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    loras: LoraSettings = Field(default_factory=LoraSettings)
    previews: PreviewSettings = Field(default_factory=PreviewSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    tls: TLSSettings = Field(default_factory=TLSSettings)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        # A string (the environment) splits on commas or whitespace. In a list, a blank entry is
        # a mistake, not "no key": refused, so a typo never leaves the server open.
        if isinstance(v, str):
            return parse_static_keys(v)
        if isinstance(v, list) and all(isinstance(k, str) for k in v):
            if any(not k.strip() for k in v):
                raise ValueError("an API key is blank")
            return parse_static_keys(v)
        return v

    @model_validator(mode="before")
    @classmethod
    def _one_way_to_give_models(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("model") is not None and data.get("models") is not None:
            raise ValueError(
                "model and models: give one (`model:` for a single model, `models:` for several)"
            )
        return data

    @field_validator("models")
    @classmethod
    def _models_apart(cls, models: list[ModelSpec] | None) -> list[ModelSpec] | None:
        if models is None:
            return None
        if not models:
            raise ValueError("list at least one model, or leave models out")
        seen: set[str] = set()
        for spec in models:
            for slug in spec.slugs:
                if slug in seen:
                    raise ValueError(
                        f"two models answer to the slug {slug!r}: give each its own name "
                        "(and lora_slug / lora_name, or lora: false)"
                    )
                seen.add(slug)
        names = [spec.lora_name for spec in models if spec.serves_lora]
        if len(set(names)) != len(names):
            raise ValueError("two models' LoRA faces share a lora_name: give each its own")
        return models

    @model_validator(mode="after")
    def _aliases_name_served_models(self) -> Settings:
        slugs = [slug for spec in self.model_specs for slug in spec.slugs]
        for alias, slug in self.openai.model_aliases.items():
            if slug not in slugs:
                raise ValueError(
                    f"openai.model_aliases: {alias!r} stands for {slug!r}, which is not a configured "
                    f"model ({', '.join(slugs)})"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = _CONFIG_FILE.get()
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file, deep_merge=True))
        return tuple(sources)

    # -- derived paths --------------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def data_dir_db_path(self) -> Path:
        """The database file in the data folder: the store's without a store_url (and where
        earlier versions kept stored keys and webhooks even with one, see store/carryover.py)."""
        return self.data_path / "fluxserve.db"

    @property
    def db_path(self) -> Path:
        """The SQLite file of the store: predictions, stored keys and webhook deliveries
        (ValueError for a store_url that names none)."""
        if not self.store_url:
            return self.data_dir_db_path
        from server.store import sqlite_file

        return sqlite_file(self.store_url)[0]

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.db_path}"

    @property
    def shared_store(self) -> bool:
        """The store is a PostgreSQL database that API replicas and worker hosts share."""
        from server.store import is_postgres

        return is_postgres(self.resolved_store_url)

    @property
    def store_name(self) -> str:
        """The store, for messages: the SQLite file, or the database's url without its password."""
        from server.store import display_store_url

        return display_store_url(self.resolved_store_url) if self.shared_store else str(self.db_path)

    @property
    def outputs_path(self) -> Path:
        return (
            Path(self.outputs.dir).expanduser().resolve() if self.outputs.dir else self.data_path / "outputs"
        )

    @property
    def local_outputs_path(self) -> Path | None:
        """The outputs folder on this host, or None when the outputs live in a bucket."""
        return self.outputs_path if self.outputs.backend == "local" else None

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.tls.enabled else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def lora_dir_path(self) -> Path:
        return Path(self.loras.dir).expanduser().resolve() if self.loras.dir else self.data_path / "loras"

    @property
    def lora_cache_path(self) -> Path:
        if self.loras.cache_dir:
            return Path(self.loras.cache_dir).expanduser().resolve()
        return self.data_path / "lora-cache"

    @property
    def compile_cache_path(self) -> Path | None:
        folder = self.workers.compile_cache_dir
        if folder == "none":
            return None
        return Path(folder).expanduser().resolve() if folder else self.data_path / "compile-cache"

    def adapter_files_config(self) -> AdapterFilesConfig:
        """The plain-data settings a worker resolves adapter sources with (picklable)."""
        loras = self.loras
        token = loras.civitai_token.get_secret_value() if loras.civitai_token is not None else None
        return AdapterFilesConfig(
            adapter_dir=str(self.lora_dir_path),
            cache_dir=str(self.lora_cache_path),
            cache_max_bytes=int(loras.cache_max_gb * 2**30),
            max_download_bytes=loras.max_download_mb * MiB,
            download_timeout_s=loras.download_timeout_s,
            allow_http=loras.allow_http,
            hub_downloads=loras.hub_downloads,
            civitai_base_url=loras.civitai_base_url,
            civitai_token=token,
            allow_private_addresses=self.input_images.allow_private_addresses,
            allowed_hosts=tuple(self.input_images.allowed_hosts),
        )

    @property
    def model_specs(self) -> list[ModelSpec]:
        """The configured models: ``models:``, or the one ``model:``."""
        return list(self.models) if self.models is not None else [self.model]

    def model_spec(self) -> ModelSpec:
        """The first configured model (the default one; ``weights: auto`` builds the tiny model
        in the one place `fluxserve generate` uses too: ``model.tiny_model_dir``, else the user
        cache)."""
        return self.model_specs[0]


class ConfigError(ValueError):
    pass


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the YAML file (if any), then the environment, then ``overrides``."""
    from pydantic import ValidationError

    path = None
    if config_file is not None:
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
    token = _CONFIG_FILE.set(path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {where}: {err['msg']}" if where else f"  {err['msg']}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
    finally:
        _CONFIG_FILE.reset(token)
