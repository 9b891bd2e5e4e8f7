"""Generate the gRPC stubs of ``proto/agnews/v1/classifier.proto`` into ``agnews/serving/_proto/``.

    python -m agnews.serving.protos          # regenerate (needs grpcio-tools, a dev dependency)

protoc names the stubs' import after the proto's path (``from agnews.v1 import classifier_pb2``); it is rewritten to
the package the stubs live in. ``tests/test_serving_grpc.py`` checks the committed stubs describe the current .proto.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
PROTO_FILE = "agnews/v1/classifier.proto"
STUBS_DIR = Path(__file__).resolve().parent / "_proto"
STUB_FILES = ("classifier_pb2.py", "classifier_pb2.pyi", "classifier_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Write the three stub files into ``out_dir``; returns their paths."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}", str(PROTO_ROOT / PROTO_FILE),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO_ROOT / PROTO_FILE}")
        written = []
        for name in STUB_FILES:
            text = (Path(tmp) / "agnews" / "v1" / name).read_text(encoding="utf-8")
            text = text.replace("from agnews.v1 import classifier_pb2", "from agnews.serving._proto import classifier_pb2")
            target = out_dir / name
            target.write_text(text, encoding="utf-8")
            written.append(target)
    return written


def descriptor_set() -> bytes:
    """The serialized FileDescriptorSet protoc builds from the .proto now (for the stubs-are-current test)."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        if protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--descriptor_set_out={out}", str(PROTO_ROOT / PROTO_FILE)]) != 0:
            raise RuntimeError(f"protoc failed on {PROTO_ROOT / PROTO_FILE}")
        return out.read_bytes()


if __name__ == "__main__":
    for path in generate(STUBS_DIR):
        print(path.relative_to(REPO_ROOT))
    sys.exit(0)
