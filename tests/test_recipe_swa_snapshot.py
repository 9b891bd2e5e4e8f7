"""SWA (conf/callbacks/swa.yaml) and snapshot ensembles (agnews/callbacks/snapshot_ensemble.py) on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LABELS, TINY, small_data_overrides, synthetic_rows, train_run, write_ag_news_csv
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from agnews import runs
from agnews.data.run_splits import load_run_split
from agnews.inference import Predictor


class EpochWeights(Callback):
    """Saves the model's weights at the end of every training epoch and after fit (files, so a subprocess works too)."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def _save(self, pl_module, name: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
        torch.save(state, self.folder / f"{name}.pt")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(pl_module, f"epoch{trainer.current_epoch}")

    def on_fit_end(self, trainer, pl_module) -> None:
        self._save(pl_module, "fit_end")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # The learning rate the epoch trains with (after any scheduler swap at its start).
        self.folder.mkdir(parents=True, exist_ok=True)
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        with (self.folder / "lr.txt").open("a") as handle:
            handle.write(f"{trainer.current_epoch} {lr}\n")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("swa_snapshot_data")
    write_ag_news_csv(folder / "train.csv", synthetic_rows(30, seed=1))
    write_ag_news_csv(folder / "test.csv", synthetic_rows(8, seed=2, empty_title_every=0))
    (folder / "classes.txt").write_text("\n".join(LABELS) + "\n")
    return folder


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


# ---- SWA --------------------------------------------------------------------------------------------------------------
def test_swa_run_scores_and_exports_the_averaged_weights(tmp_path, tiny_data):
    weights = tmp_path / "weights"
    run = train_run(
        tmp_path / "run",
        [
            *TINY, *small_data_overrides(tiny_data), "trainer.max_epochs=4", "strategy.optimizer.lr=2e-2",
            "callbacks=swa", "callbacks.swa.swa_lrs=0.01", "callbacks.swa.swa_epoch_start=2",
            f"+callbacks.capture._target_={__name__}.EpochWeights", f"+callbacks.capture.folder={weights}",
        ],
    )
    epoch_end = [_weights(weights / f"epoch{e}.pt") for e in range(4)]
    final = _weights(weights / "fit_end.pt")
    # Lightning averages at the start of each epoch from swa_epoch_start (1-based) on: the weights after epochs 1..3 of 4.
    average = {k: sum(w[k].double() for w in epoch_end[:3]) / 3 for k in final}
    assert _max_difference(average, final) < 1e-6
    assert _max_difference(epoch_end[3], final) > 1e-3  # not simply the last weights
    # SWALR replaced the linear schedule: annealed over epoch 2, constant swa_lrs after.
    lrs = dict(line.split() for line in (weights / "lr.txt").read_text().splitlines())
    assert float(lrs["2"]) == pytest.approx(0.01) and float(lrs["3"]) == pytest.approx(0.01)

    # No "best" checkpoint to reload: the pipeline scored and exported the weights in memory, the average.
    metrics = json.loads((run / runs.METRICS_FILE).read_text())
    assert metrics["best_checkpoint"] is None and (run / "checkpoints" / "last.ckpt").is_file()
    exported = load_file(run / runs.MODEL_DIR / "model.safetensors")
    assert _max_difference({k: exported[k] for k in final}, final) == 0.0
    stored = runs.read_predictions(runs.predictions_path(run, "val"))
    split = load_run_split(run, "val")
    texts = dict(zip(split.ids, split.texts))
    predicted = Predictor.from_path(run).predict_proba([texts[i] for i in stored.ids])
    np.testing.assert_allclose(predicted, stored.probs, atol=2e-5)
