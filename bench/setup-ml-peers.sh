#!/usr/bin/env bash
# Install the ML peers that bench/evasion, bench/poison and bench/privacy run in the same
# process as Bastion (same torch model, same data) into the project's .venv. They are never
# runtime dependencies. --no-deps because torchattacks asks for torchvision, which would pull
# another (multi-GB CUDA) torch over the pinned 2.13.0 CPU build; their light requirements are
# listed explicitly. Helpers add peers by appending to PEERS and LIGHT.
set -euo pipefail
cd "$(dirname "$0")/.."

PEERS=("adversarial-robustness-toolbox==1.20.1" "torchattacks==3.5.1" "presidio-analyzer==2.2.366")
# presidio-analyzer imports spaCy but its pattern recognizers run without a language model.
LIGHT=(tqdm six packaging requests regex tldextract spacy)

.venv/bin/pip install --quiet --disable-pip-version-check --no-deps "${PEERS[@]}"
.venv/bin/pip install --quiet --disable-pip-version-check "${LIGHT[@]}"
