"""What counts as personal data, and how each kind is recognised and masked.

Every entity is a candidate pattern plus a validator: checksums where the identifier has one
(payment cards: Luhn and issuer ranges; IBAN: country length and ISO 7064 mod 97-10), issuing
rules where it has none (US SSN ranges), and the `phonenumbers` and `ipaddress` parsers.
A number that only looks like an identifier is not reported.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

import phonenumbers

# ISO 13616 registry: IBAN length per country.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


@dataclass(frozen=True)
class Entity:
    name: str
    pattern: re.Pattern[str]
    valid: Callable[[str], bool]
    mask: Callable[[str], str]
    needs: str = ""  # a character every match contains: skip texts without it
    group: int = 0  # the pattern group holding the value itself
    # A match of this shape is never re-read as another entity, even when it fails its
    # check: the digits of a mistyped IBAN are not a card number.
    claims_shape: bool = False


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def luhn_valid(number: str) -> bool:
    total = 0
    for position, ch in enumerate(reversed(number)):
        digit = ord(ch) - 48
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _card_issuer_ok(number: str) -> bool:
    """Issuer ranges and lengths of the major networks (Visa, Mastercard, Amex, Discover,
    JCB, Diners, UnionPay): a Luhn-valid number outside them is not a card."""
    n, length = number, len(number)
    two, four = int(n[:2]), int(n[:4])
    if n[0] == "4":
        return length in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return length == 16
    if two in (34, 37):
        return length == 15
    if n.startswith("6011") or two == 65 or 644 <= int(n[:3]) <= 649 or two == 62:
        return 16 <= length <= 19
    if 3528 <= four <= 3589:
        return 16 <= length <= 19
    if 300 <= int(n[:3]) <= 305 or two in (36, 38, 39):
        return 14 <= length <= 19
    return False


def card_valid(text: str) -> bool:
    number = _digits(text)
    return 13 <= len(number) <= 19 and _card_issuer_ok(number) and luhn_valid(number)


def iban_valid(text: str) -> bool:
    iban = text.replace(" ", "").upper()
    if IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def ssn_valid(text: str) -> bool:
    """SSA rules: area 001-899 except 666, group 01-99, serial 0001-9999."""
    number = _digits(text)
    area, group, serial = int(number[:3]), int(number[3:5]), int(number[5:])
    return 0 < area < 900 and area != 666 and group > 0 and serial > 0


def ip_valid(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def phone_validator(region: str) -> Callable[[str], bool]:
    def valid(text: str) -> bool:
        # E.164 numbers have at most 15 digits and no national number has fewer than 7;
        # counting first skips the parser (the slow part) for prices, times and versions.
        if not 7 <= sum(ch.isdigit() for ch in text) <= 15:
            return False
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            return False
        return phonenumbers.is_valid_number(number)

    return valid


def mask_keep_last(keep: int) -> Callable[[str], str]:
    """Replace letters and digits with '*' except the last `keep` of them."""

    def mask(text: str) -> str:
        alnum = sum(ch.isalnum() for ch in text)
        out, seen = [], 0
        for ch in text:
            if ch.isalnum():
                seen += 1
                out.append(ch if seen > alnum - keep else "*")
            else:
                out.append(ch)
        return "".join(out)

    return mask


def mask_email(text: str) -> str:
    local, _, domain = text.partition("@")
    return f"{local[:1]}***@{domain}"


def mask_ip(text: str) -> str:
    if "." in text:
        return ".".join([*text.split(".")[:2], "*", "*"])
    return text.split(":")[0] + ":****:…"


def mask_date(text: str) -> str:
    return re.sub(r"\d", "*", text)


EMAIL = Entity(
    "email",
    re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}"),
    lambda text: ".." not in text,
    mask_email,
    needs="@",
)
IBAN = Entity(
    "iban",
    re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
    iban_valid,
    mask_keep_last(4),
    claims_shape=True,
)
CARD = Entity(
    "payment_card",
    re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])"),
    card_valid,
    mask_keep_last(4),
)
SSN = Entity(
    "us_ssn",
    re.compile(r"(?<![\d-])\d{3}([- ])\d{2}\1\d{4}(?![\d-])"),
    ssn_valid,
    mask_keep_last(4),
)
SSN_BARE = Entity(  # nine digits without separators: only in a column named for SSNs
    "us_ssn", re.compile(r"(?<!\d)\d{9}(?!\d)"), ssn_valid, mask_keep_last(4)
)
IPV4 = Entity(
    "ip_address",
    re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"),
    ip_valid,
    mask_ip,
    needs=".",
)
IPV6 = Entity(
    "ip_address",
    re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,7}(?::|(?::[0-9A-Fa-f]{1,4}){1,7}|[0-9A-Fa-f]{1,4})(?![\w:])"),
    lambda text: text.count(":") >= 2 and ip_valid(text),
    mask_ip,
    needs=":",
)
PHONE_PATTERN = re.compile(
    r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?![\w.-])"
)
DATE_PATTERN = (
    r"(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}"
    r"|\d{1,2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]* \d{4})"
)
DOB_IN_TEXT = Entity(  # in free text a date is a date of birth only when it is called one
    "date_of_birth",
    re.compile(
        r"(?i:date of birth|birth ?date|d\.?o\.?b\.?|born(?: on)?)\W{0,3}(" + DATE_PATTERN + ")"
    ),
    lambda text: True,
    mask_date,
    group=1,
)
DATE_VALUE = re.compile(DATE_PATTERN)
DOB_COLUMN = re.compile(r"(?i)(dob|birth|geburt|naissance|nacimiento|bday)")
SSN_COLUMN = re.compile(r"(?i)(ssn|social.?security)")


def phone_entity(region: str) -> Entity:
    """Phone numbers are dialled from a region: national numbers are read as `region`'s."""
    return Entity("phone", PHONE_PATTERN, phone_validator(region), mask_keep_last(2))


def text_entities(region: str) -> tuple[Entity, ...]:
    """In the order matches are claimed: checksum-backed identifiers first, so a card
    number inside an IBAN, say, is not counted twice."""
    return (IBAN, EMAIL, CARD, SSN, IPV4, IPV6, DOB_IN_TEXT, phone_entity(region))
