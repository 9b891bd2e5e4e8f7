"""``python -m agnews.baseline``: the classical member. TF-IDF word and char n-grams with a calibrated linear SVM
(scikit-learn), fitted on the same splits as training and shipped as one ONNX graph (strings in, probabilities out).

Modules: :mod:`~agnews.baseline.model` builds the scikit-learn pipeline from the config,
:mod:`~agnews.baseline.onnx_convert` converts it faithfully and measures parity, :mod:`~agnews.baseline.run` writes the
run directory. Docs: docs/baseline.md.
"""
