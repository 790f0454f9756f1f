"""Configuration: every field documented in the example; bad files say file, field, problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from gateway import config as cfg
from gateway.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "gateway.example.yaml"


def _models(model: type[BaseModel]) -> set[type[BaseModel]]:
    found = {model}
    for field in model.model_fields.values():
        for candidate in (*getattr(field.annotation, "__args__", ()), field.annotation):
            inner = getattr(candidate, "__args__", (candidate,))
            for kind in (candidate, *inner):
                if isinstance(kind, type) and issubclass(kind, BaseModel) and kind not in found:
                    found |= _models(kind)
    return found


def test_the_example_documents_every_field() -> None:
    text = EXAMPLE.read_text()
    missing = sorted(
        f"{model.__name__}.{name}"
        for model in _models(cfg.GatewayConfig)
        for name in model.model_fields
        if f"{name}:" not in text and f"{name}=" not in text and f"{{{name}" not in text
    )
    assert missing == []


def test_the_example_shows_each_default_or_says_where_it_does_not() -> None:
    """The header's promise: a value is the field's default unless its line says ``default:``
    (an example value, such as the Redis backend a multi-replica deployment needs)."""
    lines = EXAMPLE.read_text().splitlines()
    example = yaml.safe_load(EXAMPLE.read_text())
    sections = [(example[name], cfg.GatewayConfig.model_fields[name].annotation, name)
                for name in ("server", "upstream", "limiter", "queue", "calibration", "usage",
                             "logging", "metrics", "admin")]  # fmt: skip
    sections += [(t, cfg.TenantConfig, f"tenants.{n}") for n, t in example["tenants"].items()]
    unsaid = []
    for values, model, where in sections:
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        for name, value in values.items():
            field = model.model_fields[name]
            if isinstance(value, dict | list) or field.is_required() or value is None:
                continue
            default = field.get_default(call_default_factory=True)
            if value == default or default is None:  # an optional setting, shown set
                continue
            line = next(line for line in lines if line.strip().startswith(f"{name}:"))
            if "default:" not in line:
                unsaid.append(f"{where}.{name}: {value!r} (default {default!r})")
    assert unsaid == []


@pytest.mark.parametrize("path", ["config/gateway.example.yaml", "config/demo.yaml"])
def test_shipped_configs_are_valid(path: str) -> None:
    cfg.load_config(ROOT / path)


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [("accounts: {}\nmodels: {m: {model_id: x, routes: []}}\n", "models.m.routes", "at least 1"),
     ("accounts: {a: {}}\nmodels: {m: {model_id: x, routes: [{account: b, region: us-east-1}]}}\n",
      "models.m.routes.0.account", "unknown account"),
     ("accounts: {}\nmodels: {}\nlimiter: {backend: redis}\n", "limiter", "redis_url"),
     ("accounts: {}\nmodels: {}\ntenants: {t: {key_sha256: nothex}}\n", "tenants.t.key_sha256",
      "64 lower-case hex"),
     ("accounts: {}\nmodels: {}\nsurprise: 1\n", "surprise", "Extra inputs"),
     ("accounts: {}\nmodels: {}\nserver: {workers: 2}\n", "workers", "backend: redis")],
)  # fmt: skip
def test_bad_files_name_the_file_the_field_and_the_problem(
    tmp_path: Path, text: str, field: str, problem: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert field in message
    assert problem in message


def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match="cannot read"):
        cfg.load_config(tmp_path / "missing.yaml")
    (tmp_path / "x.yaml").write_text("a: [unclosed")
    with pytest.raises(cfg.ConfigError, match="not valid YAML"):
        cfg.load_config(tmp_path / "x.yaml")


def test_check_config_and_serve_exit_2_on_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("accounts: {}\n")
    for argv in (["check-config", str(path)], ["serve", "--config", str(path)]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2
    assert "models: Field required" in capsys.readouterr().err


ENV_FILE = """
accounts: {prod: {access_key_id_env: CHK_AWS_KEY, secret_access_key_env: CHK_AWS_SECRET}}
models: {}
limiter: {backend: redis, redis_url_env: CHK_REDIS_URL}
tenants: {search: {access_keys: [{id: GWAKCHECKCONFIG0001, secret_env: CHK_TENANT_SECRET}]}}
"""


def test_check_config_env_names_every_unset_variable_serve_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(ENV_FILE)
    for name in ("CHK_AWS_KEY", "CHK_AWS_SECRET", "CHK_REDIS_URL", "CHK_TENANT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    assert main(["check-config", str(path)]) == 0  # offline: the file alone is valid
    capsys.readouterr()
    assert main(["check-config", str(path), "--env"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"bedrock-gateway: {path}: limiter.redis_url_env: environment variable CHK_REDIS_URL "
        "is not set",
        f"bedrock-gateway: {path}: accounts.prod.access_key_id_env: environment variable "
        "CHK_AWS_KEY is not set",
        f"bedrock-gateway: {path}: accounts.prod.secret_access_key_env: environment variable "
        "CHK_AWS_SECRET is not set",
        f"bedrock-gateway: {path}: tenants.search.access_keys.0.secret_env: environment "
        "variable CHK_TENANT_SECRET is not set",
    ]
    for name in ("CHK_AWS_KEY", "CHK_AWS_SECRET", "CHK_TENANT_SECRET"):
        monkeypatch.setenv(name, "set")
    monkeypatch.setenv("CHK_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["check-config", str(path), "--env"]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "where"),
    [("queue: {max_wait_s: 30}\n", "queue.max_wait_s"),
     ("tenants: {t: {max_wait_s: 45}}\n", "tenants.t.max_wait_s")],
)  # fmt: skip
def test_queue_deadlines_end_before_the_shutdown_grace(
    tmp_path: Path, extra: str, where: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("accounts: {}\nmodels: {}\nserver: {shutdown_grace_s: 30}\n" + extra)
    with pytest.raises(cfg.ConfigError, match=f"{where} .* must be shorter than"):
        cfg.load_config(path)
