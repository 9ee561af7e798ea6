"""What a failed verification says. Every way a verification can fail has a kind and one exact
message, so a user (and a test) can tell a changed file from a wrong key at a glance."""

from __future__ import annotations

from dataclasses import dataclass

from bastion.errors import BastionError

CHANGED = "changed"
MISSING = "missing"
EXTRA = "extra"
WRONG_KEY = "wrong-key"
BAD_SIGNATURE = "bad-signature"
UNTRUSTED = "untrusted-certificate"
MALFORMED = "malformed"
UNSUPPORTED = "unsupported"
SYMLINK = "symlink"
ESCAPE = "escape"
SPECIAL = "special-file"


@dataclass(frozen=True)
class Problem:
    """One reason a verification failed: its kind and the sentence shown to the user."""

    kind: str
    message: str


def changed(path: str, detail: str = "") -> Problem:
    suffix = f" ({detail})" if detail else ""
    return Problem(CHANGED, f"file changed: {path}{suffix}")


def missing(path: str) -> Problem:
    return Problem(MISSING, f"file missing: {path}")


def extra(path: str) -> Problem:
    return Problem(EXTRA, f"extra file not covered by the signature: {path}")


def symlink_refused(path: str) -> Problem:
    return Problem(SYMLINK, f"symlink refused: {path} (pass --allow-symlinks to follow symlinks)")


def special_file(path: str) -> Problem:
    return Problem(SPECIAL, f"not a regular file or folder: {path}")


def escapes(name: str) -> Problem:
    return Problem(ESCAPE, f"manifest entry escapes the folder: {name!r}")


def malformed(signature: str, reason: str) -> Problem:
    return Problem(MALFORMED, f"malformed signature bundle {signature}: {reason}")


def unsupported(signature: str, what: str) -> Problem:
    return Problem(UNSUPPORTED, f"unsupported signature version in {signature}: {what}")


def wrong_key(signature: str, key: str) -> Problem:
    return Problem(WRONG_KEY, f"signature {signature} was not made with the key {key}")


def bad_signature(signature: str, key: str) -> Problem:
    return Problem(
        BAD_SIGNATURE,
        f"signature {signature} does not verify with {key}: "
        "the bundle was altered or signed by another key",
    )


def untrusted(signature: str, reason: str) -> Problem:
    return Problem(UNTRUSTED, f"signing certificate in {signature} is not trusted: {reason}")


class VerificationError(BastionError):
    """The artifact does not match its signature, or the signature cannot be trusted.
    The CLI maps it to exit code 1 (a failed check), not 2 (bad input)."""

    exit_code = 1

    def __init__(self, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("a VerificationError needs at least one problem")
        self.problems = list(problems)
        text = "; ".join(p.message for p in self.problems)
        if len(self.problems) > 1:
            text = f"{len(self.problems)} problems: {text}"
        super().__init__(text)

    @property
    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}
