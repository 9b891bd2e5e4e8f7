"""The notebooks in notebooks/ run: each is executed top to bottom with nbclient on an ipykernel of this interpreter, on
tiny budgets (a tiny run from tiny_run_factory via AGNEWS_NB_RUN, outputs under tmp_path via AGNEWS_NB_WORK), and must
finish without a cell error and print what it is about. The committed copies must carry the outputs of a real run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the report extra (pip install -e '.[report]') provides nbformat")
nbclient = pytest.importorskip("nbclient", reason="the report extra (pip install -e '.[report]') provides nbclient")

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO_ROOT / "notebooks"
KERNEL = "agnews-test-python"
# Each notebook and the test that executes it (a new notebook without one fails test_every_notebook_is_tested).
TESTED = {
    "01_quickstart.ipynb": "test_quickstart_notebook",
    "02_strategy_comparison.ipynb": "test_strategy_comparison_notebook",
    "03_ensemble_export_serve.ipynb": "test_ensemble_export_serve_notebook",
}
PLOTTING = ("01_quickstart.ipynb", "02_strategy_comparison.ipynb")


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A kernelspec for this interpreter (the project venv) in a private Jupyter path; notebook outputs in tmp_path."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "agnews test kernel", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("AGNEWS_NB_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend embeds the plots
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    return tmp_path


def execute(name: str, timeout: int = 300) -> str:
    """Run every cell of notebooks/<name>; returns all text the cells printed or displayed. A cell error fails the
    test with the cell's traceback (nbclient's CellExecutionError)."""
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(book, kernel_name=KERNEL, timeout=timeout,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    texts = []
    for cell in book.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", output
            texts.append(output.get("text", ""))
            texts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


def test_every_notebook_is_tested_and_committed_with_outputs():
    """Each notebook has a test here, and its committed copy shows a full run: every code cell executed in order, with
    output where it prints, no error output."""
    found = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert found == sorted(TESTED), f"notebooks without a test (or a test without its notebook): {found}"
    for name in found:
        book = nbformat.read(NOTEBOOKS / name, as_version=4)
        code = [c for c in book.cells if c.cell_type == "code"]
        counts = [c.get("execution_count") for c in code]
        assert all(counts) and counts == sorted(counts), f"{name}: not executed top to bottom ({counts})"
        assert not [o for c in code for o in c.outputs if o.output_type == "error"], f"{name}: committed with an error"
        assert sum(bool(c.outputs) for c in code) >= len(code) // 2, f"{name}: committed without outputs"
        if name in PLOTTING:
            images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
            assert images, f"{name}: committed without its plots"


def test_quickstart_notebook(kernel_env, tiny_run_factory, monkeypatch):
    run = tiny_run_factory("minilm")
    monkeypatch.setenv("AGNEWS_NB_RUN", str(run))
    # attributions of 2 examples on small Captum / SHAP budgets: the cell runs, in seconds
    monkeypatch.setenv("AGNEWS_NB_ATTRIBUTION_SAMPLE", "2")
    monkeypatch.setenv("AGNEWS_NB_EVALUATE_ARGS", "++attribution.n_steps=4 ++attribution.max_n_steps=8 "
                       "++attribution.shap_max_evals=20 ++attribution.random_draws=1")
    out = execute("01_quickstart.ipynb")
    metrics = json.loads((run / "metrics.json").read_text())
    assert "mistakes among 32 test examples" in out
    assert f"test accuracy {metrics['test']['accuracy']:.4f}, ECE" in out
    report = kernel_env / "work" / "quickstart_report"
    assert (report / "report.html").is_file() and (report / "figures" / "reliability_after.png").is_file()
    assert "top-k deletion drop" in out and (report / "figures" / "attribution_heatmaps.png").is_file()


def test_strategy_comparison_notebook(kernel_env):
    out = execute("02_strategy_comparison.ipynb")
    records = json.loads((REPO_ROOT / "experiments" / "ensemble" / "results.json").read_text())
    ensemble = max(records, key=lambda r: r["date"]) if isinstance(records, list) else records
    assert f"chosen by validation: {ensemble['targets']['chosen_by_val']}" in out
    assert "freelb" in out and "samples_per_s" in out


@pytest.mark.slow  # baseline, ensemble, ONNX export and a BentoML server: about a minute on 2 cores
def test_ensemble_export_serve_notebook(kernel_env, tiny_run_factory, monkeypatch):
    run = tiny_run_factory("minilm")
    monkeypatch.setenv("AGNEWS_NB_RUN", str(run))
    out = execute("03_ensemble_export_serve.ipynb", timeout=600)
    assert "max |difference| from the stored test probabilities:" in out
    assert "max |ONNX - PyTorch| probability:" in out
    assert '"label":' in out and '"probabilities":' in out  # the HTTP answer
    assert (kernel_env / "work" / "serve_walkthrough" / "ensemble" / "bundle").is_dir()
