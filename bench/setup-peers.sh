#!/usr/bin/env bash
# Install the peer tools that the benchmarks and interop tests compare Bastion against into their
# own virtual environment, .venv-bench, so they can never pull another torch (or anything else)
# into .venv. Idempotent: creates the venv only when missing; pip skips what is already there.
# Helpers add their peers by appending one `peer_install ...` line at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-bench
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi

peer_install() {
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$@"
}

# OpenSSF model signing (sigstore/model-transparency): interop tests and bench/sign.
peer_install "model-signing>=1.1,<2" pyopenssl

# Model-file scanners compared in bench/scan (none of them pulls torch; checked with --dry-run).
peer_install "modelscan==0.8.8" "picklescan==1.0.5" "fickling==0.1.12"
