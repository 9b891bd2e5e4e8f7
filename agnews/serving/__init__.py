"""Serving a finished run over HTTP (BentoML), GraphQL and gRPC: ``python -m agnews.serve run=<run dir or bundle>``.

One predictor core (:mod:`agnews.serving.core`), one request model and validation layer (:mod:`agnews.serving.schema`),
one access layer (:mod:`agnews.serving.access`), and an adapter per protocol (:mod:`~agnews.serving.service`,
:mod:`~agnews.serving.graphql_app`, :mod:`~agnews.serving.grpc_server`), run together by
:mod:`agnews.serving.launcher`. This package imports neither Hydra nor Lightning, and imports BentoML, strawberry and
grpcio only in the adapter modules that need them. See docs/serving.md.
"""
