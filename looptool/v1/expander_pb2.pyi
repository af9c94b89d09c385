from looptool.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExpandRequest(_message.Message):
    __slots__ = ("verdicts", "corpus", "output_prefix", "factor", "seed", "config_json", "round")
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    CORPUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    verdicts: _common_pb2.DatasetRef
    corpus: _common_pb2.DatasetRef
    output_prefix: str
    factor: int
    seed: int
    config_json: str
    round: int
    def __init__(self, verdicts: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., corpus: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., output_prefix: _Optional[str] = ..., factor: _Optional[int] = ..., seed: _Optional[int] = ..., config_json: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...
