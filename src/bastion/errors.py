"""Errors a user can act on. Each carries one line naming what is wrong; the CLI prints it
and exits with code 2, never a traceback."""

from __future__ import annotations


class BastionError(Exception):
    """Base of every error Bastion reports to a user."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(BastionError):
    """A file or argument given by the user cannot be used (missing, corrupt, wrong shape)."""


class UsageError(BastionError):
    """The command line asks for something contradictory or unsupported."""


class RefusedError(BastionError):
    """Bastion refused an unsafe action (loading a file with a blocking finding)."""
