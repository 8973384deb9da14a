"""A throwaway certificate authority (``trustme``) so tests can run HTTPS servers on 127.0.0.1.

Nothing is committed or installed system-wide: each call makes a fresh CA in memory and a
server certificate for the given names. Clients trust it with ``client_context()`` (or
``ssl.create_default_context(cadata=ca_pem)``); code that only takes a file, such as
``SSL_CERT_FILE``, gets one written under a pytest ``tmp_path`` by ``write_ca``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["DEFAULT_HOSTNAMES", "ServerTLS", "make_server_tls"]

DEFAULT_HOSTNAMES = ("127.0.0.1", "localhost", "api.rayfan.test")
"""An IP for direct connections, and a made-up name only ``tests.forward_proxy`` resolves."""


@dataclass(frozen=True)
class ServerTLS:
    server_context: ssl.SSLContext
    """Give this to the server (``MockServer(ssl_context=...)``)."""
    ca_pem: str
    """The CA certificate, PEM: the only thing a client needs to trust the server."""

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context (hostname checks on) that trusts only this CA."""
        return ssl.create_default_context(cadata=self.ca_pem)

    def write_ca(self, directory: Path) -> Path:
        """Write the CA PEM as ``directory/ca.pem`` (use a pytest ``tmp_path``), e.g. for ``SSL_CERT_FILE``."""
        path = directory / "ca.pem"
        path.write_text(self.ca_pem)
        return path


def make_server_tls(*hostnames: str) -> ServerTLS:
    """A new CA and a server certificate for ``hostnames`` (default ``DEFAULT_HOSTNAMES``); IPs become IP SANs."""
    ca = trustme.CA()
    cert = ca.issue_cert(*(hostnames or DEFAULT_HOSTNAMES))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return ServerTLS(server_context=context, ca_pem=ca.cert_pem.bytes().decode())
