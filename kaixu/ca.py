"""kaixu's own certificate authority: what a forward listener signs the providers' hosts with, so that an app
that trusts it (and only such an app) can be intercepted. Kept in `kaixu-ca/` in the store's folder, in
mitmproxy's layout (its TLS addon loads it from there); the private key files are 0600 and never printed or
logged: `kaixu ca export` gives the certificate only. `kaixu ca init|export|rotate`, `/health` and
`kaixu env` read it through here (the files themselves: kaixu/mitm.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from kaixu import mitm
from kaixu.exceptions import KaixuError


class NoCA(KaixuError, FileNotFoundError):
    """The folder holds no CA yet (`kaixu ca init` makes one; `kaixu run` does too, on start)."""


BUNDLE_FILE = "bundle.pem"
"""certifi's roots plus kaixu's CA, for runtimes whose CA variable replaces their roots (`kaixu env`)."""


def bundle_path(folder: str | Path) -> Path:
    return Path(folder) / BUNDLE_FILE


def cert_path(folder: str | Path) -> Path:
    """The CA certificate clients trust (`NODE_EXTRA_CA_CERTS`, `SSL_CERT_FILE`, `--cacert`)."""
    return Path(folder) / mitm.CA_CERT_FILE


def fingerprint(cert: x509.Certificate) -> str:
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def describe(cert: x509.Certificate) -> dict[str, Any]:
    """What `/health` and the CLI say of a CA: never anything of its key."""
    return {
        "fingerprint": fingerprint(cert),
        "subject": cert.subject.rfc4514_string(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def load(folder: str | Path) -> x509.Certificate:
    path = cert_path(folder)
    if not mitm.ca_exists(Path(folder)) or not path.is_file():
        raise NoCA(f"no CA in {folder}: run `kaixu ca init`")
    return x509.load_pem_x509_certificate(path.read_bytes())


def init(folder: str | Path) -> tuple[x509.Certificate, bool]:
    """The folder's CA, made if there is none; and whether it was made now."""
    if mitm.ca_exists(Path(folder)):
        return load(folder), False
    mitm.create_ca(Path(folder))
    write_bundle(folder)
    return load(folder), True


def rotate(folder: str | Path) -> x509.Certificate:
    """A new CA in place of the old (whose files are removed: a rotated key is not kept). A running kaixu signs
    with the CA it loaded until it restarts; every client must trust the new certificate."""
    mitm.remove_ca(Path(folder))
    mitm.create_ca(Path(folder))
    write_bundle(folder)
    return load(folder)


def write_bundle(folder: str | Path) -> Path:
    """(Re)write the bundle of certifi's roots and the CA (public: no key)."""
    path = bundle_path(folder)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(export(folder, with_roots=True))
    tmp.replace(path)
    return path


def export(folder: str | Path, *, with_roots: bool = False) -> bytes:
    """The CA certificate as PEM; `with_roots`: after certifi's roots, a bundle for runtimes whose variable
    replaces the default roots (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`), so that tunnelled hosts still verify."""
    load(folder)
    pem = cert_path(folder).read_bytes()
    if not with_roots:
        return pem
    import certifi

    roots = Path(certifi.where()).read_bytes()
    return roots.rstrip(b"\n") + b"\n" + pem
