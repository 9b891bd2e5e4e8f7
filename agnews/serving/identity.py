"""What is being served, by name and content: a model id, a content version, and the checksums behind it.

* A bundle (``<ensemble run>/bundle``): the version is the SHA-256 of its ``manifest.json``, which itself lists every
  member and combiner file with its SHA-256, so the version changes when any byte of the bundle does.
* A model folder (``<run>/model``) or an ONNX export (``<run>/export``): every file is hashed here, and the version is
  the SHA-256 of that (path, digest) list.

The id is the run directory's name (or the folder's, for a bare model/bundle folder).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from agnews.runs import BUNDLE_MANIFEST_FILE, EXPORT_DIR, EXPORT_INFO_FILE, MANIFEST_FILE, sha256_file

VERSION_CHARS = 16


@dataclass(frozen=True)
class ModelCard:
    id: str
    version: str
    kind: str  # "bundle", "model" or "export"
    source: str
    label_names: list[str]
    max_length: int | None
    backend: str
    variant: str | None = None  # the ONNX variant served from an export (export.json's default unless chosen)
    members: list[dict] = field(default_factory=list)  # bundle members: name, format, max_length, files
    files: list[dict] = field(default_factory=list)  # {path, sha256, bytes}: a single model's, or the combiner's

    def ref(self) -> dict:
        return {"id": self.id, "version": self.version}


def _run_name(folder: Path) -> str:
    """The run that holds ``folder`` (``<run>/model``, ``<run>/export``, ``<run>/bundle``), else the folder itself."""
    parent = folder.parent
    if (parent / MANIFEST_FILE).is_file():
        return parent.name
    return folder.name


def _hash_folder(folder: Path) -> list[dict]:
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        files.append({"path": path.relative_to(folder).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size})
    return files


def model_card(
    source: str | Path, label_names: list[str], max_length: int | None, backend: str, variant: str | None = None
) -> ModelCard:
    """The card of the folder a :class:`~agnews.inference.Predictor` loaded (``predictor.source``)."""
    folder = Path(source)
    manifest_path = folder / BUNDLE_MANIFEST_FILE
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        members = [
            {
                "name": m.get("name", ""),
                "format": m.get("format", ""),
                "max_length": m.get("max_length"),
                "files": [{k: f.get(k) for k in ("path", "sha256", "bytes")} for f in m.get("files") or []],
            }
            for m in manifest.get("members") or []
        ]
        combiner_files = [{k: f.get(k) for k in ("path", "sha256", "bytes")} for f in (manifest.get("combiner") or {}).get("files") or []]
        return ModelCard(
            id=str(manifest.get("name") or _run_name(folder)),
            version=sha256_file(manifest_path)[:VERSION_CHARS],
            kind="bundle",
            source=str(folder),
            label_names=list(label_names),
            max_length=max_length,
            backend=backend,
            members=members,
            files=combiner_files,
        )
    files = _hash_folder(folder)
    digest = hashlib.sha256("\n".join(f"{f['path']} {f['sha256']}" for f in files).encode("utf-8")).hexdigest()
    kind = "export" if (folder / EXPORT_INFO_FILE).is_file() or folder.name == EXPORT_DIR else "model"
    if kind == "export" and variant is None and (folder / EXPORT_INFO_FILE).is_file():
        variant = json.loads((folder / EXPORT_INFO_FILE).read_text(encoding="utf-8")).get("default")
    return ModelCard(
        id=_run_name(folder),
        version=digest[:VERSION_CHARS],
        kind=kind,
        source=str(folder),
        label_names=list(label_names),
        max_length=max_length,
        backend=backend,
        variant=variant if kind == "export" else None,
        files=files,
    )
