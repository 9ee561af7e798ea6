"""Governance: the tamper-evident ledger (an RFC 9162 Merkle log of typed events with
Ed25519-signed checkpoints and standalone-verifiable proofs)."""
