from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MessageType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PEER_IDENTITY: _ClassVar[MessageType]
    HOST_INFO: _ClassVar[MessageType]
    AI_PROJECT: _ClassVar[MessageType]
    CHAT_COMPLETION: _ClassVar[MessageType]
    IMAGE_GENERATION: _ClassVar[MessageType]
PEER_IDENTITY: MessageType
HOST_INFO: MessageType
AI_PROJECT: MessageType
CHAT_COMPLETION: MessageType
IMAGE_GENERATION: MessageType

class MessageHeader(_message.Message):
    __slots__ = ("client_version", "timestamp", "id", "node_id", "receiver", "node_pub_key", "sign")
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    NODE_PUB_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGN_FIELD_NUMBER: _ClassVar[int]
    client_version: str
    timestamp: int
    id: str
    node_id: str
    receiver: str
    node_pub_key: bytes
    sign: bytes
    def __init__(self, client_version: _Optional[str] = ..., timestamp: _Optional[int] = ..., id: _Optional[str] = ..., node_id: _Optional[str] = ..., receiver: _Optional[str] = ..., node_pub_key: _Optional[bytes] = ..., sign: _Optional[bytes] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("header", "type", "body", "result_code", "result_message")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    RESULT_CODE_FIELD_NUMBER: _ClassVar[int]
    RESULT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    header: MessageHeader
    type: MessageType
    body: bytes
    result_code: int
    result_message: str
    def __init__(self, header: _Optional[_Union[MessageHeader, _Mapping]] = ..., type: _Optional[_Union[MessageType, str]] = ..., body: _Optional[bytes] = ..., result_code: _Optional[int] = ..., result_message: _Optional[str] = ...) -> None: ...

class PeerIdentityBody(_message.Message):
    __slots__ = ("req", "res")
    REQ_FIELD_NUMBER: _ClassVar[int]
    RES_FIELD_NUMBER: _ClassVar[int]
    req: PeerIdentityRequest
    res: PeerIdentityResponse
    def __init__(self, req: _Optional[_Union[PeerIdentityRequest, _Mapping]] = ..., res: _Optional[_Union[PeerIdentityResponse, _Mapping]] = ...) -> None: ...

class PeerIdentityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerIdentityResponse(_message.Message):
    __slots__ = ("protocol_version", "agent_version", "public_key", "listen_addrs", "protocols")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    LISTEN_ADDRS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOLS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    agent_version: str
    public_key: bytes
    listen_addrs: _containers.RepeatedScalarFieldContainer[str]
    protocols: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, protocol_version: _Optional[str] = ..., agent_version: _Optional[str] = ..., public_key: _Optional[bytes] = ..., listen_addrs: _Optional[_Iterable[str]] = ..., protocols: _Optional[_Iterable[str]] = ...) -> None: ...

class WalletVerification(_message.Message):
    __slots__ = ("wallet", "signature", "hash")
    WALLET_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    wallet: str
    signature: str
    hash: str
    def __init__(self, wallet: _Optional[str] = ..., signature: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class ImageGenerationBody(_message.Message):
    __slots__ = ("req", "res")
    REQ_FIELD_NUMBER: _ClassVar[int]
    RES_FIELD_NUMBER: _ClassVar[int]
    req: ImageGenerationRequest
    res: ImageGenerationResponse
    def __init__(self, req: _Optional[_Union[ImageGenerationRequest, _Mapping]] = ..., res: _Optional[_Union[ImageGenerationResponse, _Mapping]] = ...) -> None: ...

class ImageGenerationRequest(_message.Message):
    __slots__ = ("project", "model", "prompt", "number", "size", "width", "height", "response_format", "cid", "step", "wallet")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WALLET_FIELD_NUMBER: _ClassVar[int]
    project: str
    model: str
    prompt: str
    number: int
    size: str
    width: int
    height: int
    response_format: str
    cid: str
    step: int
    wallet: WalletVerification
    def __init__(self, project: _Optional[str] = ..., model: _Optional[str] = ..., prompt: _Optional[str] = ..., number: _Optional[int] = ..., size: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., response_format: _Optional[str] = ..., cid: _Optional[str] = ..., step: _Optional[int] = ..., wallet: _Optional[_Union[WalletVerification, _Mapping]] = ...) -> None: ...

class ImageGenerationResponse(_message.Message):
    __slots__ = ("created", "choices")
    class ImageResponseChoice(_message.Message):
        __slots__ = ("url", "b64_json", "revised_prompt")
        URL_FIELD_NUMBER: _ClassVar[int]
        B64_JSON_FIELD_NUMBER: _ClassVar[int]
        REVISED_PROMPT_FIELD_NUMBER: _ClassVar[int]
        url: str
        b64_json: str
        revised_prompt: str
        def __init__(self, url: _Optional[str] = ..., b64_json: _Optional[str] = ..., revised_prompt: _Optional[str] = ...) -> None: ...
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    created: int
    choices: _containers.RepeatedCompositeFieldContainer[ImageGenerationResponse.ImageResponseChoice]
    def __init__(self, created: _Optional[int] = ..., choices: _Optional[_Iterable[_Union[ImageGenerationResponse.ImageResponseChoice, _Mapping]]] = ...) -> None: ...

class ChatCompletionBody(_message.Message):
    __slots__ = ("req", "res")
    REQ_FIELD_NUMBER: _ClassVar[int]
    RES_FIELD_NUMBER: _ClassVar[int]
    req: ChatCompletionRequest
    res: ChatCompletionResponse
    def __init__(self, req: _Optional[_Union[ChatCompletionRequest, _Mapping]] = ..., res: _Optional[_Union[ChatCompletionResponse, _Mapping]] = ...) -> None: ...

class ChatContentPart(_message.Message):
    __slots__ = ("type", "text", "image", "audio")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TEXT: _ClassVar[ChatContentPart.Type]
        IMAGE: _ClassVar[ChatContentPart.Type]
        AUDIO: _ClassVar[ChatContentPart.Type]
    TEXT: ChatContentPart.Type
    IMAGE: ChatContentPart.Type
    AUDIO: ChatContentPart.Type
    class Text(_message.Message):
        __slots__ = ("type", "text")
        TYPE_FIELD_NUMBER: _ClassVar[int]
        TEXT_FIELD_NUMBER: _ClassVar[int]
        type: str
        text: str
        def __init__(self, type: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...
    class Image(_message.Message):
        __slots__ = ("type", "url", "detail")
        TYPE_FIELD_NUMBER: _ClassVar[int]
        URL_FIELD_NUMBER: _ClassVar[int]
        DETAIL_FIELD_NUMBER: _ClassVar[int]
        type: str
        url: str
        detail: str
        def __init__(self, type: _Optional[str] = ..., url: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...
    class Audio(_message.Message):
        __slots__ = ("type", "data", "format")
        TYPE_FIELD_NUMBER: _ClassVar[int]
        DATA_FIELD_NUMBER: _ClassVar[int]
        FORMAT_FIELD_NUMBER: _ClassVar[int]
        type: str
        data: str
        format: str
        def __init__(self, type: _Optional[str] = ..., data: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    type: ChatContentPart.Type
    text: ChatContentPart.Text
    image: ChatContentPart.Image
    audio: ChatContentPart.Audio
    def __init__(self, type: _Optional[_Union[ChatContentPart.Type, str]] = ..., text: _Optional[_Union[ChatContentPart.Text, _Mapping]] = ..., image: _Optional[_Union[ChatContentPart.Image, _Mapping]] = ..., audio: _Optional[_Union[ChatContentPart.Audio, _Mapping]] = ...) -> None: ...

class ChatContentParts(_message.Message):
    __slots__ = ("parts",)
    PARTS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[ChatContentPart]
    def __init__(self, parts: _Optional[_Iterable[_Union[ChatContentPart, _Mapping]]] = ...) -> None: ...

class ChatCompletionMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: bytes
    def __init__(self, role: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class ChatCompletionRequest(_message.Message):
    __slots__ = ("project", "model", "messages", "stream", "cid", "temperature", "top_p", "wallet")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    WALLET_FIELD_NUMBER: _ClassVar[int]
    project: str
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatCompletionMessage]
    stream: bool
    cid: str
    temperature: float
    top_p: float
    wallet: WalletVerification
    def __init__(self, project: _Optional[str] = ..., model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatCompletionMessage, _Mapping]]] = ..., stream: _Optional[bool] = ..., cid: _Optional[str] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., wallet: _Optional[_Union[WalletVerification, _Mapping]] = ...) -> None: ...

class ChatCompletionResponseMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ChatCompletionResponse(_message.Message):
    __slots__ = ("created", "choices", "usage", "id", "object")
    class ChatResponseChoice(_message.Message):
        __slots__ = ("index", "message", "finish_reason")
        INDEX_FIELD_NUMBER: _ClassVar[int]
        MESSAGE_FIELD_NUMBER: _ClassVar[int]
        FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
        index: int
        message: ChatCompletionResponseMessage
        finish_reason: str
        def __init__(self, index: _Optional[int] = ..., message: _Optional[_Union[ChatCompletionResponseMessage, _Mapping]] = ..., finish_reason: _Optional[str] = ...) -> None: ...
    class ChatResponseUsage(_message.Message):
        __slots__ = ("completion_tokens", "prompt_tokens", "total_tokens")
        COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
        PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
        TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
        completion_tokens: int
        prompt_tokens: int
        total_tokens: int
        def __init__(self, completion_tokens: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ...) -> None: ...
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    created: int
    choices: _containers.RepeatedCompositeFieldContainer[ChatCompletionResponse.ChatResponseChoice]
    usage: ChatCompletionResponse.ChatResponseUsage
    id: str
    object: str
    def __init__(self, created: _Optional[int] = ..., choices: _Optional[_Iterable[_Union[ChatCompletionResponse.ChatResponseChoice, _Mapping]]] = ..., usage: _Optional[_Union[ChatCompletionResponse.ChatResponseUsage, _Mapping]] = ..., id: _Optional[str] = ..., object: _Optional[str] = ...) -> None: ...

class HostInfoBody(_message.Message):
    __slots__ = ("req", "res")
    REQ_FIELD_NUMBER: _ClassVar[int]
    RES_FIELD_NUMBER: _ClassVar[int]
    req: HostInfoRequest
    res: HostInfoResponse
    def __init__(self, req: _Optional[_Union[HostInfoRequest, _Mapping]] = ..., res: _Optional[_Union[HostInfoResponse, _Mapping]] = ...) -> None: ...

class HostInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HostInfoResponse(_message.Message):
    __slots__ = ("os", "cpu", "memory", "disk", "gpu")
    class OSInfo(_message.Message):
        __slots__ = ("os", "platform", "platform_family", "platform_version", "kernel_version", "kernel_arch")
        OS_FIELD_NUMBER: _ClassVar[int]
        PLATFORM_FIELD_NUMBER: _ClassVar[int]
        PLATFORM_FAMILY_FIELD_NUMBER: _ClassVar[int]
        PLATFORM_VERSION_FIELD_NUMBER: _ClassVar[int]
        KERNEL_VERSION_FIELD_NUMBER: _ClassVar[int]
        KERNEL_ARCH_FIELD_NUMBER: _ClassVar[int]
        os: str
        platform: str
        platform_family: str
        platform_version: str
        kernel_version: str
        kernel_arch: str
        def __init__(self, os: _Optional[str] = ..., platform: _Optional[str] = ..., platform_family: _Optional[str] = ..., platform_version: _Optional[str] = ..., kernel_version: _Optional[str] = ..., kernel_arch: _Optional[str] = ...) -> None: ...
    class CpuInfo(_message.Message):
        __slots__ = ("model_name", "total_cores", "total_threads")
        MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
        TOTAL_CORES_FIELD_NUMBER: _ClassVar[int]
        TOTAL_THREADS_FIELD_NUMBER: _ClassVar[int]
        model_name: str
        total_cores: int
        total_threads: int
        def __init__(self, model_name: _Optional[str] = ..., total_cores: _Optional[int] = ..., total_threads: _Optional[int] = ...) -> None: ...
    class MemoryInfo(_message.Message):
        __slots__ = ("total_physical_bytes", "total_usable_bytes")
        TOTAL_PHYSICAL_BYTES_FIELD_NUMBER: _ClassVar[int]
        TOTAL_USABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
        total_physical_bytes: int
        total_usable_bytes: int
        def __init__(self, total_physical_bytes: _Optional[int] = ..., total_usable_bytes: _Optional[int] = ...) -> None: ...
    class DiskInfo(_message.Message):
        __slots__ = ("drive_type", "size_bytes", "model", "serial_number")
        DRIVE_TYPE_FIELD_NUMBER: _ClassVar[int]
        SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
        MODEL_FIELD_NUMBER: _ClassVar[int]
        SERIAL_NUMBER_FIELD_NUMBER: _ClassVar[int]
        drive_type: str
        size_bytes: int
        model: str
        serial_number: str
        def __init__(self, drive_type: _Optional[str] = ..., size_bytes: _Optional[int] = ..., model: _Optional[str] = ..., serial_number: _Optional[str] = ...) -> None: ...
    class GpuInfo(_message.Message):
        __slots__ = ("vendor", "product")
        VENDOR_FIELD_NUMBER: _ClassVar[int]
        PRODUCT_FIELD_NUMBER: _ClassVar[int]
        vendor: str
        product: str
        def __init__(self, vendor: _Optional[str] = ..., product: _Optional[str] = ...) -> None: ...
    OS_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    os: HostInfoResponse.OSInfo
    cpu: _containers.RepeatedCompositeFieldContainer[HostInfoResponse.CpuInfo]
    memory: HostInfoResponse.MemoryInfo
    disk: _containers.RepeatedCompositeFieldContainer[HostInfoResponse.DiskInfo]
    gpu: _containers.RepeatedCompositeFieldContainer[HostInfoResponse.GpuInfo]
    def __init__(self, os: _Optional[_Union[HostInfoResponse.OSInfo, _Mapping]] = ..., cpu: _Optional[_Iterable[_Union[HostInfoResponse.CpuInfo, _Mapping]]] = ..., memory: _Optional[_Union[HostInfoResponse.MemoryInfo, _Mapping]] = ..., disk: _Optional[_Iterable[_Union[HostInfoResponse.DiskInfo, _Mapping]]] = ..., gpu: _Optional[_Iterable[_Union[HostInfoResponse.GpuInfo, _Mapping]]] = ...) -> None: ...

class AIProjectBody(_message.Message):
    __slots__ = ("req", "res")
    REQ_FIELD_NUMBER: _ClassVar[int]
    RES_FIELD_NUMBER: _ClassVar[int]
    req: AIProjectRequest
    res: AIProjectResponse
    def __init__(self, req: _Optional[_Union[AIProjectRequest, _Mapping]] = ..., res: _Optional[_Union[AIProjectResponse, _Mapping]] = ...) -> None: ...

class AIModelOfProject(_message.Message):
    __slots__ = ("model", "api", "type", "idle", "cid")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    model: str
    api: str
    type: int
    idle: int
    cid: str
    def __init__(self, model: _Optional[str] = ..., api: _Optional[str] = ..., type: _Optional[int] = ..., idle: _Optional[int] = ..., cid: _Optional[str] = ...) -> None: ...

class AIProjectOfNode(_message.Message):
    __slots__ = ("project", "models")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    project: str
    models: _containers.RepeatedCompositeFieldContainer[AIModelOfProject]
    def __init__(self, project: _Optional[str] = ..., models: _Optional[_Iterable[_Union[AIModelOfProject, _Mapping]]] = ...) -> None: ...

class AIProjectRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AIProjectResponse(_message.Message):
    __slots__ = ("projects", "node_type")
    PROJECTS_FIELD_NUMBER: _ClassVar[int]
    NODE_TYPE_FIELD_NUMBER: _ClassVar[int]
    projects: _containers.RepeatedCompositeFieldContainer[AIProjectOfNode]
    node_type: int
    def __init__(self, projects: _Optional[_Iterable[_Union[AIProjectOfNode, _Mapping]]] = ..., node_type: _Optional[int] = ...) -> None: ...
