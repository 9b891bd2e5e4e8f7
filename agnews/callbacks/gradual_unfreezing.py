"""Gradual unfreezing (Howard & Ruder, 2018, ULMFiT): the head trains first, then one transformer block after another
joins it, top-down, the embeddings last. ``callbacks=gradual_unfreezing`` (conf/callbacks/gradual_unfreezing.yaml).

Schedule: in epoch ``e`` the parameters at depth ``>= num_layers + 1 - (e // unfreeze_every) * blocks_per_step`` train
(depths from :mod:`agnews.models.layers`: embeddings 0, block i at i + 1, head num_layers + 1). So epoch 0 trains the
head only, and with the defaults every epoch adds one block; after ``num_layers + 1`` steps everything trains.
Parameters that were frozen before the callback ran (PEFT's base weights) are never touched.

How freezing is done, and why: every parameter stays in the optimizer from the start, and a frozen one only has
``requires_grad=False``, so it gets no gradient and the optimizer skips it (AdamW, fused or not, and SGD leave a
parameter without ``.grad`` untouched: no step, no weight decay, no moment state). Lightning's recipe instead freezes in
``setup`` (before ``configure_optimizers``) and adds each unfrozen module as a new param group; here that would
(1) leave the new groups outside the LR scheduler (LambdaLR's ``base_lrs`` are fixed when it is built, so they would
never warm up or decay), (2) lose the layer-wise decayed LR of ``strategy.llrd`` (a new group gets one LR), and
(3) under DDP, leave the frozen parameters unregistered with the reducer for good. Keeping the groups fixed makes the
LR of every block, frozen or not, follow the schedule (a block joins at the schedule's current, layer-decayed LR),
and the unfreezing state a pure function of the epoch: a resumed run (mid-epoch too) re-applies it before its first
batch, and BaseFinetuning's param-group bookkeeping (``_store`` and its restore in ``on_fit_start``) has nothing to
record.
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch.callbacks import BaseFinetuning

from agnews.errors import ConfigError
from agnews.models.layers import num_layers, parameter_depths

log = logging.getLogger(__name__)


def _positive_int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"callbacks.gradual_unfreezing.{key} must be an integer >= 1, got {value!r}")
    return value


class GradualUnfreezing(BaseFinetuning):
    """Unfreeze ``blocks_per_step`` more depths (blocks, then the embeddings) every ``unfreeze_every`` epochs."""

    def __init__(self, unfreeze_every: int = 1, blocks_per_step: int = 1):
        super().__init__()
        self.unfreeze_every = _positive_int(unfreeze_every, "unfreeze_every")
        self.blocks_per_step = _positive_int(blocks_per_step, "blocks_per_step")
        self.top_depth: int | None = None
        self.managed: dict[str, int] = {}  # parameter name (in pl_module.model) -> depth, for the ones we freeze
        self.lowest_trained: int | None = None

    def lowest_trainable_depth(self, epoch: int) -> int:
        """The lowest depth that trains in ``epoch`` (0: everything trains)."""
        steps = epoch // self.unfreeze_every
        return max(0, self.top_depth - steps * self.blocks_per_step)

    # ---- BaseFinetuning hooks ----------------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

        strategy = trainer.strategy
        if isinstance(strategy, FSDPStrategy):
            raise ConfigError("callbacks=gradual_unfreezing does not support trainer=fsdp (sharded flat parameters)")
        if isinstance(strategy, DDPStrategy) and not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters"):
            # Frozen blocks produce no gradients: DDP's reducer must be told to expect that.
            raise ConfigError(
                "callbacks=gradual_unfreezing under DDP needs find_unused_parameters: set "
                "trainer.strategy=ddp_find_unused_parameters_true (trainer=ddp) or "
                "trainer.strategy.find_unused_parameters=true (trainer=ddp_cpu)"
            )
        super().setup(trainer, pl_module, stage)  # calls freeze_before_training

    def freeze_before_training(self, pl_module) -> None:
        # Reads the layout (an unknown one fails here, before anything trains) but freezes nothing: see the module
        # docstring. The optimizer must be built over every parameter first; freezing starts at the first epoch.
        if self.managed:
            return  # a second stage (validate/predict after fit) of the same trainer
        model = getattr(pl_module, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(
                f"callbacks=gradual_unfreezing needs a module with a .model; {type(pl_module).__name__} has none"
            )
        depths = parameter_depths(model)
        self.top_depth = num_layers(model) + 1
        self.managed = {name: depths[name] for name, param in model.named_parameters() if param.requires_grad}

    def on_fit_start(self, trainer, pl_module) -> None:
        groups = [group for optimizer in trainer.optimizers for group in optimizer.param_groups]
        in_optimizer = {id(p) for group in groups for p in group["params"]}
        params = dict(pl_module.model.named_parameters())
        missing = [name for name in self.managed if id(params[name]) not in in_optimizer]
        if missing:
            raise ConfigError(
                f"callbacks=gradual_unfreezing needs every trainable parameter in the optimizer from the start; "
                f"{type(pl_module).__name__}.configure_optimizers left out {len(missing)} (e.g. {missing[0]!r})"
            )
        super().on_fit_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # No param group is ever added, so there is nothing for BaseFinetuning's _store to record.
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.finetune_function(pl_module, trainer.current_epoch, optimizer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        # A run resumed in the middle of an epoch skips on_train_epoch_start for that epoch; the
        # state for the epoch is applied before its first batch instead (a no-op when it is already in place).
        self.on_train_epoch_start(trainer, pl_module)

    def finetune_function(self, pl_module, epoch: int, optimizer: torch.optim.Optimizer | None) -> None:
        lowest = self.lowest_trainable_depth(epoch)
        if lowest == self.lowest_trained:
            return
        params = dict(pl_module.model.named_parameters())
        for name, depth in self.managed.items():
            params[name].requires_grad_(depth >= lowest)
        self.lowest_trained = lowest
        log.info(
            "Gradual unfreezing, epoch %d: depths %d..%d train (%s)",
            epoch, lowest, self.top_depth, "all" if lowest == 0 else f"{self.top_depth - lowest} block(s) + head",
        )

    def on_fit_end(self, trainer, pl_module) -> None:
        # Leave the model as it came (scoring, export and a later fit see the original trainable set).
        params = dict(pl_module.model.named_parameters())
        for name in self.managed:
            params[name].requires_grad_(True)
        self.lowest_trained = None
