"""Put a run's served model into BentoML's model store, so that ``bentoml build`` packs it into the Bento.

    python -m agnews.serving.bento_model run=<run dir or bundle> [name=agnews-classifier] [backend=auto]
    bentoml build -f serving/bentofile.yaml --arg bento_model=agnews-classifier:latest .

What is copied is what ``python -m agnews.serve`` would load from that path (the bundle, the ONNX export or the
``model/`` folder) plus the run's ``run.json``, laid out as a run directory under the model's folder: the served model
keeps its id and content version (the same checksums). The model store entry records them in its metadata.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from agnews.inference import resolve_model_path
from agnews.runs import MANIFEST_FILE
from agnews.serving.core import choose_backend
from agnews.serving.identity import model_card

DEFAULT_NAME = "agnews-classifier"
ENTRY_KEY = "entry"  # metadata: the folder inside the stored model to serve


def import_run(run: str | Path, name: str = DEFAULT_NAME, backend: str = "auto") -> str:
    """Copy the served part of ``run`` into the model store; returns the new model's tag (``name:version``)."""
    import bentoml

    run = Path(run).expanduser().resolve()
    kind, folder = resolve_model_path(run, choose_backend(run, backend))
    is_run = (run / MANIFEST_FILE).is_file() and folder.parent == run
    card = model_card(folder, [], None, backend)
    entry = run.name if is_run else folder.name
    with bentoml.models.create(
        name,
        labels={"kind": card.kind},
        metadata={"model_id": card.id, "model_version": card.version, ENTRY_KEY: entry, "source": str(run)},
    ) as model:
        target = Path(model.path) / entry
        if is_run:
            target.mkdir(parents=True)
            shutil.copy2(run / MANIFEST_FILE, target / MANIFEST_FILE)
            shutil.copytree(folder, target / folder.name)
        else:
            shutil.copytree(folder, target)
    return str(model.tag)


def stored_run_path(stored_model) -> Path:
    """The path to serve inside a stored model made by :func:`import_run`."""
    return Path(stored_model.path) / stored_model.info.metadata[ENTRY_KEY]


def main(argv: list[str] | None = None) -> None:
    args = dict(arg.split("=", 1) for arg in (sys.argv[1:] if argv is None else argv) if "=" in arg)
    if "run" not in args:
        raise SystemExit("usage: python -m agnews.serving.bento_model run=<run dir or bundle> [name=agnews-classifier]")
    print(import_run(args["run"], args.get("name", DEFAULT_NAME), args.get("backend", "auto")))


if __name__ == "__main__":
    main()
