"""Generated protobuf modules for the libp2p wire schemas in ``proto/p2p`` (see its README)."""
