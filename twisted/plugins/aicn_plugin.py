"""``twistd aicn``: run an aicn node.  All the work is in :mod:`aicn.service`."""

from twisted.application.service import ServiceMaker

aicn = ServiceMaker(
    "aicn",
    "aicn.service",
    "A node of the DeepBrainChain decentralized AI computing network",
    "aicn",
)
