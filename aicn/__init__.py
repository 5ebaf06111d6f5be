"""aicn: a Python/Twisted node for the DeepBrainChain AI computing network."""

__version__ = "0.1.0"

#: The application protocol version every node reports in identify.
PROTOCOL_VERSION = "aicn/0.0.1"
#: Our agent string, as identify and ``/api/v0/id`` report it.
AGENT_VERSION = f"aicn-py/{__version__}"
