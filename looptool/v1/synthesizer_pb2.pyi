from looptool.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SynthesizeRequest(_message.Message):
    __slots__ = ("toolset", "num_dialogues", "concurrency", "seed", "output_prefix", "config_json", "round", "first_index")
    TOOLSET_FIELD_NUMBER: _ClassVar[int]
    NUM_DIALOGUES_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    toolset: _common_pb2.DatasetRef
    num_dialogues: int
    concurrency: int
    seed: int
    output_prefix: str
    config_json: str
    round: int
    first_index: int
    def __init__(self, toolset: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., num_dialogues: _Optional[int] = ..., concurrency: _Optional[int] = ..., seed: _Optional[int] = ..., output_prefix: _Optional[str] = ..., config_json: _Optional[str] = ..., round: _Optional[int] = ..., first_index: _Optional[int] = ...) -> None: ...

class SynthesisEvent(_message.Message):
    __slots__ = ("progress", "dialog", "error", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DIALOG_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.Progress
    dialog: _common_pb2.Dialog
    error: _common_pb2.Error
    result: _common_pb2.StageResult
    def __init__(self, progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., dialog: _Optional[_Union[_common_pb2.Dialog, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., result: _Optional[_Union[_common_pb2.StageResult, _Mapping]] = ...) -> None: ...
