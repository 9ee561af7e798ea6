"""Which files make up a model or dataset: a walk of the folder (or a single file) that names
every file by its path relative to the root, skips ignored paths, and refuses what cannot be
signed honestly (symlinks unless allowed, devices, pipes, undecodable names).

The rules follow the OpenSSF model-signing serializer so both tools see the same files: git
metadata is always ignored, an ignored folder is skipped whole, a symlink to a file is hashed
as the file it points to (only with allow_symlinks), a symlink to a folder is not descended.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bastion.errors import InputError
from bastion.supplychain.sign import errors
from bastion.supplychain.sign.errors import Problem

GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
SINGLE_FILE_NAME = "."


@dataclass(frozen=True)
class Entry:
    name: str
    path: str
    size: int


@dataclass
class Listing:
    root: Path
    is_file: bool
    files: list[Entry] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)
    refused: list[Problem] = field(default_factory=list)
    refused_names: set[str] = field(default_factory=set)

    def refuse(self, name: str, problem: Problem) -> None:
        self.refused.append(problem)
        self.refused_names.add(name)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.files)


def artifact_name(root: Path) -> str:
    """The subject name: the final path component, as the peer records it."""
    name = root.name
    if not name or name == "..":
        name = root.resolve().name
    return name


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + "/")


def matches_pattern(name: str, patterns: Iterable[str]) -> bool:
    """A shell pattern matches the relative path; one without '/' also matches a base name at
    any depth (like .gitignore), so `__pycache__` or `*.log` need no leading folders."""
    base = name.rsplit("/", 1)[-1]
    for pattern in patterns:
        pattern = pattern.strip("/")
        if fnmatch.fnmatchcase(name, pattern):
            return True
        if "/" not in pattern and fnmatch.fnmatchcase(base, pattern):
            return True
    return False


def _undecodable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def list_artifact(
    root: str | os.PathLike[str],
    *,
    ignore_prefixes: Iterable[str] = (),
    patterns: Iterable[str] = (),
    allow_symlinks: bool = False,
) -> Listing:
    """List the files of `root` (a folder or one file). Problems that make the artifact
    unsignable are collected in `refused`; the caller decides whether they are bad input
    (signing) or a failed verification."""
    path = Path(root)
    if not path.exists() and not path.is_symlink():
        raise InputError(f"no such file or folder: {path}")
    if path.is_symlink() and not allow_symlinks:
        listing = Listing(path, False)
        listing.refuse(SINGLE_FILE_NAME, errors.symlink_refused(str(path)))
        return listing
    if path.is_file():
        entry = Entry(SINGLE_FILE_NAME, str(path), path.stat().st_size)
        return Listing(path, True, files=[entry])
    if not path.is_dir():
        listing = Listing(path, False)
        listing.refuse(SINGLE_FILE_NAME, errors.special_file(str(path)))
        return listing
    listing = Listing(path, False)
    _walk(listing, tuple(ignore_prefixes) + GIT_PATHS, tuple(patterns), allow_symlinks)
    return listing


def _walk(
    listing: Listing, prefixes: tuple[str, ...], patterns: tuple[str, ...], allow_symlinks: bool
) -> None:
    pending = [(str(listing.root), "")]
    while pending:
        folder, prefix = pending.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            raise InputError(f"cannot list {folder}: {exc.strerror}") from None
        for entry in entries:
            name = prefix + entry.name
            if any(under(name, p) for p in prefixes):
                continue
            if matches_pattern(name, patterns):
                listing.matched.append(name)
                continue
            if _undecodable(name):
                problem = Problem(errors.SPECIAL, f"file name is not valid UTF-8: {name!a}")
                listing.refuse(name, problem)
                continue
            _visit(listing, entry, name, allow_symlinks, pending)


def _visit(
    listing: Listing,
    entry: os.DirEntry[str],
    name: str,
    allow_symlinks: bool,
    pending: list[tuple[str, str]],
) -> None:
    if entry.is_symlink():
        if not allow_symlinks:
            listing.refuse(name, errors.symlink_refused(name))
            return
        try:
            target = os.stat(entry.path)
        except OSError:
            listing.refuse(name, Problem(errors.SYMLINK, f"broken symlink: {name}"))
            return
        if stat.S_ISREG(target.st_mode):
            listing.files.append(Entry(name, entry.path, target.st_size))
        elif not stat.S_ISDIR(target.st_mode):
            listing.refuse(name, errors.special_file(name))
        return
    try:
        info = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return  # removed while the folder was listed: it is simply not there
    if stat.S_ISDIR(info.st_mode):
        pending.append((entry.path, name + "/"))
    elif stat.S_ISREG(info.st_mode):
        listing.files.append(Entry(name, entry.path, info.st_size))
    else:
        listing.refuse(name, errors.special_file(name))
