"""`kaixu ca init|export|rotate` and `kaixu env CLIENT`, run as users run them (a subprocess): the CA is kept in the
store's folder with its private key 0600 and never printed; `env` prints lines that point at the policy's forward
listener and the CA files that exist."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

POLICY = {
    "version": 1,
    "listen": [{"port": 4000}, {"host": "127.0.0.1", "port": 8888, "mode": "forward"}],
    "store": {"sqlite": "state/kaixu.db"},
    "providers": {"mock": {"kind": "mock"}},
    "models": {"mock-model": {"route": [{"provider": "mock"}]}},
}


def kaixu(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kaixu", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(POLICY))
    return tmp_path


def fingerprint(pem: bytes) -> str:
    return "sha256:" + x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()


def test_init_export_rotate(folder: Path) -> None:
    made = kaixu("ca", "init", cwd=folder)
    assert made.returncode == 0, made.stderr
    ca_dir = folder / "state" / "kaixu-ca"  # the store's folder (store.sqlite's)
    key_file, cert_file = ca_dir / "mitmproxy-ca.pem", ca_dir / "mitmproxy-ca-cert.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert (ca_dir / "mitmproxy-ca.p12").stat().st_mode & 0o777 == 0o600
    first = fingerprint(cert_file.read_bytes())
    assert first in made.stdout and "PRIVATE KEY" not in made.stdout + made.stderr

    again = kaixu("ca", "init", cwd=folder)  # kept, not replaced
    assert again.returncode == 0 and first in again.stdout

    exported = kaixu("ca", "export", cwd=folder)
    assert exported.returncode == 0
    assert exported.stdout.count("BEGIN CERTIFICATE") == 1 and "PRIVATE" not in exported.stdout
    assert fingerprint(exported.stdout.encode()) == first
    bundle = kaixu("ca", "export", "--with-roots", cwd=folder).stdout
    assert bundle.count("BEGIN CERTIFICATE") > 50 and bundle.rstrip().endswith(exported.stdout.rstrip())

    rotated = kaixu("ca", "rotate", cwd=folder)
    assert rotated.returncode == 0
    second = fingerprint(cert_file.read_bytes())
    assert second != first and second in rotated.stdout
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert (ca_dir / "bundle.pem").read_text().rstrip().endswith(cert_file.read_text().rstrip())


def test_export_without_a_ca_says_how_to_make_one(folder: Path) -> None:
    done = kaixu("ca", "export", cwd=folder)
    assert done.returncode == 1 and "kaixu ca init" in done.stderr


@pytest.mark.parametrize(
    ("client", "wanted"),
    [
        ("claude-code", {"HTTPS_PROXY", "NODE_EXTRA_CA_CERTS", "ANTHROPIC_API_KEY"}),
        ("gemini-cli", {"HTTPS_PROXY", "NODE_EXTRA_CA_CERTS", "GEMINI_API_KEY"}),
        ("codex", {"HTTPS_PROXY", "CODEX_CA_CERTIFICATE"}),
        ("python", {"HTTPS_PROXY", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"}),
        ("node", {"HTTPS_PROXY", "NODE_USE_ENV_PROXY", "NODE_EXTRA_CA_CERTS"}),
        ("curl", {"HTTPS_PROXY", "CURL_CA_BUNDLE"}),
    ],
)
def test_env_prints_lines_to_paste(folder: Path, client: str, wanted: set[str]) -> None:
    done = kaixu("env", client, "--key", "sk-kaixu-abc", cwd=folder)
    assert done.returncode == 0, done.stderr
    exports = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in done.stdout.splitlines()
        if line.startswith("export ")
    )
    assert wanted <= exports.keys()
    assert exports["HTTPS_PROXY"] == "http://app:sk-kaixu-abc@127.0.0.1:8888"
    for name, value in exports.items():
        if name.endswith(("CERTS", "FILE", "BUNDLE", "CERTIFICATE")):
            assert Path(value).is_file(), (name, value)  # a file that exists: the CA (or the bundle) was made


def test_env_without_a_forward_listener(tmp_path: Path) -> None:
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump({**POLICY, "listen": [{"port": 4000}]}))
    done = kaixu("env", "curl", cwd=tmp_path)
    assert done.returncode == 1 and "forward listener" in done.stderr
    assert kaixu("env", "curl", "--proxy", "127.0.0.1:9999", cwd=tmp_path).returncode == 0


def test_workers_refuse_a_forward_listener(folder: Path) -> None:
    """`--workers N` serves only reverse listeners (its own SO_REUSEPORT sockets): a forward one is refused, not
    silently left closed."""
    done = kaixu("run", "--workers", "2", cwd=folder)
    assert done.returncode == 1 and "forward listeners" in done.stderr
