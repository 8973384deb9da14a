"""Endpoint settings are read once, on the driver, with the SDK's own variables and rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from actors.accounting.pricing import PriceTable
from actors.adapter.settings import DEFAULT_BASE_URL, EndpointSettings
from actors.errors import ConfigError
from drivers.endpoint import EndpointFlags, resolve_endpoint

SDK_VARIABLES = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "OPENAI_CUSTOM_HEADERS",
    "OPENAI_API_VERSION",
    "AZURE_OPENAI_ENDPOINT",
    "AZURE_OPENAI_API_KEY",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "https_proxy",
    "http_proxy",
    "all_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SDK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_openai_variables_are_read_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://gateway.example/v1")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-env")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-env")
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "X-Team: env\nX-Gone: env\nno colon here")
    settings = resolve_endpoint(EndpointFlags(project="proj-flag", headers=("X-Gone: flag", "X-Token: t0k")))
    assert settings.api_key.get_secret_value() == "sk-env"
    assert settings.base_url == "https://gateway.example/v1" and settings.azure is None
    assert (settings.organization, settings.project) == ("org-env", "proj-flag")
    assert {name: value.get_secret_value() for name, value in settings.headers.items()} == {
        "X-Team": "env",
        "X-Gone": "flag",
        "X-Token": "t0k",
    }
    assert resolve_endpoint(EndpointFlags(base_url="http://127.0.0.1:8000/v1")).base_url == "http://127.0.0.1:8000/v1"


def test_defaults_are_the_sdks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    settings = resolve_endpoint(EndpointFlags())
    assert settings.base_url == DEFAULT_BASE_URL and settings.timeout_s == 600 and settings.connect_timeout_s == 5
    assert settings.proxy_url is None and settings.ca_pem is None and settings.headers == {}


def test_azure_from_the_variables_asyncazureopenai_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://contoso.openai.azure.com")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "az-key")
    monkeypatch.setenv("OPENAI_API_VERSION", "2024-10-21")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-this-one")
    settings = resolve_endpoint(EndpointFlags())
    assert settings.azure is not None and settings.azure.api_version == "2024-10-21" and settings.azure.deployment is None
    assert settings.api_key.get_secret_value() == "az-key"
    assert settings.display_url == "https://contoso.openai.azure.com/openai"
    fixed = resolve_endpoint(EndpointFlags(azure_deployment="prod-4o"))
    assert fixed.display_url == "https://contoso.openai.azure.com/openai/deployments/prod-4o"
    assert resolve_endpoint(EndpointFlags(base_url="http://127.0.0.1:1/v1", api_key=SecretStr("k"))).azure is None, "--base-url wins"


@pytest.mark.parametrize(
    ("variables", "flags", "message"),
    [
        ({}, EndpointFlags(), "no API key: set OPENAI_API_KEY"),
        (
            {"AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com", "OPENAI_API_VERSION": "v", "OPENAI_API_KEY": "sk"},
            EndpointFlags(),
            "AZURE_OPENAI_API_KEY",
        ),
        ({"AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com", "AZURE_OPENAI_API_KEY": "k"}, EndpointFlags(), "API version"),
        (
            {"AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com", "OPENAI_BASE_URL": "https://y/v1", "OPENAI_API_KEY": "k"},
            EndpointFlags(),
            "choose with --base-url or --azure-endpoint",
        ),
        ({"OPENAI_API_KEY": "k"}, EndpointFlags(base_url="https://a/v1", azure_endpoint="https://b"), "give one"),
        ({"OPENAI_API_KEY": "k"}, EndpointFlags(headers=("no-colon",)), "expected 'Name: value'"),
        ({"OPENAI_API_KEY": "k"}, EndpointFlags(base_url="ftp://files.example/v1"), "http(s)://host"),
        ({"OPENAI_API_KEY": "k"}, EndpointFlags(ca_file=Path("/nonexistent/ca.pem")), "CA file /nonexistent/ca.pem"),
    ],
)
def test_settings_that_cannot_work_are_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], flags: EndpointFlags, message: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_endpoint(flags)


def test_a_bad_setting_never_echoes_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    with pytest.raises(ConfigError) as raised:
        resolve_endpoint(EndpointFlags(headers=("X-Bad: a\rb",)))
    assert "sk-very-secret" not in str(raised.value) and "a\rb" not in str(raised.value)


def test_proxy_follows_the_http_clients_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    proxied = resolve_endpoint(EndpointFlags(base_url="https://api.rayfan.test/v1"))
    assert proxied.proxy_url is not None and proxied.proxy_url.get_secret_value() == "http://user:pw@127.0.0.1:3128"
    assert "pw" not in repr(proxied)
    assert resolve_endpoint(EndpointFlags(base_url="https://internal.example/v1")).proxy_url is None, "NO_PROXY"
    assert resolve_endpoint(EndpointFlags(base_url="http://plain.example/v1")).proxy_url is None, "HTTPS_PROXY is for https"


def test_ca_file_is_read_on_the_driver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import trustme

    monkeypatch.setenv("OPENAI_API_KEY", "k")
    pem = trustme.CA().cert_pem.bytes().decode()
    (tmp_path / "ca.pem").write_text(pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    assert resolve_endpoint(EndpointFlags()).ca_pem == pem
    (tmp_path / "other.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="no PEM certificate"):
        resolve_endpoint(EndpointFlags(ca_file=tmp_path / "other.pem"))


def test_a_base_urls_query_becomes_default_query() -> None:
    settings = EndpointSettings(base_url="https://gw.example/v1?api-version=2024-10-21", api_key="k", query={"extra": "1"})
    assert settings.base_url == "https://gw.example/v1"
    assert settings.query == {"api-version": "2024-10-21", "extra": "1"}


def test_nothing_secret_in_the_repr_or_the_pool_label() -> None:
    settings = EndpointSettings(
        base_url="https://user:hunter2@gw.example/v1",
        api_key="sk-abc123",
        organization="org-1",
        project="proj-1",
        headers={"X-Gateway-Token": "gw-secret"},
        proxy_url="http://u:proxypw@127.0.0.1:1",
    )
    shown = repr(settings) + str(settings) + settings.pool_label + settings.display_url
    for secret in ("hunter2", "sk-abc123", "gw-secret", "proxypw"):
        assert secret not in shown
    assert settings.pool_label == "https://gw.example/v1 organization=org-1 project=proj-1"


def test_deployments_and_self_hosted_models_can_be_priced() -> None:
    table = PriceTable.default().with_command_line(["llama-3.1-8b=0.05,0.10"], ["prod-4o=gpt-4o"])
    price = table.lookup("llama-3.1-8b")
    assert price is not None and (price.input, price.output, price.cached_input) == (0.05, 0.10, 0.05)
    assert table.lookup("prod-4o") == table.lookup("gpt-4o")
    assert PriceTable.default().lookup("prod-4o") is None
    with pytest.raises(ConfigError, match="NAME=MODEL"):
        table.with_command_line([], ["prod=not-a-model"])
    with pytest.raises(ConfigError, match="IN,OUT"):
        table.with_command_line(["llama=1"], [])
