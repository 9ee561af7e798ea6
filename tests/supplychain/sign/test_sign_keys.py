"""Key generation and loading (curves, passphrases, refusals) and certificate-chain signing."""

from __future__ import annotations

import json
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bastion.errors import InputError
from bastion.supplychain.sign import VerificationError, errors, generate_key_pair, sign, verify
from bastion.supplychain.sign.keys import load_private_key, load_public_key


@pytest.mark.parametrize(("curve", "name"), [("p256", "secp256r1"), ("p384", "secp384r1")])
def test_generate_writes_a_private_and_a_public_pem(tmp_path, curve, name):
    private, public = generate_key_pair(tmp_path / "k.pem", curve=curve)
    assert public == tmp_path / "k.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert load_private_key(private).curve.name == name
    assert load_public_key(public) == load_private_key(private).public_key()


def test_generate_refuses_to_overwrite_unless_asked(tmp_path):
    private, _ = generate_key_pair(tmp_path / "k.pem")
    before = private.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        generate_key_pair(private)
    generate_key_pair(private, overwrite=True)
    assert private.read_bytes() != before


def test_generate_rejects_unknown_curve_and_same_paths(tmp_path):
    with pytest.raises(InputError, match="unknown curve 'p192'"):
        generate_key_pair(tmp_path / "k.pem", curve="p192")
    with pytest.raises(InputError, match="cannot both be written"):
        generate_key_pair(tmp_path / "k.pem", tmp_path / "k.pem")


def test_encrypted_key_needs_its_passphrase(tmp_path, model):
    private, public = generate_key_pair(tmp_path / "k.pem", passphrase="correct horse")
    assert private.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(InputError, match="is encrypted: set the passphrase in BASTION_KEY"):
        load_private_key(private)
    with pytest.raises(InputError, match="wrong passphrase"):
        load_private_key(private, "battery staple")
    asked = []
    key = load_private_key(private, ask=lambda: asked.append(1) or "correct horse")
    assert asked == [1] and key.public_key() == load_public_key(public)
    sign(model, private, passphrase="correct horse")
    verify(model, public)


def test_passphrase_for_a_plain_key_is_refused(key_pair):
    with pytest.raises(InputError, match="is not encrypted"):
        load_private_key(key_pair.private, "secret")


def _write_private(path, key):
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def test_non_nist_and_non_ec_keys_are_refused(tmp_path, model):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(InputError, match="is not an elliptic-curve key"):
        sign(model, _write_private(tmp_path / "rsa.pem", rsa_key))
    k1 = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(InputError, match="uses curve secp256k1"):
        sign(model, _write_private(tmp_path / "k1.pem", k1))
    public = tmp_path / "rsa.pub"
    public.write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(InputError, match="is not an elliptic-curve key"):
        load_public_key(public)


def test_unreadable_key_files_are_input_errors(tmp_path, key_pair):
    with pytest.raises(InputError, match="no such private key file"):
        load_private_key(tmp_path / "absent.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(InputError, match="not a PEM private key"):
        load_private_key(junk)
    with pytest.raises(InputError, match="is not a PEM public key"):
        load_public_key(junk)
    with pytest.raises(InputError, match="is not a PEM public key"):
        load_public_key(key_pair.private)


def test_certificate_chain_round_trip(model, pki):
    result = sign(model, pki.leaf_key, certificate=pki.leaf, certificate_chain=[pki.intermediate])
    bundle = json.loads(result.signature.read_text())
    chain = bundle["verificationMaterial"]["x509CertificateChain"]["certificates"]
    assert len(chain) == 2
    verified = verify(model, certificate_chain=[pki.root])
    assert verified.signer == "certificate CN=model-publisher"


def test_certificate_from_another_root_is_untrusted(model, pki):
    sign(model, pki.leaf_key, certificate=pki.leaf, certificate_chain=[pki.intermediate])
    with pytest.raises(VerificationError) as failed:
        verify(model, certificate_chain=[pki.stranger_root])
    assert failed.value.kinds == {errors.UNTRUSTED}
    assert str(failed.value).startswith(
        f"signing certificate in {model / 'model.sig'} is not trusted: "
    )


def test_certificate_without_intermediate_is_untrusted(model, pki):
    sign(model, pki.leaf_key, certificate=pki.leaf)
    with pytest.raises(VerificationError) as failed:
        verify(model, certificate_chain=[pki.root])
    assert failed.value.kinds == {errors.UNTRUSTED}


def test_certificate_that_may_not_sign_is_untrusted(model, pki):
    sign(
        model,
        pki.unusable_key,
        certificate=pki.unusable_leaf,
        certificate_chain=[pki.intermediate],
    )
    with pytest.raises(VerificationError, match="not allowed to sign"):
        verify(model, certificate_chain=[pki.root])


def test_certificate_must_belong_to_the_key(model, pki, key_pair):
    with pytest.raises(InputError, match="does not belong to the signing key"):
        sign(model, key_pair.private, certificate=pki.leaf)
    with pytest.raises(InputError, match="needs --certificate"):
        sign(model, key_pair.private, certificate_chain=[pki.intermediate])


def test_key_signed_bundle_has_no_certificate_to_trust(model, pki, key_pair):
    sign(model, key_pair.private)
    with pytest.raises(VerificationError, match="carries no certificate"):
        verify(model, certificate_chain=[pki.root])
    with pytest.raises(InputError, match="not both"):
        verify(model, key_pair.public, certificate_chain=[pki.root])
