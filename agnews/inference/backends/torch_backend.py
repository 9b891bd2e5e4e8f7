"""PyTorch backend over a loaded transformers classifier: fp32, or bf16 autocast (what ``trainer=cpu`` scores with)."""

from __future__ import annotations

import contextlib

import numpy as np

PRECISIONS = ("fp32", "bf16")


class TorchBackend:
    name = "torch"

    def __init__(self, model, precision: str = "fp32", device: str = "cpu"):
        import torch

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device=cuda asked for, but torch sees no CUDA GPU")
        self.model = model.to(self.device).eval()
        self.precision = precision

    def _autocast(self):
        import torch

        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        feed = {k: torch.from_numpy(v).to(self.device) for k, v in inputs.items()}
        with torch.inference_mode(), self._autocast():
            logits = self.model(**feed).logits
        return logits.float().cpu().numpy()

    def describe(self) -> dict:
        return {"backend": self.name, "precision": self.precision, "device": str(self.device)}
