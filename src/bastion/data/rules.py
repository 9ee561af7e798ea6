"""Rules for training data: what changed between two versions (`bastion data diff`) and which
rows look poisoned (`bastion data check`)."""

from __future__ import annotations

from bastion.findings import Rule, Severity, Threat, register

_POISON = ("ML02", "AML.T0020")
_BACKDOOR = ("ML10", "AML.T0018")


def _define(
    rule_id: str,
    name: str,
    help_text: str,
    remediation: str,
    severity: Severity,
    references: tuple[str, ...] = _POISON,
) -> Rule:
    return register(
        Rule(rule_id, name, help_text, remediation, Threat.DATA_POISONING, severity, references)
    )


ROWS_CHANGED = _define(
    "BST-DATA-001",
    "dataset-rows-changed",
    "More rows were added, removed or modified between the two versions than the policy "
    "allows. Unreviewed bulk changes are how poisoned rows get into training data.",
    "Review the changed rows (`bastion data diff OLD NEW --format json` lists them) and "
    "accept the new version only when every change has a known origin; record the accepted "
    "version with `bastion data diff OLD NEW --ledger LEDGER`.",
    Severity.MEDIUM,
)
LABELS_CHANGED = _define(
    "BST-DATA-002",
    "dataset-labels-changed",
    "Rows whose features are unchanged now carry a different label. Flipping labels is the "
    "cheapest poisoning attack: it degrades the model or a chosen class without touching "
    "the inputs.",
    "Confirm each relabelling with its owner, revert unexplained ones, then re-check with "
    "`bastion data diff OLD NEW --label COLUMN` and `bastion data check --data NEW`.",
    Severity.HIGH,
)
CLASS_SHIFT = _define(
    "BST-DATA-003",
    "dataset-class-balance-shift",
    "The share of a class changed by more than the policy allows. Targeted poisoning and "
    "careless merges both show up as a class growing or shrinking.",
    "Check where the extra or missing rows of that class came from (`bastion data diff OLD "
    "NEW --label COLUMN --format json`); rebalance or revert before training.",
    Severity.MEDIUM,
)
SCHEMA_CHANGED = _define(
    "BST-DATA-004",
    "dataset-schema-changed",
    "The two versions do not have the same columns (or array shapes), so every row differs "
    "and row-level review is not possible.",
    "Align the schemas (same columns, same shapes) and diff again with `bastion data diff`.",
    Severity.MEDIUM,
)
LABEL_ISSUES = _define(
    "BST-DATA-010",
    "suspected-label-errors",
    "Confident learning (out-of-fold predicted probabilities) finds rows whose given label "
    "disagrees with what the rest of the data says. These are mislabelled or label-flipped "
    "rows.",
    "Review the listed rows (`bastion data check --data TRAIN --rows-out rows.csv`), fix or "
    "drop them, retrain, and re-check with `bastion data check`.",
    Severity.MEDIUM,
)
BACKDOOR_CLUSTER = _define(
    "BST-DATA-011",
    "suspected-backdoor-rows",
    "Within one class, a group of rows separates from the rest in the model's feature space "
    "(spectral signature and activation clustering agree). Backdoor triggers make a model "
    "learn such a separate sub-population that it maps to the target class.",
    "Inspect the listed rows for a shared pattern (a patch, a token, a fixed feature value), "
    "remove them, retrain, and re-check with `bastion data check --data TRAIN --model MODEL`.",
    Severity.HIGH,
)
DUPLICATES = _define(
    "BST-DATA-012",
    "duplicate-rows",
    "Exact or near-duplicate rows, some with conflicting labels. Duplicates amplify the "
    "weight of the rows an attacker injected; conflicting duplicates are label flips.",
    "Deduplicate the data (keep one row per group, with the right label) and re-check with "
    "`bastion data check --data TRAIN`.",
    Severity.LOW,
)
OUTLIERS = _define(
    "BST-DATA-013",
    "class-outliers",
    "Rows far from the rest of their class. Injected rows are often out of distribution for "
    "the class they were labelled as.",
    "Review the listed outliers and drop those without a known origin; re-check with "
    "`bastion data check --data TRAIN`.",
    Severity.LOW,
)
MODEL_BACKDOOR = _define(
    "BST-DATA-014",
    "model-backdoor-suspected",
    "Neural Cleanse-style trigger reverse engineering found a class that a much smaller "
    "input patch flips inputs to than any other class needs (MAD anomaly index above 2). "
    "That is the signature of a backdoored model: the patch is a candidate trigger.",
    "Do not deploy the model. Find the poisoned rows with `bastion data check --data TRAIN "
    "--model MODEL`, retrain on cleaned data, and re-check the new model the same way.",
    Severity.CRITICAL,
    _BACKDOOR,
)
