"""Privacy benchmark: Bastion against ART (membership inference) and Presidio (PII).

Membership: one overfit MLP target and one member/non-member split. The attacker knows half
of the members and half of the non-members: ART's MembershipInferenceBlackBox trains its
attack model on them (with their membership labels); Bastion gets the same records as
unlabelled population data for its reference models. Both are scored on the other halves:
AUC and TPR at 0.1% / 1% FPR, and wall time.

PII: a generated CSV with planted identifiers (and look-alikes that fail their checks) is
scanned by Bastion and by Presidio's pattern recognizers, which run without a spaCy model;
row-level recall and false positives per entity, and throughput in MB/s.

    python bench/privacy/run.py [--quick] [--only membership|pii]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

from bastion.assess.membership import assess_membership  # noqa: E402
from bastion.assess.membership.metrics import summarise  # noqa: E402
from bastion.data.pii import scan_pii  # noqa: E402

# ------------------------------------------------------------------------ membership


def membership_data(n: int, seed: int):
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=2 * n, n_features=20, n_informative=10, n_classes=4, flip_y=0.1,
        random_state=seed,
    )  # fmt: skip
    return x[:n], y[:n], x[n:], y[n:]


def target_model(x, y, seed: int):
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(
        hidden_layer_sizes=(128,), alpha=1e-6, max_iter=300, tol=1e-6, n_iter_no_change=50,
        random_state=seed,
    ).fit(x, y)  # fmt: skip


def run_membership(n: int, references: int, jobs: int, seed: int) -> dict:
    from sklearn.exceptions import ConvergenceWarning

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    xm, ym, xn, yn = membership_data(n, seed)
    target = target_model(xm, ym, seed)
    half = n // 2
    known = (xm[:half], ym[:half], xn[:half], yn[:half])  # the attacker's knowledge
    xm_e, ym_e, xn_e, yn_e = xm[half:], ym[half:], xn[half:], yn[half:]
    rows = []
    started = time.perf_counter()
    bastion = assess_membership(
        target, xm_e, ym_e, xn_e, yn_e,
        x_population=np.concatenate([known[0], known[2]]),
        y_population=np.concatenate([known[1], known[3]]),
        attacks=["loss", "lira-offline", "lira-online", "rmia-offline", "rmia-online"],
        references=references, n_jobs=jobs, seed=seed,
    )  # fmt: skip
    bastion_seconds = time.perf_counter() - started
    for result in bastion.results:
        rows.append(_row("bastion", result.attack, result.roc, bastion_seconds))
    is_member = np.r_[np.ones(len(xm_e), bool), np.zeros(len(xn_e), bool)]
    x_eval, y_eval = np.concatenate([xm_e, xn_e]), np.concatenate([ym_e, yn_e])
    for model_type in ("nn", "rf", "gb"):
        started = time.perf_counter()
        scores = art_black_box(target, known, x_eval, y_eval, model_type)
        rows.append(_row("art", f"black-box-{model_type}", summarise(scores, is_member),
                         time.perf_counter() - started))
    best_bastion = max((r for r in rows if r["tool"] == "bastion" and r["attack"] != "loss"),
                       key=lambda r: r["tpr_at_1%_fpr"])  # fmt: skip
    best_art = max((r for r in rows if r["tool"] == "art"), key=lambda r: r["tpr_at_1%_fpr"])
    return {
        "members": n,
        "nonmembers": n,
        "evaluated": {"members": len(xm_e), "nonmembers": len(xn_e)},
        "references": references,
        "target_train_accuracy": round(float(target.score(xm, ym)), 4),
        "target_test_accuracy": round(float(target.score(xn, yn)), 4),
        "rows": rows,
        "best_bastion": best_bastion["attack"],
        "best_art": best_art["attack"],
        "tpr_at_1%_fpr_ratio": round(
            best_bastion["tpr_at_1%_fpr"] / max(best_art["tpr_at_1%_fpr"], 1e-9), 2
        ),
        "note": "Bastion's wall time covers training all reference models once and all five "
        "attacks on them; ART's covers fitting its attack model and inference.",
    }


def art_black_box(target, known, x_eval, y_eval, model_type: str) -> np.ndarray:
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox
    from art.estimators.classification import SklearnClassifier

    attack = MembershipInferenceBlackBox(SklearnClassifier(target), attack_model_type=model_type)
    xm, ym, xn, yn = known
    attack.fit(x=xm, y=ym, test_x=xn, test_y=yn)
    return np.asarray(attack.infer(x_eval, y_eval, probabilities=True)).reshape(len(x_eval), -1)[
        :, -1
    ]


def _row(tool: str, attack: str, roc, seconds: float) -> dict:
    return {
        "tool": tool,
        "attack": attack,
        "auc": round(roc.auc, 4),
        "balanced_accuracy": round(roc.balanced_accuracy, 4),
        "tpr_at_0.1%_fpr": round(roc.tpr_at_fpr[0.001], 4),
        "tpr_at_1%_fpr": round(roc.tpr_at_fpr[0.01], 4),
        "seconds": round(seconds, 2),
    }


# ------------------------------------------------------------------------------- PII

ENTITIES = ("payment_card", "iban", "us_ssn", "email", "phone", "ip_address")
CHECKSUM_BACKED = ("payment_card", "iban")
PRESIDIO_NAMES = {
    "CREDIT_CARD": "payment_card", "IBAN_CODE": "iban", "US_SSN": "us_ssn",
    "EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "IP_ADDRESS": "ip_address",
}  # fmt: skip
WORDS = ("order", "shipped", "customer", "called", "about", "invoice", "refund", "the", "ticket",
         "account", "delivery", "late", "please", "update", "contact", "address", "note")


def _luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _card(rng, valid: bool) -> str:
    prefix, length = [("4", 16), ("51", 16), ("37", 15), ("6011", 16)][rng.integers(4)]
    body = prefix + "".join(map(str, rng.integers(0, 10, length - len(prefix) - 1)))
    number = next(body + c for c in "0123456789" if _luhn_ok(body + c) == valid)
    return " ".join(number[i : i + 4] for i in range(0, len(number), 4)) if rng.random() < .5 \
        else number


def _iban(rng, valid: bool) -> str:
    """A well-formed IBAN: GB and NL account numbers start with a four-letter bank code."""
    country, length, letters = [("DE", 22, 0), ("GB", 22, 4), ("FR", 27, 0), ("NL", 18, 4)][
        rng.integers(4)
    ]
    bank = "".join(chr(65 + int(c)) for c in rng.integers(0, 26, letters))
    bban = bank + "".join(map(str, rng.integers(0, 10, length - 4 - letters)))
    check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
    check = check if valid else check % 97 + 1
    raw = f"{country}{check:02d}{bban}"
    return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def _planted(rng, entity: str) -> str:
    if entity == "payment_card":
        return _card(rng, True)
    if entity == "iban":
        return _iban(rng, True)
    if entity == "us_ssn":
        area = int(rng.integers(1, 899))
        return f"{665 if area == 666 else area:03d}-{rng.integers(1, 99):02d}-" \
               f"{rng.integers(1, 9999):04d}"
    if entity == "email":
        return f"{rng.choice(WORDS)}.{rng.integers(10**5)}@example{rng.integers(50)}.com"
    if entity == "phone":
        return f"({rng.choice([212, 415, 617, 312, 206])}) {rng.integers(200, 999)}-" \
               f"{rng.integers(0, 9999):04d}"
    return ".".join(str(v) for v in rng.integers(1, 255, 4))


def _decoy(rng) -> str:
    kind = rng.integers(4)
    if kind == 0:
        return _card(rng, False)
    if kind == 1:
        return _iban(rng, False)
    if kind == 2:
        return f"{rng.choice(['000', '666', '900'])}-{rng.integers(1, 99):02d}-" \
               f"{rng.integers(1, 9999):04d}"
    return f"{rng.integers(300, 999)}.{rng.integers(256, 999)}.{rng.integers(256, 999)}.1"


def write_pii_csv(path: Path, rows: int, seed: int) -> dict[str, set[int]]:
    """A support-ticket table; returns the rows holding each planted entity."""
    rng = np.random.default_rng(seed)
    truth: dict[str, set[int]] = {entity: set() for entity in ENTITIES}
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ticket", "status", "amount", "notes"])
        for row in range(rows):
            words = " ".join(rng.choice(WORDS, size=rng.integers(8, 20)))
            if rng.random() < 0.3:
                entity = ENTITIES[rng.integers(len(ENTITIES))]
                truth[entity].add(row)
                words += f" {_planted(rng, entity)} {rng.choice(WORDS)}"
            if rng.random() < 0.2:
                words += f" ref {_decoy(rng)}"
            writer.writerow([f"T-{row:07d}", rng.choice(["open", "closed"]),
                             f"{rng.random() * 1000:.2f}", words])  # fmt: skip
    return truth


def _score(found: dict[str, set[int]], truth: dict[str, set[int]]) -> dict[str, dict]:
    return {
        entity: {
            "planted": len(truth[entity]),
            "recall": round(len(found.get(entity, set()) & truth[entity]) /
                            max(len(truth[entity]), 1), 4),
            "false_positive_rows": len(found.get(entity, set()) - truth[entity]),
        }
        for entity in ENTITIES
    }  # fmt: skip


def bastion_pii(path: Path, jobs: int) -> tuple[float, dict[str, set[int]]]:
    report = scan_pii(path, jobs=jobs)
    hits = report.columns.get("notes")
    return report.seconds, {e: set(hits.rows.get(e, set())) for e in ENTITIES} if hits else {}


def presidio_pii(path: Path, chunk_rows: int = 20_000) -> tuple[float, dict[str, set[int]]]:
    """Presidio's predefined recognizers, called directly (no AnalyzerEngine: that needs a
    spaCy language model, which cannot be downloaded here). Each column chunk is joined into
    one text, as Bastion does, so both pay the same per-call overhead."""
    import pandas as pd
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    recognizers = [CreditCardRecognizer(), IbanRecognizer(), UsSsnRecognizer(),
                   EmailRecognizer(), PhoneRecognizer(), IpRecognizer()]  # fmt: skip
    found: dict[str, set[int]] = {entity: set() for entity in ENTITIES}
    started = time.perf_counter()
    offset = 0
    for frame in pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=chunk_rows):
        for column in frame.columns:
            values = frame[column].tolist()
            text = "\n".join(values)
            starts = np.cumsum([0] + [len(v) + 1 for v in values[:-1]])
            for recognizer in recognizers:
                for result in recognizer.analyze(text, recognizer.supported_entities, None):
                    row = offset + int(np.searchsorted(starts, result.start, side="right")) - 1
                    if column == "notes" and result.entity_type in PRESIDIO_NAMES:
                        found[PRESIDIO_NAMES[result.entity_type]].add(row)
        offset += len(frame)
    return time.perf_counter() - started, found


def _warm_presidio() -> None:
    """First use loads the public-suffix snapshot (the online refresh fails offline)."""
    logging.getLogger("tldextract").setLevel(logging.CRITICAL)
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    recognizer = EmailRecognizer()
    recognizer.analyze("warm up a@example.com", recognizer.supported_entities, None)


def run_pii(rows: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tickets.csv"
        truth = write_pii_csv(path, rows, seed)
        size = path.stat().st_size
        results = {}
        for name, runner in (
            ("bastion (1 process)", lambda: bastion_pii(path, 1)),
            ("bastion (2 processes)", lambda: bastion_pii(path, 2)),
            ("presidio patterns", lambda: presidio_pii(path)),
        ):
            seconds, found = runner()
            results[name] = {
                "seconds": round(seconds, 3),
                "mb_per_s": round(size / 1e6 / seconds, 2),
                "entities": _score(found, truth),
            }
    presidio = results["presidio patterns"]
    return {
        "rows": rows,
        "bytes": size,
        "tools": results,
        "speedup_1_process": round(presidio["seconds"] / results["bastion (1 process)"]["seconds"],
                                   1),
        "speedup_2_processes": round(
            presidio["seconds"] / results["bastion (2 processes)"]["seconds"], 1),
    }  # fmt: skip


# ----------------------------------------------------------------------------- output


def print_tables(membership: dict | None, pii: dict | None) -> None:
    if membership:
        print(f"\nMembership inference: {membership['evaluated']['members']} members vs "
              f"{membership['evaluated']['nonmembers']} non-members evaluated, target train/"
              f"test accuracy {membership['target_train_accuracy']}/"
              f"{membership['target_test_accuracy']}, {membership['references']} references")
        print(f"{'tool':8} {'attack':18} {'AUC':>6} {'TPR@0.1%':>9} {'TPR@1%':>7} {'wall s':>7}")
        for r in membership["rows"]:
            print(f"{r['tool']:8} {r['attack']:18} {r['auc']:6.3f} {r['tpr_at_0.1%_fpr']:9.3f} "
                  f"{r['tpr_at_1%_fpr']:7.3f} {r['seconds']:7.1f}")
        print(f"TPR@1%FPR: best Bastion ({membership['best_bastion']}) / best ART "
              f"({membership['best_art']}) = {membership['tpr_at_1%_fpr_ratio']}x")
    if pii:
        print(f"\nPII: {pii['rows']} rows, {pii['bytes'] / 1e6:.1f} MB")
        header = " ".join(f"{e[:12]:>12}" for e in ENTITIES)
        print(f"{'tool':22} {'MB/s':>7} | recall / false-positive rows: {header}")
        for name, r in pii["tools"].items():
            cells = " ".join(
                f"{r['entities'][e]['recall']:>6.3f}/{r['entities'][e]['false_positive_rows']:<5}"
                for e in ENTITIES
            )
            print(f"{name:22} {r['mb_per_s']:7.2f} | {cells}")
        print(f"speed-up vs Presidio: {pii['speedup_1_process']}x (1 process), "
              f"{pii['speedup_2_processes']}x (2 processes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, for a smoke run (prints, writes no JSON)")
    parser.add_argument("--only", choices=("membership", "pii"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n, references, rows = (600, 8, 5_000) if args.quick else (2000, 16, 50_000)
    membership = pii = None
    if args.only in (None, "pii"):
        _warm_presidio()
        pii = run_pii(rows, args.seed)
    if args.only in (None, "membership"):
        membership = run_membership(n, references, jobs=2, seed=args.seed)
    print_tables(membership, pii)
    document = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "membership": membership,
        "pii": pii,
    }  # fmt: skip
    if not args.quick:
        out = HERE / "results.json"
        if args.only and out.exists():  # keep the other half of an earlier full run
            earlier = json.loads(out.read_text())
            document = earlier | {k: v for k, v in document.items() if v is not None}
        out.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
