"""etcd v3 gRPC messages and stubs, generated from ``protos/cwm/etcd/etcdrpc/*.proto``.

Everything else in this package is written by ``protos/generate.py`` (at build
time by setup.py, in place by ``make install``) and is not in git: never edit
it by hand. ``kv_pb2`` holds ``KeyValue``/``Event``, ``rpc_pb2`` the requests
and responses, ``rpc_pb2_grpc`` the ``KVStub``, ``WatchStub``, ``LeaseStub``,
``AuthStub`` and ``MaintenanceStub`` classes.
"""
