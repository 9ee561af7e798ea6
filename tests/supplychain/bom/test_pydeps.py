"""Reading packages from requirements files, lock files and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.errors import InputError
from bastion.supplychain.pydeps import Package, from_environment, from_lock, from_requirements


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_requirements_pins_includes_hashes_markers(tmp_path: Path) -> None:
    write(tmp_path / "base.txt", "Requests==2.31.0  # pinned\n")
    req = write(
        tmp_path / "requirements.txt",
        "# comment line\n--index-url https://example.invalid/simple\n-r base.txt\n"
        "numpy>=1.24\n"
        "torch==2.3.0 \\\n    --hash=sha256:aaaa\n"
        "pywin32==306 ; sys_platform == 'win32'\n"
        "Scikit_Learn===1.5.0\n"
        "pandas==2.*\n",
    )
    packages = {p.name: p for p in from_requirements(req).packages}
    assert set(packages) == {"requests", "numpy", "torch", "scikit-learn", "pandas"}
    assert packages["requests"] == Package("requests", "2.31.0")
    assert packages["torch"].version == "2.3.0"
    assert packages["scikit-learn"].purl == "pkg:pypi/scikit-learn@1.5.0"
    assert packages["numpy"].version is None and packages["pandas"].version is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("numpy==1.0\nnot a requirement!\n", "requirements.txt:2: not a valid requirement"),
        ("-e ./local\n", "requirements.txt:1: editable requirement './local'"),
        ("--frobnicate\n", "requirements.txt:1: unknown pip option '--frobnicate'"),
        ("-r requirements.txt\n", "include each other in a loop"),
        ("-r missing.txt\n", "missing.txt: no such requirements file"),
    ],
)
def test_requirements_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    req = write(tmp_path / "requirements.txt", text)
    with pytest.raises(InputError, match=message.replace(".", r"\.").replace("'", ".")):
        from_requirements(req)


def test_poetry_lock_graph(tmp_path: Path) -> None:
    lock = write(
        tmp_path / "poetry.lock",
        '[[package]]\nname = "pandas"\nversion = "2.2.0"\n'
        '[package.dependencies]\nnumpy = ">=1.22"\n'
        '[[package]]\nname = "numpy"\nversion = "1.26.4"\n',
    )
    packages = {p.name: p for p in from_lock(lock).packages}
    assert packages["pandas"] == Package("pandas", "2.2.0", ("numpy",), direct=True)
    assert packages["numpy"] == Package("numpy", "1.26.4", (), direct=False)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not = [toml", "not a readable TOML lock file"),
        ('[tool]\nx = 1\n', "no \\[\\[package\\]\\]"),
        ('[[package]]\nversion = "1"\n', "package #1 has no name"),
        ('[[package]]\nname = "a"\nversion = 1\n', "version must be a string"),
    ],
)
def test_lock_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        from_lock(write(tmp_path / "uv.lock", text))


def test_environment_lists_this_python() -> None:
    packages = {p.name: p for p in from_environment().packages}
    assert "numpy" in packages and packages["numpy"].version
    assert "numpy" in packages["scikit-learn"].requires
    assert not packages["numpy"].direct  # scikit-learn requires it
