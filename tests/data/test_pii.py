"""PII scanning of planted values: every valid identifier is found, in every format, and
numbers that fail the checksums or issuing rules are not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import phonenumbers
import pytest
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.data.pii import scan_pii
from bastion.data.pii.entities import luhn_valid
from bastion.errors import InputError

PLANTED = 40  # of each kind
runner = CliRunner()


def _luhn_complete(prefix: str, length: int, rng: np.random.Generator, valid: bool) -> str:
    body = prefix + "".join(map(str, rng.integers(0, 10, length - len(prefix) - 1)))
    for check in "0123456789":
        if luhn_valid(body + check) == valid:
            return body + check
    raise AssertionError("unreachable: one check digit always fits")


def _iban(country: str, bban: str, valid: bool) -> str:
    numeric = int("".join(str(int(ch, 36)) for ch in bban + country + "00"))
    check = 98 - numeric % 97
    if not valid:
        check = check % 97 + 1  # any other value in 1..97 fails mod 97
    raw = f"{country}{check:02d}{bban}"
    return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def _phone(rng: np.random.Generator) -> str:
    while True:
        area, exchange, line = rng.integers(201, 990), rng.integers(200, 999), rng.integers(9999)
        candidate = f"({area}) {exchange}-{line:04d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(candidate, "US")):
            return candidate


def _planted(rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, int]]:
    cards = [
        _luhn_complete(prefix, length, rng, valid=True)
        for prefix, length in [("4", 16), ("51", 16), ("37", 15), ("6011", 16)] * (PLANTED // 4)
    ]
    cards = [" ".join(c[i : i + 4] for i in range(0, len(c), 4)) if i % 2 else c
             for i, c in enumerate(cards)]
    ibans = [  # GB and NL account numbers start with a four-letter bank code
        _iban(country, bank + "".join(map(str, rng.integers(0, 10, length - 4 - len(bank)))),
              valid=True)
        for country, length, bank in [("DE", 22, ""), ("GB", 22, "NWBK"), ("FR", 27, ""),
                                      ("NL", 18, "ABNA")] * (PLANTED // 4)
    ]  # fmt: skip
    ssns = [f"{rng.integers(1, 899):03d}-{rng.integers(1, 99):02d}-{rng.integers(1, 9999):04d}"
            for _ in range(PLANTED)]
    ssns = [s if not s.startswith("666") else "665" + s[3:] for s in ssns]
    emails = [f"user{i}.{rng.integers(1000)}@mail{i % 7}.example.org" for i in range(PLANTED)]
    phones = [_phone(rng) for _ in range(PLANTED)]
    ips = [".".join(str(int(v)) for v in rng.integers(1, 255, 4)) for _ in range(PLANTED)]
    dobs = [f"19{rng.integers(40, 99)}-{rng.integers(1, 12):02d}-{rng.integers(1, 28):02d}"
            for _ in range(PLANTED)]
    # Look-alikes that fail the checks: none of these may be reported.
    decoys = []
    for i in range(PLANTED):
        decoys += [
            _luhn_complete("4", 16, rng, valid=False),
            _iban("DE", "".join(map(str, rng.integers(0, 10, 18))), valid=False),
            f"{['000', '666', '900', '987'][i % 4]}-{rng.integers(1, 99):02d}-"
            f"{rng.integers(1, 9999):04d}",
            f"{rng.integers(300, 999)}.{rng.integers(256, 999)}.1.1",
        ]
    frame = pd.DataFrame({
        "card": cards,
        "note": [f"pay to {i} ref {s}, from {ip}" for i, s, ip in zip(ibans, ssns, ips,
                                                                       strict=True)],
        "contact": [f"{e} or {p}" for e, p in zip(emails, phones, strict=True)],
        "date_of_birth": dobs,
        "decoys": [" ".join(decoys[i * 4 : i * 4 + 4]) for i in range(PLANTED)],
    })  # fmt: skip
    expected = {"payment_card": PLANTED, "iban": PLANTED, "us_ssn": PLANTED,
                "email": PLANTED, "phone": PLANTED, "ip_address": PLANTED,
                "date_of_birth": PLANTED}  # fmt: skip
    return frame, expected


@pytest.fixture(scope="module")
def planted() -> tuple[pd.DataFrame, dict[str, int]]:
    return _planted(np.random.default_rng(7))


def _write(frame: pd.DataFrame, folder: Path, fmt: str) -> Path:
    path = folder / f"people.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_planted_values_found_exactly_and_decoys_never(planted, tmp_path, fmt) -> None:
    frame, expected = planted
    report = scan_pii(_write(frame, tmp_path, fmt), jobs=1, chunk_rows=7)
    found = {entity: report.count(entity) for entity in expected}
    assert found == expected
    assert "decoys" not in report.columns
    assert report.rows == PLANTED
    assert report.count("payment_card", "card") == PLANTED
    assert report.count("date_of_birth", "date_of_birth") == PLANTED


def test_free_text_and_masking(planted, tmp_path) -> None:
    frame, _ = planted
    lines = [f"Customer {c} born on {d}; card {card}" for c, d, card in
             zip(frame["contact"], frame["date_of_birth"], frame["card"], strict=True)]
    lines += list(frame["decoys"])
    path = tmp_path / "notes.txt"
    path.write_text("\n".join(lines) + "\n")
    report = scan_pii(path, jobs=1)
    assert report.count("date_of_birth") == PLANTED and report.count("payment_card") == PLANTED
    assert report.rows == 2 * PLANTED
    rows = report.columns["text"].rows["payment_card"]
    assert rows == set(range(PLANTED))  # rows map back to line numbers
    for examples in report.columns["text"].examples.values():
        for example in examples:
            assert example not in path.read_text()  # masked, never the value itself


def test_parallel_scan_matches_serial(planted, tmp_path) -> None:
    path = _write(planted[0], tmp_path, "csv")
    serial = scan_pii(path, jobs=1, chunk_rows=5)
    parallel = scan_pii(path, jobs=2, chunk_rows=5)
    assert serial.metrics()["columns"] == parallel.metrics()["columns"]


def test_cli_json_findings_and_exit_codes(planted, tmp_path) -> None:
    path = _write(planted[0], tmp_path, "csv")
    result = runner.invoke(app, ["data", "pii", str(path), "--format", "json", "-j", "1"])
    assert result.exit_code == 1, result.output  # cards, IBANs and SSNs are high
    document = json.loads(result.stdout)
    rules = {(f["rule_id"], f["location"]["member"]) for f in document["findings"]}
    assert ("BST-PRIV-010", "card") in rules and ("BST-PRIV-015", "date_of_birth") in rules
    card = next(f for f in document["findings"] if f["rule_id"] == "BST-PRIV-010")
    assert card["evidence"]["matches"] == PLANTED
    assert f"bastion data pii {path}" in card["remediation"]
    clean = tmp_path / "clean.csv"
    clean.write_text("a,b\n1,2\n3,4\n")
    assert runner.invoke(app, ["data", "pii", str(clean), "-j", "1"]).exit_code == 0


def test_unreadable_files_exit_two(tmp_path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    result = runner.invoke(app, ["data", "pii", str(broken)])
    assert result.exit_code == 2
    assert "not a readable Parquet file" in result.output
    bad_json = tmp_path / "rows.jsonl"
    bad_json.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(InputError, match="line 2 is not JSON"):
        scan_pii(bad_json, jobs=1)
    assert runner.invoke(app, ["data", "pii", str(tmp_path / "missing.csv")]).exit_code == 2
    folder = runner.invoke(app, ["data", "pii", str(tmp_path)])
    assert folder.exit_code == 2 and "a folder; name a file" in folder.output
    malformed = tmp_path / "rows.csv"
    malformed.write_text('a,b\n1,2\n3,4,5,6\n')
    for jobs in ("1", "2"):
        result = runner.invoke(app, ["data", "pii", str(malformed), "-j", jobs])
        assert result.exit_code == 2 and "not a readable CSV file" in result.output
