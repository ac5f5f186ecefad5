"""Compile the vendored etcd protos into ``cwm/etcd/etcdrpc/``: messages, type stubs, gRPC stubs.

Usage::

    python protos/generate.py [OUT_ROOT]

``OUT_ROOT`` defaults to the repository root, so the modules land next to
``cwm/etcd/etcdrpc/__init__.py`` (what an editable install imports). setup.py's
``build_py`` calls :func:`generate` with the build directory instead. This file
must not import cwm: it runs before cwm is importable, in pip's isolated build
environment too. It needs ``grpcio-tools`` (pinned in pyproject.toml).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_FILES = (
    "cwm/etcd/etcdrpc/auth.proto",
    "cwm/etcd/etcdrpc/kv.proto",
    "cwm/etcd/etcdrpc/rpc.proto",
)
# What protoc writes for each .proto file.
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def outputs(out_root: Path) -> list[Path]:
    """The files :func:`generate` writes under ``out_root``."""
    return [out_root / (name[: -len(".proto")] + suffix) for name in PROTO_FILES for suffix in SUFFIXES]


def generate(
    out_root: Path | str, proto_root: Path | str = HERE, descriptor_set: Path | str | None = None
) -> list[Path]:
    """Run grpc_tools' protoc on the vendored protos; returns the files written.

    ``descriptor_set``, when given, also receives a serialized
    ``FileDescriptorSet`` (the tests read field numbers from it).
    """
    import grpc_tools
    from grpc_tools import protoc

    out_root = Path(out_root)
    proto_root = Path(proto_root)
    (out_root / "cwm" / "etcd" / "etcdrpc").mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={proto_root}",
        f"--proto_path={well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
    ]
    if descriptor_set is not None:
        args.append(f"--descriptor_set_out={descriptor_set}")
    args += [str(proto_root / name) for name in PROTO_FILES]
    status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status} compiling {proto_root}")
    written = outputs(out_root)
    missing = [str(path) for path in written if not path.is_file()]
    if missing:
        raise RuntimeError(f"protoc did not write {missing}")
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out_root = Path(args[0]) if args else HERE.parent
    for path in generate(out_root):
        print(f"generated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
