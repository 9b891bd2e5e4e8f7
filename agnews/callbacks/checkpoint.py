"""Checkpointing that survives resuming into a new run directory."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


class RunCheckpoint(ModelCheckpoint):
    """A :class:`ModelCheckpoint` that keeps the best-so-far across ``ckpt_path=`` resumes.

    Every Hydra run has its own directory, so a resumed run writes checkpoints somewhere new. Stock Lightning then drops
    the best score it restored ("dirpath has changed"), and the first checkpoint after the resume becomes "best" even
    when it is worse. Here the best checkpoint files are copied into the new directory and the scores kept, so the
    resumed run selects and exports the same model an uninterrupted run would.
    """

    def load_state_dict(self, state_dict: dict) -> None:
        old_dir = state_dict.get("dirpath")
        if not old_dir or self.dirpath is None or Path(old_dir).resolve() == Path(self.dirpath).resolve():
            super().load_state_dict(state_dict)
            return
        new_dir = Path(self.dirpath)
        new_dir.mkdir(parents=True, exist_ok=True)
        moved: dict[str, str] = {}
        for old_path in state_dict.get("best_k_models", {}):
            if Path(old_path).is_file():
                target = new_dir / Path(old_path).name
                shutil.copy2(old_path, target)
                moved[old_path] = str(target)
            else:
                log.warning("Best checkpoint %s from the resumed run is gone; its score is dropped", old_path)
        state = dict(state_dict)
        state["dirpath"] = str(new_dir)
        state["best_k_models"] = {moved[p]: score for p, score in state_dict.get("best_k_models", {}).items() if p in moved}
        state["best_model_path"] = moved.get(state_dict.get("best_model_path", ""), "")
        state["kth_best_model_path"] = moved.get(state_dict.get("kth_best_model_path", ""), "")
        state["last_model_path"] = ""
        if not state["best_model_path"]:
            state.pop("best_model_score", None)
        super().load_state_dict(state)
        log.info("Resumed checkpoint tracking: best so far %s", state["best_model_path"] or "(none)")
