"""Adversarial training on the input embeddings: FGM, PGD and FreeLB (equations and keys in docs/strategies.md).

The perturbation δ is added to the output of the model's own input-embedding module (``model.get_input_embeddings()``)
through a forward hook, so every architecture, a PEFT-wrapped model and prompt tuning (which calls the same module)
are perturbed the same way, and the embedding matrix itself is never written to. δ is a float32 leaf tensor with the
shape of the embedding output (Longformer pads inputs to its attention window inside the model: δ follows the padded
length), zero on padding positions; norms are taken per example, in float32, over the real tokens.

Automatic optimisation is kept. The ascent steps only need ∂L/∂δ (``torch.autograd.grad`` with δ as the input), and the
parameter gradients a method collects from its earlier passes are handed to Lightning's single backward through a
linear "carrier" term Σ⟨θ, g_θ⟩ (its gradient is exactly g_θ; its value is subtracted out). So the loss Lightning
backpropagates has exactly the method's accumulated gradient, and ``trainer.gradient_clip_val``,
``accumulate_grad_batches`` (the loss is divided before that one backward), precision plugins and DDP (one backward,
every trainable parameter reached once) behave as for standard fine-tuning. The value of the returned loss is the
method's objective, so ``train/loss`` is meaningful.

With ``model.long_input`` (:class:`agnews.models.long_input.LongInputClassifier`) the encoder embeds the windows cut
from each row, not the padded row: δ has the windows' shape (windows, window length, dim), is zero on each window's
padding, and "per example" means per window (the unit the encoder reads), so ε bounds each window's perturbation and
a token shared by two overlapping windows is perturbed independently in each. A text that fits one window is
perturbed exactly as without the wrapper.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from agnews.errors import ConfigError
from agnews.strategies.base import ClassificationModule

NORMS = ("l2", "linf")
_TINY = 1e-12


# ---- δ geometry (all float32, per example) ---------------------------------------------------------------------------
def per_example_norm(x: torch.Tensor, norm: str) -> torch.Tensor:
    flat = x.float().flatten(1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def ascent_direction(grad: torch.Tensor, mask: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit size: g/‖g‖₂ (l2) or sign(g) (linf), zero on padding."""
    grad = grad.float() * mask
    if norm == "l2":
        return grad / _expand(per_example_norm(grad, "l2").clamp_min(_TINY), grad)
    return grad.sign()


def project(delta: torch.Tensor, epsilon: float, norm: str) -> torch.Tensor:
    """Projection onto the ε-ball of each example: rescale (l2) or clamp (linf)."""
    if norm == "l2":
        scale = (epsilon / per_example_norm(delta, "l2").clamp_min(_TINY)).clamp(max=1.0)
        return delta * _expand(scale, delta)
    return delta.clamp(-epsilon, epsilon)


class EmbeddingPerturbation:
    """Adds δ to the output of ``model.get_input_embeddings()`` while active (a forward hook, removed on exit).

    δ is created lazily at the first forward (``init(shape, mask)``), because some models pad inside (Longformer).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        attention_mask: torch.Tensor,
        init: Callable[..., torch.Tensor],
        input_ids: torch.Tensor | None = None,
    ):
        module = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(
                f"adversarial training needs the model's input embeddings: {type(model).__name__}.get_input_embeddings() "
                f"returned {module!r}"
            )
        self.module = module
        self.attention_mask = attention_mask
        self.input_ids = input_ids
        self.init = init
        self.delta: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.time_major = False
        self.calls = 0
        self._handle = None

    def __enter__(self) -> "EmbeddingPerturbation":
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _layout(self, ids: torch.Tensor | None, output: torch.Tensor) -> tuple[bool, torch.Tensor]:
        """(time_major, mask of shape (batch, length, 1)) for this embedding call, from the token ids it received.

        Most models embed ids of shape (batch, length); XLNet embeds (length, batch); Longformer pads the length to its
        attention window first (on the right). δ is always kept as (batch, length, dim).
        """
        mask = self.attention_mask.to(device=output.device, dtype=torch.float32)
        batch, length = mask.shape
        time_major = False
        if ids is not None and self.input_ids is not None and ids.dim() == 2:
            reference = self.input_ids.to(ids.device)
            batch_major = ids.shape[0] == batch and ids.shape[1] >= length and torch.equal(ids[:, :length], reference)
            time_major = not batch_major and ids.shape[1] == batch and torch.equal(ids[:length].T, reference)
        padded = output.shape[0] if time_major else output.shape[1]
        if (output.shape[1] if time_major else output.shape[0]) != batch or padded < length:
            raise RuntimeError(
                f"input embeddings of shape {tuple(output.shape)} do not match the attention mask {tuple(mask.shape)}"
            )
        if padded > length:  # the model padded the sequence itself (on the right: Longformer's window)
            mask = torch.nn.functional.pad(mask, (0, padded - length))
        return time_major, mask.unsqueeze(-1)

    def _hook(self, module, args, output):
        self.calls += 1
        ids = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if self.delta is None:
            self.time_major, self.mask = self._layout(ids, output)
            shape = (output.shape[1], output.shape[0], *output.shape[2:]) if self.time_major else tuple(output.shape)
            self.delta = self.init(shape, self.mask, output.device)
        delta = self.delta.transpose(0, 1) if self.time_major else self.delta
        if delta.shape != output.shape:
            raise RuntimeError(
                f"the input-embedding module produced {tuple(output.shape)} after {tuple(delta.shape)} in the same "
                "step; adversarial training needs one embedding call of a fixed shape per forward"
            )
        return output + delta.to(output.dtype)


def embedded_inputs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """``(input_ids, attention_mask)`` of what the input-embedding module embeds in one forward: the batch itself, or
    for a ``model.long_input`` wrapper the windows it cuts from the batch (the same deterministic cut its forward makes).
    """
    from agnews.models.layers import base_model, is_long_input
    from agnews.models.long_input import make_windows

    if not is_long_input(model):
        return input_ids, attention_mask
    windows = make_windows(base_model(model).settings, input_ids, attention_mask)
    return windows.inputs["input_ids"], windows.inputs["attention_mask"]


def gradient_carrier(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """A zero-valued term whose gradient with respect to each ``params[i]`` is ``grads[i]``: Σ⟨θ, g⟩ − Σ⟨θ̄, g⟩."""
    terms = [(p * g.detach()).sum() for p, g in zip(params, grads) if g is not None]
    if not terms:
        return torch.zeros(())
    total = torch.stack(terms).sum()
    return total - total.detach()


def with_value(loss_for_gradient: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` numerically, the gradient of ``loss_for_gradient``."""
    return loss_for_gradient - loss_for_gradient.detach() + value.detach()


class AdversarialTraining(ClassificationModule):
    """Shared machinery; subclasses implement :meth:`adversarial_objective`."""

    method = "adversarial"

    def __init__(
        self,
        *args,
        epsilon: float = 1.0,
        alpha: float | None = None,
        steps: int = 1,
        norm: str = "l2",
        init_magnitude: float = 0.0,
        adv_weight: float = 1.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)  # model, label_names, optimizer, ...: ClassificationModule's arguments
        name = f"strategy={self.method}"
        if norm not in NORMS:
            raise ConfigError(f"{name}: strategy.norm must be one of {list(NORMS)}, got {norm!r}")
        if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
            raise ConfigError(f"{name}: strategy.epsilon must be a positive number, got {epsilon!r}")
        if alpha is not None and not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ConfigError(f"{name}: strategy.alpha must be a positive number, got {alpha!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"{name}: strategy.steps must be an integer >= 1, got {steps!r}")
        if not (isinstance(init_magnitude, (int, float)) and init_magnitude >= 0):
            raise ConfigError(f"{name}: strategy.init_magnitude must be >= 0, got {init_magnitude!r}")
        if not (isinstance(adv_weight, (int, float)) and adv_weight >= 0):
            raise ConfigError(f"{name}: strategy.adv_weight must be >= 0, got {adv_weight!r}")
        self.epsilon = float(epsilon)
        self.alpha = float(alpha) if alpha is not None else None
        self.steps = int(steps)
        self.norm = norm
        self.init_magnitude = float(init_magnitude)
        self.adv_weight = float(adv_weight)
        # Set to a list to record every forward of a step: {"delta": δ used, "grad": ∂L/∂δ or None} (tests, debugging).
        self.trace: list[dict] | None = None

    # ---- pieces ----------------------------------------------------------------------------------------------------
    def clean_plus_ascended(self, batch, perturbation, step_size: float, steps: int):
        """FGM (one step of size ε) and PGD (K steps of size α): L(x) + w·L(x + δ_K), K+1 forwards and backwards.

        The clean pass gives the parameter gradients of L(x) and the first ascent direction (the hook adds δ = 0, a
        leaf requiring grad: ∂L/∂δ = ∂L/∂embeddings); each further pass only moves δ.
        """
        params = self._trainable()
        clean = self._loss(batch)
        grads = self._grads(clean, perturbation, params)
        self._ascend(perturbation, grads[0], step_size, requires_grad=steps > 1)
        for step in range(1, steps):
            (grad,) = self._grads(self._loss(batch), perturbation, [])
            self._ascend(perturbation, grad, step_size, requires_grad=step < steps - 1)
        adversarial = self._loss(batch)
        self._record(perturbation, None)
        value = clean.detach() + self.adv_weight * adversarial.detach()
        loss = with_value(self.adv_weight * adversarial + gradient_carrier(params, grads[1:]), value)
        return loss, {"train/loss_clean": clean.detach(), "train/loss_adv": adversarial.detach()}

    def _trainable(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def initial_delta(self, shape, mask, device) -> torch.Tensor:
        """δ for the first forward of a step (the hook calls this): zero, a leaf that requires grad."""
        return torch.zeros(shape, dtype=torch.float32, device=device, requires_grad=True)

    def random_init(self, shape, mask, device) -> torch.Tensor:
        """FreeLB's start: U(-1, 1) on real tokens, scaled by init_magnitude/√(L·d) (l2) or init_magnitude (linf)."""
        if self.init_magnitude == 0:
            return torch.zeros(shape, dtype=torch.float32, device=device)
        noise = (torch.rand(shape, dtype=torch.float32, device=device) * 2 - 1) * mask
        if self.norm == "l2":
            dims = (mask.flatten(1).sum(dim=1) * shape[-1]).clamp_min(1)
            noise = noise * _expand(self.init_magnitude / dims.sqrt(), noise)
        else:
            noise = noise * self.init_magnitude
        return project(noise, self.epsilon, self.norm)

    def _loss(self, batch: dict) -> torch.Tensor:
        return self.classification_loss(self(batch), batch["labels"])

    def _grads(self, loss: torch.Tensor, perturbation: EmbeddingPerturbation, params: list) -> tuple:
        """∂loss/∂δ (and ∂loss/∂θ for ``params``): one backward pass that writes nothing to ``.grad``."""
        grads = torch.autograd.grad(loss, [perturbation.delta, *params], allow_unused=True)
        if grads[0] is None:
            raise RuntimeError(
                f"strategy={self.method}: the loss does not depend on the embedding perturbation; the model does not "
                "use the output of get_input_embeddings()"
            )
        self._record(perturbation, grads[0])
        return grads

    def _record(self, perturbation: EmbeddingPerturbation, grad: torch.Tensor | None) -> None:
        if self.trace is not None:
            self.trace.append(
                {
                    "delta": perturbation.delta.detach().clone(),
                    "grad": None if grad is None else grad.detach().clone(),
                    "mask": perturbation.mask.detach().clone(),
                }
            )

    def _ascend(self, perturbation: EmbeddingPerturbation, grad: torch.Tensor, size: float, requires_grad: bool) -> None:
        """δ ← Π_ε(δ + size·direction(g)); the next forward uses it."""
        step = size * ascent_direction(grad, perturbation.mask, self.norm)
        delta = project(perturbation.delta.detach() + step, self.epsilon, self.norm)
        perturbation.delta = delta.requires_grad_(requires_grad)

    # ---- the step --------------------------------------------------------------------------------------------------
    def adversarial_objective(self, batch: dict, perturbation: EmbeddingPerturbation) -> tuple[torch.Tensor, dict]:
        """Returns (loss whose gradient is the method's, metrics to log). Runs inside the embedding hook."""
        raise NotImplementedError

    def training_loss(self, batch: dict) -> torch.Tensor:
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(batch["input_ids"])
        ids, mask = embedded_inputs(self.model, batch["input_ids"], mask)
        if self.trace is not None:
            self.trace.clear()
        with EmbeddingPerturbation(self.model, mask, self.initial_delta, ids) as perturbation:
            loss, logs = self.adversarial_objective(batch, perturbation)
        size = batch["labels"].numel()
        logs["train/delta_norm"] = per_example_norm(perturbation.delta.detach(), self.norm).mean()
        for key, value in logs.items():
            self.log(key, value, batch_size=size)
        return loss


class FGM(AdversarialTraining):
    """Fast Gradient Method (Miyato et al., 2017): δ = ε·g/‖g‖; loss = L(x) + w·L(x + δ). 2 forwards, 2 backwards."""

    method = "fgm"

    def adversarial_objective(self, batch, perturbation):
        return self.clean_plus_ascended(batch, perturbation, self.epsilon, steps=1)


class PGD(AdversarialTraining):
    """Projected gradient ascent (Madry et al., 2018) on the embeddings: K steps of size α inside the ε-ball.

    loss = L(x) + w·L(x + δ_K): K+1 forwards and K+1 backwards (the clean pass gives the first ascent direction).
    """

    method = "pgd"

    def __init__(self, *args, alpha: float | None = None, steps: int = 3, **kwargs):
        super().__init__(*args, alpha=alpha, steps=steps, **kwargs)
        if self.alpha is None:
            raise ConfigError("strategy=pgd: strategy.alpha (the ascent step size) must be set")

    def adversarial_objective(self, batch, perturbation):
        return self.clean_plus_ascended(batch, perturbation, self.alpha, self.steps)


class FreeLB(AdversarialTraining):
    """FreeLB (Zhu et al., 2020): K ascent steps from a random δ₀, parameter gradients of L(x + δ_t)/K accumulated.

    K forwards and K backwards; no separate clean pass (δ₀ is small noise around the clean input).
    """

    method = "freelb"

    def __init__(self, *args, alpha: float | None = None, steps: int = 3, **kwargs):
        super().__init__(*args, alpha=alpha, steps=steps, **kwargs)
        if self.alpha is None:
            raise ConfigError("strategy=freelb: strategy.alpha (the ascent step size) must be set")

    def initial_delta(self, shape, mask, device):
        # δ₀ must be a leaf that requires grad *before* the first forward, or the first ascent step has no gradient
        # (a classic FreeLB bug: δ₀ created, used, and only then marked requires_grad).
        return self.random_init(shape, mask, device).requires_grad_(self.steps > 1)

    def adversarial_objective(self, batch, perturbation):
        params = self._trainable()
        accumulated: list[torch.Tensor | None] = [None] * len(params)
        losses = []
        for step in range(self.steps - 1):
            loss = self._loss(batch)
            losses.append(loss.detach())
            grads = self._grads(loss / self.steps, perturbation, params)
            accumulated = [g if a is None else (a if g is None else a + g) for a, g in zip(accumulated, grads[1:])]
            self._ascend(perturbation, grads[0], self.alpha, requires_grad=step + 1 < self.steps - 1)
        last = self._loss(batch)
        self._record(perturbation, None)
        losses.append(last.detach())
        value = torch.stack(losses).mean()
        loss = with_value(last / self.steps + gradient_carrier(params, accumulated), value)
        return loss, {"train/loss_adv": losses[-1], "train/loss_first": losses[0]}
