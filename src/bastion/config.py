"""`bastion.toml`: what `bastion audit` audits and the policy it enforces (docs/config.md).

The file is validated in full before anything runs. Unknown keys are refused (a misspelt key
would otherwise silently switch a check off), and every problem is one line naming the key.
Relative paths are read relative to the folder that holds the file.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from bastion.errors import InputError
from bastion.findings import Severity

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport
    import tomli as tomllib

DEFAULT_CONFIG = "bastion.toml"
MAX_CONFIG_BYTES = 1 << 20


def _severity(value: Any) -> Severity:
    if isinstance(value, Severity):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a severity name (info, low, medium, high, critical)")
    return Severity.parse(value)


SeverityName = Annotated[Severity, BeforeValidator(_severity)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Project(_Section):
    name: str = "model"


class ModelSection(_Section):
    """The model under audit and the other artifacts that come with it."""

    path: list[str] = Field(min_length=1)
    factory: str | None = Field(default=None, pattern=r"^[\w.]+:[\w.]+$")
    input_shape: tuple[PositiveInt, ...] | None = None
    clip_values: tuple[float, float] | None = None
    artifacts: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _one_path_or_many(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("path"), str):
            return {**data, "path": [data["path"]]}
        return data

    @model_validator(mode="after")
    def _ordered_clip(self) -> ModelSection:
        if self.clip_values is not None and self.clip_values[0] >= self.clip_values[1]:
            raise ValueError("clip_values must be [low, high] with low < high")
        return self


class DataSet(_Section):
    path: str
    label: str | None = None
    key: str | None = None
    baseline: str | None = None  # the previously audited version, for the data_diff check


class Data(_Section):
    train: DataSet | None = None
    test: DataSet | None = None


# `bastion.assess.evasion.ATTACKS`, and `auto`: the strongest sequence the model allows.
EvasionAttack = Literal["fgsm", "pgd", "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square",
                        "hopskipjump", "auto"]


class Evasion(_Section):
    """The evasion attacker, in the terms of `bastion assess evasion`: perturbation budgets
    (`eps`, one or a list for the robustness curve), the budget the model must withstand
    (`declared_eps`), the norm, the attacks, and how much of the test data and compute the
    assessment spends."""

    eps: list[float] = Field(min_length=1)
    declared_eps: float | None = None
    norm: Literal["linf", "l2"] = "linf"
    attacks: list[EvasionAttack] = Field(default_factory=lambda: ["auto"], min_length=1)
    min_robust_accuracy: Fraction = 0.5
    points: PositiveInt = 200
    steps: PositiveInt = 50
    budget: PositiveInt = 1000

    @model_validator(mode="before")
    @classmethod
    def _one_or_many(cls, data: Any) -> Any:
        """`eps = 0.5` and `attacks = "auto"` mean one-element lists."""
        if not isinstance(data, dict):
            return data
        single = {k: [data[k]] for k in ("eps", "attacks") if isinstance(data.get(k), int | float
                                                                         | str)}
        return {**data, **single}

    @field_validator("eps")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        for eps in values:
            if not 0 < eps < float("inf"):
                raise ValueError(f"every epsilon must be a positive number (got {eps})")
        return values

    @model_validator(mode="after")
    def _consistent(self) -> Evasion:
        if self.declared_eps is not None and self.declared_eps not in self.eps:
            raise ValueError(f"declared_eps {self.declared_eps} must be one of eps {self.eps}")
        if "auto" in self.attacks and len(self.attacks) > 1:
            raise ValueError("attacks: 'auto' picks the attacks itself; give it alone")
        return self


MembershipAttack = Literal["loss", "shadow", "lira", "lira-offline", "lira-online", "rmia",
                           "rmia-offline", "rmia-online"]
# Offline RMIA calibrates its `a` by letting one reference model play the target against the
# others; online attacks need reference models that trained on each record (half of them).
_MIN_REFERENCES = {"rmia": 4, "rmia-offline": 4, "rmia-online": 2, "lira-online": 2}


class Membership(_Section):
    """The membership-inference attacker: the attack, its compute (reference models) and its
    queries; and the leak at which the finding is high, on the two measures the membership
    policy grades by (`bastion.assess.membership.MembershipPolicy`)."""

    attack: MembershipAttack = "rmia"
    references: PositiveInt = 4
    query_budget: PositiveInt | None = None
    train_fn: str | None = Field(default=None, pattern=r"^[\w.]+:[\w.]+$")
    max_auc: Annotated[float, Field(gt=0.5, le=1.0)] = 0.75
    max_tpr_at_1pct_fpr: Annotated[float, Field(gt=0.0, le=1.0)] = 0.10

    @model_validator(mode="after")
    def _enough_references(self) -> Membership:
        needed = _MIN_REFERENCES.get(self.attack, 1)
        if self.references < needed:
            raise ValueError(f"attack {self.attack!r} needs at least {needed} reference models "
                             f"(references = {self.references})")
        return self


class Inversion(_Section):
    """What an attacker reconstructs from the model: a sensitive column of the training data
    (attribute inference) and/or what each class looks like (MIFace, torch models)."""

    sensitive: str | None = None
    reconstruct: bool = False
    steps: PositiveInt = 300
    max_advantage: Fraction = 0.15
    max_identified: Fraction = 0.9

    @model_validator(mode="after")
    def _something_to_do(self) -> Inversion:
        if self.sensitive is None and not self.reconstruct:
            raise ValueError("name a sensitive column (sensitive = \"COLUMN\") or set "
                             "reconstruct = true, or leave the section out")
        return self


class Extraction(_Section):
    query_budget: PositiveInt = 10_000
    max_fidelity: Fraction = 0.8


# `bastion data check`'s detectors: the row-level ones of `bastion.data.poison.DETECTORS` and
# `trigger` (Neural Cleanse, for a torch image model only).
PoisoningDetector = Literal["labels", "backdoor", "duplicates", "outliers", "trigger"]


class Poisoning(_Section):
    """Which of `bastion data check`'s detectors the poisoning check runs (all by default)."""

    detectors: list[PoisoningDetector] = Field(
        default_factory=lambda: ["labels", "backdoor", "duplicates", "outliers", "trigger"],
        min_length=1)


class DataDiff(_Section):
    """How much the data may change between audits before the data_diff check reports it
    (fractions of the previously audited rows; `bastion data diff`'s policy)."""

    max_changed: Fraction = 0.05
    max_label_changes: Fraction = 0.001
    max_class_shift: Fraction = 0.02


class ThreatModel(_Section):
    poisoning: Poisoning = Poisoning()
    data_diff: DataDiff = DataDiff()
    evasion: Evasion | None = None
    membership: Membership | None = None
    inversion: Inversion | None = None
    extraction: Extraction | None = None


OutputPolicy = Literal["probabilities", "label", "top-k", "rounded", "reverse-sigmoid"]
_STORE = re.compile(r"^(memory|sqlite:.+|rediss?://.+)$")


class Serving(_Section):
    """The deployment to review, in the terms of `bastion serve`'s options. The defaults are
    the gateway's secure defaults; a permissive setting has to be written out."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    insecure: bool = False
    require_api_keys: bool = True
    rate_limit_per_key: NonNegativeInt = 600  # requests per minute; 0: no limit
    rate_limit_per_address: NonNegativeInt = 1200
    daily_query_budget: NonNegativeInt = 0  # queries per key per day; 0: no budget
    max_body_bytes: NonNegativeInt = 1 << 20  # 0: no limit
    output: OutputPolicy = "rounded"
    top_k: PositiveInt | None = None
    round_digits: Annotated[int, Field(ge=0, le=16)] = 2
    monitor: Literal["off", "log", "throttle", "block"] = "throttle"
    cors_origins: list[str] = Field(default_factory=list)
    store: str = "memory"

    @model_validator(mode="after")
    def _consistent(self) -> Serving:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if not _STORE.match(self.store):
            raise ValueError(
                f"store {self.store!r} must be 'memory', 'sqlite:PATH' or 'redis://HOST:PORT'"
            )
        if self.output == "top-k" and self.top_k is None:
            raise ValueError("output = 'top-k' needs top_k")
        return self


class Signing(_Section):
    public_key: str | None = None
    signature: str | None = None


class LedgerSection(_Section):
    path: str
    key: str | None = None


class SupplyChain(_Section):
    """Where the project's Python packages are listed (for the ML-BOM and the dependency
    check) and where known vulnerabilities are looked up. Without `osv_db` or `online`
    the dependency check does not run, so an audit never touches the network unasked."""

    requirements: str | None = None
    lock: str | None = None
    osv_db: str | None = None
    online: bool = False

    @model_validator(mode="after")
    def _one_source_each(self) -> SupplyChain:
        if self.requirements and self.lock:
            raise ValueError("requirements and lock both list the packages: give one")
        if self.osv_db and self.online:
            raise ValueError("osv_db (offline) and online = true (pip-audit) are two "
                             "vulnerability sources: give one")
        if self.online and self.lock:
            raise ValueError("online = true runs pip-audit, which reads requirements files or "
                             "the environment, not lock files: use osv_db with a lock file")
        return self


class Documentation(_Section):
    model_card: str | None = None
    datasheet: str | None = None


class Policy(_Section):
    fail_on: SeverityName = Severity.HIGH
    thresholds: dict[str, SeverityName] = Field(default_factory=dict)
    required: list[str] = Field(default_factory=list)

    def threshold(self, check: str) -> Severity:
        """The severity at which findings of `check` fail the gate."""
        return self.thresholds.get(check, self.fail_on)


class AuditConfig(_Section):
    """A whole `bastion.toml`. `root` is the folder relative paths are read from."""

    version: Literal[1] = 1
    project: Project = Project()
    model: ModelSection | None = None
    data: Data = Data()
    threat_model: ThreatModel = ThreatModel()
    serving: Serving | None = None
    signing: Signing = Signing()
    supply_chain: SupplyChain = SupplyChain()
    ledger: LedgerSection | None = None
    documentation: Documentation = Documentation()
    policy: Policy = Policy()

    _root: Path = PrivateAttr(default_factory=Path.cwd)
    _source: Path | None = PrivateAttr(default=None)

    @property
    def root(self) -> Path:
        return self._root

    @property
    def source(self) -> Path | None:
        """The file this configuration was read from (None when built in code)."""
        return self._source

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """A path from the file, relative to the file's folder unless absolute."""
        return (self._root / Path(path).expanduser()).resolve()

    def model_paths(self) -> list[Path]:
        return [self.resolve(p) for p in self.model.path] if self.model else []

    def artifact_paths(self) -> list[Path]:
        return [self.resolve(p) for p in self.model.artifacts] if self.model else []

    def data_paths(self) -> list[Path]:
        sets = (self.data.train, self.data.test)
        return [self.resolve(s.path) for s in sets if s is not None]


def _key(loc: tuple[int | str, ...]) -> str:
    """Dotted key path as written in the file (list positions in brackets)."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _one_line(error: dict[str, Any]) -> str:
    key = _key(error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key {key!r}"
    if error["type"] == "missing":
        return f"{key}: missing (required)"
    message = error["msg"].removeprefix("Value error, ")
    shown = repr(error.get("input"))
    if "input" in error and not isinstance(error["input"], dict | list) and shown not in message:
        message += f" (got {shown})"
    return f"{key}: {message}" if key else message


def describe(exc: ValidationError, source: str) -> str:
    """One line for the user: the first problem and how many more there are."""
    errors = exc.errors(include_url=False)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {_one_line(errors[0])}{more}"


def parse_config(
    data: dict[str, Any], root: str | os.PathLike[str], source: str = DEFAULT_CONFIG
) -> AuditConfig:
    """Validate a decoded configuration; `root` is where its relative paths start."""
    try:
        config = AuditConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(describe(exc, source)) from None
    config._root = Path(root).resolve()
    return config


def _require(key: str, path: Path, what: str, source: str) -> None:
    if not path.exists():
        raise InputError(f"{source}: {key}: {what} {path} does not exist")


def check_paths(config: AuditConfig, source: str) -> None:
    """Files the audit must read exist (a missing model is a typo, not a finding)."""
    if config.model:
        for i, raw in enumerate(config.model.path):
            _require(f"model.path[{i}]", config.resolve(raw), "model file", source)
        for i, raw in enumerate(config.model.artifacts):
            _require(f"model.artifacts[{i}]", config.resolve(raw), "artifact", source)
    for name in ("train", "test"):
        dataset = getattr(config.data, name)
        if dataset is not None:
            _require(f"data.{name}.path", config.resolve(dataset.path), "data", source)
            if dataset.baseline is not None:
                _require(f"data.{name}.baseline", config.resolve(dataset.baseline),
                         "baseline data", source)
    if config.signing.public_key:
        key = config.resolve(config.signing.public_key)
        _require("signing.public_key", key, "public key", source)
    supply = config.supply_chain
    for key, what in (("requirements", "requirements file"), ("lock", "lock file"),
                      ("osv_db", "OSV folder")):
        raw = getattr(supply, key)
        if raw:
            _require(f"supply_chain.{key}", config.resolve(raw), what, source)


def load_config(path: str | os.PathLike[str] = DEFAULT_CONFIG) -> AuditConfig:
    """Read, validate and check a `bastion.toml`; InputError names the key that is wrong."""
    source = Path(path)
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{source}: no such configuration file") from None
    except OSError as exc:
        raise InputError(f"{source}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise InputError(f"{source}: larger than {MAX_CONFIG_BYTES} bytes; not a configuration")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{source}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{source}: not valid TOML: {exc}") from None
    config = parse_config(data, source.resolve().parent, str(source))
    config._source = source.resolve()
    check_paths(config, str(source))
    return config
