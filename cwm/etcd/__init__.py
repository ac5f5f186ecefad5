"""The reusable etcd v3 client: generated stubs, blocking client, watch, leased publisher.

The only package that runs code in threads; it hands results to the reactor
with ``callFromThread``.
"""
