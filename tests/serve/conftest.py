"""Gateway fixtures: a real digits model, real uvicorn servers on loopback (in threads, on
sockets bound before they start), and a real redis-server on a free loopback port."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pytest
import uvicorn
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from bastion.models.classifier import as_classifier
from bastion.serve.app import GatewayConfig, create_app
from bastion.serve.auth import KeyFile, KeyRing
from bastion.serve.backend import LocalBackend, local_schema
from bastion.serve.store import MemoryStore


@dataclass(frozen=True)
class Digits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    model: LogisticRegression
    path: Path


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1000], order[1000:]
    model = LogisticRegression(max_iter=3000).fit(x[train], y[train])
    path = tmp_path_factory.mktemp("model") / "digits.joblib"
    joblib.dump(model, path)
    return Digits(x[train], y[train], x[test], y[test], model, path)


@pytest.fixture
def keyfile(tmp_path: Path) -> KeyFile:
    return KeyFile.load(tmp_path / "keys.json", create=True)


def new_key(keyfile: KeyFile, name: str = "client", **options) -> str:
    """Create a key, save the file, return the token."""
    _, token = keyfile.create(name, **options)
    keyfile.save()
    return token


def digits_backend(digits: Digits) -> LocalBackend:
    classifier = as_classifier(digits.model)
    return LocalBackend("digits", classifier, local_schema(classifier, None, (0.0, 16.0)))


@contextlib.contextmanager
def running(app, host: str = "127.0.0.1", **ssl):
    """Serve `app` with uvicorn in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this; without it a pre-bound socket answers every
    # request 40 ms late (Nagle against the client's delayed ACK).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", **ssl)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    scheme = "https" if ssl else "http"
    try:
        yield f"{scheme}://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextlib.contextmanager
def gateway(digits: Digits, keyfile: KeyFile, store=None, **config):
    app = create_app(digits_backend(digits), KeyRing(keyfile.path), store or MemoryStore(),
                     GatewayConfig(**config))
    with running(app) as url:
        yield url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """A real redis-server on loopback, no persistence; the tests fail (never skip) when
    redis-server is missing: `.ci/run` installs it."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (apt-get install redis-server)"
    port = _free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly",
         "no", "--dir", str(folder), "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    client.close()
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)


@pytest.fixture
def make_key(keyfile: KeyFile):
    """make_key(name, **options) -> token, saved in the key file the gateways read."""
    return lambda name="client", **options: new_key(keyfile, name, **options)


@pytest.fixture
def start_gateway(digits: Digits, keyfile: KeyFile):
    """start_gateway(store=None, **GatewayConfig fields) -> base URL; stopped after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda store=None, **config: stack.enter_context(
            gateway(digits, keyfile, store, **config)
        )


@pytest.fixture
def serve_app():
    """serve_app(app, **ssl) -> base URL of any ASGI app on loopback."""
    with contextlib.ExitStack() as stack:
        yield lambda app, **ssl: stack.enter_context(running(app, **ssl))


@pytest.fixture
def gateway_app(digits: Digits, keyfile: KeyFile):
    """gateway_app(store=None, **GatewayConfig fields) -> the ASGI app, not yet served."""
    return lambda store=None, **config: create_app(
        digits_backend(digits), KeyRing(keyfile.path), store or MemoryStore(),
        GatewayConfig(**config),
    )
