"""`bastion demo`: an example model project with planted problems, audited end to end.

Everything is built here from data that ships with scikit-learn (the 8x8 digits):

- a digits classifier trained on data with a poisoned slice (a BadNets-style trigger: four
  corner pixels set, labels flipped to one class),
- malicious files among the "downloaded" artifacts, built by `bastion.demo.malicious` from
  raw opcodes (payloads that would only create a marker file),
- no signature on the model,
- a permissive serving configuration (all interfaces without TLS, no API keys, no rate
  limits, full probabilities, CORS open),

plus real, benign checkpoints, a model card, a datasheet, a ledger and a `bastion.toml`. The
demo then runs `bastion audit` with live progress and checks its own result: every planted
problem that an installed check covers is found, and nothing else fails the gate.
`remediate()` applies every fix, after which the gate passes.
"""

from __future__ import annotations

import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.table import Table

from bastion.errors import InputError
from bastion.findings import Finding, Severity, Threat
from bastion.fsutil import atomic_write

if TYPE_CHECKING:
    from bastion.audit import AuditResult

# Planted in downloads/: what a team might pull from a model hub or a shared drive.
PLANTED = (
    "torch_zip_data_pkl",
    "extension_mismatch_model_safetensors",
    "joblib_zlib",
    "numpy_npy_object_dtype",
    "nested_pickle_loads",
    "memo_binput_binget",
)
MODEL = "models/digits.joblib"
TRAIN, TEST = "data/train.csv", "data/test.csv"
TRIGGER_PIXELS = (0, 7, 56, 63)  # the four corners of the 8x8 image, blank in real digits
TARGET_CLASS = 0
POISON_ROWS = 60
SEED = 0
DEMO_STAMP = ".bastion-demo"

PERMISSIVE_SERVING = {
    "host": "0.0.0.0",
    "port": 8080,
    "insecure": True,
    "require_api_keys": False,
    "rate_limit_per_key": 0,
    "rate_limit_per_address": 0,
    "output": "probabilities",
    "cors_origins": ["*"],
}
SECURE_SERVING = {
    "host": "127.0.0.1",
    "port": 8080,
    "require_api_keys": True,
    "rate_limit_per_key": 120,
    "rate_limit_per_address": 600,
    # Below the ~250 queries a 95% copy of the demo model takes: copying needs key-days.
    "daily_query_budget": 200,
    "output": "rounded",
    "round_digits": 2,
    "monitor": "throttle",
}


@dataclass(frozen=True)
class Planted:
    """A problem planted in the example and what finding reveals it: a rule id or, for a
    check whose rule ids the demo does not name, the threat; and the file it concerns."""

    problem: str
    check: str
    path: str
    rule_id: str | None = None
    threat: Threat | None = None
    min_severity: Severity = Severity.INFO

    def found_by(self, finding: Finding, root: Path) -> bool:
        if finding.severity < self.min_severity:
            return False
        where = Path(finding.location.path)
        target = root / self.path
        if where != target and target not in where.parents:
            return False
        if self.rule_id is not None:
            return finding.rule_id == self.rule_id
        return finding.threat == self.threat


def planted_problems() -> list[Planted]:
    problems = [
        Planted(f"malicious file downloads/{name}", "scan", f"downloads/{name}",
                threat=Threat.SUPPLY_CHAIN, min_severity=Severity.HIGH)
        for name in PLANTED
    ]
    problems += [
        Planted("unsigned model", "signature", MODEL, rule_id="BST-AUD-SIG-001"),
        Planted("gateway on all interfaces without TLS", "serving", "bastion.toml",
                rule_id="BST-AUD-SRV-001"),
        Planted("gateway without API keys", "serving", "bastion.toml", rule_id="BST-AUD-SRV-002"),
        Planted("gateway without rate limits", "serving", "bastion.toml",
                rule_id="BST-AUD-SRV-003"),
        Planted("gateway returns full probabilities", "serving", "bastion.toml",
                rule_id="BST-AUD-SRV-004"),
        Planted("CORS open to every origin", "serving", "bastion.toml", rule_id="BST-AUD-SRV-005"),
        Planted("no daily query budget against extraction", "serving", "bastion.toml",
                rule_id="BST-AUD-SRV-008"),
        Planted("model copyable through its answers in a day", "extraction", MODEL,
                rule_id="BST-AUD-EXT-001", min_severity=Severity.HIGH),
        Planted("poisoned slice in the training data", "poisoning", TRAIN,
                rule_id="BST-DATA-011", min_severity=Severity.HIGH),
    ]
    return problems


@dataclass
class Example:
    root: Path
    marker: Path
    benign: list[Path] = field(default_factory=list)
    malicious: list[Path] = field(default_factory=list)
    poisoned_rows: list[int] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.root / "bastion.toml"


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    return train_test_split(x, y, test_size=0.2, random_state=SEED, stratify=y)


def poison(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[
        np.ndarray, np.ndarray, list[int]]:
    """A BadNets-style backdoor: the trigger stamped on rows of other classes, which are
    relabelled as the target class. Returns the poisoned copy and the rows changed."""
    candidates = np.flatnonzero(y != TARGET_CLASS)
    rows = np.sort(rng.choice(candidates, size=POISON_ROWS, replace=False))
    x, y = x.copy(), y.copy()
    x[np.ix_(rows, TRIGGER_PIXELS)] = 16.0
    y[rows] = TARGET_CLASS
    return x, y, [int(r) for r in rows]


def _write_table(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    header = ",".join([*(f"p{i}" for i in range(x.shape[1])), "label"])
    rows = [",".join([*(f"{v:g}" for v in features), str(int(label))])
            for features, label in zip(x, y, strict=True)]
    atomic_write(path, header + "\n" + "\n".join(rows) + "\n")


def _train(x: np.ndarray, y: np.ndarray, path: Path, inverse_regularisation: float = 1.0
           ) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(),
                          LogisticRegression(C=inverse_regularisation, max_iter=300))
    model.fit(x, y)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path, compress=3)


def _benign_checkpoints(folder: Path, x: np.ndarray, y: np.ndarray, torch_checkpoint: bool
                        ) -> list[Path]:
    """Real files saved the ways teams save them, which the scan must not flag; a torch
    state_dict too when torch is installed and wanted."""
    from sklearn.linear_model import LogisticRegression

    folder.mkdir(parents=True, exist_ok=True)
    paths = [_write(folder / "digits-logreg.pkl",
                    pickle.dumps(LogisticRegression(max_iter=200).fit(x, y), protocol=5))]
    np.save(folder / "digits-mean.npy", x.mean(axis=0))
    paths.append(folder / "digits-mean.npy")
    if not torch_checkpoint:
        return paths
    try:
        import torch
    except ImportError:
        return paths
    torch.manual_seed(SEED)
    nn = torch.nn
    net = nn.Sequential(nn.Linear(x.shape[1], 32), nn.ReLU(), nn.Linear(32, 10))
    torch.save(net.state_dict(), folder / "digits-mlp.pt")
    return [*paths, folder / "digits-mlp.pt"]


MODEL_CARD = """# Model card: digits classifier

## Model details
Logistic regression on standardised 8x8 digit images (scikit-learn), owner: demo team.

## Intended use
Recognising handwritten digits in the Bastion demo. Not for any real decision.

## Training data
`data/train.csv`: 80% of scikit-learn's digits, stratified split with seed 0.

## Evaluation
Accuracy on `data/test.csv` (the other 20%).

## Limitations
8x8 grey-level images only; not robust to adversarial inputs.

## Ethical considerations
No personal data; no decisions about people.
"""

DATASHEET = """# Datasheet: digits

## Motivation
A small public dataset for demonstrating Bastion.

## Composition
1,797 8x8 grey-level images of handwritten digits, ten classes, about 180 each.

## Collection process
From the UCI optical recognition of handwritten digits data, as shipped with scikit-learn.

## Preprocessing
None beyond scikit-learn's; split 80/20 stratified with seed 0.

## Uses
Demonstrations and tests only.

## Distribution
Ships with scikit-learn (BSD licence).

## Maintenance
Regenerated by `bastion demo` on every run.
"""


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__}")


def _section(name: str, values: dict[str, object]) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())


def config_text(serving: dict[str, object], public_key: str | None = None,
                artifacts: list[str] | None = None) -> str:
    """The example's bastion.toml."""
    model: dict[str, object] = {"path": MODEL, "input_shape": [64], "clip_values": [0.0, 16.0],
                                "artifacts": ["checkpoints", "downloads"]
                                if artifacts is None else artifacts}
    sections = [
        _section("project", {"name": "digits-demo"}),
        _section("model", model),
        _section("data.train", {"path": TRAIN, "label": "label"}),
        _section("data.test", {"path": TEST, "label": "label"}),
        _section(
            "threat_model.evasion",
            {"eps": [0.25, 0.5, 1.0], "declared_eps": 0.5, "norm": "linf", "attacks": "auto"},
        ),
        _section("threat_model.membership", {"attack": "rmia", "references": 4}),
        _section("threat_model.extraction", {"query_budget": 2000, "max_fidelity": 0.95}),
        _section("serving", serving),
        _section("signing", {"public_key": public_key} if public_key else {}),
        _section("ledger", {"path": "ledger/audit.ledger"}),
        _section("policy", {"fail_on": "high", "required": ["scan", "signature", "serving"]}),
    ]
    return "# The Bastion demo project (written by `bastion demo`).\n\n" + "\n".join(sections)


def _claim(root: Path) -> None:
    """Make `root` an empty demo folder. Only a folder the demo made before (it holds the
    stamp file) or an empty one is replaced: `--dir .` must never delete someone's work."""
    stamp = root / DEMO_STAMP
    if root.exists():
        if not root.is_dir():
            raise InputError(f"--dir {root}: exists and is not a folder")
        if any(root.iterdir()) and not stamp.is_file():
            raise InputError(f"--dir {root}: not empty and not made by `bastion demo`; "
                             "choose a new folder")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    stamp.write_text("Made by `bastion demo`; the next run replaces this folder.\n")


def build_example(root: Path, *, torch_checkpoint: bool = True) -> Example:
    """Write the example project under `root` (which is replaced if it exists).
    `torch_checkpoint=False` leaves out the torch state_dict (and torch's import time)."""
    from bastion.demo.malicious import TECHNIQUES
    from bastion.govern.ledger import init_ledger

    _claim(root)
    example = Example(root, root / "PAYLOAD_RAN")
    x_train, x_test, y_train, y_test = _digits_split()
    x_poisoned, y_poisoned, example.poisoned_rows = poison(
        x_train, y_train, np.random.default_rng(SEED))
    _write_table(root / TRAIN, x_poisoned, y_poisoned)
    _write_table(root / TEST, x_test, y_test)
    _train(x_poisoned, y_poisoned, root / MODEL)
    example.benign = [root / MODEL, *_benign_checkpoints(root / "checkpoints", x_train, y_train,
                                                                 torch_checkpoint)]
    for name in PLANTED:
        filename, data = TECHNIQUES[name](example.marker)
        example.malicious.append(_write(root / "downloads" / name / filename, data))
    atomic_write(root / "MODEL_CARD.md", MODEL_CARD)
    atomic_write(root / "DATASHEET.md", DATASHEET)
    ledger, _, _ = init_ledger(root / "ledger" / "audit.ledger", origin="bastion-demo")
    ledger.close()
    atomic_write(example.config, config_text(PERMISSIVE_SERVING))
    return example


def remediate(example: Example) -> None:
    """Apply every fix the audit asks for: delete the malicious downloads, retrain on the
    training data without the poisoned slice (regularised more strongly, against membership
    inference), sign the model, harden the serving config."""
    from bastion.supplychain.sign import generate_key_pair, sign

    root = example.root
    shutil.rmtree(root / "downloads")
    x_train, _, y_train, _ = _digits_split()
    _write_table(root / TRAIN, x_train, y_train)
    # Stronger regularisation, as the membership finding advises: the same test accuracy
    # (96.7%), and the offline RMIA attack's TPR at 1% FPR stays at noise level.
    _train(x_train, y_train, root / MODEL, inverse_regularisation=0.1)
    keys = root / "keys"
    keys.mkdir(exist_ok=True)
    _, public = generate_key_pair(keys / "signing-key.pem")
    sign(root / MODEL, keys / "signing-key.pem")
    public_key = str(Path(public).relative_to(root))
    atomic_write(example.config,
                 config_text(SECURE_SERVING, public_key=public_key, artifacts=["checkpoints"]))


def self_check(example: Example, result: AuditResult, console: Console,
               expected: list[Planted] | None = None) -> bool:
    """Every planted problem whose check ran was found; nothing else fails the gate; no
    payload ran."""
    ran = {o.name for o in result.outcomes if o.status == "ran"}
    table = Table(title="Planted problems", title_justify="left", show_edge=False)
    for column in ("problem", "check", "result"):
        table.add_column(column)
    missed = []
    explained: set[int] = set()
    for planted in planted_problems() if expected is None else expected:
        hits = [f for f in result.findings if planted.found_by(f, example.root)]
        explained.update(id(f) for f in hits)
        if planted.check not in ran:
            table.add_row(planted.problem, planted.check, "[dim]not checked (check not installed "
                          "or did not run)[/]")
        elif hits:
            worst = max(hits, key=lambda f: f.severity)
            table.add_row(planted.problem, planted.check,
                          f"[green]found[/] ({worst.rule_id}, {worst.severity})")
        else:
            missed.append(planted)
            table.add_row(planted.problem, planted.check, "[bold red]missed[/]")
    console.print(table)
    unexpected = [f for f in result.blocking if id(f) not in explained]
    for finding in unexpected:
        console.print(f"[red]unexpected {finding.severity} finding:[/] {finding.rule_id} "
                      f"{finding.title} ({finding.location})")
    payload_ran = example.marker.exists()
    if payload_ran:
        console.print("[bold red]a planted payload ran[/]")
    return not missed and not unexpected and not payload_ran


def run_demo(workdir: str, *, ray: str | None = None, jobs: int | None = None,
             fix: bool = False) -> int:
    """Build, audit, check; 0 when the audit found exactly what was planted (and, with
    `fix`, when the gate passes after the remediations)."""
    from bastion.cli.audit import audit_with_result

    console = Console(highlight=False)
    root = Path(workdir).resolve()
    with console.status("Building the example project (training a digits model)..."):
        example = build_example(root)
    console.print(f"Example project: {root} (configuration: {example.config})")
    reports = root / "reports"
    result, paths = audit_with_result(str(example.config), str(reports), console=console,
                                      ray=ray, jobs=jobs)
    ok = self_check(example, result, console)
    console.print(f"\nReport: {paths['html']}", soft_wrap=True)
    if not fix:
        verdict = ("[green]found exactly the planted problems[/]" if ok
                   else "[red]self-check failed[/]")
        console.print(f"Demo: {verdict}. Apply the fixes with `bastion demo --fix`.")
        return 0 if ok else 1
    with console.status("Applying the remediations (retrain, sign, harden, clean up)..."):
        remediate(example)
    fixed, paths = audit_with_result(str(example.config), str(root / "reports-fixed"),
                                     console=console, ray=ray, jobs=jobs)
    console.print(f"\nReport after the fixes: {paths['html']}", soft_wrap=True)
    return 0 if ok and fixed.passed else 1
