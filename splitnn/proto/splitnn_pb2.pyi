from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class StepId(_message.Message):
    __slots__ = ("run", "epoch", "batch")
    RUN_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    run: str
    epoch: int
    batch: int
    def __init__(self, run: _Optional[str] = ..., epoch: _Optional[int] = ..., batch: _Optional[int] = ...) -> None: ...

class HeadSpec(_message.Message):
    __slots__ = ("num_classes", "lr", "seed")
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    num_classes: int
    lr: float
    seed: int
    def __init__(self, num_classes: _Optional[int] = ..., lr: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("run", "cut_shape", "dtype", "max_batch_size", "head", "resume", "resume_from", "resume_from_start", "group")
    RUN_FIELD_NUMBER: _ClassVar[int]
    CUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_START_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    run: str
    cut_shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    max_batch_size: int
    head: HeadSpec
    resume: bool
    resume_from: _containers.RepeatedCompositeFieldContainer[StepId]
    resume_from_start: bool
    group: GroupMember
    def __init__(self, run: _Optional[str] = ..., cut_shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., head: _Optional[_Union[HeadSpec, _Mapping]] = ..., resume: _Optional[bool] = ..., resume_from: _Optional[_Iterable[_Union[StepId, _Mapping]]] = ..., resume_from_start: _Optional[bool] = ..., group: _Optional[_Union[GroupMember, _Mapping]] = ...) -> None: ...

class GroupMember(_message.Message):
    __slots__ = ("name", "holder", "batches_per_epoch", "samples", "epochs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    BATCHES_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    name: str
    holder: int
    batches_per_epoch: int
    samples: int
    epochs: int
    def __init__(self, name: _Optional[str] = ..., holder: _Optional[int] = ..., batches_per_epoch: _Optional[int] = ..., samples: _Optional[int] = ..., epochs: _Optional[int] = ...) -> None: ...

class OpenSessionReply(_message.Message):
    __slots__ = ("session_id", "resumed", "last_applied", "has_last_applied", "max_message_bytes", "replaced", "topology", "group_size")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_FIELD_NUMBER: _ClassVar[int]
    HAS_LAST_APPLIED_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    resumed: bool
    last_applied: StepId
    has_last_applied: bool
    max_message_bytes: int
    replaced: bool
    topology: str
    group_size: int
    def __init__(self, session_id: _Optional[str] = ..., resumed: _Optional[bool] = ..., last_applied: _Optional[_Union[StepId, _Mapping]] = ..., has_last_applied: _Optional[bool] = ..., max_message_bytes: _Optional[int] = ..., replaced: _Optional[bool] = ..., topology: _Optional[str] = ..., group_size: _Optional[int] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("session_id", "step", "activations", "labels", "indices", "save")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    SAVE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    step: StepId
    activations: Tensor
    labels: Tensor
    indices: Tensor
    save: bool
    def __init__(self, session_id: _Optional[str] = ..., step: _Optional[_Union[StepId, _Mapping]] = ..., activations: _Optional[_Union[Tensor, _Mapping]] = ..., labels: _Optional[_Union[Tensor, _Mapping]] = ..., indices: _Optional[_Union[Tensor, _Mapping]] = ..., save: _Optional[bool] = ...) -> None: ...

class TrainReply(_message.Message):
    __slots__ = ("step", "gradient", "loss", "correct")
    STEP_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    step: StepId
    gradient: Tensor
    loss: float
    correct: int
    def __init__(self, step: _Optional[_Union[StepId, _Mapping]] = ..., gradient: _Optional[_Union[Tensor, _Mapping]] = ..., loss: _Optional[float] = ..., correct: _Optional[int] = ...) -> None: ...

class EvalRequest(_message.Message):
    __slots__ = ("session_id", "step", "split", "activations", "labels", "indices")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    step: StepId
    split: str
    activations: Tensor
    labels: Tensor
    indices: Tensor
    def __init__(self, session_id: _Optional[str] = ..., step: _Optional[_Union[StepId, _Mapping]] = ..., split: _Optional[str] = ..., activations: _Optional[_Union[Tensor, _Mapping]] = ..., labels: _Optional[_Union[Tensor, _Mapping]] = ..., indices: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class EvalReply(_message.Message):
    __slots__ = ("step", "logits", "loss", "correct")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    step: StepId
    logits: Tensor
    loss: float
    correct: int
    def __init__(self, step: _Optional[_Union[StepId, _Mapping]] = ..., logits: _Optional[_Union[Tensor, _Mapping]] = ..., loss: _Optional[float] = ..., correct: _Optional[int] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ("session_id", "name", "replace_previous")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPLACE_PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    name: str
    replace_previous: bool
    def __init__(self, session_id: _Optional[str] = ..., name: _Optional[str] = ..., replace_previous: _Optional[bool] = ...) -> None: ...

class CheckpointReply(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("session_id", "name", "run")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    name: str
    run: str
    def __init__(self, session_id: _Optional[str] = ..., name: _Optional[str] = ..., run: _Optional[str] = ...) -> None: ...

class RestoreReply(_message.Message):
    __slots__ = ("steps_applied",)
    STEPS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    steps_applied: int
    def __init__(self, steps_applied: _Optional[int] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id", "finished")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    finished: bool
    def __init__(self, session_id: _Optional[str] = ..., finished: _Optional[bool] = ...) -> None: ...

class CloseSessionReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: Tensor
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class Weights(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, tensors: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class WeightsBlob(_message.Message):
    __slots__ = ("data", "sha256")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    sha256: bytes
    def __init__(self, data: _Optional[bytes] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("session_id", "point", "epoch", "batch", "weights")
    class Point(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        POINT_UNSPECIFIED: _ClassVar[SyncRequest.Point]
        TURN: _ClassVar[SyncRequest.Point]
        HAND_IN: _ClassVar[SyncRequest.Point]
        FINISHED: _ClassVar[SyncRequest.Point]
    POINT_UNSPECIFIED: SyncRequest.Point
    TURN: SyncRequest.Point
    HAND_IN: SyncRequest.Point
    FINISHED: SyncRequest.Point
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    POINT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    point: SyncRequest.Point
    epoch: int
    batch: int
    weights: WeightsBlob
    def __init__(self, session_id: _Optional[str] = ..., point: _Optional[_Union[SyncRequest.Point, str]] = ..., epoch: _Optional[int] = ..., batch: _Optional[int] = ..., weights: _Optional[_Union[WeightsBlob, _Mapping]] = ...) -> None: ...

class SyncReply(_message.Message):
    __slots__ = ("weights", "has_weights")
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    HAS_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    weights: WeightsBlob
    has_weights: bool
    def __init__(self, weights: _Optional[_Union[WeightsBlob, _Mapping]] = ..., has_weights: _Optional[bool] = ...) -> None: ...

class TapRecord(_message.Message):
    __slots__ = ("step", "phase", "split", "activations", "indices", "labels", "received_at", "owner")
    STEP_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    step: StepId
    phase: str
    split: str
    activations: Tensor
    indices: Tensor
    labels: Tensor
    received_at: float
    owner: str
    def __init__(self, step: _Optional[_Union[StepId, _Mapping]] = ..., phase: _Optional[str] = ..., split: _Optional[str] = ..., activations: _Optional[_Union[Tensor, _Mapping]] = ..., indices: _Optional[_Union[Tensor, _Mapping]] = ..., labels: _Optional[_Union[Tensor, _Mapping]] = ..., received_at: _Optional[float] = ..., owner: _Optional[str] = ...) -> None: ...

class TapRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...
