"""Rules for personal data found in a dataset, one per kind of identifier."""

from __future__ import annotations

from bastion.findings import Rule, Severity, Threat, register

_WHY = (
    "Training data that holds {what} exposes the people it belongs to: models memorise rare "
    "strings and can be made to repeat them (training-data extraction, model inversion), and "
    "every copy of the dataset is a copy of the personal data."
)
_FIX = (
    "Remove the column, or replace the values with tokens or salted hashes before training "
    "(keep the mapping outside the training data); if the model needs the information, "
    "derive a coarse feature (age band, country) instead. Re-check with "
    "`bastion data pii PATH`."
)


def _define(rule_id: str, entity: str, what: str, severity: Severity) -> Rule:
    return register(
        Rule(
            rule_id,
            f"pii-{entity.replace('_', '-')}",
            _WHY.format(what=what),
            _FIX,
            Threat.PRIVACY,
            severity,
            ("ML03", "AML.T0024.001"),
        )
    )


RULES = {
    "payment_card": _define("BST-PRIV-010", "payment_card", "payment card numbers (PCI DSS "
                            "scope; Luhn- and issuer-checked)", Severity.HIGH),
    "us_ssn": _define("BST-PRIV-011", "us_ssn", "US Social Security numbers", Severity.HIGH),
    "iban": _define("BST-PRIV-012", "iban", "bank account numbers (IBAN, mod-97 checked)",
                    Severity.HIGH),
    "email": _define("BST-PRIV-013", "email", "e-mail addresses", Severity.MEDIUM),
    "phone": _define("BST-PRIV-014", "phone", "phone numbers", Severity.MEDIUM),
    "date_of_birth": _define("BST-PRIV-015", "date_of_birth", "dates of birth (a "
                             "quasi-identifier that, with a postcode, singles out most "
                             "people)", Severity.MEDIUM),
    "ip_address": _define("BST-PRIV-016", "ip_address", "IP addresses (personal data under "
                          "the GDPR)", Severity.LOW),
}  # fmt: skip
