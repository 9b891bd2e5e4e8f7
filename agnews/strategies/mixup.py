"""Mixup inside the encoder (Zhang et al., 2018; for text: TMix, Chen et al., 2020): each training example is mixed
with a partner from the same batch, h̃ = λ·h + (1−λ)·h[π], and trained on λ·CE(z, y) + (1−λ)·CE(z, y[π]).

- ``mix_on=embeddings`` mixes the output of the model's own input-embedding module (``model.get_input_embeddings()``)
  and feeds the result as ``inputs_embeds``, which every architecture here (and a PEFT-wrapped model) accepts. The
  attention mask is the union of the pair's masks: every real token of either sequence is attended.
- ``mix_on=hidden`` mixes the output of transformer block ``layer`` (0-based): blocks are the first ``ModuleList`` of
  one layer class in the model (``encoder.layer`` of BERT-likes, ``transformer.layer`` of XLNet). As in TMix, each
  example keeps its own attention mask, so blocks 0..layer compute exactly what they compute without mixing.

λ ~ Beta(α, α), one per batch (as in mixup; α = 0 gives λ = 1, no mixing), and the partner permutation π are drawn
from a generator seeded by (seed, epoch, batch index): independent of dropout's RNG, identical after a resume. Only
``training_step`` mixes; validation and prediction are the base module's plain forward (the hook exists only inside
the training loss).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from agnews.errors import ConfigError
from agnews.models.layers import is_long_input
from agnews.strategies.base import ClassificationModule

MIX_ON = ("embeddings", "hidden")


def transformer_blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The model's stack of transformer blocks: the first ModuleList (in module order) holding one layer class."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1:
            return name, module
    raise ConfigError(
        f"strategy.mix_on=hidden: found no stack of transformer blocks (a ModuleList of one layer class) in "
        f"{type(model).__name__}; use strategy.mix_on=embeddings"
    )


class BatchMixer:
    """While active, a forward hook replaces the output h of ``target`` (a block) by λ·h + (1−λ)·h[π] along the batch.

    The batch dimension is the one of dim 0/1 whose size is the batch size (XLNet's blocks are time-major: (length,
    batch, dim)); when the length equals the batch size, the layout of the token ids at the input embeddings decides
    (XLNet embeds (length, batch)). Block outputs may be a tensor or a tuple whose first element is the hidden states.
    """

    def __init__(self, model, target: torch.nn.Module, input_ids: torch.Tensor, lam: float, perm: torch.Tensor):
        self.embeddings = model.get_input_embeddings()
        self.target = target
        self.input_ids = input_ids
        self.lam = lam
        self.perm = perm
        self.batch_dim = 0
        self.calls = 0
        self._handles: list = []

    def __enter__(self) -> "BatchMixer":
        self._handles = [
            self.embeddings.register_forward_hook(self._find_layout),
            self.target.register_forward_hook(self._mix),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _find_layout(self, module, args, output) -> None:
        ids = args[0] if args and isinstance(args[0], torch.Tensor) else None
        reference = self.input_ids
        self.batch_dim = 0
        if ids is None or ids.dim() != 2 or reference is None:
            return
        batch, length = reference.shape
        reference = reference.to(ids.device)
        batch_major = ids.shape[0] == batch and ids.shape[1] >= length and torch.equal(ids[:, :length], reference)
        time_major = ids.shape[1] == batch and ids.shape[0] >= length and torch.equal(ids[:length].T, reference)
        self.batch_dim = 1 if time_major and not batch_major else 0

    def _mix(self, module, args, output):
        self.calls += 1
        hidden = output[0] if isinstance(output, tuple) else output
        batch = self.perm.numel()
        tensor = isinstance(hidden, torch.Tensor) and hidden.dim() >= 2
        dims = [d for d in (0, 1) if tensor and hidden.shape[d] == batch]
        if not dims:
            shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
            raise RuntimeError(f"mixup: {type(module).__name__} produced {shape}, not the hidden states of {batch} "
                               "examples")
        # Only a length equal to the batch size is ambiguous; then the layout seen at the embeddings decides.
        batch_dim = dims[0] if len(dims) == 1 else self.batch_dim
        partner = hidden.index_select(batch_dim, self.perm.to(hidden.device))
        mixed = self.lam * hidden + (1.0 - self.lam) * partner
        return (mixed, *output[1:]) if isinstance(output, tuple) else mixed


class Mixup(ClassificationModule):
    """Mixup of input embeddings or of one block's hidden states; loss is the λ-mixed cross-entropy of both labels."""

    def __init__(self, *args, alpha: float = 0.4, mix_on: str = "embeddings", layer: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)  # model, label_names, optimizer, ...: ClassificationModule's arguments
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
            raise ConfigError(f"strategy=mixup: strategy.alpha (of Beta(alpha, alpha)) must be >= 0, got {alpha!r}")
        if mix_on not in MIX_ON:
            raise ConfigError(f"strategy=mixup: strategy.mix_on must be one of {list(MIX_ON)}, got {mix_on!r}")
        if is_long_input(self.model):
            # The windowing wrapper needs token ids (it ignores inputs_embeds) and runs its blocks once per window.
            raise ConfigError(
                f"strategy=mixup with model.long_input: mixup (mix_on={mix_on}) cannot mix inside the long-input "
                "windowing wrapper; use model.long_input=null with strategy=mixup, or another strategy"
            )
        self.alpha = float(alpha)
        self.mix_on = mix_on
        self.layer = layer
        if mix_on == "embeddings":
            if layer is not None:
                raise ConfigError("strategy=mixup: strategy.layer is only used with strategy.mix_on=hidden; "
                                  f"got layer={layer!r} with mix_on=embeddings")
            getter = getattr(self.model, "get_input_embeddings", None)
            if not callable(getter) or not isinstance(getter(), torch.nn.Module):
                raise ConfigError(f"strategy=mixup: {type(self.model).__name__} has no get_input_embeddings() module "
                                  "to mix; mix_on=embeddings needs a transformers model")
        else:
            name, blocks = transformer_blocks(self.model)
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(blocks):
                raise ConfigError(
                    f"strategy=mixup: strategy.layer must be a block index in [0, {len(blocks) - 1}] "
                    f"(the model has {len(blocks)} blocks at {name}), got {layer!r}"
                )
        # Set to a list to record each training step's {"lam", "perm"} (tests, debugging).
        self.trace: list[dict] | None = None
        self._step_key = (0, 0)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self._step_key = (self.current_epoch, batch_idx)

    def draw(self, batch_size: int) -> tuple[float, torch.Tensor]:
        """(λ, π) for the current step: a function of (seed, epoch, batch index) only."""
        rng = np.random.default_rng([self.seed & 0xFFFF_FFFF, *self._step_key])
        lam = float(rng.beta(self.alpha, self.alpha)) if self.alpha > 0 else 1.0
        perm = torch.from_numpy(rng.permutation(batch_size))
        # λ = 1 leaves every example alone: pair it with itself, so the union mask is its own and this is plain CE.
        return lam, perm if lam < 1.0 else torch.arange(batch_size)

    def mix_target(self) -> torch.nn.Module:
        """The module whose output is mixed: the input embeddings or block ``layer``."""
        if self.mix_on == "embeddings":
            return self.model.get_input_embeddings()
        return transformer_blocks(self.model)[1][self.layer]

    def mixed_logits(self, batch: dict, lam: float, perm: torch.Tensor) -> torch.Tensor:
        inputs = self.model_inputs(batch)
        if self.mix_on == "embeddings":
            # Mixed inputs_embeds rather than a hook on the embedding layer: models that derive position ids from the
            # token ids (RoBERTa, Longformer: pad -> padding_idx) then number every position of the union mask, so a
            # partner's tokens past this example's length keep their positions.
            embeds = self.model.get_input_embeddings()(inputs.pop("input_ids"))
            inputs["inputs_embeds"] = lam * embeds + (1.0 - lam) * embeds[perm]
            mask = inputs.get("attention_mask")
            if mask is not None:
                inputs["attention_mask"] = torch.maximum(mask, mask[perm])
            return self.model(**inputs).logits
        with BatchMixer(self.model, self.mix_target(), batch.get("input_ids"), lam, perm) as mixer:
            logits = self.model(**inputs).logits
        if mixer.calls != 1:
            raise RuntimeError(f"strategy=mixup: block {self.layer} ran {mixer.calls} times in one forward, expected 1")
        return logits

    def training_loss(self, batch: dict) -> torch.Tensor:
        labels = batch["labels"]
        lam, perm = self.draw(labels.shape[0])
        perm = perm.to(labels.device)
        logits = self.mixed_logits(batch, lam, perm)
        if self.trace is not None:
            self.trace.append({"lam": lam, "perm": perm.cpu()})
        loss = lam * self.classification_loss(logits, labels) + (1.0 - lam) * self.classification_loss(
            logits, labels[perm]
        )
        self.log("train/mix_lambda", lam, batch_size=labels.numel())
        return loss
