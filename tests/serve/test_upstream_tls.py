"""The gateway as a reverse proxy in front of an Open Inference Protocol server, and with
TLS plus client certificates (mutual TLS)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl

import httpx
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI

from bastion.errors import InputError
from bastion.serve.app import GatewayConfig, create_app
from bastion.serve.auth import KeyRing
from bastion.serve.backend import UpstreamBackend
from bastion.serve.store import MemoryStore


def oip_server(model) -> FastAPI:
    """A bare model server speaking the Open Inference Protocol, as KServe or Triton do."""
    upstream = FastAPI()

    @upstream.get("/v2/models/digits")
    def metadata() -> dict:
        return {"name": "digits", "inputs": [{"name": "pixels", "datatype": "FP64",
                                              "shape": [-1, 64]}],
                "outputs": [{"name": "proba", "datatype": "FP64", "shape": [-1, 10]}]}

    @upstream.post("/v2/models/digits/infer")
    def infer(body: dict) -> dict:
        tensor = body["inputs"][0]
        rows = np.asarray(tensor["data"]).reshape(tensor["shape"])
        proba = model.predict_proba(rows)
        return {"outputs": [{"name": "proba", "shape": list(proba.shape), "datatype": "FP64",
                             "data": proba.reshape(-1).tolist()}]}

    return upstream


def test_reverse_proxy_guards_an_upstream_server(serve_app, digits, keyfile, make_key):
    token = make_key()
    upstream_url = serve_app(oip_server(digits.model))
    backend = UpstreamBackend.connect(upstream_url, "digits", (0.0, 16.0), timeout_s=5)
    assert backend.schema.shape == (64,) and backend.n_classes == 10
    url = serve_app(create_app(backend, KeyRing(keyfile.path), MemoryStore(), GatewayConfig()))
    rows = digits.x_test[:4]
    out = httpx.post(url + "/predict", json={"inputs": rows.tolist()},
                     headers={"X-API-Key": token}).json()
    np.testing.assert_allclose(out["probabilities"], digits.model.predict_proba(rows))
    # The proxy checks inputs before the upstream ever sees them.
    assert httpx.post(url + "/predict", json={"inputs": [[99.0] * 64]},
                      headers={"X-API-Key": token}).status_code == 422
    assert httpx.post(url + "/predict", json={"inputs": rows.tolist()}).status_code == 401


def test_upstream_down_is_a_502_and_the_gateway_stays_up(serve_app, digits, keyfile, make_key):
    token = make_key()
    upstream = oip_server(digits.model)
    upstream_url = serve_app(upstream)
    backend = UpstreamBackend.connect(upstream_url, "digits", (0.0, 16.0), timeout_s=5)
    upstream.router.routes = [r for r in upstream.router.routes if "infer" not in r.path]
    url = serve_app(create_app(backend, KeyRing(keyfile.path), MemoryStore(), GatewayConfig()))
    failed = httpx.post(url + "/predict", json={"inputs": digits.x_test[:1].tolist()},
                        headers={"X-API-Key": token})
    assert failed.status_code == 502 and "upstream failed" in failed.json()["error"]
    assert httpx.get(url + "/healthz").status_code == 200


def test_unreachable_upstream_is_one_line():
    with pytest.raises(InputError, match="cannot read Open Inference Protocol metadata"):
        UpstreamBackend.connect("http://127.0.0.1:9", "digits", None, timeout_s=2)


def _certificate(subject: str, key, issuer_key, issuer: str, *, ca: bool, ip: str | None = None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path, cert, key) -> tuple[str, str]:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_mutual_tls_refuses_clients_without_a_certificate(tmp_path, serve_app, gateway_app,
                                                          digits, make_key):
    token = make_key()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test-ca", ca_key, ca_key, "test-ca", ca=True)
    ca_path, _ = _write(tmp_path / "ca", ca, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert, server_key_path = _write(
        tmp_path / "server",
        _certificate("gateway", server_key, ca_key, "test-ca", ca=False, ip="127.0.0.1"),
        server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert, client_key_path = _write(
        tmp_path / "client", _certificate("client", client_key, ca_key, "test-ca", ca=False),
        client_key)
    url = serve_app(gateway_app(), ssl_certfile=server_cert, ssl_keyfile=server_key_path,
                    ssl_ca_certs=ca_path, ssl_cert_reqs=ssl.CERT_REQUIRED)
    assert url.startswith("https://")
    body = {"inputs": digits.x_test[:1].tolist()}
    headers = {"X-API-Key": token}
    anonymous = httpx.Client(verify=ssl.create_default_context(cafile=ca_path))
    with anonymous, pytest.raises(httpx.HTTPError):
        anonymous.post(url + "/predict", json=body, headers=headers)
    context = ssl.create_default_context(cafile=ca_path)
    context.load_cert_chain(client_cert, client_key_path)
    with httpx.Client(verify=context) as holder:
        assert holder.post(url + "/predict", json=body, headers=headers).status_code == 200


def test_serves_an_onnx_model_file(tmp_path, serve_app, digits, keyfile, make_key):
    from skl2onnx import to_onnx

    from bastion.govern.events import file_digest
    from bastion.govern.ledger import Ledger, init_ledger
    from bastion.serve.gateway import build_app

    ledger = tmp_path / "ledger.db"
    init_ledger(ledger)[0].close()
    token = make_key()
    path = tmp_path / "digits.onnx"
    path.write_bytes(to_onnx(digits.model, digits.x_train[:1].astype(np.float32))
                     .SerializeToString())
    app = build_app(model=str(path), upstream=None, upstream_model=None, name=None,
                    keys=str(keyfile.path), store="memory", policies=[], monitor="block",
                    input_shape=None, input_range=(0.0, 16.0), max_body=1 << 20,
                    max_batch=64, client_rate=100.0, client_burst=100, cors_origins=[],
                    audit=None, ledger=str(ledger), verify_key=None)
    with Ledger.open(ledger) as opened:
        (deploy,) = opened.find("deploy")
    assert deploy.event["parents"] == [file_digest(path)]
    url = serve_app(app)
    rows = digits.x_test[:5]
    out = httpx.post(url + "/v2/models/digits/infer", headers={"X-API-Key": token}, json={
        "inputs": [{"name": "X", "shape": [5, 64], "datatype": "FP32",
                    "data": rows.reshape(-1).tolist()}]}).json()
    probabilities = np.asarray(out["outputs"][0]["data"]).reshape(5, 10)
    np.testing.assert_allclose(probabilities, digits.model.predict_proba(rows), atol=1e-4)
