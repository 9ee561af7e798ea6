"""bastion.toml validation: every problem is one line naming the key; unknown keys refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.config import load_config, parse_config
from bastion.errors import InputError
from bastion.findings import Severity

VALID = """
[project]
name = "digits"

[model]
path = "model.joblib"
artifacts = ["downloads"]
input_shape = [64]
clip_values = [0.0, 16.0]

[data.train]
path = "train.csv"
label = "label"

[threat_model.evasion]
eps = 0.3
norm = "l2"
attacks = ["fgsm", "pgd"]

[threat_model.extraction]
query_budget = 500

[serving]
host = "0.0.0.0"
tls_cert = "cert.pem"
tls_key = "key.pem"
rate_limit_per_key = 0
cors_origins = ["https://app.example"]
store = "redis://127.0.0.1:6379/0"

[policy]
fail_on = "medium"
thresholds = { serving = "high" }
required = ["scan", "signature"]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "model.joblib").write_bytes(b"x")
    (tmp_path / "train.csv").write_text("a,label\n1,0\n")
    (tmp_path / "downloads").mkdir()
    (tmp_path / "bastion.toml").write_text(VALID)
    return tmp_path


def test_valid_file_loads_with_paths_relative_to_it(project: Path, monkeypatch) -> None:
    monkeypatch.chdir("/")
    config = load_config(project / "bastion.toml")
    assert config.model_paths() == [project / "model.joblib"]
    assert config.artifact_paths() == [project / "downloads"]
    assert config.data_paths() == [project / "train.csv"]
    assert config.threat_model.evasion.norm == "l2"
    assert config.serving.rate_limit_per_key == 0
    assert config.policy.fail_on is Severity.MEDIUM
    assert config.policy.threshold("serving") is Severity.HIGH
    assert config.policy.threshold("scan") is Severity.MEDIUM
    assert config.source == project / "bastion.toml"


def test_defaults_are_the_secure_gateway_defaults(tmp_path: Path) -> None:
    config = parse_config({"serving": {}}, tmp_path)
    serving = config.serving
    assert serving.host == "127.0.0.1" and serving.require_api_keys
    assert serving.rate_limit_per_key > 0 and serving.output == "rounded"
    assert serving.cors_origins == [] and config.policy.fail_on is Severity.HIGH


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"serving": {"hots": "0.0.0.0"}}, "bastion.toml: unknown key 'serving.hots'"),
        ({"modle": {}}, "bastion.toml: unknown key 'modle'"),
        ({"serving": {"port": "http"}}, "bastion.toml: serving.port: Input should be a valid "
         "integer"),
        ({"serving": {"port": 70000}}, "bastion.toml: serving.port: Input should be less than "
         "or equal to 65535"),
        ({"model": {}}, "bastion.toml: model.path: missing (required)"),
        ({"model": {"path": "m", "factory": "not a factory"}}, "bastion.toml: model.factory: "
         "String should match pattern"),
        ({"model": {"path": "m", "clip_values": [1, 0]}}, "bastion.toml: model: clip_values "
         "must be [low, high]"),
        ({"policy": {"fail_on": "severe"}}, "bastion.toml: policy.fail_on: unknown severity "
         "'severe'"),
        ({"policy": {"thresholds": {"scan": 3}}}, "bastion.toml: policy.thresholds.scan: must "
         "be a severity name"),
        ({"serving": {"tls_cert": "c.pem"}}, "bastion.toml: serving: tls_cert and tls_key go "
         "together"),
        ({"serving": {"store": "mysql://db"}}, "bastion.toml: serving: store 'mysql://db' must "
         "be"),
        ({"serving": {"output": "top-k"}}, "bastion.toml: serving: output = 'top-k' needs top_k"),
        ({"threat_model": {"evasion": {"eps": 0}}}, "bastion.toml: threat_model.evasion.eps: "
         "Input should be greater than 0"),
        ({"threat_model": {"evasion": {"eps": 1, "attacks": ["deepfool"]}}},
         "bastion.toml: threat_model.evasion.attacks[0]: Input should be 'fgsm'"),
        ({"threat_model": {"membership": {"max_advantage": 2}}},
         "bastion.toml: threat_model.membership.max_advantage: Input should be less than or "
         "equal to 1"),
        ({"version": 2}, "bastion.toml: version: Input should be 1"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, data: dict, message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_config(data, tmp_path)
    text = str(caught.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_several_problems_report_the_first_and_a_count(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unknown key 'a' \(and 1 more\)$"):
        parse_config({"a": 1, "b": 2}, tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model\npath = 1", "not valid TOML"),
        ("[model]\npath = 'missing.pt'\n", r"model.path\[0\]: model file"),
        ("[model]\npath = 'model.joblib'\nartifacts = ['nope']\n",
         r"model.artifacts\[0\]: artifact"),
        ("[data.train]\npath = 'gone.csv'\n", "data.train.path: data"),
        ("[signing]\npublic_key = 'k.pub'\n", "signing.public_key: public key"),
    ],
)
def test_unreadable_or_missing_files_are_one_line(project: Path, text: str, message: str) -> None:
    path = project / "bastion.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as caught:
        load_config(path)
    assert str(caught.value).startswith(str(path))


def test_missing_and_binary_config_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such configuration file"):
        load_config(tmp_path / "bastion.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="not UTF-8"):
        load_config(tmp_path / "bin.toml")
