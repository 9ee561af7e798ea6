"""Sign or verify with model-signing's `shards` serialization, which its command line lacks.

Run with the peer's interpreter (.venv-bench), never Bastion's:
    python peer_shards.py sign|verify MODEL SIGNATURE KEY SHARD_SIZE
Used by bench/sign and by the interoperability tests.
"""

import sys

import model_signing

action, model, signature, key, shard_size = sys.argv[1:]
hashing = model_signing.hashing.Config().use_shard_serialization(shard_size=int(shard_size))
if action == "sign":
    config = model_signing.signing.Config().use_elliptic_key_signer(private_key=key)
    config.set_hashing_config(hashing).sign(model, signature)
else:
    config = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=key)
    config.set_hashing_config(hashing).verify(model, signature)
