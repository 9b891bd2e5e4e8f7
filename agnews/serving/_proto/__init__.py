"""Stubs generated from proto/agnews/v1/classifier.proto by `python -m agnews.serving.protos` (do not edit)."""
