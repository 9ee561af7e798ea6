"""`bastion demo`: an example project with real models and planted malicious files, scanned.

The benign models are trained here on data that ships with scikit-learn; the malicious
files come from `bastion.demo.malicious` (raw opcodes, payloads that would only create a
marker file). The demo checks its own result: every planted file caught, no real model
flagged, the marker never created.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from bastion.cli.scan import scan_report
from bastion.findings import Severity
from bastion.fsutil import atomic_write
from bastion.report import render
from bastion.report.table import print_table
from bastion.supplychain.scan import scan

# Planted in downloads/: what a team might pull from a model hub or a shared drive.
PLANTED = (
    "torch_zip_data_pkl",
    "extension_mismatch_model_safetensors",
    "joblib_zlib",
    "numpy_npy_object_dtype",
    "nested_pickle_loads",
    "memo_binput_binget",
)


@dataclass
class Example:
    root: Path
    marker: Path
    benign: list[Path] = field(default_factory=list)
    malicious: list[Path] = field(default_factory=list)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _benign_models(models: Path) -> list[Path]:
    """Real models saved the ways teams save them."""
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    models.mkdir(parents=True, exist_ok=True)
    x, y = load_digits(return_X_y=True)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    classifier.fit(x, y)
    paths = [models / "digits-pipeline.joblib", models / "digits-pipeline.pkl"]
    joblib.dump(classifier, paths[0], compress=3)
    _write(paths[1], pickle.dumps(classifier, protocol=5))
    np.save(models / "digits-mean.npy", x.mean(axis=0))
    paths.append(models / "digits-mean.npy")
    paths.extend(_torch_model(models, x.shape[1]))
    return paths


def _torch_model(models: Path, features: int) -> list[Path]:
    """A torch checkpoint when torch is installed (the `torch` extra)."""
    try:
        import torch
    except ImportError:
        return []
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, 10))
    path = models / "digits-mlp.pt"
    torch.save(net.state_dict(), path)
    return [path]


def build_example(root: Path) -> Example:
    from bastion.demo.malicious import TECHNIQUES

    example = Example(root, root / "PAYLOAD_RAN")
    example.benign = _benign_models(root / "models")
    for name in PLANTED:
        filename, data = TECHNIQUES[name](example.marker)
        example.malicious.append(_write(root / "downloads" / name / filename, data))
    return example


def run_demo(workdir: str) -> int:
    """Build, scan, report; 0 when the scan found exactly what was planted."""
    console = Console()
    root = Path(workdir).resolve()
    with console.status("Building the example project (training small models)..."):
        example = build_example(root)
    with console.status("Scanning..."):
        result = scan(root / "models", root / "downloads")
    report = scan_report(result, f"scan {root / 'models'} {root / 'downloads'}")
    print_table(report, console, fail_on=Severity.HIGH)
    reports = root / "reports"
    atomic_write(reports / "scan.json", render(report, "json"))
    atomic_write(reports / "scan.sarif", render(report, "sarif"))

    flagged = {Path(f.location.path) for f in result.blocking(Severity.HIGH)}
    missed = [p for p in example.malicious if p not in flagged]
    wrongly = [p for p in example.benign if p in flagged]
    console.print(
        f"\nPlanted {len(example.malicious)} malicious files among {len(example.benign)} real "
        f"models: {len(example.malicious) - len(missed)} caught, {len(wrongly)} real models "
        f"flagged. Reports: {reports / 'scan.json'}, {reports / 'scan.sarif'}"
    )
    ok = not missed and not wrongly and not example.marker.exists()
    for path in missed:
        console.print(f"[red]missed: {path}[/]")
    for path in wrongly:
        console.print(f"[red]flagged a real model: {path}[/]")
    return 0 if ok else 1
