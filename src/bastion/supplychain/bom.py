"""A CycloneDX 1.6 ML-BOM: the model (type machine-learning-model, with a model card), the
datasets it was trained or evaluated on (type data) and the Python packages it runs with.

cyclonedx-python-lib builds and serialises the document. It does not model `modelCard` or
component `data` yet, so those two objects are written here, to the 1.6 schema, into the
serialised JSON; the whole result is then checked against the official 1.6 JSON schema
that ships with the library, so Bastion never hands out a BOM that does not validate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

import bastion
from bastion.data.composition import Composition, measure
from bastion.errors import InputError, UsageError
from bastion.govern.events import file_digest
from bastion.govern.results import Result
from bastion.govern.userdocs import CardInput
from bastion.supplychain.pydeps import Package, PackageSet
from bastion.supplychain.scan.detect import detect
from bastion.supplychain.scan.formats import HEAD_BYTES

PROPERTY_PREFIX = "bastion:"
# Findings at or above this severity in the assessment results become stated limitations.
LIMITATION_SEVERITIES = ("medium", "high", "critical")


@dataclass(frozen=True)
class ModelFile:
    path: Path
    sha256: str  # hex
    formats: tuple[str, ...]
    size: int


@dataclass(frozen=True)
class DataFile:
    path: Path
    sha256: str
    composition: Composition


def inspect_model(path: str | Path) -> ModelFile:
    """Digest, size and the formats its content parses as (no loading, no unpickling)."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"{source}: no such model file")
    with open(source, "rb") as handle:
        head = handle.read(HEAD_BYTES)
        formats = tuple(f.name for f in detect(head, handle))
    digest = file_digest(source).removeprefix("sha256:")
    return ModelFile(source, digest, formats, source.stat().st_size)


def inspect_data(path: str | Path, label: str | None = None) -> DataFile:
    source = Path(path)
    composition = measure(source, label)
    digest = file_digest(source).removeprefix("sha256:") if source.is_file() else ""
    return DataFile(source, digest, composition)


def _unique_ref(prefix: str, name: str, taken: set[str]) -> str:
    ref, n = f"{prefix}:{name}", 2
    while ref in taken:
        ref, n = f"{prefix}:{name}#{n}", n + 1
    taken.add(ref)
    return ref


def _props(values: dict[str, object]) -> list[Property]:
    return [Property(name=PROPERTY_PREFIX + k, value=str(v)) for k, v in values.items()]


def _sha256(hex_digest: str) -> list[HashType]:
    return [HashType(alg=HashAlgorithm.SHA_256, content=hex_digest)] if hex_digest else []


def _package_component(package: Package) -> Component:
    return Component(
        type=ComponentType.LIBRARY,
        name=package.name,
        version=package.version,
        purl=PackageURL(type="pypi", name=package.name, version=package.version),
        bom_ref=package.purl,
        properties=_props({"direct": str(package.direct).lower()}),
    )


def _composition_properties(comp: Composition) -> dict[str, object]:
    values: dict[str, object] = {
        "format": comp.format, "rows": comp.rows, "features": comp.features,
        "missing-values": comp.missing_total,
    }
    if comp.label:
        values["label"] = comp.label
        values["classes"] = len(comp.classes)
        if comp.imbalance_ratio is not None:
            values["imbalance-ratio"] = f"{comp.imbalance_ratio:.4g}"
        for cls in comp.classes:
            values[f"class:{cls.label}"] = cls.count
    return values


def _data_object(data: DataFile, ref: str) -> dict[str, Any]:
    """The 1.6 `componentData` entry describing a dataset's content."""
    properties = [
        {"name": PROPERTY_PREFIX + k, "value": str(v)}
        for k, v in _composition_properties(data.composition).items()
    ]
    return {
        "bom-ref": f"{ref}/data",
        "type": "dataset",
        "name": data.path.name,
        "contents": {"properties": properties},
    }


def _considerations(user: CardInput, results: Sequence[Result]) -> dict[str, Any]:
    limitations = list(user.limitations) + [
        f"{f.rule_id} ({f.severity}): {f.title}"
        for result in results
        for f in result.findings
        if f.severity in LIMITATION_SEVERITIES
    ]
    considerations = {
        "users": list(user.intended_use.primary_users),
        "useCases": list(user.intended_use.primary_uses),
        "technicalLimitations": limitations,
        "performanceTradeoffs": list(user.tradeoffs),
        "ethicalConsiderations": [
            {"name": r.name, **({"mitigationStrategy": r.mitigation} if r.mitigation else {})}
            for r in user.ethical_considerations
        ],
    }
    return {k: v for k, v in considerations.items() if v}


def _model_card(
    ref: str, user: CardInput, data_refs: Sequence[str], results: Sequence[Result]
) -> dict[str, Any]:
    """The 1.6 `modelCard` object: parameters, quantitative analysis, considerations."""
    parameters: dict[str, Any] = {}
    if user.approach:
        parameters["approach"] = {"type": user.approach}
    if user.task:
        parameters["task"] = user.task
    if user.architecture:
        parameters["modelArchitecture"] = user.architecture
    if data_refs:
        parameters["datasets"] = [{"ref": r} for r in data_refs]
    metrics = [
        {"type": m.name, "value": m.text, "slice": m.slice}
        for result in results
        for m in result.metrics
    ]
    card: dict[str, Any] = {"bom-ref": f"{ref}/model-card"}
    if parameters:
        card["modelParameters"] = parameters
    if metrics:
        card["quantitativeAnalysis"] = {"performanceMetrics": metrics}
    considerations = _considerations(user, results)
    if considerations:
        card["considerations"] = considerations
    return card


def _model_component(
    model: ModelFile, ref: str, user: CardInput, only_model: bool
) -> Component:
    """card.yaml's name, version and description describe the model when it is the only one."""
    return Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=(user.name if only_model else None) or model.path.name,
        version=user.version if only_model else None,
        description=user.description if only_model else None,
        bom_ref=ref,
        hashes=_sha256(model.sha256),
        licenses=[LicenseFactory().make_from_string(user.license)] if user.license else [],
        properties=_props({
            "file": model.path.name,
            "size": model.size,
            "format": ",".join(model.formats) or "unrecognised",
        }),
    )


def build_bom(
    models: Sequence[ModelFile],
    data: Sequence[DataFile] = (),
    packages: PackageSet | None = None,
    results: Sequence[Result] = (),
    user: CardInput | None = None,
) -> str:
    """The BOM as CycloneDX 1.6 JSON text, validated against the official schema."""
    if not models:
        raise UsageError("a BOM needs at least one --model")
    if results and len(models) > 1:
        raise UsageError("--card-data describes one model; give a single --model with it")
    user = user or CardInput()
    listed = packages.packages if packages else ()
    bom = Bom()
    bom.metadata.tools.components.add(
        Component(type=ComponentType.APPLICATION, name="bastion", version=bastion.__version__)
    )
    taken: set[str] = set()
    extra: dict[str, dict[str, Any]] = {}  # bom-ref -> objects the library cannot emit
    datasets = []
    for item in data:
        ref = _unique_ref("data", item.path.name, taken)
        datasets.append(Component(
            type=ComponentType.DATA, name=item.path.name, bom_ref=ref, hashes=_sha256(item.sha256)
        ))
        extra[ref] = {"data": [_data_object(item, ref)]}
    libraries = {p.name: _package_component(p) for p in listed}
    direct = [libraries[p.name] for p in listed if p.direct]
    data_refs = [str(c.bom_ref.value) for c in datasets]
    for model in models:
        ref = _unique_ref("model", model.path.name, taken)
        component = _model_component(model, ref, user, only_model=len(models) == 1)
        extra[ref] = {"modelCard": _model_card(ref, user, data_refs, results)}
        bom.components.add(component)
        bom.register_dependency(component, [*datasets, *direct])
    for component in datasets:
        bom.components.add(component)
    for package in listed:
        bom.components.add(libraries[package.name])
        bom.register_dependency(
            libraries[package.name], [libraries[r] for r in package.requires]
        )
    document = json.loads(JsonV1Dot6(bom).output_as_string())
    for component in document.get("components", []):
        component.update(extra.get(component.get("bom-ref"), {}))
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    problem = validation_error(text)
    if problem is not None:
        raise RuntimeError(f"bastion built a BOM that fails the CycloneDX 1.6 schema: {problem}")
    return text


def validation_error(text: str) -> str | None:
    """The first problem the official CycloneDX 1.6 JSON schema finds, or None."""
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is None:
        return None
    data = error.data
    path = "/".join(str(p) for p in getattr(data, "absolute_path", ()))
    return f"{getattr(data, 'message', error)} at /{path}"
