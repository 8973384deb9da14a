"""Where requests go and how: every endpoint setting, resolved once on the driver.

The OpenAI SDK reads its settings (base URL, organization, project, Azure endpoint,
api-version, extra headers, proxies, CA files) from the environment of the process that
builds the client. On a cluster that process is an adapter on some node, whose
environment is not the user's: an ``OPENAI_BASE_URL`` set on the driver would be ignored
and the prompts, and the key, sent to api.openai.com. So the driver resolves everything
into an ``EndpointSettings`` and hands it to the adapters, which never read their own
environment for it. Secrets travel as ``SecretStr``: the key, header values (a gateway's
token), the proxy URL (it may carry a password).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

DEFAULT_BASE_URL = "https://api.openai.com/v1"  # the SDK's default endpoint
DEFAULT_TIMEOUT_S = 600.0  # the SDK's default per request
DEFAULT_CONNECT_TIMEOUT_S = 5.0  # the SDK's default connect timeout
MAX_RESPONSE_BYTES = 32 * 2**20
"""An answer larger than this (after decompression) is an error, not a memory spike. Real
answers are KiB; a batch of a thousand float embeddings is ~30 MB (``--max-response-mb``)."""


class AzureSettings(BaseModel):
    """Azure OpenAI, as ``AsyncAzureOpenAI`` takes it: the request's ``model`` names the
    deployment unless one deployment is fixed here."""

    model_config = ConfigDict(frozen=True)

    endpoint: str = Field(min_length=1, description="https://NAME.openai.azure.com")
    api_version: str = Field(min_length=1)
    deployment: str | None = None


class EndpointSettings(BaseModel):
    """Everything an adapter needs to reach one endpoint, explicit, with no environment left to read."""

    model_config = ConfigDict(frozen=True)

    base_url: str = Field(default=DEFAULT_BASE_URL, repr=False)  # may hold user:password; see display_url
    """For Azure, unused: ``azure.endpoint`` and the deployment make the URL, as in the SDK."""
    api_key: SecretStr
    organization: str | None = None
    project: str | None = None
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    """Extra default headers (``--header``, ``OPENAI_CUSTOM_HEADERS``); values may be tokens."""
    query: dict[str, str] = Field(default_factory=dict)
    """Default query parameters, sent with every request (a base URL's own query lands here)."""
    azure: AzureSettings | None = None
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0)
    connect_timeout_s: float = Field(default=DEFAULT_CONNECT_TIMEOUT_S, gt=0)
    ca_pem: str | None = Field(default=None, repr=False)
    """CA certificates to trust instead of the system's (``--ca-file``, ``SSL_CERT_FILE``), as PEM text:
    the driver reads the file, since a worker node may not have it."""
    proxy_url: SecretStr | None = None
    """The proxy for this endpoint (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` less ``NO_PROXY``)."""
    max_response_bytes: int = Field(default=MAX_RESPONSE_BYTES, gt=0)

    @field_validator("api_key")
    @classmethod
    def _key_given(cls, key: SecretStr) -> SecretStr:
        if not key.get_secret_value():
            raise ValueError("no API key")
        return key

    @field_validator("headers")
    @classmethod
    def _headers_fit_for_http(cls, headers: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, value in headers.items():
            if not name or any(char in name for char in ":\r\n ") or any(char in value.get_secret_value() for char in "\r\n"):
                raise ValueError(f"header {name!r}: a name without ':' or spaces and a value on one line")
        return headers

    @model_validator(mode="before")
    @classmethod
    def _query_out_of_base_url(cls, data: Any) -> Any:
        """``https://gw/v1?api-version=X`` means "send api-version=X": the SDK would glue the
        path after the query, so the query moves to ``query`` (explicit entries win)."""
        if not isinstance(data, dict) or not isinstance(data.get("base_url"), str):
            return data
        parts = urlsplit(data["base_url"])
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base URL must be http(s)://host/..., not {_safe_url(data['base_url'])!r}")
        if not parts.query:
            return data
        query = {**dict(parse_qsl(parts.query, keep_blank_values=True)), **(data.get("query") or {})}
        return {**data, "base_url": urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), "query": query}

    @property
    def display_url(self) -> str:
        """The endpoint fit to show and to name a limit pool: no credentials, no query."""
        if self.azure is not None:
            deployment = f"/deployments/{self.azure.deployment}" if self.azure.deployment else ""
            return _safe_url(f"{self.azure.endpoint.rstrip('/')}/openai{deployment}")
        return _safe_url(self.base_url)

    @property
    def pool_label(self) -> str:
        """What makes two settings different limit pools besides key and model, never a secret."""
        identity = [f"organization={self.organization}"] if self.organization else []
        identity += [f"project={self.project}"] if self.project else []
        return " ".join([self.display_url, *identity])


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
