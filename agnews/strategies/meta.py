"""Meta-learning: MAML (Finn et al., 2017) and Reptile (Nichol et al., 2018) over episodic N-way K-shot tasks.

An episode draws ``n_way`` classes (of AG News' 4) from the training split, ``k_shot`` support and
``query_per_class`` query examples per class (support and query disjoint). The classifier keeps its 4-way head: an
episode assigns its N classes to N of the head's slots, reads the logits at those slots and re-indexes the targets to
0..N-1 (position i = the episode's i-th class, read at ``slots[i]``), so the model keeps the shape of an ordinary AG
News classifier for evaluation, export and serving.

* ``permute_labels=false``: every class is read at its own slot (class c at slot c). With 4-way episodes on AG News'
  4 classes every episode is then the same 4-way task, and meta-training simply trains the head on it.
* ``permute_labels=true`` (the strategies' default; the standard few-shot protocol, Finn et al. 2017): each episode
  assigns its classes to head slots in a seeded random order, so no fixed class->slot mapping can be memorised and the
  unadapted model scores chance on episodes; only adaptation on the support set can solve them.
* ``head_init=zero`` zeroes the classifier's output layer in the fast weights at the start of every inner loop (the
  "zero trick", Kao et al., ICLR 2022): every episode starts from uniform predictions over its slots.

* :class:`MAML` adapts fast weights on the support set with :func:`torch.func.functional_call` (the meta-parameters are
  never modified in the inner loop) and takes the outer step on the query loss at the fast weights. First-order by
  default (inner gradients are constants: the outer gradient is the query gradient at the fast weights);
  ``second_order=true`` differentiates through the inner steps.
* :class:`Reptile` runs plain SGD on each task from the current weights and moves the meta-parameters toward the mean
  adapted weights: ``theta += meta_step * (phi - theta)`` (the outer optimizer is SGD whose learning rate is the step).
* :func:`meta_evaluate` adapts on K-shot support sets of held-out data (the val split) and reports query accuracy with a
  95% confidence interval over episodes.

Episodes are drawn by the module itself from ``self.trainer.datamodule``: the training loader only paces the loop (one
meta-step per training batch slot; ``episodes_per_epoch`` caps them through ``trainer.limit_train_batches``), and the
episode of step (epoch, batch, task) depends only on ``(seed, epoch, batch, task)``, so resumed runs draw the same tasks.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from agnews.errors import ConfigError
from agnews.strategies.base import ClassificationModule


# ---- episodes ----------------------------------------------------------------------------------------------------------
HEAD_INITS = ("keep", "zero")


def check_episode_options(permute_labels, head_init: str = "keep") -> None:
    # A YAML typo such as `permute_labels: yes` arrives as a string, which would silently read as true.
    if not isinstance(permute_labels, (bool, np.bool_)):
        raise ConfigError(f"strategy.permute_labels must be true or false, got {permute_labels!r}")
    if head_init not in HEAD_INITS:
        raise ConfigError(f"strategy.head_init must be one of {list(HEAD_INITS)}, got {head_init!r}")


@dataclass(frozen=True)
class Episode:
    classes: list[int]  # the episode's classes (original label ids), ascending
    support: list[int]  # dataset indices, k_shot per class
    query: list[int]  # dataset indices, query_per_class per class, disjoint from support
    slots: list[int] | None = None  # head slot read for classes[i]; None (the default) = the classes' own slots

    def __post_init__(self):
        if self.slots is None:
            object.__setattr__(self, "slots", list(self.classes))


class EpisodeSampler:
    """Seeded N-way K-shot episodes over a split's labels: ``sample(*key)`` is a pure function of ``(seed, *key)``.

    ``permute_labels``: each episode's classes get N distinct head slots (of ``num_slots``, default: the largest label
    + 1) in a random order drawn from the same key; otherwise class c is read at slot c. The slots are drawn after the
    examples, so both settings draw the same classes, support and query sets for a key.
    """

    def __init__(
        self,
        labels: Sequence[int],
        n_way: int,
        k_shot: int,
        query_per_class: int,
        seed: int = 0,
        permute_labels: bool = False,
        num_slots: int | None = None,
    ):
        if not 2 <= n_way <= 4:
            raise ConfigError(f"strategy.n_way must be between 2 and 4 (AG News has 4 classes), got {n_way}")
        if k_shot < 1 or query_per_class < 1:
            raise ConfigError(f"strategy.k_shot and query_per_class must be >= 1, got {k_shot}, {query_per_class}")
        check_episode_options(permute_labels)
        labels = np.asarray(labels)
        self.n_way, self.k_shot, self.query_per_class, self.seed = n_way, k_shot, query_per_class, seed
        self.permute_labels = bool(permute_labels)
        top = int(labels.max()) if labels.size else -1
        self.num_slots = int(num_slots) if num_slots is not None else top + 1
        if self.num_slots <= top:
            raise ConfigError(f"label {top} has no head slot: the classifier has {self.num_slots} outputs")
        need = k_shot + query_per_class
        self.by_class = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
        self.eligible = sorted(c for c, rows in self.by_class.items() if len(rows) >= need)
        if len(self.eligible) < n_way:
            counts = {c: len(rows) for c, rows in self.by_class.items()}
            raise ConfigError(
                f"{n_way}-way episodes with {k_shot} support + {query_per_class} query per class need {n_way} classes "
                f"with >= {need} examples; per-class counts: {counts}"
            )

    def sample(self, *key: int) -> Episode:
        rng = np.random.default_rng([self.seed, *(int(k) for k in key)])
        classes = sorted(int(c) for c in rng.choice(self.eligible, size=self.n_way, replace=False))
        support, query = [], []
        for c in classes:
            picks = rng.choice(self.by_class[c], size=self.k_shot + self.query_per_class, replace=False)
            support.extend(int(i) for i in picks[: self.k_shot])
            query.extend(int(i) for i in picks[self.k_shot :])
        slots = list(classes)
        if self.permute_labels:
            slots = [int(s) for s in rng.permutation(self.num_slots)[: self.n_way]]
        return Episode(classes, support, query, slots)


def episode_targets(labels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Original labels -> positions in ``classes`` (0..N-1)."""
    lookup = torch.full((int(max(classes)) + 1,), -1, dtype=torch.long, device=labels.device)
    lookup[torch.as_tensor(list(classes), device=labels.device)] = torch.arange(len(classes), device=labels.device)
    targets = lookup[labels]
    if (targets < 0).any():
        raise ValueError("a label outside the episode's classes")
    return targets


# ---- inner loop ------------------------------------------------------------------------------------------------------
def _inputs(batch: dict) -> dict:
    return ClassificationModule.model_inputs(batch)


def functional_logits(model: torch.nn.Module, params: dict, batch: dict, slots: Sequence[int]) -> torch.Tensor:
    """The model's logits at the episode's head ``slots`` (column i = slot ``slots[i]``, the logit of the episode's
    i-th class), with ``params`` in place of (some of) its parameters."""
    output = functional_call(model, params, args=(), kwargs=_inputs(batch))
    logits = output.logits if hasattr(output, "logits") else output
    return logits.float()[:, list(slots)]


def output_layer_names(model: torch.nn.Module, num_labels: int, among: Sequence[str]) -> list[str]:
    """Parameter names (weight, bias) of the classifier's output layer: the last ``nn.Linear`` with ``num_labels``
    outputs whose weight is in ``among`` (the adapted parameters; BERT/MiniLM: ``classifier``)."""
    among = set(among)
    found = None
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, torch.nn.Linear) and module.out_features == num_labels and prefix + "weight" in among:
            found = [prefix + n for n, _ in module.named_parameters(recurse=False) if prefix + n in among]
    if found is None:
        raise ConfigError(
            f"strategy.head_init=zero resets the classifier's output layer, but no Linear layer with {num_labels} "
            "outputs is among the adapted parameters (check strategy.adapt_prefixes)"
        )
    return found


def zero_head(params: dict[str, torch.Tensor], head_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """``params`` with the ``head_names`` tensors replaced by zeros (new leaves the inner loop differentiates)."""
    return {n: torch.zeros_like(t).requires_grad_(True) if n in head_names else t for n, t in params.items()}


def adapt(
    model: torch.nn.Module,
    params: dict[str, torch.Tensor],
    batch: dict,
    classes: Sequence[int],
    inner_lr: float,
    steps: int,
    second_order: bool = False,
    slots: Sequence[int] | None = None,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """``steps`` SGD steps on the episode loss of ``batch``, functionally: returns new (fast) tensors and the loss
    before each step; ``params`` and the model's own parameters are left untouched.

    Targets are positions in ``classes``; logits are read at ``slots`` (the episode's head slots; None: the classes'
    own slots). ``second_order=False``: each inner gradient is a constant, so the fast weights depend on ``params``
    through the identity only (first-order MAML). ``True``: the graph runs through the inner gradients (full MAML).
    """
    slots = classes if slots is None else slots
    targets = episode_targets(batch["labels"], classes)
    fast = dict(params)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(functional_logits(model, fast, batch, slots), targets)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=second_order, allow_unused=True)
        fast = {
            name: tensor if grad is None else tensor - inner_lr * grad
            for (name, tensor), grad in zip(fast.items(), grads)
        }
        losses.append(float(loss.detach()))
    return fast, losses


# ---- meta-evaluation ---------------------------------------------------------------------------------------------------
def confidence_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation confidence interval: ``z * sample_std / sqrt(n)``
    (z = 1.96: 95%, the convention of the few-shot literature). One value: half-width 0."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values")
    mean = float(values.mean())
    if values.size == 1:
        return mean, 0.0
    return mean, float(z * values.std(ddof=1) / math.sqrt(values.size))


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def meta_evaluate(
    model: torch.nn.Module,
    dataset,
    collate: Callable[[list], dict],
    n_way: int,
    k_shot: int,
    query_per_class: int,
    episodes: int = 100,
    inner_lr: float = 1e-3,
    inner_steps: int = 5,
    seed: int = 0,
    adapt_names: Sequence[str] | None = None,
    permute_labels: bool = False,
    head_init: str = "keep",
) -> dict:
    """Few-shot accuracy on held-out data: per episode, adapt a copy of the weights on the support set, score the
    query set (N-way, chance = 1/N). Returns mean accuracy, its 95% CI half-width and the per-episode accuracies.

    ``dataset[i]`` gives ``{"input_ids", "labels", "index"}`` items (a :class:`TokenizedDataset`); ``model`` is left
    unchanged (adaptation is functional). Usable from any measurement script. ``adapt_names``: the parameters adapted
    (None: every trainable one). ``permute_labels``: random class->head-slot assignment per episode (see
    :class:`EpisodeSampler`; the same seed gives the same episodes and slots for every model with the same head size).
    ``head_init="zero"``: the output layer starts each episode at zero in the fast weights.
    """
    check_episode_options(permute_labels, head_init)
    labels = [int(dataset[i]["labels"]) for i in range(len(dataset))]
    num_slots = getattr(getattr(model, "config", None), "num_labels", None)
    sampler = EpisodeSampler(labels, n_way, k_shot, query_per_class, seed, permute_labels, num_slots)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout at evaluation, as in ordinary evaluation
    names = set(adapt_names) if adapt_names is not None else None
    named = {n: p for n, p in model.named_parameters() if p.requires_grad and (names is None or n in names)}
    head = output_layer_names(model, sampler.num_slots, named) if head_init == "zero" else []
    accuracies = []
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for episode_index in range(episodes):
                episode = sampler.sample(episode_index)
                support = _to(collate([dataset[i] for i in episode.support]), device)
                query = _to(collate([dataset[i] for i in episode.query]), device)
                params = zero_head({n: p.detach().clone().requires_grad_(True) for n, p in named.items()}, head)
                fast, _ = adapt(model, params, support, episode.classes, inner_lr, inner_steps, slots=episode.slots)
                with torch.no_grad():
                    preds = functional_logits(model, fast, query, episode.slots).argmax(dim=-1)
                targets = episode_targets(query["labels"], episode.classes)
                accuracies.append(float((preds == targets).float().mean()))
    finally:
        model.train(was_training)
    mean, half_width = confidence_interval(accuracies)
    return {
        "n_way": n_way,
        "k_shot": k_shot,
        "query_per_class": query_per_class,
        "episodes": episodes,
        "inner_lr": inner_lr,
        "inner_steps": inner_steps,
        "permute_labels": bool(permute_labels),
        "head_init": head_init,
        "accuracy": mean,
        "ci95": half_width,
        "chance": 1.0 / n_way,
        "episode_accuracies": accuracies,
    }


def meta_evaluate_run(
    run_dir,
    split: str = "val",
    n_way: int = 4,
    k_shot: int = 5,
    query_per_class: int = 15,
    episodes: int = 100,
    inner_lr: float = 1e-3,
    inner_steps: int = 5,
    seed: int = 0,
    data_dir: str | None = None,
    permute_labels: bool = False,
    head_init: str = "keep",
) -> dict:
    """:func:`meta_evaluate` on a finished run: its exported model and its ``split`` rebuilt from the run's resolved
    config (same source, seed and sizes as the run; :func:`agnews.data.run_splits.load_run_split`).

    Loading goes through :func:`agnews.runs.load_run` and :func:`agnews.models.exported.load_classifier`, but scoring
    does not use :class:`agnews.inference.Predictor`: each episode fine-tunes the torch module's (fast) weights on its
    support set before scoring the query set, and the Predictor only runs a fixed model. Tokenization and padding are
    the training pipeline's own (the run's max length, padding side and Longformer global attention)."""
    from agnews.data.batching import DynamicPaddingCollator, TokenizedDataset
    from agnews.data.run_splits import load_run_split
    from agnews.data.tokenization import tokenize_texts
    from agnews.models.exported import load_classifier
    from agnews.runs import load_run

    run = load_run(run_dir)
    loaded = load_classifier(run.require_model())
    model, tokenizer, info = loaded.model, loaded.tokenizer, loaded.info
    data = load_run_split(run, split, data_dir)
    dataset = TokenizedDataset(tokenize_texts(tokenizer, data.texts, loaded.max_length), data.labels)
    collate = DynamicPaddingCollator(
        tokenizer.pad_token_id, info.get("padding_side", tokenizer.padding_side),
        global_attention_first_token=bool(info.get("global_attention_first_token", False)),
    )
    report = meta_evaluate(
        model, dataset, collate, n_way, k_shot, query_per_class, episodes, inner_lr, inner_steps, seed,
        permute_labels=permute_labels, head_init=head_init,
    )
    return {"run": str(run_dir), "split": split, **report}


# ---- Lightning modules ---------------------------------------------------------------------------------------------------
class MetaLearningModule(ClassificationModule):
    """Shared episodic machinery; subclasses define :meth:`training_loss` over episodes."""

    def __init__(
        self,
        *args,
        n_way: int = 4,
        k_shot: int = 5,
        query_per_class: int = 5,
        meta_batch_size: int = 2,
        inner_lr: float = 1e-3,
        inner_steps: int = 3,
        episodes_per_epoch: int | None = None,
        adapt_prefixes: Sequence[str] | None = None,
        permute_labels: bool = True,
        head_init: str = "keep",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        check_episode_options(permute_labels, head_init)
        if meta_batch_size < 1 or inner_steps < 1:
            raise ConfigError(f"strategy.meta_batch_size and inner_steps must be >= 1, got {meta_batch_size}, {inner_steps}")
        if n_way > len(self.label_names):
            raise ConfigError(f"strategy.n_way={n_way} exceeds the {len(self.label_names)} classes")
        self.n_way, self.k_shot, self.query_per_class = int(n_way), int(k_shot), int(query_per_class)
        self.meta_batch_size = int(meta_batch_size)
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.episodes_per_epoch = episodes_per_epoch
        self.adapt_prefixes = tuple(adapt_prefixes) if adapt_prefixes else None
        self.adapt_names = [
            name
            for name, p in self.model.named_parameters()
            if p.requires_grad and (self.adapt_prefixes is None or name.startswith(self.adapt_prefixes))
        ]
        if not self.adapt_names:
            raise ConfigError(f"strategy.adapt_prefixes={list(adapt_prefixes)} matches no trainable parameter")
        self.permute_labels, self.head_init = bool(permute_labels), head_init
        self.head_names = (
            output_layer_names(self.model, len(self.label_names), self.adapt_names) if head_init == "zero" else []
        )
        self.sampler: EpisodeSampler | None = None
        self._step_key = (0, 0)

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        if self.sampler is None:
            datamodule = self.trainer.datamodule
            datamodule.setup("fit")
            self.attach_data(datamodule.datasets["train"], datamodule.collator)
        if self.episodes_per_epoch is not None:
            # Outer steps per epoch = training batches per epoch: cap them the way Lightning caps batches, so the
            # epoch still ends with validation (and checkpointing) and the LR schedule counts the real steps.
            # Runs before the fit loop reads the limit (setup hooks precede the loop's data setup).
            limit = self.trainer.limit_train_batches
            episodes = int(self.episodes_per_epoch)
            self.trainer.limit_train_batches = min(limit, episodes) if isinstance(limit, int) else episodes

    def attach_data(self, dataset, collate) -> None:
        """The training pool episodes are drawn from (``setup`` passes the datamodule's training split)."""
        self.train_pool, self.collate = dataset, collate
        self.sampler = EpisodeSampler(
            dataset.labels, self.n_way, self.k_shot, self.query_per_class, self.seed, self.permute_labels,
            num_slots=len(self.label_names),
        )

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self._step_key = (self.current_epoch, batch_idx)

    def episode_batches(self, task: int) -> tuple[Episode, dict, dict]:
        episode = self.sampler.sample(*self._step_key, task)
        support = _to(self.collate([self.train_pool[i] for i in episode.support]), self.device)
        query = _to(self.collate([self.train_pool[i] for i in episode.query]), self.device)
        return episode, support, query

    def meta_parameters(self) -> dict[str, torch.Tensor]:
        # Parameters frozen for now (callbacks=gradual_unfreezing) are neither adapted nor meta-updated.
        named = dict(self.model.named_parameters())
        return {name: named[name] for name in self.adapt_names if named[name].requires_grad}

    def fast_start(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inner loop's starting weights: ``params``, with the output layer zeroed when ``head_init=zero``."""
        return zero_head(params, self.head_names) if self.head_names else params

    def meta_evaluate(self, dataset, collate, episodes: int = 100, inner_steps: int | None = None, seed: int = 0) -> dict:
        return meta_evaluate(
            self.model, dataset, collate, self.n_way, self.k_shot, self.query_per_class, episodes,
            self.inner_lr, inner_steps or self.inner_steps, seed, self.adapt_names, self.permute_labels, self.head_init,
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # The loader's batch only paces the loop; the episode is drawn in training_loss.
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=self.meta_batch_size)
        return loss


class MAML(MetaLearningModule):
    """Model-agnostic meta-learning; ``second_order=false`` (default) is first-order MAML."""

    def __init__(self, *args, second_order: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.second_order = bool(second_order)

    def task_query_loss(
        self, support: dict, query: dict, classes: Sequence[int], slots: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, list[float]]:
        slots = classes if slots is None else slots
        # Fused attention kernels (flash / memory-efficient SDPA) have no double backward: second-order MAML runs
        # attention on the math path, which is built from differentiable ops.
        with sdpa_kernel([SDPBackend.MATH]) if self.second_order else contextlib.nullcontext():
            fast, inner_losses = adapt(
                self.model, self.fast_start(self.meta_parameters()), support, classes, self.inner_lr,
                self.inner_steps, self.second_order, slots,
            )
            logits = functional_logits(self.model, fast, query, slots)
        return F.cross_entropy(logits, episode_targets(query["labels"], classes)), inner_losses

    def training_loss(self, batch: dict) -> torch.Tensor:
        losses, before = [], []
        for task in range(self.meta_batch_size):
            episode, support, query = self.episode_batches(task)
            loss, inner = self.task_query_loss(support, query, episode.classes, episode.slots)
            losses.append(loss)
            before.append(inner[0])
        self.log("train/support_loss_before", sum(before) / len(before), batch_size=self.meta_batch_size)
        return torch.stack(losses).mean()


class Reptile(MetaLearningModule):
    """Reptile: SGD on each task (support + query), then ``theta += meta_step * (mean adapted - theta)``.

    The move is an ordinary optimizer step: the training step returns ``0.5 * ||theta - phi||²`` (gradient
    ``theta - phi``, ``phi`` the mean adapted weights, held constant) and the outer optimizer is SGD with
    ``lr = meta_step``. Gradient clipping is skipped: clipping the displacement would shorten the configured step.
    """

    def adapted_weights(
        self, batch: dict, classes: Sequence[int], slots: Sequence[int] | None = None
    ) -> tuple[dict[str, torch.Tensor], list[float]]:
        fast = self.fast_start({n: p.detach().clone().requires_grad_(True) for n, p in self.meta_parameters().items()})
        losses = []
        for _ in range(self.inner_steps):
            fast, step_losses = adapt(self.model, fast, batch, classes, self.inner_lr, 1, slots=slots)
            fast = {n: t.detach().requires_grad_(True) for n, t in fast.items()}
            losses.extend(step_losses)
        return {n: t.detach() for n, t in fast.items()}, losses

    def training_loss(self, batch: dict) -> torch.Tensor:
        meta = self.meta_parameters()
        target = {n: torch.zeros_like(p) for n, p in meta.items()}
        last_losses = []
        for task in range(self.meta_batch_size):
            episode = self.sampler.sample(*self._step_key, task)
            both = self.collate([self.train_pool[i] for i in episode.support + episode.query])
            fast, losses = self.adapted_weights(_to(both, self.device), episode.classes, episode.slots)
            for n in target:
                target[n] += fast[n] / self.meta_batch_size
            last_losses.append(losses[-1])
        self.log("train/task_loss", sum(last_losses) / len(last_losses), batch_size=self.meta_batch_size)
        return 0.5 * sum(((p.float() - target[n].float()) ** 2).sum() for n, p in meta.items())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        surrogate = self.training_loss(batch)
        self.log("train/displacement", (2 * surrogate.detach()).sqrt(), prog_bar=True, batch_size=self.meta_batch_size)
        return surrogate

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        return None  # the "gradient" is the displacement toward the adapted weights: never clip it
