from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ReservationVoucher(_message.Message):
    __slots__ = ("relay", "peer", "expiration")
    RELAY_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    EXPIRATION_FIELD_NUMBER: _ClassVar[int]
    relay: bytes
    peer: bytes
    expiration: int
    def __init__(self, relay: _Optional[bytes] = ..., peer: _Optional[bytes] = ..., expiration: _Optional[int] = ...) -> None: ...
