"""Generated wire types of the AICN application protocol (the Go node's
``protocol.proto``), at the bottom of the layers: the network application,
the model clients and host info all build these messages.

``protocol_pb2`` is generated from ``proto/protocol.proto`` (Go v0.1.2's
schema) and ``protocol_v023_pb2`` from ``proto/protocol_v023.proto`` (Go
v0.2.3's, package ``protocol_v023``) by ``proto/generate.py``; never edit them
by hand.
"""
