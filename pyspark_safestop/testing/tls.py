"""A test certificate, so that the fault toolkit can stand where users meet faults most: behind
TLS (Databricks, a Kubernetes ingress), with a token.

:class:`TestCertificate` makes a self-signed certificate for ``localhost`` and ``127.0.0.1``
with ``openssl``, valid for a day, its key readable by its owner only, in a folder of its own.
A :class:`~pyspark_safestop.testing.faults.FaultProxy` given it terminates TLS; a client
trusts it when its process has ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` pointing at
:attr:`TestCertificate.certificate` before its first channel (:meth:`TestCertificate.client_env`).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ROOTS_ENV", "TestCertificate"]

#: gRPC's variable for the roots it trusts (read once per process, before the first channel).
ROOTS_ENV = "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"
_OPENSSL_TIMEOUT = 60.0


@dataclass(frozen=True)
class TestCertificate:
    """A self-signed certificate and its key, as PEM files in :attr:`folder`."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    folder: Path
    certificate: Path
    key: Path

    @classmethod
    def create(cls, folder: Path | None = None) -> TestCertificate:
        """Make one in ``folder`` (default: a new private temporary folder). Raises
        ``RuntimeError`` naming the problem when ``openssl`` is missing or fails."""
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RuntimeError("a test certificate needs the openssl command (not found)")
        where = (
            Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="safestop-tls-"))
        )
        certificate, key = where / "certificate.pem", where / "key.pem"
        command = [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(certificate),
        ]  # fmt: skip
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=_OPENSSL_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"openssl could not make a test certificate: {proc.stderr[-500:]}")
        key.chmod(0o600)
        return cls(where, certificate, key)

    def server_credentials(self) -> tuple[bytes, bytes]:
        """``(key, certificate)`` as PEM bytes, for ``grpc.ssl_server_credentials``."""
        return self.key.read_bytes(), self.certificate.read_bytes()

    def client_env(self) -> dict[str, str]:
        """What a client process's environment needs to trust this certificate."""
        return {ROOTS_ENV: str(self.certificate)}

    def remove(self) -> None:
        """Remove the folder and its files."""
        shutil.rmtree(self.folder, ignore_errors=True)
