"""Settings: YAML < environment < arguments, clear errors, and the README documents every key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.config import ConfigError, Settings, load_settings
from server.workers.supervisor import Supervisor
from tests.server.helpers import LiveServer, self_signed_cert

ROOT = Path(__file__).resolve().parents[2]


def test_yaml_values_are_read(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("port: 9001\nmodel:\n  weights: /models/flux\nlimits:\n  max_in_flight: 3\n")
    s = load_settings(cfg)
    assert (s.port, s.model.weights, s.limits.max_in_flight) == (9001, "/models/flux", 3)
    assert s.limits.requests_per_minute == 60  # untouched defaults stay


def test_environment_overrides_yaml(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("port: 9001\nlimits:\n  requests_per_minute: 5\n")
    monkeypatch.setenv("FLUXSERVE_PORT", "9002")
    monkeypatch.setenv("FLUXSERVE_LIMITS__REQUESTS_PER_MINUTE", "7")
    monkeypatch.setenv("FLUXSERVE_MODEL__OFFLOAD", "model")
    s = load_settings(cfg)
    assert (s.port, s.limits.requests_per_minute, s.model.offload) == (9002, 7, "model")


def test_the_config_file_is_read_only_by_the_load_that_names_it(tmp_path, monkeypatch):
    """No file reaches Settings through the environment: a variable left there by an earlier load
    (or set by hand) names no config, and a load without a file reads none."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("port: 9001\n")
    monkeypatch.setenv("_FLUXSERVE_CONFIG_FILE", str(cfg))
    assert Settings().port == 8000
    assert load_settings(cfg).port == 9001
    assert (Settings().port, load_settings().port) == (8000, 8000)


def test_api_keys_from_environment_are_comma_separated(monkeypatch):
    monkeypatch.setenv("FLUXSERVE_API_KEYS", "alpha, beta,,gamma")
    assert load_settings().api_keys == ["alpha", "beta", "gamma"]


def test_api_keys_from_environment_may_be_separated_by_whitespace_too(monkeypatch):
    monkeypatch.setenv("FLUXSERVE_API_KEYS", "alpha beta\ngamma,alpha")
    assert load_settings().api_keys == ["alpha", "beta", "gamma"]


def test_api_keys_in_yaml_are_stripped_and_deduplicated(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("api_keys:\n  - ' alpha '\n  - beta\n  - alpha\n")
    assert load_settings(cfg).api_keys == ["alpha", "beta"]


def test_a_blank_api_key_in_yaml_is_refused_not_taken_as_no_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("api_keys:\n  - alpha\n  - ''\n")
    with pytest.raises(ConfigError, match=r"api_keys.*blank"):
        load_settings(cfg)


def test_allowed_hosts_from_environment_are_separated_by_commas_and_normalised(monkeypatch):
    monkeypatch.setenv("FLUXSERVE_SERVER__ALLOWED_HOSTS", "flux.lan, *.Example.org [::1]")
    assert load_settings().server.allowed_hosts == ["flux.lan", "*.example.org", "::1"]


@pytest.mark.parametrize("entry", ["http://flux.lan", "flux.lan:8000", "bad*name", " "])
def test_an_allowed_host_that_is_not_a_host_name_is_refused_naming_the_field(tmp_path, entry):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"server:\n  allowed_hosts: ['{entry}']\n")
    with pytest.raises(ConfigError, match=r"server\.allowed_hosts"):
        load_settings(cfg)


@pytest.mark.parametrize("entry", ["-flux.lan", "flux-.lan", "a" * 64 + ".lan", "flux..lan"])
def test_a_malformed_host_name_is_refused_by_both_allowed_hosts_settings(entry):
    with pytest.raises(ConfigError) as refused:
        load_settings(server={"allowed_hosts": [entry]}, input_images={"allowed_hosts": [entry]})

    assert "server.allowed_hosts" in str(refused.value)
    assert "input_images.allowed_hosts" in str(refused.value)


def test_an_internationalised_allowed_host_is_kept_in_its_idna_form():
    assert load_settings(server={"allowed_hosts": ["Bücher.example."]}).server.allowed_hosts == [
        "xn--bcher-kva.example"
    ]


def test_arguments_override_environment(monkeypatch):
    monkeypatch.setenv("FLUXSERVE_PORT", "9002")
    assert load_settings(port=9003).port == 9003


def test_unknown_key_is_a_clear_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("limits:\n  request_per_minute: 5\n")
    with pytest.raises(ConfigError, match=r"limits\.request_per_minute"):
        load_settings(cfg)


def test_bad_value_names_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  offload: sometimes\n")
    with pytest.raises(ConfigError, match=r"model\.offload"):
        load_settings(cfg)


def test_allowed_hosts_entries_of_every_form_load(tmp_path):
    entries = [
        "images.internal",
        "*.corp.example:443",
        "10.0.0.5:8080",
        "10.0.0.0/8:443",
        "::1",
        "[::1]:8080",
        "fd00::/8",
        "[fd00::/8]:443",
    ]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("input_images:\n  allowed_hosts:\n" + "".join(f"    - '{e}'\n" for e in entries))
    assert load_settings(cfg).input_images.allowed_hosts == entries


@pytest.mark.parametrize(
    "entry", ["127.0.0.1:18090:1", "10.0.0.0/33", "images.internal:http", "[10.0.0.1]:80"]
)
def test_malformed_allowed_hosts_entry_is_refused_at_load_naming_the_key_and_entry(tmp_path, entry):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"input_images:\n  allowed_hosts:\n    - 127.0.0.1\n    - '{entry}'\n")
    with pytest.raises(ConfigError, match=rf"input_images\.allowed_hosts: .*{re.escape(repr(entry))}"):
        load_settings(cfg)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


CONFIGS = ROOT / "configs"
SHIPPED_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("compose."))
COMPOSE_FILES = sorted(p.name for p in (ROOT / "configs").glob("compose.*.yaml"))


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_every_shipped_config_loads(name):
    load_settings(ROOT / "configs" / name)


def test_the_cluster_config_takes_its_secrets_from_the_environment(monkeypatch):
    url = "postgresql://fluxserve:secret@db.internal:5432/fluxserve"
    monkeypatch.setenv("FLUXSERVE_STORE_URL", url)
    monkeypatch.setenv("FLUXSERVE_OUTPUTS__S3__ACCESS_KEY_ID", "id")
    monkeypatch.setenv("FLUXSERVE_OUTPUTS__S3__SECRET_ACCESS_KEY", "secret")

    s = load_settings(ROOT / "configs" / "cluster.yaml")

    assert s.store_url == url
    assert (s.outputs.backend, s.outputs.s3.access_key_id) == ("s3", "id")
    assert s.limits.storage_uri.startswith("redis://")


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_a_compose_file_runs_the_roles_on_a_shipped_config(name):
    """Parsed only: `docker compose config` is not run in the tests."""
    import yaml

    services = yaml.safe_load((ROOT / "configs" / name).read_text())["services"]
    roles = {n: s for n, s in services.items() if s.get("command", [None])[0] == "fluxserve"}
    apis = [s for s in roles.values() if s["command"][1] == "serve"]
    workers = [s for s in roles.values() if s["command"][1] == "worker"]

    assert apis and all("--no-workers" in s["command"] for s in apis)
    assert workers and all(s["deploy"]["resources"]["reservations"]["devices"] for s in workers)
    for service in roles.values():
        config = service["command"][service["command"].index("--config") + 1]
        mounted = next(v.split(":")[0] for v in service["volumes"] if v.split(":")[1] == config)
        assert mounted.removeprefix("./") in SHIPPED_CONFIGS


@pytest.mark.parametrize(
    "store_url",
    ["~/db/x.db", "sqlite:///~/db/x.db", "sqlite:///~/db/x.db?synchronous=NORMAL", "db/../db/x.db"],
)
def test_the_store_opens_the_one_file_keys_deliveries_and_the_lock_name(tmp_path, monkeypatch, store_url):
    from server.store import open_store

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path / "home")  # a relative path is taken from the working directory
    settings = load_settings(store_url=store_url)

    store = open_store(settings.resolved_store_url)
    store.close()

    assert settings.db_path == tmp_path / "home" / "db" / "x.db"
    assert store.path == settings.db_path
    assert not (tmp_path / "home" / "~").exists()


def test_public_url_builds_absolute_urls():
    assert load_settings(public_url="https://flux.example.com/").base_url == "https://flux.example.com"
    assert load_settings(host="0.0.0.0", port=8123).base_url == "http://127.0.0.1:8123"


def test_tls_makes_the_default_public_url_https(tmp_path):
    cert, key = self_signed_cert(tmp_path)

    settings = load_settings(port=8443, tls={"certfile": cert, "keyfile": key})

    assert settings.base_url == "https://127.0.0.1:8443"
    assert load_settings(port=8443).base_url == "http://127.0.0.1:8443"


def test_tls_certfile_without_keyfile_is_a_clear_error(tmp_path):
    cert, _ = self_signed_cert(tmp_path)
    with pytest.raises(ConfigError, match=r"tls: .*give both or neither"):
        load_settings(tls={"certfile": cert})


def test_tls_file_that_does_not_exist_is_named(tmp_path):
    cert, _ = self_signed_cert(tmp_path)
    with pytest.raises(ConfigError, match=r"tls: .*keyfile .*nope\.pem does not exist"):
        load_settings(tls={"certfile": cert, "keyfile": str(tmp_path / "nope.pem")})


def test_tls_key_that_is_not_the_certificates_is_refused(tmp_path):
    cert, _ = self_signed_cert(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = self_signed_cert(tmp_path / "other")
    with pytest.raises(ConfigError, match=r"tls: .*cannot use the certificate and key"):
        load_settings(tls={"certfile": cert, "keyfile": other_key})


def test_serve_with_a_key_that_is_not_the_certificates_exits_2_naming_tls(tmp_path):
    cert, _ = self_signed_cert(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = self_signed_cert(tmp_path / "other")
    fluxserve = str(Path(sys.executable).with_name("fluxserve"))

    done = subprocess.run(
        [fluxserve, "serve", "--port", "1", "--ssl-certfile", cert, "--ssl-keyfile", other_key],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )

    assert done.returncode == 2
    assert "tls" in done.stderr and "cannot use the certificate and key" in done.stderr


def test_tls_files_under_a_tilde_are_kept_as_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    self_signed_cert(tmp_path)

    tls = load_settings(tls={"certfile": "~/cert.pem", "keyfile": "~/key.pem"}).tls

    assert (tls.certfile, tls.keyfile) == (str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))


@pytest.mark.heavy  # over ~15 s: the second pass (scripts/test.sh -m heavy)
def test_serve_with_tls_files_under_a_tilde_speaks_https(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the server's home too (LiveServer passes the environment)
    self_signed_cert(tmp_path)

    tls = ("~/cert.pem", "~/key.pem")

    with LiveServer(tmp_path / "data", "auto", workers={"count": 0}, tls=tls) as server:
        server.start(wait=None)

        assert server.http.get("/health-check").status_code == 200


def test_an_encrypted_keyfile_without_its_password_is_a_clear_error(tmp_path):
    cert, key = self_signed_cert(tmp_path, password="s3cret")

    with pytest.raises(ConfigError, match=r"tls: .*keyfile .*key\.pem is encrypted: .*tls\.keyfile_password"):
        load_settings(tls={"certfile": cert, "keyfile": key})


def test_an_encrypted_keyfile_with_a_wrong_password_is_a_clear_error(tmp_path):
    cert, key = self_signed_cert(tmp_path, password="s3cret")

    with pytest.raises(ConfigError, match=r"tls: .*cannot use the certificate and key \(is tls\.keyfile_pa"):
        load_settings(tls={"certfile": cert, "keyfile": key, "keyfile_password": "wrong"})


@pytest.mark.heavy  # over ~15 s: the second pass (scripts/test.sh -m heavy)
def test_serve_with_an_encrypted_keyfile_and_its_password_speaks_https(tmp_path):
    tls = self_signed_cert(tmp_path, password="s3cret")
    env = {"FLUXSERVE_TLS__KEYFILE_PASSWORD": "s3cret"}

    with LiveServer(tmp_path / "data", "auto", workers={"count": 0}, tls=tls, env=env) as server:
        server.start(wait=None)

        assert server.http.get("/health-check").status_code == 200
        assert "s3cret" not in server.log_text()


def test_readme_documents_every_config_key():
    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_reference.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    readme = (ROOT / "README.md").read_text()
    missing = [
        line.split("`")[1] for line in table.splitlines()[2:] if line.split("|")[1].strip() not in readme
    ]
    assert not missing, f"README.md lacks config keys (rerun scripts/config_reference.py): {missing}"


def _slots(monkeypatch, env: str | None, **workers):
    if env is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    settings = load_settings(workers=workers) if workers else load_settings()
    sup = Supervisor.__new__(Supervisor)
    sup.settings = settings
    return sup.plan_slots()


def test_auto_workers_pin_one_per_visible_gpu_keeping_physical_ids(monkeypatch):
    assert _slots(monkeypatch, "2,3") == [(0, "2"), (1, "3")]


def test_auto_workers_on_a_machine_without_gpus_start_one_cpu_worker(monkeypatch):
    assert _slots(monkeypatch, "") == [(0, None)]


def test_explicit_worker_count_shares_gpus_round_robin(monkeypatch):
    assert _slots(monkeypatch, "0,1", count=3) == [(0, "0"), (1, "1"), (2, "0")]


def test_the_docker_image_keeps_the_tiny_model_cache_in_a_volume():
    """The image is not built in CI; read it: a cache in the container's layer is rebuilt by
    every new container, one in a volume is kept."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    cache = re.search(r"^\s*XDG_CACHE_HOME=(\S+)", dockerfile, re.MULTILINE)
    volumes = re.search(r"^VOLUME \[(.*)\]", dockerfile, re.MULTILINE)

    assert cache and volumes
    assert any(Path(cache[1]).is_relative_to(v.strip(' "')) for v in volumes[1].split(","))


def test_the_adapter_settings_default_under_the_data_folder(tmp_path):
    config = Settings(data_dir=str(tmp_path)).adapter_files_config()
    assert (config.adapter_dir, config.cache_dir) == (str(tmp_path / "loras"), str(tmp_path / "lora-cache"))
    assert (config.cache_max_bytes, config.max_download_bytes) == (20 * 2**30, 2048 * 2**20)
    assert (config.allow_http, config.hub_downloads, config.civitai_token) == (False, False, None)


def test_adapter_downloads_take_the_image_egress_policy_and_the_civitai_token(tmp_path, monkeypatch):
    import pickle

    monkeypatch.setenv("FLUXSERVE_LORAS__CIVITAI_TOKEN", "tok-123")
    settings = Settings(
        data_dir=str(tmp_path),
        input_images={"allow_private_addresses": True, "allowed_hosts": ["10.0.0.0/8"]},
        loras={"cache_max_gb": 0.5, "max_download_mb": 10},
    )
    config = settings.adapter_files_config()
    assert (config.allow_private_addresses, config.allowed_hosts) == (True, ("10.0.0.0/8",))
    assert (config.cache_max_bytes, config.max_download_bytes) == (2**29, 10 * 2**20)
    assert config.civitai_token == "tok-123" and "tok-123" not in repr(config)
    assert pickle.loads(pickle.dumps(config)) == config  # handed to the worker process


def test_a_civitai_base_url_that_is_not_http_is_refused():
    with pytest.raises(ConfigError, match="loras.civitai_base_url"):
        load_settings(loras={"civitai_base_url": "civitai.com"})


# -- several models ------------------------------------------------------------------------------


def _config_error(tmp_path, text: str) -> str:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    (line,) = str(exc.value).splitlines()[1:]  # one line saying what is wrong
    return line


def test_one_model_section_is_the_one_configured_model_and_the_environment_still_overrides_it(
    tmp_path, monkeypatch
):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  weights: /models/a\n  defaults: {num_inference_steps: 20}\n")
    monkeypatch.setenv("FLUXSERVE_MODEL__WEIGHTS", "/models/b")

    (spec,) = load_settings(cfg).model_specs

    assert (spec.name, spec.family, spec.weights, spec.defaults) == (
        "flux-dev",
        "flux-dev",
        "/models/b",
        {"num_inference_steps": 20},
    )


def test_models_lists_each_model_with_its_family_and_gpus():
    specs = load_settings(ROOT / "configs" / "two-models.yaml").model_specs

    assert [(s.name, s.family, s.gpus) for s in specs] == [
        ("flux-dev", "flux-dev", [0]),
        ("flux-schnell", "flux-schnell", [1]),
    ]
    assert [s.slugs for s in specs] == [["flux-dev", "black-forest-labs-flux-dev-lora"], ["flux-schnell"]]


def test_a_flux_schnell_model_is_named_flux_schnell_unless_it_says_otherwise():
    (spec,) = load_settings(models=[{"family": "flux-schnell"}]).model_specs
    assert (spec.name, spec.lora, spec.slugs) == ("flux-schnell", False, ["flux-schnell"])


def test_model_and_models_together_is_a_config_error(tmp_path):
    line = _config_error(tmp_path, "model:\n  weights: auto\nmodels:\n  - weights: auto\n")
    assert "model and models: give one" in line


def test_two_models_answering_to_one_slug_is_a_config_error(tmp_path):
    line = _config_error(tmp_path, "models:\n  - name: flux-dev\n  - name: flux-dev\n    lora: false\n")
    assert line.startswith("  models:") and "'flux-dev'" in line


def test_two_flux_dev_models_may_not_both_take_the_lora_face(tmp_path):
    line = _config_error(tmp_path, "models:\n  - name: flux-dev\n  - name: flux-dev-portraits\n")
    assert "'black-forest-labs-flux-dev-lora'" in line


def test_a_lora_face_on_flux_schnell_is_a_config_error(tmp_path):
    line = _config_error(tmp_path, "models:\n  - family: flux-schnell\n    lora: true\n")
    assert line.startswith("  models.0:") and "flux-schnell serves no LoRA face" in line


def test_a_model_with_both_gpus_and_workers_is_a_config_error(tmp_path):
    line = _config_error(tmp_path, "model:\n  gpus: [0]\n  workers: 2\n")
    assert "gpus and workers: give one" in line


def _plan(**settings) -> list[tuple[int, str | None, str]]:
    sup = Supervisor.__new__(Supervisor)
    sup.settings = load_settings(**settings)
    return [(index, gpu, spec.name) for index, gpu, spec in sup.slot_plan()]


def test_each_model_gets_one_worker_per_gpu_it_lists():
    models = [{"name": "flux-dev", "gpus": [0, 2]}, {"family": "flux-schnell", "gpus": [1]}]
    assert _plan(models=models) == [(0, "0", "flux-dev"), (1, "2", "flux-dev"), (2, "1", "flux-schnell")]


def test_a_model_without_gpus_gets_its_workers_count_or_one():
    models = [
        {"name": "flux-dev", "workers": 2, "device": "cpu"},
        {"family": "flux-schnell", "device": "cpu"},
    ]
    assert _plan(models=models) == [(0, None, "flux-dev"), (1, None, "flux-dev"), (2, None, "flux-schnell")]


def test_no_worker_for_any_model_with_workers_count_zero():
    assert _plan(models=[{"name": "flux-dev"}, {"family": "flux-schnell"}], workers={"count": 0}) == []


def test_one_model_alone_keeps_the_workers_count_rule(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert _plan(workers={"count": 3}) == [(0, "0", "flux-dev"), (1, "1", "flux-dev"), (2, "0", "flux-dev")]


def test_an_openai_model_alias_takes_a_configured_model():
    assert load_settings(openai={"model_aliases": {"dall-e-3": "flux-dev"}}).openai.model_aliases == {
        "dall-e-3": "flux-dev"
    }


def test_an_openai_model_alias_for_a_model_not_configured_is_refused_naming_both():
    with pytest.raises(ConfigError, match=r"'dall-e-3' stands for 'flux-pro'"):
        load_settings(openai={"model_aliases": {"dall-e-3": "flux-pro"}})
