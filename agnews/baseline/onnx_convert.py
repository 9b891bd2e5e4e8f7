"""The fitted scikit-learn pipeline as one ONNX graph (strings in, probabilities out), converted so that it computes
what scikit-learn computes, and the measurement that proves it.

skl2onnx (1.20) converts the pipeline; three of its text conversions differ from scikit-learn and are corrected here
in the graph (each fix is checked by :func:`parity`, and a run whose ONNX model disagrees with scikit-learn fails):

1. ``analyzer="char"``: scikit-learn collapses every run of two or more whitespace characters into one space before
   taking char n-grams; skl2onnx splits the raw text into characters. Fix: the Tokenizer matches such a run as one
   token and a ``RegexFullMatch`` + ``Where`` pair replaces it by ``" "``. The whitespace class is Python's own
   ``\\s`` (Unicode), spelled out for RE2, whose ``\\s`` is ASCII-only.
2. Padding: the Tokenizer pads every row of a batch to the longest row with ``"#"``, which is a real character of AG
   News (``#39;``), so char n-grams spanning the padding could be counted. Fix: a multi-character pad value, which can
   never equal a one-character token.
3. ``sublinear_tf=True``: scikit-learn uses ``1 + log(tf)`` for ``tf > 0``; skl2onnx emits ``log(tf + 1)``. Fix:
   ``log(max(tf, 1)) + min(tf, 1)`` (``tf`` are counts, so this is ``1 + log(tf)`` where ``tf >= 1`` and 0 at 0).

One more rewrite is for speed only: the L2 ``Normalizer`` (``ai.onnx.ml``) becomes ReduceSumSquare/Sqrt/Div, about
twice as fast end to end on the full model (the features are dense in the graph: ``[batch, vocabulary]`` float32).

Lowercasing runs in ONNX Runtime's ``StringNormalizer`` under ``locale`` (``C.UTF-8`` by default: present on common
Linux images; ONNX Runtime's default ``en_US.UTF-8`` often is not). It applies simple case mappings, where Python's
``str.lower`` applies full ones: over all code points the two differ for ``"İ"`` (U+0130) only.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from agnews.errors import AGNewsError

INPUT_NAME = "text"
PROBABILITIES_OUTPUT = "probabilities"
DEFAULT_LOCALE = "C.UTF-8"
PAD_VALUE = "<agnews-pad>"
# ONNX opset: RegexFullMatch (fix 1) needs 20.
OPSET = 20
ML_OPSET = 3


class OnnxConversionError(AGNewsError):
    """The pipeline could not be converted, or the ONNX model does not reproduce scikit-learn."""


@functools.lru_cache(maxsize=1)
def whitespace_class() -> str:
    """Python's ``\\s`` (for str patterns) as an RE2 character class of explicit code points."""
    # re's \s on str is Py_UNICODE_ISSPACE, the same predicate as str.isspace (tests check it code point by code point).
    points = [i for i in range(0x110000) if chr(i).isspace()]
    return "[" + "".join(f"\\x{{{p:X}}}" for p in points) + "]"


def whitespace_run() -> str:
    return whitespace_class() + "{2,}"


def char_token_pattern() -> str:
    """One token per character, except a whitespace run (>= 2), which is one token (replaced by " " afterwards)."""
    return f"{whitespace_run()}|(?s:.)"


def convert(pipeline, locale: str = DEFAULT_LOCALE):
    """The fitted ``Pipeline([features, clf])`` as an ``onnx.ModelProto`` with input ``text`` (string ``[n, 1]``) and
    outputs ``label`` (int64 ``[n]``) and ``probabilities`` (float32 ``[n, classes]``)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType

    union = pipeline.named_steps["features"]
    classifier = pipeline.named_steps["clf"]
    options: dict = {type(classifier): {"zipmap": False}}
    char_blocks = sublinear_blocks = 0
    for _, vectorizer in union.transformer_list:
        options[id(vectorizer)] = {"locale": locale}
        if vectorizer.analyzer == "char":
            options[id(vectorizer)]["tokenexp"] = char_token_pattern()
            char_blocks += 1
        elif vectorizer.analyzer != "word":
            raise OnnxConversionError(f"analyzer={vectorizer.analyzer!r} has no faithful ONNX conversion (word, char)")
        sublinear_blocks += int(vectorizer.sublinear_tf)
    try:
        with warnings.catch_warnings():
            # skl2onnx warns that char analyzers "may not work": the fixes below and the parity check handle them.
            warnings.filterwarnings("ignore", message="The conversion of CountVectorizer may not work")
            model = convert_sklearn(
                pipeline,
                "agnews_tfidf",
                initial_types=[(INPUT_NAME, StringTensorType([None, 1]))],
                options=options,
                target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
            )
    except Exception as exc:  # skl2onnx raises RuntimeError/NotImplementedError/... for what it cannot convert
        raise OnnxConversionError(f"skl2onnx could not convert the pipeline: {type(exc).__name__}: {exc}") from exc
    _fix_char_tokenizers(model, char_blocks)
    _fix_sublinear_tf(model, sublinear_blocks)
    _vectorize_l2_normalizers(model)
    _set_opset(model, "", OPSET)
    output_names = [output.name for output in model.graph.output]
    if PROBABILITIES_OUTPUT not in output_names:
        raise OnnxConversionError(f"the converted graph has no '{PROBABILITIES_OUTPUT}' output ({output_names})")
    import onnx

    onnx.checker.check_model(model)
    return model


def _set_opset(model, domain: str, version: int) -> None:
    for entry in model.opset_import:
        if entry.domain == domain and entry.version < version:
            entry.version = version


def _attribute(node, name: str):
    return next((a for a in node.attribute if a.name == name), None)


def _fix_char_tokenizers(model, expected: int) -> None:
    """Fixes 1 and 2 (module docstring) on every Tokenizer that splits into characters."""
    from onnx import TensorProto, helper

    graph = model.graph
    pattern = char_token_pattern().encode()
    nodes, fixed = [], 0
    for node in graph.node:
        nodes.append(node)
        if node.op_type != "Tokenizer" or getattr(_attribute(node, "tokenexp"), "s", None) != pattern:
            continue
        _attribute(node, "pad_value").s = PAD_VALUE.encode()
        tokens = node.output[0]
        raw = f"{tokens}_raw"
        node.output[0] = raw
        is_run, space = f"{tokens}_is_whitespace_run", f"{tokens}_space"
        graph.initializer.append(helper.make_tensor(space, TensorProto.STRING, [], [b" "]))
        nodes.append(
            helper.make_node("RegexFullMatch", [raw], [is_run], name=f"{tokens}_match", pattern=whitespace_run())
        )
        nodes.append(helper.make_node("Where", [is_run, space, raw], [tokens], name=f"{tokens}_collapse"))
        fixed += 1
    if fixed != expected:
        raise OnnxConversionError(f"expected {expected} char tokenizer(s) in the converted graph, found {fixed}")
    del graph.node[:]
    graph.node.extend(nodes)


def _fix_sublinear_tf(model, expected: int) -> None:
    """Fix 3 (module docstring): ``Log(Add(tf, ones))`` becomes ``Add(Log(Max(tf, 1)), Min(tf, 1))``."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}

    def all_ones(name: str) -> bool:
        init = initializers.get(name)
        return init is not None and bool(np.all(numpy_helper.to_array(init) == 1))

    replace: dict[int, list] = {}  # id(Log node) -> new nodes; the Add feeding it is dropped
    dropped: set[int] = set()
    for node in graph.node:
        if node.op_type != "Log":
            continue
        add = producer.get(node.input[0])
        if add is None or add.op_type != "Add" or not any(all_ones(name) for name in add.input):
            continue
        counts = next(name for name in add.input if not all_ones(name))
        one, prefix = f"{node.output[0]}_one", node.output[0]
        graph.initializer.append(helper.make_tensor(one, TensorProto.FLOAT, [], [1.0]))
        replace[id(node)] = [
            helper.make_node("Max", [counts, one], [f"{prefix}_atleast1"], name=f"{prefix}_max"),
            helper.make_node("Log", [f"{prefix}_atleast1"], [f"{prefix}_log"], name=f"{prefix}_log"),
            helper.make_node("Min", [counts, one], [f"{prefix}_nonzero"], name=f"{prefix}_min"),
            helper.make_node(
                "Add", [f"{prefix}_log", f"{prefix}_nonzero"], [node.output[0]], name=f"{prefix}_sublinear"
            ),
        ]
        dropped.add(id(add))
    if len(replace) != expected:
        raise OnnxConversionError(
            f"expected {expected} sublinear-tf block(s) in the converted graph, found {len(replace)}"
        )
    nodes = []
    for node in graph.node:
        if id(node) in dropped:
            continue
        nodes.extend(replace.get(id(node), [node]))
    del graph.node[:]
    graph.node.extend(nodes)


def _vectorize_l2_normalizers(model) -> None:
    """Speed, not correctness: ``ai.onnx.ml.Normalizer`` (L2) loops element by element and took half the inference
    time; ``x / norm`` from ReduceSumSquare/Sqrt/Div runs vectorized. A zero row stays zero (scikit-learn's rule)."""
    from onnx import TensorProto, helper

    graph = model.graph
    nodes = []
    for node in graph.node:
        norm = getattr(_attribute(node, "norm"), "s", b"")
        if node.op_type != "Normalizer" or norm != b"L2":
            nodes.append(node)
            continue
        x, y = node.input[0], node.output[0]
        graph.initializer.extend(
            [
                helper.make_tensor(f"{y}_axes", TensorProto.INT64, [1], [1]),
                helper.make_tensor(f"{y}_zero", TensorProto.FLOAT, [], [0.0]),
                helper.make_tensor(f"{y}_one", TensorProto.FLOAT, [], [1.0]),
            ]
        )
        nodes += [
            helper.make_node("ReduceSumSquare", [x, f"{y}_axes"], [f"{y}_sumsq"], keepdims=1, name=f"{y}_sumsq"),
            helper.make_node("Sqrt", [f"{y}_sumsq"], [f"{y}_l2"], name=f"{y}_sqrt"),
            helper.make_node("Equal", [f"{y}_l2", f"{y}_zero"], [f"{y}_is_zero"], name=f"{y}_is_zero"),
            helper.make_node("Where", [f"{y}_is_zero", f"{y}_one", f"{y}_l2"], [f"{y}_divisor"], name=f"{y}_divisor"),
            helper.make_node("Div", [x, f"{y}_divisor"], [y], name=f"{y}_div"),
        ]
    del graph.node[:]
    graph.node.extend(nodes)


def parity(reference: np.ndarray, candidate: np.ndarray, tolerance: float) -> dict:
    """How closely ``candidate`` (ONNX) reproduces ``reference`` (scikit-learn) probabilities, row by row.

    ``argmax_agreement`` counts every row; ``hard_disagreements`` only rows whose predicted class differs although the
    reference's top two classes are more than ``2 * tolerance`` apart (a flip between near-ties is float noise)."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise OnnxConversionError(f"ONNX probabilities have shape {candidate.shape}, scikit-learn's {reference.shape}")
    if not len(reference):
        return {
            "num_examples": 0, "max_abs_diff": 0.0, "mean_abs_diff": 0.0, "argmax_agreement": 1.0,
            "hard_disagreements": 0, "nan_rows": 0,
        }
    diff = np.abs(candidate - reference)
    agree = candidate.argmax(axis=1) == reference.argmax(axis=1)
    top2 = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else np.zeros((len(reference), 2))
    clear = (top2[:, 1] - top2[:, 0]) > 2 * tolerance
    return {
        "num_examples": int(len(reference)),
        "max_abs_diff": float(diff.max()),  # NaN if any row is NaN: fails the check below
        "mean_abs_diff": float(diff.mean()),
        "argmax_agreement": float(agree.mean()),
        "hard_disagreements": int((~agree & clear).sum()),
        "nan_rows": int(np.isnan(candidate).any(axis=1).sum()),
    }


def check_parity(reports: dict[str, dict], tolerance: float) -> None:
    """Raise :class:`OnnxConversionError` when any split's ONNX probabilities are off by more than ``tolerance``."""
    problems = []
    for split, report in reports.items():
        if report.get("nan_rows"):
            problems.append(f"{split}: {report['nan_rows']} row(s) of NaN probabilities")
        if not report["max_abs_diff"] <= tolerance:
            worst = report["max_abs_diff"]
            problems.append(f"{split}: max |p_onnx - p_sklearn| = {worst:.3g} > tolerance {tolerance:g}")
        if report["hard_disagreements"]:
            problems.append(f"{split}: {report['hard_disagreements']} prediction(s) differ (not near-ties)")
    if problems:
        raise OnnxConversionError(
            "the ONNX model does not reproduce the scikit-learn pipeline, so it is not shipped:\n  "
            + "\n  ".join(problems)
            + "\nThe conversion of some TF-IDF option is not faithful (docs/baseline.md, 'ONNX parity')."
        )
