"""The vendored etcd protos: fresh compilation, every field number cwm relies on, the stripper.

The protos are compiled here into a temporary directory (never the installed
copy) and read back as a FileDescriptorSet in a private descriptor pool, so
a drifted or mis-stripped proto fails these tests whatever is installed.
The numbers are those of etcd's own protos (identical in etcd 3.4.23, 3.5.21 and HEAD).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_cwm_protos_{name}", PROTOS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, descriptor_pool.DescriptorPool]]:
    """The protos compiled afresh: the output root and a pool holding their descriptors."""
    out = tmp_path_factory.mktemp("etcdrpc")
    descriptor_set = out / "etcd.pb"
    _load("generate").generate(out, PROTOS, descriptor_set=descriptor_set)
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file_proto in files.file:
        pool.Add(file_proto)
    yield out, pool


def message(pool: descriptor_pool.DescriptorPool, name: str) -> Descriptor:
    return pool.FindMessageTypeByName(name)


T = FieldDescriptor
BYTES, INT64, UINT64, BOOL, STRING, ENUM, MESSAGE, UINT32 = (
    T.TYPE_BYTES,
    T.TYPE_INT64,
    T.TYPE_UINT64,
    T.TYPE_BOOL,
    T.TYPE_STRING,
    T.TYPE_ENUM,
    T.TYPE_MESSAGE,
    T.TYPE_UINT32,
)
# message -> field -> (number, type, repeated), for every message cwm uses.
FIELDS: dict[str, dict[str, tuple[int, int, bool]]] = {
    "etcdserverpb.ResponseHeader": {
        "cluster_id": (1, UINT64, False),
        "member_id": (2, UINT64, False),
        "revision": (3, INT64, False),
        "raft_term": (4, UINT64, False),
    },
    "mvccpb.KeyValue": {
        "key": (1, BYTES, False),
        "create_revision": (2, INT64, False),
        "mod_revision": (3, INT64, False),
        "version": (4, INT64, False),
        "value": (5, BYTES, False),
        "lease": (6, INT64, False),
    },
    "mvccpb.Event": {
        "type": (1, ENUM, False),
        "kv": (2, MESSAGE, False),
        "prev_kv": (3, MESSAGE, False),
    },
    "etcdserverpb.RangeRequest": {
        "key": (1, BYTES, False),
        "range_end": (2, BYTES, False),
        "limit": (3, INT64, False),
        "revision": (4, INT64, False),
        "sort_order": (5, ENUM, False),
        "sort_target": (6, ENUM, False),
        "serializable": (7, BOOL, False),
        "keys_only": (8, BOOL, False),
        "count_only": (9, BOOL, False),
        "min_mod_revision": (10, INT64, False),
        "max_mod_revision": (11, INT64, False),
        "min_create_revision": (12, INT64, False),
        "max_create_revision": (13, INT64, False),
    },
    "etcdserverpb.RangeResponse": {
        "header": (1, MESSAGE, False),
        "kvs": (2, MESSAGE, True),
        "more": (3, BOOL, False),
        "count": (4, INT64, False),
    },
    "etcdserverpb.PutRequest": {
        "key": (1, BYTES, False),
        "value": (2, BYTES, False),
        "lease": (3, INT64, False),
        "prev_kv": (4, BOOL, False),
        "ignore_value": (5, BOOL, False),
        "ignore_lease": (6, BOOL, False),
    },
    "etcdserverpb.PutResponse": {
        "header": (1, MESSAGE, False),
        "prev_kv": (2, MESSAGE, False),
    },
    "etcdserverpb.DeleteRangeRequest": {
        "key": (1, BYTES, False),
        "range_end": (2, BYTES, False),
        "prev_kv": (3, BOOL, False),
    },
    "etcdserverpb.DeleteRangeResponse": {
        "header": (1, MESSAGE, False),
        "deleted": (2, INT64, False),
        "prev_kvs": (3, MESSAGE, True),
    },
    "etcdserverpb.CompactionRequest": {
        "revision": (1, INT64, False),
        "physical": (2, BOOL, False),
    },
    "etcdserverpb.WatchRequest": {
        "create_request": (1, MESSAGE, False),
        "cancel_request": (2, MESSAGE, False),
        "progress_request": (3, MESSAGE, False),
    },
    "etcdserverpb.WatchCreateRequest": {
        "key": (1, BYTES, False),
        "range_end": (2, BYTES, False),
        "start_revision": (3, INT64, False),
        "progress_notify": (4, BOOL, False),
        "filters": (5, ENUM, True),
        "prev_kv": (6, BOOL, False),
        "watch_id": (7, INT64, False),
        "fragment": (8, BOOL, False),
    },
    "etcdserverpb.WatchCancelRequest": {
        "watch_id": (1, INT64, False),
    },
    "etcdserverpb.WatchProgressRequest": {},
    "etcdserverpb.WatchResponse": {
        "header": (1, MESSAGE, False),
        "watch_id": (2, INT64, False),
        "created": (3, BOOL, False),
        "canceled": (4, BOOL, False),
        "compact_revision": (5, INT64, False),
        "cancel_reason": (6, STRING, False),
        "fragment": (7, BOOL, False),
        "events": (11, MESSAGE, True),
    },
    "etcdserverpb.LeaseGrantRequest": {
        "TTL": (1, INT64, False),
        "ID": (2, INT64, False),
    },
    "etcdserverpb.LeaseGrantResponse": {
        "header": (1, MESSAGE, False),
        "ID": (2, INT64, False),
        "TTL": (3, INT64, False),
        "error": (4, STRING, False),
    },
    "etcdserverpb.LeaseRevokeRequest": {
        "ID": (1, INT64, False),
    },
    "etcdserverpb.LeaseRevokeResponse": {
        "header": (1, MESSAGE, False),
    },
    "etcdserverpb.LeaseKeepAliveRequest": {
        "ID": (1, INT64, False),
    },
    "etcdserverpb.LeaseKeepAliveResponse": {
        "header": (1, MESSAGE, False),
        "ID": (2, INT64, False),
        "TTL": (3, INT64, False),
    },
    "etcdserverpb.AuthenticateRequest": {
        "name": (1, STRING, False),
        "password": (2, STRING, False),
    },
    "etcdserverpb.AuthenticateResponse": {
        "header": (1, MESSAGE, False),
        "token": (2, STRING, False),
    },
    "etcdserverpb.StatusRequest": {},
    "etcdserverpb.StatusResponse": {
        "header": (1, MESSAGE, False),
        "version": (2, STRING, False),
        "dbSize": (3, INT64, False),
        "leader": (4, UINT64, False),
        "raftIndex": (5, UINT64, False),
        "raftTerm": (6, UINT64, False),
        "raftAppliedIndex": (7, UINT64, False),
        "errors": (8, STRING, True),
        "dbSizeInUse": (9, INT64, False),
        "isLearner": (10, BOOL, False),
    },
}

MESSAGE_TYPES = {
    ("etcdserverpb.RangeResponse", "header"): "etcdserverpb.ResponseHeader",
    ("etcdserverpb.RangeResponse", "kvs"): "mvccpb.KeyValue",
    ("etcdserverpb.WatchResponse", "events"): "mvccpb.Event",
    ("etcdserverpb.WatchRequest", "create_request"): "etcdserverpb.WatchCreateRequest",
    ("mvccpb.Event", "kv"): "mvccpb.KeyValue",
    ("mvccpb.Event", "prev_kv"): "mvccpb.KeyValue",
}


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_field_number_type_and_label(
    compiled: tuple[Path, descriptor_pool.DescriptorPool], name: str
) -> None:
    """Each message has exactly the FIELDS listed (StatusResponse: 3.5 has no field past 10)."""
    descriptor = message(compiled[1], name)
    expected = FIELDS[name]
    assert set(descriptor.fields_by_name) == set(expected)
    for field_name, (number, kind, repeated) in expected.items():
        field = descriptor.fields_by_name[field_name]
        assert (field.number, field.type) == (number, kind), f"{name}.{field_name}"
        assert field.is_repeated is repeated, f"{name}.{field_name}"


def test_message_field_types_point_where_expected(compiled: tuple[Path, descriptor_pool.DescriptorPool]) -> None:
    """Sub-message fields name the right messages, across the three files."""
    for (name, field_name), target in MESSAGE_TYPES.items():
        field = message(compiled[1], name).fields_by_name[field_name]
        assert field.message_type is not None and field.message_type.full_name == target


def test_watch_request_is_a_oneof(compiled: tuple[Path, descriptor_pool.DescriptorPool]) -> None:
    """create/cancel/progress are alternatives of request_union."""
    oneof = message(compiled[1], "etcdserverpb.WatchRequest").oneofs_by_name["request_union"]
    assert sorted(field.name for field in oneof.fields) == ["cancel_request", "create_request", "progress_request"]


@pytest.mark.parametrize(
    "enum_name, values",
    [
        ("mvccpb.Event.EventType", {"PUT": 0, "DELETE": 1}),
        ("etcdserverpb.RangeRequest.SortOrder", {"NONE": 0, "ASCEND": 1, "DESCEND": 2}),
        ("etcdserverpb.RangeRequest.SortTarget", {"KEY": 0, "VERSION": 1, "CREATE": 2, "MOD": 3, "VALUE": 4}),
        ("etcdserverpb.WatchCreateRequest.FilterType", {"NOPUT": 0, "NODELETE": 1}),
    ],
)
def test_enum_values(
    compiled: tuple[Path, descriptor_pool.DescriptorPool], enum_name: str, values: dict[str, int]
) -> None:
    enum = compiled[1].FindEnumTypeByName(enum_name)
    assert {value.name: value.number for value in enum.values} == values


def test_services_and_methods_keep_etcds_names(compiled: tuple[Path, descriptor_pool.DescriptorPool]) -> None:
    """The proto package is part of every gRPC path (/etcdserverpb.KV/Range): stripping keeps it."""
    pool = compiled[1]
    expected = {
        "KV": {"Range", "Put", "DeleteRange", "Compact"},
        "Watch": {"Watch"},
        "Lease": {"LeaseGrant", "LeaseRevoke", "LeaseKeepAlive"},
        "Auth": {"Authenticate", "UserAdd", "UserGrantRole", "AuthEnable"},
        "Maintenance": {"Status"},
    }
    for service_name, methods in expected.items():
        service = pool.FindServiceByName(f"etcdserverpb.{service_name}")
        assert methods <= set(service.methods_by_name)
    watch = pool.FindServiceByName("etcdserverpb.Watch").methods_by_name["Watch"]
    assert watch.client_streaming and watch.server_streaming


def test_generated_modules_import_with_absolute_imports(
    compiled: tuple[Path, descriptor_pool.DescriptorPool],
) -> None:
    """The fresh modules import each other as cwm.etcd.etcdrpc.* and run on the installed runtimes.

    In a subprocess whose path puts the fresh copy first, so the process
    running the tests never registers the same proto files twice.
    """
    out = compiled[0]
    for package in ("cwm", "cwm/etcd", "cwm/etcd/etcdrpc"):
        (out / package / "__init__.py").touch()
    assert "from cwm.etcd.etcdrpc import kv_pb2" in (out / "cwm/etcd/etcdrpc/rpc_pb2.py").read_text()
    script = (
        "import cwm.etcd.etcdrpc.rpc_pb2 as r, cwm.etcd.etcdrpc.rpc_pb2_grpc as g;"
        f"assert r.__file__.startswith({str(out)!r}), r.__file__;"
        "w = r.WatchRequest(create_request=r.WatchCreateRequest(key=b'/a', fragment=True));"
        "assert r.WatchRequest.FromString(w.SerializeToString()) == w;"
        "assert g.WatchStub and g.KVStub and g.LeaseStub and g.AuthStub and g.MaintenanceStub;"
        "print('ok')"
    )
    env = dict(os.environ, PYTHONPATH=str(out))
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, cwd=out
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_build_pins_agree() -> None:
    """pyproject's grpcio-tools is setup.py's GRPC_VERSION, and the installed tools are that version."""
    from importlib.metadata import version

    pyproject = (ROOT / "pyproject.toml").read_text()
    setup_py = (ROOT / "setup.py").read_text()
    pinned = setup_py.split('GRPC_VERSION = "', 1)[1].split('"', 1)[0]
    assert f'"grpcio-tools=={pinned}"' in pyproject
    assert version("grpcio-tools") == pinned


# --- the stripper -----------------------------------------------------------------------------

# Everything etcd 3.4 to 3.6 puts in its protos for Go, in one file; braces and
# semicolons inside strings and comments must not confuse the brace balancing.
GO_LADEN = """syntax = "proto3";
package etcdserverpb;

import "gogoproto/gogo.proto";
import "etcd/api/mvccpb/kv.proto";
import "etcd/api/authpb/auth.proto";
import "etcd/api/versionpb/version.proto";

// for grpc-gateway
import "google/api/annotations.proto";
import "protoc-gen-openapiv2/options/annotations.proto";

option go_package = "go.etcd.io/etcd/api/v3/etcdserverpb";

option (gogoproto.marshaler_all) = true;

option (grpc.gateway.protoc_gen_openapiv2.options.openapiv2_swagger) = {
  security_definitions: {
    security: {
      key: "ApiKey";
      value: {
        type: TYPE_API_KEY;
        in: IN_HEADER;
        name: "Authorization";
      }
    }
  }
  security: {
    security_requirement: {
      key: "ApiKey";
      value: {};
    }
  }
};

service KV {
  // Range gets the keys; a comment with { braces; and } semicolons.
  rpc Range(RangeRequest) returns (RangeResponse) {
      option (google.api.http) = {
        post: "/v3/kv/range}{;"
        body: "*"
        additional_bindings {
            post: "/v3/kv/lease/revoke"
            body: "*"
        }
    };
  }
}

message RangeRequest {
  option (versionpb.etcd_version_msg) = "3.0";

  enum SortOrder {
    option (versionpb.etcd_version_enum) = "3.0";
    NONE = 0; // default, no sorting
  }
  bytes key = 1;
  int64 min_mod_revision = 10 [(versionpb.etcd_version_field)="3.1"];
  mvccpb.KeyValue kv = 11 [(gogoproto.nullable) = false, deprecated = true];
  string note = 12 [json_name = "a,b"];
}

message RangeResponse {
  mvccpb.KeyValue kv = 1;
  authpb.Permission perm = 2;
}
"""


def test_strip_removes_every_go_only_construct_and_keeps_the_rest(tmp_path: Path) -> None:
    strip = _load("strip")
    stripped = strip.strip(GO_LADEN)
    strip.check(stripped)
    assert 'import "cwm/etcd/etcdrpc/kv.proto";' in stripped
    assert 'import "cwm/etcd/etcdrpc/auth.proto";' in stripped
    assert "rpc Range(RangeRequest) returns (RangeResponse) {\n  }" in stripped
    assert "int64 min_mod_revision = 10;" in stripped
    assert "mvccpb.KeyValue kv = 11 [deprecated = true];" in stripped
    assert 'string note = 12 [json_name = "a,b"];' in stripped
    assert "// Range gets the keys; a comment with { braces; and } semicolons." in stripped
    assert "message RangeRequest {\n  enum SortOrder {\n    NONE = 0; // default, no sorting\n  }" in stripped
    assert "package etcdserverpb;" in stripped
    assert "grpc-gateway" not in stripped and "\n\n\n" not in stripped
    # And it compiles, against kv/auth protos of its own.
    (tmp_path / "cwm/etcd/etcdrpc").mkdir(parents=True)
    (tmp_path / "cwm/etcd/etcdrpc/rpc.proto").write_text(stripped)
    for name in ("kv.proto", "auth.proto"):
        (tmp_path / "cwm/etcd/etcdrpc" / name).write_text((PROTOS / "cwm/etcd/etcdrpc" / name).read_text())
    from grpc_tools import protoc

    rpc = tmp_path / "cwm/etcd/etcdrpc/rpc.proto"
    assert protoc.main(["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", str(rpc)]) == 0


def test_vendored_protos_name_their_origin_and_are_stripped() -> None:
    """Each vendored file says which etcd it came from with the original's sha256, and is clean."""
    strip = _load("strip")
    for name in ("rpc.proto", "kv.proto", "auth.proto"):
        text = (PROTOS / "cwm/etcd/etcdrpc" / name).read_text()
        head = text.split("syntax", 1)[0]
        assert "etcd v3.5." in head and "Original sha256: " in head, name
        digest = head.split("Original sha256: ", 1)[1].split()[0]
        assert len(digest) == 64 and int(digest, 16) >= 0
        strip.check(text)
        assert strip.strip(text) == text, f"{name} is not fully stripped"
