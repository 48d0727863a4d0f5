"""Least privilege (a score-only key and an admin key) and TLS with a certificate made in the test."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from serving.config import ServeSettings
from serving.testing import records_payload

MODEL = "flight_delay"
ADMIN, SCORER = "admin-key-1", "score-key-2"


def test_score_key_scores_admin_key_also_controls(start_server, make_repo, rows):
    client = start_server(make_repo(), api_key=ADMIN, score_api_key=SCORER)
    payload = records_payload(rows.iloc[:2])
    load = f"/v2/repository/models/{MODEL}/load"
    as_scorer = {"x-api-key": SCORER}
    as_admin = {"authorization": f"Bearer {ADMIN}"}

    assert client.get("/v2/health/ready").status_code == 200  # no key needed
    assert client.post(f"/v1/models/{MODEL}:predict", json=payload).status_code == 401
    assert client.post(f"/v1/models/{MODEL}:predict", json=payload, headers={"x-api-key": "wrong"}).status_code == 401
    for headers in (as_scorer, as_admin):
        assert client.post(f"/v1/models/{MODEL}:predict", json=payload, headers=headers).status_code == 200
        assert client.get(f"/v2/models/{MODEL}", headers=headers).status_code == 200
        metrics = client.get("/metrics", headers=headers)
        assert metrics.status_code == 200 and "driftloop_requests_total" in metrics.text

    for method, path in (("POST", load), ("POST", f"/v2/repository/models/{MODEL}/unload"),
                         ("POST", f"/v2/repository/models/{MODEL}/traffic"), ("GET", "/v2/repository/index")):  # fmt: skip
        r = client.request(method, path, json={}, headers=as_scorer)
        assert r.status_code == 403 and "admin key" in r.json()["error"], (path, r.text)
    assert client.get(f"/v2/models/{MODEL}/ready", headers=as_scorer).status_code == 200  # nothing unloaded
    assert client.post(load, json={"parameters": {"version": "1"}}, headers=as_admin).status_code == 200


def test_a_score_key_alone_is_refused(tmp_path):
    with pytest.raises(ValueError, match="admin key"):
        ServeSettings(repository=tmp_path, score_api_key=SCORER)
    with pytest.raises(ValueError, match="differ"):
        ServeSettings(repository=tmp_path, api_key=ADMIN, score_api_key=ADMIN)
    with pytest.raises(ValueError, match="both or neither"):
        ServeSettings(repository=tmp_path, ssl_certfile=tmp_path / "cert.pem")


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_tls_with_a_self_signed_certificate(start_server, make_repo, rows, tmp_path):
    cert, key = _self_signed(tmp_path)
    client = start_server(make_repo(), ssl_certfile=cert, ssl_keyfile=key)
    assert str(client.base_url).startswith("https://127.0.0.1:")
    r = client.post(f"/v1/models/{MODEL}:predict", json=records_payload(rows.iloc[:3]))
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3
    # A client that does not trust the certificate refuses it; plain HTTP gets no answer.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        httpx.get(f"{client.base_url}/v2/health/live", verify=ssl.create_default_context())
    plain = str(client.base_url).replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/v2/health/live", timeout=5)
