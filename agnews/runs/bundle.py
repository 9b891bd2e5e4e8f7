"""The ensemble serving bundle on disk: ``<run>/bundle/manifest.json`` plus the files it lists, and its checks.

A bundle is self-contained: it holds a copy of every member model and of the combiner, so it serves after the member
runs are gone. Layout::

    bundle/
      manifest.json                 schema_version, label names, members, combiner (see MANIFEST KEYS below)
      members/<name>/...            one folder per member, loadable on its own (it has agnews_model.json)
      combiner/...                  the meta-learner of a stacking ensemble (XGBoost UBJ, CatBoost CBM, JSON)

Every file is listed with its SHA-256 and size. :func:`read_bundle` refuses, with a :class:`BundleError` naming the
file: an unknown ``schema_version``; any pickled file (by suffix or by a pickle protocol header: loading one can run
arbitrary code); a listed file that is missing, resized or altered; a file the manifest does not list; a symlink; a
listed path that leaves the bundle. Nothing is ever unpickled.

This module is numpy-free and imports neither torch nor Hydra: a service can check a bundle before loading anything.
"""

from __future__ import annotations

import json
import os
import pickletools
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Iterable

from agnews.runs.format import BUNDLE_MANIFEST_FILE, sha256_file, write_json
from agnews.runs.run_dir import RunFormatError

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
MEMBERS_DIR = "members"
COMBINER_DIR = "combiner"
# How a member is stored: an ONNX export (token ids in), a text-input ONNX pipeline (strings in), or transformers
# safetensors weights (run by torch).
MEMBER_FORMATS = ("onnx", "text-onnx", "transformers")
# Suffixes of formats that are pickles (or zip archives of pickles, as torch's .pt/.bin/.ckpt are).
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".bin", ".ckpt")
_PICKLE_OPCODES = frozenset(op.code.encode("latin-1") for op in pickletools.opcodes)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class BundleError(RunFormatError):
    """A bundle that cannot be trusted or read: unknown schema, pickled, tampered, incomplete or unlisted files."""


# ---- pickle detection ------------------------------------------------------------------------------------------------
def looks_pickled(path: str | Path) -> bool:
    """True for a pickle by suffix, or by content: the PROTO opcode (0x80, protocol 2-5) followed by another opcode.

    Protocols 0/1 have no header; such a file is still refused at load as unlisted or altered (every byte of a bundle is
    checksummed). A safetensors file can start with 0x80 0x02 (its header length), so a JSON header at byte 8 clears it.
    """
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with path.open("rb") as handle:
        head = handle.read(9)
    if len(head) < 3 or head[0] != 0x80 or head[1] not in (2, 3, 4, 5) or head[2:3] not in _PICKLE_OPCODES:
        return False
    return not (len(head) == 9 and head[8:9] == b"{")


# ---- writing ---------------------------------------------------------------------------------------------------------
@dataclass
class MemberSource:
    """What goes into ``members/<name>/``: files (path inside the member folder -> source file) and the facts the
    manifest records about the member (tokenizer, max_length, label names, source run, why this format)."""

    name: str
    format: str
    files: dict[str, Path]
    facts: dict = field(default_factory=dict)


def safe_name(name: str) -> str:
    """A member name usable as a folder name on any system."""
    cleaned = _SAFE_NAME.sub("_", name).strip("._") or "member"
    return cleaned[:80]


def _file_entry(root: Path, relative: str) -> dict:
    path = root / relative
    return {"path": relative, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _copy_in(root: Path, relative: str, source: Path) -> dict:
    if source.is_symlink() or not source.is_file():
        raise BundleError(f"{source}: not a regular file; a bundle holds copies of plain files only")
    if looks_pickled(source):
        raise BundleError(f"{source}: a pickled file; bundles hold safetensors, ONNX and JSON only (never pickles)")
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return _file_entry(root, relative)


def write_bundle(
    target: str | Path,
    label_names: list[str],
    members: Iterable[MemberSource],
    combiner: dict,
    combiner_files: dict[str, Path] | None = None,
    extra: dict | None = None,
) -> dict:
    """Write a bundle to ``target`` atomically: built in a sibling temp folder, verified, then renamed into place (an
    existing bundle is replaced only once the new one is complete). Returns the manifest.

    ``combiner``: ``{"method": ..., "params": {...}}`` (JSON data); ``combiner_files``: file name inside ``combiner/``
    -> source file (e.g. a saved meta-learner, which ``params`` refers to by that name).
    """
    target = Path(target)
    members = list(members)
    names = [m.name for m in members]
    if len(set(names)) != len(names) or any(safe_name(n) != n for n in names):
        raise BundleError(f"member names must be unique and folder-safe ({[safe_name(n) for n in names]}), got {names}")
    for member in members:
        if member.format not in MEMBER_FORMATS:
            raise BundleError(f"member {member.name}: unknown format {member.format!r}; known: {MEMBER_FORMATS}")
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        member_entries = []
        for member in members:
            folder = f"{MEMBERS_DIR}/{member.name}"
            files = [_copy_in(staging, f"{folder}/{rel}", src) for rel, src in sorted(member.files.items())]
            member_entries.append({"name": member.name, "format": member.format, "dir": folder, **member.facts,
                                   "files": files})
        combiner_entry = {
            **combiner,
            "files": [
                _copy_in(staging, f"{COMBINER_DIR}/{name}", src) for name, src in sorted((combiner_files or {}).items())
            ],
        }
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "kind": "agnews-ensemble-bundle",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "label_names": list(label_names),
            "members": member_entries,
            "combiner": combiner_entry,
            **(extra or {}),
        }
        write_json(staging / BUNDLE_MANIFEST_FILE, manifest)
        read_bundle(staging)  # the bundle we hand out passes the same checks a loader runs
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _swap_into_place(staging: Path, target: Path) -> None:
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


# ---- reading ---------------------------------------------------------------------------------------------------------
def listed_files(manifest: dict) -> list[dict]:
    """Every ``{"path", "sha256", "bytes"}`` entry of the manifest: the members' files and the combiner's."""
    entries = [entry for member in manifest.get("members") or [] for entry in member.get("files") or []]
    return entries + list((manifest.get("combiner") or {}).get("files") or [])


def _checked_relative(bundle: Path, relative: str) -> Path:
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or relative == BUNDLE_MANIFEST_FILE:
        raise BundleError(f"{bundle / BUNDLE_MANIFEST_FILE}: listed path {relative!r} is not a file inside the bundle")
    return bundle.joinpath(*pure.parts)


def read_bundle(bundle_dir: str | Path) -> dict:
    """The verified manifest of ``bundle_dir``, or :class:`BundleError` saying what is wrong (see the module doc)."""
    bundle = Path(bundle_dir)
    manifest_path = bundle / BUNDLE_MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{bundle}: not a bundle (no {BUNDLE_MANIFEST_FILE})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path}: unreadable ({exc})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: not a JSON object")
    version = manifest.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BundleError(
            f"{manifest_path}: schema_version {version!r} is not supported (this agnews reads "
            f"{SUPPORTED_SCHEMA_VERSIONS}); rebuild the bundle with this version or upgrade agnews"
        )
    for key in ("label_names", "members", "combiner"):
        if not manifest.get(key):
            raise BundleError(f"{manifest_path}: missing {key!r}")

    on_disk: set[str] = set()
    problems: list[str] = []
    for path in sorted(bundle.rglob("*")):
        relative = path.relative_to(bundle).as_posix()
        if path.is_symlink():
            problems.append(f"{relative}: a symlink (a bundle holds plain files only)")
        elif path.is_file():
            if looks_pickled(path):
                problems.append(f"{relative}: a pickled file (refused: loading a pickle can run arbitrary code)")
            elif relative != BUNDLE_MANIFEST_FILE:
                on_disk.add(relative)
    if problems:
        raise BundleError(f"{bundle}: refusing to load:\n  " + "\n  ".join(problems))

    listed = {}
    for entry in listed_files(manifest):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise BundleError(f"{manifest_path}: a file entry must be {{path, sha256, bytes}}, got {entry!r}")
        _checked_relative(bundle, entry.get("path", ""))
        listed[entry["path"]] = entry
    for relative, entry in listed.items():
        path = bundle / relative
        if relative not in on_disk:
            problems.append(f"{relative}: listed in the manifest but missing")
        elif path.stat().st_size != entry.get("bytes"):
            size = path.stat().st_size
            problems.append(f"{relative}: {size} bytes, the manifest says {entry.get('bytes')} (altered)")
        elif sha256_file(path) != entry.get("sha256"):
            problems.append(f"{relative}: SHA-256 differs from the manifest (altered or corrupted)")
    for relative in sorted(on_disk - set(listed)):
        problems.append(f"{relative}: not listed in the manifest (added after the bundle was written)")
    if problems:
        raise BundleError(f"{bundle}: integrity check failed:\n  " + "\n  ".join(problems))

    for member in manifest["members"]:
        if member.get("format") not in MEMBER_FORMATS:
            raise BundleError(
                f"{manifest_path}: member {member.get('name')!r} has unknown format {member.get('format')!r}"
            )
        _checked_relative(bundle, member.get("dir", "") + "/x")
    return manifest
