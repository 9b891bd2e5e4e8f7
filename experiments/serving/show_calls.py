"""Serve a run with ``python -m agnews.serve`` and print a curl call, a Python gRPC call and a GraphQL query with the
real answers (the examples in docs/serving.md come from this script).

    python experiments/serving/show_calls.py --run experiments/ensemble/runs/minilm_q42 [-- variant=int8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))
from serving_support import launched  # noqa: E402  (the tests' launcher: free ports, readiness on both protocols)

TEXT = "Stocks rally as oil prices fall and tech earnings beat forecasts"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    import grpc
    import httpx

    from agnews.serving._proto import classifier_pb2 as pb
    from agnews.serving._proto import classifier_pb2_grpc as pb_grpc

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        with launched(args.run.resolve(), Path(tmp) / "serve.log", *args.overrides) as served:
            print(f"# ready on HTTP and gRPC after {time.perf_counter() - started:.1f} s\n")
            curl = ["curl", "-s", f"{served.http}/classify", "-H", "Content-Type: application/json",
                    "-d", json.dumps({"text": TEXT})]
            out = subprocess.run(curl, capture_output=True, text=True, check=True).stdout
            print("$ curl -s localhost:3000/classify -H 'Content-Type: application/json' -d '" + json.dumps({"text": TEXT}) + "'")
            print(json.dumps(json.loads(out), indent=2), "\n")
            with grpc.insecure_channel(served.grpc_target) as channel:
                reply = pb_grpc.ClassifierStub(channel).ClassifyBatch(pb.ClassifyBatchRequest(texts=[TEXT]))
            print("# gRPC ClassifyBatch reply (protobuf text format)\n" + str(reply))
            query = '{ classify(texts: ["%s"]) { label probabilities { label probability } model { id version } } }' % TEXT
            answer = httpx.post(f"{served.http}/graphql", json={"query": query}, timeout=30).json()
            print("# GraphQL\n" + query + "\n" + json.dumps(answer, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
