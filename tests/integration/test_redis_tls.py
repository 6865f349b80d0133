"""Redis over TLS (``rediss://``): a Debian redis-server started with a TLS port only, a test CA and a
server certificate made here with openssl. The store works through it; a client that does not trust
the CA, or speaks plaintext, is refused."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest
import redis

from models.engine import Engine
from models.store import RedisStore
from tests.conftest import _free_port
from tests.models.test_engine import CFG, batch, run

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("redis-server") is None,
                                 reason="needs openssl and redis-server (deploy/redis.sh install)")]


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificates(folder, name: str) -> None:
    """``{name}-ca.pem`` and a ``server.pem``/``server.key`` it signed for 127.0.0.1."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-ca.key", "-out",
             f"{name}-ca.pem", "-days", "2", "-subj", f"/CN={name} test CA", cwd=folder)
    if name != "server":
        return
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=folder)
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", f"{name}-ca.pem", "-CAkey", f"{name}-ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=folder)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    """(port, folder with server-ca.pem and other-ca.pem) of a TLS-only redis-server."""
    folder = tmp_path_factory.mktemp("redis-tls")
    _certificates(folder, "server")
    _certificates(folder, "other")
    port = _free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "server.pem", "--tls-key-file", "server.key", "--tls-ca-cert-file",
         "server-ca.pem", "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir",
         str(folder)],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server with TLS did not start (exit {process.poll()})")
                time.sleep(0.1)
        yield port, folder
    finally:
        process.terminate()
        process.wait(10)


def test_states_are_written_and_read_over_tls(tls_redis):
    port, folder = tls_redis
    store = RedisStore(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={folder / 'server-ca.pem'}", "attnflow-tls")
    try:
        result = run(Engine(CFG, store),
                     batch([("u", "a", "view", 1.0, "default"), ("u", "b", "click", 2.0, "search")]))
        assert len(result.feedback) == 2
        assert store.read_state("u") is not None and store.item_ids() == ["a", "b"]
        again = Engine(CFG, store).process(batch([("u", "a", "view", 1.0, "default")]))
        assert again.replayed == 1   # the fence read back through TLS
    finally:
        store.clear()
        store.close()


def test_an_untrusted_certificate_and_plaintext_are_refused(tls_redis):
    port, folder = tls_redis
    untrusted = RedisStore(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={folder / 'other-ca.pem'}",
                           "attnflow-tls")
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        untrusted.n_items()
    untrusted.close()
    plaintext = RedisStore(f"redis://127.0.0.1:{port}/0", "attnflow-tls")
    with pytest.raises(redis.ConnectionError):
        plaintext.n_items()
    plaintext.close()
