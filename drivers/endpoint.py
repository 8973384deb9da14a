"""Endpoint settings from the command line and the SDK's own environment variables, read once, here.

The variables are the ones the official SDK reads where its client is built
(``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``OPENAI_ORG_ID``, ``OPENAI_PROJECT_ID``,
``OPENAI_CUSTOM_HEADERS``; for Azure ``AZURE_OPENAI_ENDPOINT``, ``AZURE_OPENAI_API_KEY``,
``OPENAI_API_VERSION``), plus the HTTP client's (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``,
``NO_PROXY``, ``SSL_CERT_FILE``/``SSL_CERT_DIR``). A flag wins over its variable. The
adapters get the result and read no environment of their own, so a cluster node's
variables never change where a request goes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import httpx2
from httpx2._utils import URLPattern, get_environment_proxies
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from actors.adapter.settings import DEFAULT_BASE_URL, AzureSettings, EndpointSettings
from actors.errors import ConfigError
from actors.models import describe_validation_error


class EndpointFlags(BaseModel):
    """What the command line (or a library caller) said; None: not given, use the environment."""

    model_config = ConfigDict(frozen=True)

    base_url: str | None = None
    api_key: SecretStr | None = None
    organization: str | None = None
    project: str | None = None
    headers: tuple[str, ...] = ()
    """``Name: value`` each, as ``--header`` takes them."""
    timeout_s: float | None = None
    azure_endpoint: str | None = None
    azure_deployment: str | None = None
    api_version: str | None = None
    ca_file: Path | None = None
    max_response_mb: float | None = None


def resolve_endpoint(flags: EndpointFlags) -> EndpointSettings:
    """Everything the adapters need, from ``flags`` first and this process's environment second."""
    env = os.environ
    azure = _azure(flags, env)
    key = flags.api_key.get_secret_value() if flags.api_key else env.get("AZURE_OPENAI_API_KEY" if azure else "OPENAI_API_KEY")
    if not key:
        variable = "AZURE_OPENAI_API_KEY" if azure else "OPENAI_API_KEY"
        raise ConfigError(f"no API key: set {variable} (read here, on the driver; the adapters get it as a secret)")
    base_url = flags.base_url or env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    target = azure.endpoint if azure else base_url
    headers = {**parse_headers(env.get("OPENAI_CUSTOM_HEADERS", "").split("\n"), strict=False), **parse_headers(flags.headers)}
    fields: dict[str, object] = {
        "base_url": base_url,
        "api_key": key,
        "organization": flags.organization or env.get("OPENAI_ORG_ID"),
        "project": flags.project or env.get("OPENAI_PROJECT_ID"),
        "headers": headers,
        "azure": azure,
        "ca_pem": _ca_pem(flags.ca_file, env),
        "proxy_url": environment_proxy(target),
    }
    if flags.timeout_s is not None:
        fields["timeout_s"] = flags.timeout_s
    if flags.max_response_mb is not None:
        fields["max_response_bytes"] = int(flags.max_response_mb * 2**20)
    try:
        return EndpointSettings.model_validate(fields)
    except ValidationError as err:  # never echo the values: they hold the key
        raise ConfigError(f"endpoint settings: {describe_validation_error(err)}") from None


def describe(settings: EndpointSettings) -> str:
    """The endpoint settings fit for ``-v``: where, through what, trusting what; no secret
    (the proxy without its credentials, header names without their values)."""
    proxy = _display_proxy(settings.proxy_url.get_secret_value()) if settings.proxy_url is not None else "none (direct)"
    certificates = settings.ca_pem.count("BEGIN CERTIFICATE") if settings.ca_pem else 0
    trust = f"{certificates} CA certificates read on the driver" if certificates else "the SDK's CA store"
    extra = ", ".join(sorted(settings.headers)) or "none"
    return (
        f"endpoint: {settings.display_url}; proxy: {proxy}; TLS trusts {trust}; timeout {settings.timeout_s:g} s"
        f" (connect {settings.connect_timeout_s:g} s); extra headers: {extra}"
    )


def _display_proxy(url: str) -> str:
    parts = httpx2.URL(url)
    credentials = " (with credentials)" if parts.userinfo else ""
    return f"{parts.scheme}://{parts.host}{f':{parts.port}' if parts.port else ''}{credentials}"


def parse_headers(lines: tuple[str, ...] | list[str], *, strict: bool = True) -> dict[str, str]:
    """``Name: value`` lines as a dict; ``strict``: a line without a colon is an error (a
    flag), else skipped (the SDK's ``OPENAI_CUSTOM_HEADERS`` rule)."""
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            if strict:
                raise ConfigError(f"--header {name.strip()!r}...: expected 'Name: value'")
            continue
        headers[name.strip()] = value.strip()
    return headers


def environment_proxy(url: str) -> str | None:
    """The proxy the SDK's HTTP client would use for ``url``, by its own rules for the
    ``*_PROXY`` variables and ``NO_PROXY`` (httpx2's, which the SDK runs on)."""
    mounts = sorted((URLPattern(pattern), proxy) for pattern, proxy in get_environment_proxies().items())
    target = httpx2.URL(url)
    return next((proxy for pattern, proxy in mounts if pattern.matches(target)), None)


def _azure(flags: EndpointFlags, env: Mapping[str, str]) -> AzureSettings | None:
    """Azure when asked for, or when the SDK's Azure variables are set and no base URL is."""
    endpoint = flags.azure_endpoint
    if endpoint is None and flags.base_url is None and "AZURE_OPENAI_ENDPOINT" in env:
        if "OPENAI_BASE_URL" in env:
            raise ConfigError("both OPENAI_BASE_URL and AZURE_OPENAI_ENDPOINT are set: choose with --base-url or --azure-endpoint")
        endpoint = env["AZURE_OPENAI_ENDPOINT"]
    if endpoint is None:
        return None
    if flags.base_url is not None:
        raise ConfigError("--base-url and --azure-endpoint name two endpoints: give one")
    api_version = flags.api_version or env.get("OPENAI_API_VERSION")
    if not api_version:
        raise ConfigError("Azure OpenAI needs an API version: --api-version or OPENAI_API_VERSION")
    return AzureSettings(endpoint=endpoint, api_version=api_version, deployment=flags.azure_deployment)


def _ca_pem(ca_file: Path | None, env: Mapping[str, str]) -> str | None:
    """The CA certificates to trust, read here (a worker node may not have the file):
    ``--ca-file``, else ``SSL_CERT_FILE``, else every certificate in ``SSL_CERT_DIR``."""
    if ca_file is None and env.get("SSL_CERT_FILE"):
        ca_file = Path(env["SSL_CERT_FILE"])
    paths = [ca_file] if ca_file is not None else []
    if not paths and env.get("SSL_CERT_DIR"):
        directory = Path(env["SSL_CERT_DIR"])
        paths = sorted(path for path in directory.iterdir() if path.is_file()) if directory.is_dir() else [directory]
    if not paths:
        return None
    texts = []
    for path in paths:
        try:
            texts.append(path.read_text(encoding="ascii"))
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"CA file {path}: {err}") from err
    pem = "\n".join(text for text in texts if "-----BEGIN CERTIFICATE-----" in text)
    if not pem:
        raise ConfigError(f"CA file {paths[0]}: no PEM certificate in it")
    return pem
