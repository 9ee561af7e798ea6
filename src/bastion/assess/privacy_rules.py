"""Rules for what a model leaks about its training data (membership, inversion, attributes)."""

from __future__ import annotations

from bastion.findings import Rule, Severity, Threat, register

MEMBERSHIP_EXPOSURE = register(
    Rule(
        "BST-PRIV-001",
        "membership-inference-exposure",
        "An attacker who can query the model tells whether a given record was in its training "
        "set better than chance. Membership alone can be sensitive (a record in a disease "
        "registry's training set reveals the diagnosis), and it is the first step of training "
        "data extraction. What matters is the true-positive rate at a low false-positive "
        "rate: an attack that is sure about a few records breaches those people.",
        "Reduce memorisation: train with differential privacy "
        "(`bastion.training.private.train_private(module, x, y, target_epsilon=...)`), add "
        "regularisation or early stopping, and serve only labels or rounded top-k scores. "
        "Re-check with `bastion assess membership --model MODEL --data MEMBERS "
        "--nonmembers HELD_OUT --attack rmia`.",
        Threat.PRIVACY,
        Severity.MEDIUM,
        ("ML04", "AML.T0024.000"),
    )
)
ATTRIBUTE_INFERENCE = register(
    Rule(
        "BST-PRIV-002",
        "attribute-inference-exposure",
        "Querying the model lets an attacker infer a sensitive attribute of a training record "
        "from its other attributes better than an attacker who cannot query the model. The "
        "model's output carries information about the sensitive column.",
        "Drop the sensitive column or its proxies from the features, train with differential "
        "privacy (`bastion.training.private.train_private`), and return labels instead of "
        "scores. Re-check with `bastion assess inversion --model MODEL --data DATA "
        "--label LABEL --sensitive COLUMN`.",
        Threat.MODEL_INVERSION,
        Severity.MEDIUM,
        ("ML03", "AML.T0024.001"),
    )
)
CLASS_RECONSTRUCTION = register(
    Rule(
        "BST-PRIV-003",
        "class-representative-reconstruction",
        "Gradient descent on the model's input (MIFace) reconstructs inputs that the model "
        "classifies with high confidence and that resemble its training data of that class. "
        "When a class is one person (face recognition) the reconstruction shows that person.",
        "Train with differential privacy (`bastion.training.private.train_private`), "
        "do not expose gradients or full-precision scores, and rate-limit queries. Re-check "
        "with `bastion assess inversion --model MODEL --data DATA`.",
        Threat.MODEL_INVERSION,
        Severity.MEDIUM,
        ("ML03", "AML.T0024.001"),
    )
)
