"""Signing and verifying models and datasets in the OpenSSF model-signing format.

A signature is a Sigstore bundle (v0.3) holding a DSSE envelope over an in-toto v1 Statement
with predicate type https://model_signing/signature/v1.0, so bundles written here verify with
`model_signing verify key` and bundles written by model-signing verify here.

    sign(path, "key.pem")                  -> SignResult   (writes path/model.sig)
    verify(path, "key.pub")                -> VerifyResult (or raises VerificationError)
    verify_model(path, "key.pub")          what safe loading calls before it loads a model
    generate_key_pair("key.pem")           writes key.pem and key.pub
"""

from bastion.supplychain.sign.errors import Problem, VerificationError
from bastion.supplychain.sign.hashing import HASH_TYPES
from bastion.supplychain.sign.keys import CURVES, generate_key_pair
from bastion.supplychain.sign.manifest import DEFAULT_SHARD_SIZE, METHODS, PREDICATE_TYPE
from bastion.supplychain.sign.signer import SignResult, default_signature_path, sign
from bastion.supplychain.sign.verify import VerifyResult, verify, verify_model

__all__ = [
    "CURVES",
    "DEFAULT_SHARD_SIZE",
    "HASH_TYPES",
    "METHODS",
    "PREDICATE_TYPE",
    "Problem",
    "SignResult",
    "VerificationError",
    "VerifyResult",
    "default_signature_path",
    "generate_key_pair",
    "sign",
    "verify",
    "verify_model",
]
