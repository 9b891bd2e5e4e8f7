"""Interpretability: Captum Layer Integrated Gradients and SHAP token attributions, heat-maps, and a measured
faithfulness check, for a seeded sample of correct and wrong predictions.

What the section computes (``attribution_section``):

- **Sample**: ``sample_size`` examples of the split drawn with ``seed`` from the stored predictions, half correct and
  half wrong when the run has enough of each (the rest filled from the other group).
- **Captum** (transformer runs only: the run's ``model/`` loaded with transformers): Layer Integrated Gradients on the
  word-embedding layer. The explained output is the predicted class's log-probability (``captum_output``: also
  ``logit`` or ``prob``); the target is the class the model predicts now. Baseline: every token replaced by the pad
  token, the special tokens ([CLS], [SEP], ...) kept, same attention mask. Per-token attribution = the sum over the
  hidden dimension. Integrated Gradients is complete: the attributions sum to f(x) - f(baseline) up to the
  integration error, reported as the convergence delta (per example and mean |delta|). An example whose |delta|
  exceeds ``delta_tolerance`` x |f(x) - f(baseline)| is integrated again with twice the steps, up to
  ``max_n_steps``.
- **SHAP** (any Predictor, ensemble bundles included): ``shap.Explainer`` (partition algorithm) with a
  ``shap.maskers.Text`` masker built on the run's fast tokenizer (shap's word tokenizer when there is none: a bundle, a
  TF-IDF model), the model function being ``Predictor.predict_proba`` on the masked strings, with a bounded
  ``shap_max_evals`` per example. Values are for the predicted class.
- **Faithfulness**, measured: for each method and example, delete the ``top_k`` tokens with the highest attribution
  toward the predicted class and measure the drop of the predicted class's probability through the Predictor;
  compare with deleting as many tokens drawn at random (``random_draws`` seeded draws, averaged). Both mean drops are
  reported per method; nothing assumes the method wins. Tokens considered are those the model scores (inside its
  ``max_length`` window), special tokens excluded; at least one token always stays.
- **Heat-maps**: one HTML row per example and method, each token's background red (toward the predicted class) or
  blue (against), scaled by the largest |attribution| of that row; a PNG of the first few examples for the Markdown.
"""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from agnews.evaluation import EvaluationError

KEY = "attribution"
TITLE = "Attributions (Captum, SHAP)"
METHODS = ("captum", "shap")
CAPTUM_OUTPUTS = ("log_prob", "logit", "prob")
DEFAULT_TOP_K = 0.2  # 20 % of an example's scored tokens (an int: that many tokens)


class AttributionError(EvaluationError, ValueError):
    """A bad attribution setting (sample size, top_k, methods, steps, an unknown config key): one clear line from the
    report command, a ValueError to Python callers."""


# ---- data ----------------------------------------------------------------------------------------------------------
@dataclass
class TokenAttribution:
    """One example's attributions by one method: a score per token, tokens as character spans of ``text``."""

    method: str
    text: str
    spans: list[tuple[int, int]]  # [start, end) character spans of the scored tokens (no special tokens)
    scores: np.ndarray  # float64 [len(spans)]: attribution toward ``target``
    target: int
    delta: float | None = None  # Captum: sum(scores) - (f(x) - f(baseline))
    f_input: float | None = None
    f_baseline: float | None = None
    n_steps: int | None = None  # Captum: integration steps used

    @property
    def tokens(self) -> list[str]:
        return [self.text[a:b] for a, b in self.spans]

    def top(self, k: int) -> list[int]:
        """Indices of the ``k`` tokens with the highest attribution (ties broken by position: deterministic)."""
        order = np.lexsort((np.arange(len(self.scores)), -np.asarray(self.scores)))
        return [int(i) for i in order[:k]]


@dataclass
class Example:
    id: str
    text: str
    gold: int
    stored_pred: int
    pred: int = -1  # what the model predicts now (the explained class)
    prob: float = float("nan")  # its probability now
    attributions: dict[str, TokenAttribution] = field(default_factory=dict)


# ---- sampling --------------------------------------------------------------------------------------------------------
def sample_examples(predictions, texts: dict, sample_size: int, seed: int) -> list[Example]:
    """``sample_size`` examples, half correct and half wrong when possible, drawn with ``seed``; in split order."""
    if sample_size < 1:
        raise AttributionError(f"sample_size must be >= 1, got {sample_size}")
    preds = predictions.preds
    labels = predictions.labels
    correct = np.flatnonzero(preds == labels)
    wrong = np.flatnonzero(preds != labels)
    rng = np.random.default_rng(seed)
    n = min(sample_size, len(predictions))
    n_wrong = min(len(wrong), n // 2)
    n_correct = min(len(correct), n - n_wrong)
    n_wrong = min(len(wrong), n - n_correct)  # too few correct ones: more wrong ones
    rows = np.concatenate([rng.choice(correct, n_correct, replace=False), rng.choice(wrong, n_wrong, replace=False)])
    rows = np.sort(rows.astype(np.int64))
    missing = [predictions.ids[r] for r in rows if predictions.ids[r] not in texts]
    if missing:
        raise AttributionError(
            f"{len(missing)} sampled ids have no text (e.g. {missing[:3]}): the predictions and the data disagree"
        )
    return [
        Example(predictions.ids[r], texts[predictions.ids[r]], int(labels[r]), int(preds[r]))
        for r in rows
    ]


# ---- tokens as character spans -------------------------------------------------------------------------------------
def encode_with_spans(tokenizer, text: str, max_length: int | None):
    """(input_ids, special mask, spans) of ``text`` as the model sees it (truncated to ``max_length``)."""
    enc = tokenizer(
        text,
        truncation=max_length is not None,
        max_length=max_length,
        add_special_tokens=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    return list(enc["input_ids"]), list(enc["special_tokens_mask"]), [tuple(o) for o in enc["offset_mapping"]]


def scored_window_end(tokenizer, text: str, max_length: int | None) -> int:
    """Character position where the model's truncated view of ``text`` ends (``len(text)`` without a tokenizer)."""
    if tokenizer is None or max_length is None:
        return len(text)
    _, special, spans = encode_with_spans(tokenizer, text, max_length)
    ends = [b for (a, b), s in zip(spans, special) if not s and b > a]
    return max(ends) if ends else len(text)


def delete_spans(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` without the given character spans; whitespace runs collapsed (the original gets the same treatment
    before it is scored, so only the deletion changes the input)."""
    keep = np.ones(len(text), dtype=bool)
    for a, b in spans:
        keep[a:b] = False
    kept = "".join(ch for ch, k in zip(text, keep) if k)
    return re.sub(r"\s+", " ", kept).strip()


# ---- Captum --------------------------------------------------------------------------------------------------------
def captum_attributions(
    model,
    tokenizer,
    texts: Sequence[str],
    targets: Sequence[int],
    max_length: int | None = None,
    n_steps: int = 32,
    internal_batch_size: int = 16,
    output: str = "log_prob",
    global_attention_first_token: bool = False,
    max_n_steps: int | None = None,
    delta_tolerance: float = 0.05,
) -> list[TokenAttribution]:
    """Layer Integrated Gradients on ``model.get_input_embeddings()``, one example at a time (no padding to explain).

    The baseline keeps the special tokens and replaces every other token by the pad token. ``output`` is the explained
    scalar for the target class: ``log_prob`` (log-softmax), ``logit`` or ``prob``.

    Refinement: with ``max_n_steps``, an example whose convergence delta exceeds ``delta_tolerance`` x
    |f(x) - f(baseline)| is integrated again with twice the steps, up to ``max_n_steps`` (the path from an all-pad
    input can bend sharply: on the real MiniLM a few examples need 128 steps where most converge at 32). The steps
    used are recorded.
    """
    import torch
    from captum.attr import LayerIntegratedGradients

    if output not in CAPTUM_OUTPUTS:
        raise AttributionError(f"captum output must be one of {CAPTUM_OUTPUTS}, got {output!r}")
    if n_steps < 2:
        raise AttributionError(f"n_steps must be >= 2, got {n_steps}")
    if max_n_steps is not None and max_n_steps < n_steps:
        raise AttributionError(f"max_n_steps ({max_n_steps}) must be >= n_steps ({n_steps})")
    if len(texts) != len(targets):
        raise AttributionError(f"{len(texts)} texts but {len(targets)} targets")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.eval()

    def forward(input_ids, attention_mask):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if global_attention_first_token:  # Longformer: the first token attends globally, as in training
            glob = torch.zeros_like(attention_mask)
            glob[:, 0] = 1
            kwargs["global_attention_mask"] = glob
        logits = model(**kwargs).logits.float()
        if output == "logit":
            return logits
        if output == "prob":
            return torch.softmax(logits, dim=-1)
        return torch.log_softmax(logits, dim=-1)

    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    results = []
    for text, target in zip(texts, targets):
        ids, special, spans = encode_with_spans(tokenizer, text, max_length)
        input_ids = torch.tensor([ids], dtype=torch.long)
        baseline = torch.tensor([[t if s else pad_id for t, s in zip(ids, special)]], dtype=torch.long)
        mask = torch.ones_like(input_ids)
        with torch.no_grad():
            f_x = float(forward(input_ids, mask)[0, int(target)])
            f_b = float(forward(baseline, mask)[0, int(target)])
        steps = n_steps
        while True:
            attributions, delta = lig.attribute(
                inputs=input_ids,
                baselines=baseline,
                target=int(target),
                additional_forward_args=(mask,),
                n_steps=steps,
                internal_batch_size=internal_batch_size,
                return_convergence_delta=True,
            )
            delta = float(delta.reshape(-1)[0])
            if max_n_steps is None or steps * 2 > max_n_steps or abs(delta) <= delta_tolerance * abs(f_x - f_b):
                break
            steps *= 2
        per_token = attributions.sum(dim=-1)[0].detach().double().numpy()
        keep = [i for i, (s, (a, b)) in enumerate(zip(special, spans)) if not s and b > a]
        results.append(
            TokenAttribution(
                "captum", text, [spans[i] for i in keep], per_token[keep], int(target),
                delta=delta, f_input=f_x, f_baseline=f_b, n_steps=steps,
            )
        )
    return results


# ---- SHAP ----------------------------------------------------------------------------------------------------------
def import_shap():
    """``shap``, imported with numba's JIT off unless ``AGNEWS_SHAP_JIT=1``.

    Why: shap's numba kernels (masked-model bookkeeping, the partition tree) have no on-disk cache, so every process
    compiles them on first use: 10-50 s on 2 CPU cores. For text explanations of a few hundred model evaluations their
    plain-Python versions take ~0.1 s per example, far less than the model itself. The flag is read when a function is
    decorated, so it only affects modules imported in this window (shap's own); if shap was imported before, this is
    a no-op and the kernels compile as usual.
    """
    import os
    import sys

    if "shap" in sys.modules or os.environ.get("AGNEWS_SHAP_JIT") == "1":
        import shap

        return shap
    import numba

    previous = numba.config.DISABLE_JIT
    numba.config.DISABLE_JIT = True
    try:
        import shap
    finally:
        numba.config.DISABLE_JIT = previous
    return shap


def shap_attributions(
    predictor,
    texts: Sequence[str],
    targets: Sequence[int],
    tokenizer=None,
    max_evals: int = 200,
    batch_size: int = 64,
    seed: int = 0,
) -> list[TokenAttribution]:
    """SHAP values of the target class per token: the partition explainer over a ``shap.maskers.Text`` masker on
    ``tokenizer`` (a fast tokenizer: shap needs its offsets; ``None``: shap's word tokenizer), the model function
    being ``predictor.predict_proba`` on the masked strings. The partition explainer draws nothing at random: the
    same inputs and ``max_evals`` give the same values."""
    shap = import_shap()
    if max_evals < 3:
        raise AttributionError(f"shap max_evals must be >= 3, got {max_evals}")
    if len(texts) != len(targets):
        raise AttributionError(f"{len(texts)} texts but {len(targets)} targets")
    masker = shap.maskers.Text(tokenizer)
    # Masked tokens become the masker's mask token ("[MASK]" for a BERT tokenizer, "..." otherwise); a text with
    # every token masked would be empty, which the Predictor refuses: the mask token stands in for it.
    fallback = str(masker.mask_token or "...")

    def model(strings):
        strings = [str(s) if str(s).strip() else fallback for s in strings]
        return predictor.predict_proba(strings)

    explainer = shap.Explainer(model, masker, output_names=list(predictor.label_names), seed=seed)
    results = []
    for index, (text, target) in enumerate(zip(texts, targets)):
        # One example at a time with outputs=[target]: the budget goes to the class being explained.
        explanation = explainer([text], max_evals=max_evals, batch_size=batch_size, outputs=[int(target)], silent=True)
        values = np.asarray(explanation.values[0], dtype=np.float64).reshape(-1)
        offsets = masker.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        spans = [(0, 0) if o is None else (int(o[0]), int(o[1])) for o in offsets]
        if len(spans) != len(values):
            raise RuntimeError(f"shap returned {len(values)} values for the {len(spans)} tokens of example {index}")
        keep = [j for j, (a, b) in enumerate(spans) if b > a]  # special tokens have empty spans
        results.append(TokenAttribution("shap", text, [spans[j] for j in keep], values[keep], int(target)))
    return results


# ---- faithfulness --------------------------------------------------------------------------------------------------
def _is_fraction(top_k) -> bool:
    return isinstance(top_k, float) and 0 < top_k < 1


def resolve_k(top_k: int | float, n_tokens: int) -> int:
    """Tokens to delete from an example with ``n_tokens`` scored tokens: ``top_k`` itself (an int) or that fraction
    (a float in (0, 1)), at least 1, and always leaving one token (0 for a one-token example: nothing to delete)."""
    if n_tokens < 2:
        return 0
    k = int(round(top_k * n_tokens)) if _is_fraction(top_k) else int(top_k)
    return max(1, min(k, n_tokens - 1))


def check_top_k(top_k) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, float)) or not (
        _is_fraction(top_k) or (float(top_k).is_integer() and top_k >= 1)
    ):
        raise AttributionError(f"top_k must be a token count (an integer >= 1) or a fraction in (0, 1), got {top_k!r}")


def deletion_texts(
    attribution: TokenAttribution, top_k: int | float, random_draws: int, rng: np.random.Generator, window_end: int
) -> tuple[int, str, list[str]]:
    """(k, text without the top-k tokens, [text without k random tokens] * draws), tokens inside the scored window."""
    candidates = [i for i, (a, b) in enumerate(attribution.spans) if b <= window_end]
    k = resolve_k(top_k, len(candidates))
    if k == 0:
        return 0, "", []
    scores = attribution.scores[candidates]
    order = np.lexsort((np.arange(len(candidates)), -scores))
    top = [attribution.spans[candidates[j]] for j in order[:k]]
    randoms = []
    for _ in range(random_draws):
        drawn = rng.choice(len(candidates), k, replace=False)
        randoms.append(delete_spans(attribution.text, [attribution.spans[candidates[j]] for j in drawn]))
    return k, delete_spans(attribution.text, top), randoms


def faithfulness(
    predictor,
    examples: Sequence[Example],
    method: str,
    top_k: int | float = DEFAULT_TOP_K,
    random_draws: int = 5,
    seed: int = 0,
    tokenizer=None,
    max_length: int | None = None,
) -> dict:
    """Mean drop of the predicted class's probability when each example's top-k tokens by ``method`` are deleted,
    against deleting k random tokens (``random_draws`` seeded draws per example, averaged). Measured through the
    Predictor; positive = the probability fell."""
    check_top_k(top_k)
    if random_draws < 1:
        raise AttributionError(f"random_draws must be >= 1, got {random_draws}")
    rng = np.random.default_rng([seed, METHODS.index(method) if method in METHODS else 99])
    batch: list[str] = []
    plan = []  # (example index, k, slice of its texts in batch)
    for index, example in enumerate(examples):
        attribution = example.attributions[method]
        window_end = scored_window_end(tokenizer, example.text, max_length)
        k, top_text, random_texts = deletion_texts(attribution, top_k, random_draws, rng, window_end)
        if k == 0:
            continue
        start = len(batch)
        batch += [delete_spans(example.text, []), top_text, *random_texts]
        plan.append((index, k, start))
    if not plan:
        return {"num_examples": 0, "mean_k": 0.0, "mean_drop": float("nan"), "mean_random_drop": float("nan"),
                "beats_random_rate": float("nan"), "drops": [], "random_drops": []}
    probs = predictor.predict_proba(batch)
    drops, random_drops, ks = [], [], []
    for index, k, start in plan:
        target = examples[index].attributions[method].target
        p = probs[start : start + 2 + random_draws, target]
        drops.append(float(p[0] - p[1]))
        random_drops.append(float(p[0] - p[2:].mean()))
        ks.append(k)
    drops_arr, random_arr = np.asarray(drops), np.asarray(random_drops)
    return {
        "num_examples": len(plan),
        "mean_k": float(np.mean(ks)),
        "mean_drop": float(drops_arr.mean()),
        "mean_random_drop": float(random_arr.mean()),
        "beats_random_rate": float((drops_arr > random_arr).mean()),
        "drops": [round(d, 6) for d in drops],
        "random_drops": [round(d, 6) for d in random_drops],
    }


# ---- heat-maps -------------------------------------------------------------------------------------------------------
def _rgba(score: float, scale: float) -> tuple[float, float, float, float]:
    """Red toward the predicted class, blue against; opacity by |score| / scale."""
    alpha = 0.0 if scale <= 0 else min(1.0, abs(score) / scale) * 0.85
    return (0.84, 0.15, 0.16, alpha) if score >= 0 else (0.13, 0.4, 0.75, alpha)


def heatmap_html(attribution: TokenAttribution) -> str:
    """The text with each scored token on a coloured background (title: its attribution); text escaped."""
    text, scale = attribution.text, float(np.max(np.abs(attribution.scores))) if len(attribution.scores) else 0.0
    out, pos = [], 0
    for (a, b), score in sorted(zip(attribution.spans, attribution.scores), key=lambda x: x[0]):
        if a < pos:  # overlapping spans (never for a fast tokenizer): show the text once
            continue
        out.append(html.escape(text[pos:a]))
        r, g, bl, alpha = _rgba(float(score), scale)
        out.append(
            f'<span class="attr" style="background:rgba({int(r * 255)},{int(g * 255)},{int(bl * 255)},{alpha:.2f})" '
            f'title="{float(score):+.4f}">{html.escape(text[a:b])}</span>'
        )
        pos = b
    out.append(html.escape(text[pos:]))
    return "".join(out)


def heatmap_figure(
    examples: Sequence[Example], label_names: Sequence[str], methods: Sequence[str], max_chars: int = 400
) -> bytes:
    """PNG: for each example and method, its tokens laid out in lines with a background coloured by attribution."""
    from agnews.evaluation import plots

    plt = plots._pyplot()
    rows = [(e, m) for e in examples for m in methods if m in e.attributions]
    width_px, line_h = 1000, 22
    fig = plt.figure(figsize=(width_px / 100, 1))  # height fixed after the layout
    renderer = fig.canvas.get_renderer()
    placed, y = [], 0.0
    for example, method in rows:
        attribution = example.attributions[method]
        header = (f"[{method}] id {example.id}: gold {label_names[example.gold]}, predicted "
                  f"{label_names[example.pred]} (p={example.prob:.2f})")
        y += line_h * 1.2
        placed.append(("header", header, 4.0, y, None))
        y += line_h
        x = 4.0
        scale = float(np.max(np.abs(attribution.scores))) if len(attribution.scores) else 0.0
        previous_end = -1
        for (a, b), score in zip(attribution.spans, attribution.scores):
            if a >= max_chars:
                placed.append(("token", "…", x, y, None))
                break
            token = attribution.text[a:b]
            if a > previous_end and previous_end >= 0:
                x += 5  # a space before a new word; word pieces stay together
            previous_end = b
            probe = fig.text(0, 0, token, fontsize=9, family="monospace")
            w = probe.get_window_extent(renderer=renderer).width + 1
            probe.remove()
            if x + w > width_px - 4:
                x, y = 4.0, y + line_h
            placed.append(("token", token, x, y, _rgba(float(score), scale)))
            x += w
        y += line_h * 0.4
    height = y + line_h
    fig.set_size_inches(width_px / 100, height / 100)
    for kind, label, x, y_px, colour in placed:
        fx, fy = x / width_px, 1 - y_px / height
        if kind == "header":
            fig.text(fx, fy, label, fontsize=9, weight="bold")
        else:
            box = dict(boxstyle="square,pad=0.15", facecolor=colour, edgecolor="none") if colour else None
            fig.text(fx, fy, label, fontsize=9, family="monospace", bbox=box)
    return plots.png(fig)


# ---- the section -----------------------------------------------------------------------------------------------------
def _load_hf(model_dir: Path):
    from agnews.models.exported import load_classifier

    return load_classifier(model_dir)


def _fast_tokenizer(model_dir: Path | None):
    """The run's fast tokenizer (offsets needed), or None when there is no transformers model (a word masker then)."""
    if model_dir is None:
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return tokenizer if getattr(tokenizer, "is_fast", False) else None


def attribution_section(
    source,
    sample_size: int = 32,
    seed: int = 0,
    top_k: int | float = DEFAULT_TOP_K,
    split: str = "test",
    methods: Sequence[str] = METHODS,
    n_steps: int = 32,
    max_n_steps: int = 256,
    delta_tolerance: float = 0.05,
    internal_batch_size: int = 16,
    captum_output: str = "log_prob",
    shap_max_evals: int = 200,
    shap_batch_size: int = 64,
    random_draws: int = 5,
    figure_examples: int = 4,
):
    """The report's interpretability section (see the module docstring) for an
    :class:`agnews.evaluation.source.EvaluationSource` (or a run/bundle path).

    ``agnews.evaluation.sections`` calls it as ``attribution_section(source, settings, seed)`` with the ``attribution:``
    block of ``conf/evaluate/evaluate.yaml``: a mapping in place of ``sample_size`` is read as keyword arguments (its
    ``enabled`` key ignored; an unknown key is an error naming the known ones).
    """
    from agnews.evaluation.report import Section, md_image, skipped_section

    if isinstance(sample_size, Mapping):
        return attribution_section(source, seed=seed, **settings_kwargs(sample_size))

    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise AttributionError(f"methods must be a non-empty subset of {METHODS}, got {list(methods)}")
    check_top_k(top_k)
    if "captum" in methods and (n_steps < 2 or (max_n_steps is not None and max_n_steps < n_steps)):
        raise AttributionError(f"n_steps must be >= 2 and max_n_steps >= n_steps, got {n_steps} and {max_n_steps}")
    if captum_output not in CAPTUM_OUTPUTS:
        raise AttributionError(f"captum_output must be one of {CAPTUM_OUTPUTS}, got {captum_output!r}")
    if isinstance(source, (str, Path)):
        from agnews.evaluation.source import EvaluationSource

        source = EvaluationSource.open(source)
    label_names = list(source.label_names)
    predictions = source.predictions(split)
    if len(predictions) == 0:
        return skipped_section(KEY, TITLE, f"the {split} split has no predictions to explain")
    examples = sample_examples(predictions, source.texts(split), sample_size, seed)
    predictor = source.predictor()
    model_dir = source.hf_model_dir
    tokenizer = _fast_tokenizer(model_dir)
    max_length = predictor.max_length

    texts = [e.text for e in examples]
    probs = predictor.predict_proba(texts)
    for example, row in zip(examples, probs):
        example.pred, example.prob = int(row.argmax()), float(row.max())
    targets = [e.pred for e in examples]

    results: dict[str, dict] = {}
    for method in methods:
        started = time.perf_counter()
        if method == "captum":
            if model_dir is None:
                kind = getattr(source, "kind", "source")
                results[method] = {"skipped": True, "reason": (
                    f"Captum needs the run's transformers model (model/ with config.json); this {kind} has none "
                    "(an ensemble bundle or a classical TF-IDF model)")}
                continue
            loaded = _load_hf(model_dir)
            attributions = captum_attributions(
                loaded.model, loaded.tokenizer, texts, targets, max_length, n_steps, internal_batch_size, captum_output,
                bool(loaded.info.get("global_attention_first_token")), max_n_steps, delta_tolerance,
            )
            deltas = np.asarray([a.delta for a in attributions])
            changes = np.asarray([abs(a.f_input - a.f_baseline) for a in attributions])
            stats = {
                "n_steps": n_steps, "max_n_steps": max_n_steps, "delta_tolerance": delta_tolerance,
                "output": captum_output, "baseline": "pad tokens, special tokens kept",
                "mean_abs_delta": float(np.abs(deltas).mean()), "max_abs_delta": float(np.abs(deltas).max()),
                "mean_abs_output_change": float(changes.mean()),
                "mean_relative_delta": float(np.mean(np.abs(deltas) / np.maximum(changes, 1e-12))),
                "deltas": [round(float(d), 6) for d in deltas],
                "steps_used": [int(a.n_steps) for a in attributions],
            }
        else:
            attributions = shap_attributions(
                predictor, texts, targets, tokenizer, shap_max_evals, shap_batch_size, seed
            )
            stats = {"max_evals": shap_max_evals, "algorithm": "partition",
                     "tokenizer": "run's fast tokenizer" if tokenizer is not None else "shap's word tokenizer"}
        for example, attribution in zip(examples, attributions):
            example.attributions[method] = attribution
        stats["faithfulness"] = faithfulness(
            predictor, examples, method, top_k, random_draws, seed, tokenizer, max_length
        )
        stats["seconds"] = round(time.perf_counter() - started, 2)
        results[method] = {"skipped": False, **stats}

    ran = [m for m in methods if not results[m]["skipped"]]
    summary = {
        "split": split, "seed": seed, "sample_size": len(examples),
        "num_correct": sum(e.gold == e.stored_pred for e in examples),
        "num_wrong": sum(e.gold != e.stored_pred for e in examples),
        "top_k": top_k, "random_draws": random_draws,
        "methods": results,
        "examples": [
            {"id": e.id, "gold": label_names[e.gold], "pred": label_names[e.pred], "prob": round(e.prob, 6),
             "stored_pred": label_names[e.stored_pred]}
            for e in examples
        ],
    }
    figures = {}
    if ran:
        shown = examples_for_figure(examples, figure_examples)
        figures["attribution_heatmaps"] = heatmap_figure(shown, label_names, ran)
    return Section(
        key=KEY, title=TITLE, summary=summary,
        markdown=_markdown(summary, results, methods, figures, md_image),
        html=_html(summary, results, methods, examples, label_names),
        figures=figures,
    )


def settings_kwargs(settings: Mapping) -> dict:
    """Keyword arguments of :func:`attribution_section` from a config block (``enabled`` and ``seed`` excluded: the
    report passes its own seed)."""
    import inspect

    known = [n for n in inspect.signature(attribution_section).parameters if n not in ("source", "seed")]
    kwargs = {str(k): v for k, v in settings.items() if str(k) != "enabled"}
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise AttributionError(f"attribution.{unknown[0]} is not an option of the attribution section (known: {known})")
    if "methods" in kwargs:
        kwargs["methods"] = tuple(kwargs["methods"])
    return kwargs


def examples_for_figure(examples: Sequence[Example], n: int) -> list[Example]:
    """The first ``n`` examples, alternating correct and wrong ones when both exist."""
    correct = [e for e in examples if e.gold == e.pred]
    wrong = [e for e in examples if e.gold != e.pred]
    mixed = [e for pair in zip(correct, wrong) for e in pair] + correct[len(wrong):] + wrong[len(correct):]
    return mixed[:n]


def _k_text(top_k) -> str:
    return f"{top_k * 100:g} % of its scored tokens" if _is_fraction(top_k) else f"{int(top_k)} tokens"


def _rows(results: dict, methods: Sequence[str]) -> list[list]:
    rows = []
    for m in methods:
        r = results[m]
        if r["skipped"]:
            rows.append([m, "skipped", "", "", "", ""])
            continue
        f = r["faithfulness"]
        rows.append([m, f["num_examples"], round(f["mean_k"], 2), f["mean_drop"], f["mean_random_drop"],
                     f["beats_random_rate"]])
    return rows


_HEADER = ["method", "examples", "mean k", "top-k deletion drop", "random deletion drop", "top-k beats random"]


def _intro(summary: dict) -> str:
    return (
        f"{summary['sample_size']} {summary['split']} examples (seed {summary['seed']}: {summary['num_correct']} "
        f"correct, {summary['num_wrong']} wrong by the stored predictions). Attributions explain the class the model "
        f"predicts. Faithfulness: deleting each example's top-k tokens (k = {_k_text(summary['top_k'])}) against "
        f"deleting k random tokens ({summary['random_draws']} seeded draws), as the drop of the predicted class's "
        "probability through the predictor (higher = the attributions found what the model relies on)."
    )


def _notes(results: dict, methods: Sequence[str]) -> list[str]:
    notes = []
    for m in methods:
        r = results[m]
        if r["skipped"]:
            notes.append(f"{m}: skipped: {r['reason']}")
        elif m == "captum":
            notes.append(
                f"captum: Layer Integrated Gradients on the input embeddings, output {r['output']}, baseline "
                f"{r['baseline']}, {r['n_steps']} steps (doubled up to {r['max_n_steps'] or r['n_steps']} while "
                f"|delta| > {r['delta_tolerance']:g} x |f(x) - f(baseline)|; mean used "
                f"{np.mean(r['steps_used']):.0f}); "
                f"convergence delta mean |delta| = {r['mean_abs_delta']:.4g}, max {r['max_abs_delta']:.4g} "
                f"(mean |f(x) - f(baseline)| = {r['mean_abs_output_change']:.4g}); {r['seconds']} s"
            )
        else:
            notes.append(f"shap: {r['algorithm']} explainer, text masker on the {r['tokenizer']}, max_evals "
                         f"{r['max_evals']} per example; {r['seconds']} s")
    return notes


def _markdown(summary, results, methods, figures, md_image) -> str:
    from agnews.evaluation.report import md_table

    parts = [_intro(summary), "", md_table(_HEADER, _rows(results, methods))]
    parts += [f"- {n}" for n in _notes(results, methods)]
    if figures:
        parts += ["", md_image("attribution_heatmaps", "Token attribution heat-maps of a few examples"),
                  "", "Red: toward the predicted class; blue: against. Every example's heat-map is in report.html."]
    return "\n".join(parts) + "\n"


_STYLE = (
    "<style>.attr{border-radius:2px;padding:0 1px}table.attributions td.heat{max-width:640px;line-height:1.7}"
    "table.attributions tr.wrong td:first-child{border-left:3px solid #c33}</style>"
)


def _html(summary, results, methods, examples, label_names) -> str:
    from agnews.evaluation.report import html_table

    parts = [_STYLE, f"<p>{html.escape(_intro(summary))}</p>", html_table(_HEADER, _rows(results, methods))]
    parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in _notes(results, methods)) + "</ul>")
    ran = [m for m in methods if not results[m]["skipped"]]
    if not ran:
        return "".join(parts)
    parts.append('<p>Red: toward the predicted class; blue: against (hover a token for its value).</p>')
    head = "".join(f"<th>{h}</th>" for h in ("id", "gold", "predicted (p)", "method", "tokens"))
    body = []
    for e in examples:
        for m in ran:
            cls = "correct" if e.gold == e.pred else "wrong"
            body.append(
                f'<tr class="{cls}"><td>{html.escape(e.id)}</td><td>{html.escape(label_names[e.gold])}</td>'
                f"<td>{html.escape(label_names[e.pred])} ({e.prob:.3f})</td><td>{m}</td>"
                f'<td class="heat">{heatmap_html(e.attributions[m])}</td></tr>'
            )
    parts.append(f'<table class="attributions"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')
    return "".join(parts)
