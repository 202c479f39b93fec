from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrollRequest(_message.Message):
    __slots__ = ("token", "name", "csr_pem", "signing_key")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    token: str
    name: str
    csr_pem: bytes
    signing_key: bytes
    def __init__(self, token: _Optional[str] = ..., name: _Optional[str] = ..., csr_pem: _Optional[bytes] = ..., signing_key: _Optional[bytes] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("cert_pem", "ca_pem", "site", "name")
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    cert_pem: bytes
    ca_pem: bytes
    site: str
    name: str
    def __init__(self, cert_pem: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ..., site: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    def __init__(self, csr_pem: _Optional[bytes] = ...) -> None: ...

class RenewResponse(_message.Message):
    __slots__ = ("cert_pem",)
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    cert_pem: bytes
    def __init__(self, cert_pem: _Optional[bytes] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("agent_id", "site", "version", "epoch", "agent_time_ns", "hostname", "signing_key")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    AGENT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    site: str
    version: str
    epoch: int
    agent_time_ns: int
    hostname: str
    signing_key: bytes
    def __init__(self, agent_id: _Optional[str] = ..., site: _Optional[str] = ..., version: _Optional[str] = ..., epoch: _Optional[int] = ..., agent_time_ns: _Optional[int] = ..., hostname: _Optional[str] = ..., signing_key: _Optional[bytes] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("collector_receive_ns", "collector_transmit_ns", "acked_seq", "collector_version")
    COLLECTOR_RECEIVE_NS_FIELD_NUMBER: _ClassVar[int]
    COLLECTOR_TRANSMIT_NS_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    COLLECTOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    collector_receive_ns: int
    collector_transmit_ns: int
    acked_seq: int
    collector_version: str
    def __init__(self, collector_receive_ns: _Optional[int] = ..., collector_transmit_ns: _Optional[int] = ..., acked_seq: _Optional[int] = ..., collector_version: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("agent_id", "epoch", "agent_time_ns", "spool_depth", "oldest_unsent_ns", "version", "clock_offset_ns", "clock_rtt_ns")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    AGENT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    SPOOL_DEPTH_FIELD_NUMBER: _ClassVar[int]
    OLDEST_UNSENT_NS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLOCK_OFFSET_NS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_RTT_NS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    epoch: int
    agent_time_ns: int
    spool_depth: int
    oldest_unsent_ns: int
    version: str
    clock_offset_ns: int
    clock_rtt_ns: int
    def __init__(self, agent_id: _Optional[str] = ..., epoch: _Optional[int] = ..., agent_time_ns: _Optional[int] = ..., spool_depth: _Optional[int] = ..., oldest_unsent_ns: _Optional[int] = ..., version: _Optional[str] = ..., clock_offset_ns: _Optional[int] = ..., clock_rtt_ns: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("collector_receive_ns", "collector_transmit_ns")
    COLLECTOR_RECEIVE_NS_FIELD_NUMBER: _ClassVar[int]
    COLLECTOR_TRANSMIT_NS_FIELD_NUMBER: _ClassVar[int]
    collector_receive_ns: int
    collector_transmit_ns: int
    def __init__(self, collector_receive_ns: _Optional[int] = ..., collector_transmit_ns: _Optional[int] = ...) -> None: ...

class Check(_message.Message):
    __slots__ = ("id", "site", "name", "type", "target", "interval_ms", "timeout_ms", "settings_json", "revision", "degraded_after_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    site: str
    name: str
    type: str
    target: str
    interval_ms: int
    timeout_ms: int
    settings_json: str
    revision: str
    degraded_after_ms: int
    def __init__(self, id: _Optional[str] = ..., site: _Optional[str] = ..., name: _Optional[str] = ..., type: _Optional[str] = ..., target: _Optional[str] = ..., interval_ms: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., settings_json: _Optional[str] = ..., revision: _Optional[str] = ..., degraded_after_ms: _Optional[int] = ...) -> None: ...

class KnownCheck(_message.Message):
    __slots__ = ("id", "revision")
    ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    id: str
    revision: str
    def __init__(self, id: _Optional[str] = ..., revision: _Optional[str] = ...) -> None: ...

class WatchChecksRequest(_message.Message):
    __slots__ = ("agent_id", "known")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    known: _containers.RepeatedCompositeFieldContainer[KnownCheck]
    def __init__(self, agent_id: _Optional[str] = ..., known: _Optional[_Iterable[_Union[KnownCheck, _Mapping]]] = ...) -> None: ...

class CheckChanges(_message.Message):
    __slots__ = ("snapshot", "upserts", "deletes")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    UPSERTS_FIELD_NUMBER: _ClassVar[int]
    DELETES_FIELD_NUMBER: _ClassVar[int]
    snapshot: bool
    upserts: _containers.RepeatedCompositeFieldContainer[Check]
    deletes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, snapshot: _Optional[bool] = ..., upserts: _Optional[_Iterable[_Union[Check, _Mapping]]] = ..., deletes: _Optional[_Iterable[str]] = ...) -> None: ...

class Phase(_message.Message):
    __slots__ = ("name", "duration_ns")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    name: str
    duration_ns: int
    def __init__(self, name: _Optional[str] = ..., duration_ns: _Optional[int] = ...) -> None: ...

class FieldValue(_message.Message):
    __slots__ = ("number", "text", "flag")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    number: float
    text: str
    flag: bool
    def __init__(self, number: _Optional[float] = ..., text: _Optional[str] = ..., flag: _Optional[bool] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("check_id", "check_revision", "scheduled_ns", "started_ns", "duration_ns", "success", "degraded", "error_kind", "detail", "phases", "fields", "clock_offset_ns", "clock_synced")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FieldValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FieldValue, _Mapping]] = ...) -> None: ...
    CHECK_ID_FIELD_NUMBER: _ClassVar[int]
    CHECK_REVISION_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_NS_FIELD_NUMBER: _ClassVar[int]
    STARTED_NS_FIELD_NUMBER: _ClassVar[int]
    DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_OFFSET_NS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_SYNCED_FIELD_NUMBER: _ClassVar[int]
    check_id: str
    check_revision: str
    scheduled_ns: int
    started_ns: int
    duration_ns: int
    success: bool
    degraded: bool
    error_kind: str
    detail: str
    phases: _containers.RepeatedCompositeFieldContainer[Phase]
    fields: _containers.MessageMap[str, FieldValue]
    clock_offset_ns: int
    clock_synced: bool
    def __init__(self, check_id: _Optional[str] = ..., check_revision: _Optional[str] = ..., scheduled_ns: _Optional[int] = ..., started_ns: _Optional[int] = ..., duration_ns: _Optional[int] = ..., success: _Optional[bool] = ..., degraded: _Optional[bool] = ..., error_kind: _Optional[str] = ..., detail: _Optional[str] = ..., phases: _Optional[_Iterable[_Union[Phase, _Mapping]]] = ..., fields: _Optional[_Mapping[str, FieldValue]] = ..., clock_offset_ns: _Optional[int] = ..., clock_synced: _Optional[bool] = ...) -> None: ...

class Gap(_message.Message):
    __slots__ = ("through_seq", "reason", "evicted_ns", "checks")
    THROUGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVICTED_NS_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    through_seq: int
    reason: str
    evicted_ns: int
    checks: _containers.RepeatedCompositeFieldContainer[GapCheck]
    def __init__(self, through_seq: _Optional[int] = ..., reason: _Optional[str] = ..., evicted_ns: _Optional[int] = ..., checks: _Optional[_Iterable[_Union[GapCheck, _Mapping]]] = ...) -> None: ...

class GapCheck(_message.Message):
    __slots__ = ("check_id", "from_ns", "to_ns", "count")
    CHECK_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_NS_FIELD_NUMBER: _ClassVar[int]
    TO_NS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    check_id: str
    from_ns: int
    to_ns: int
    count: int
    def __init__(self, check_id: _Optional[str] = ..., from_ns: _Optional[int] = ..., to_ns: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class ClockSample(_message.Message):
    __slots__ = ("t0_ns", "t1_ns", "t2_ns", "t3_ns", "offset_ns", "rtt_ns")
    T0_NS_FIELD_NUMBER: _ClassVar[int]
    T1_NS_FIELD_NUMBER: _ClassVar[int]
    T2_NS_FIELD_NUMBER: _ClassVar[int]
    T3_NS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_NS_FIELD_NUMBER: _ClassVar[int]
    RTT_NS_FIELD_NUMBER: _ClassVar[int]
    t0_ns: int
    t1_ns: int
    t2_ns: int
    t3_ns: int
    offset_ns: int
    rtt_ns: int
    def __init__(self, t0_ns: _Optional[int] = ..., t1_ns: _Optional[int] = ..., t2_ns: _Optional[int] = ..., t3_ns: _Optional[int] = ..., offset_ns: _Optional[int] = ..., rtt_ns: _Optional[int] = ...) -> None: ...

class Seal(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SealBody(_message.Message):
    __slots__ = ("epoch", "first_seq", "last_seq", "prev", "digest", "sealed_ns", "count", "key_id", "replaces_head", "evicted_links")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    PREV_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SEALED_NS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    REPLACES_HEAD_FIELD_NUMBER: _ClassVar[int]
    EVICTED_LINKS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    first_seq: int
    last_seq: int
    prev: bytes
    digest: bytes
    sealed_ns: int
    count: int
    key_id: bytes
    replaces_head: bytes
    evicted_links: int
    def __init__(self, epoch: _Optional[int] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., prev: _Optional[bytes] = ..., digest: _Optional[bytes] = ..., sealed_ns: _Optional[int] = ..., count: _Optional[int] = ..., key_id: _Optional[bytes] = ..., replaces_head: _Optional[bytes] = ..., evicted_links: _Optional[int] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("seq", "result", "gap", "clock", "seal")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    SEAL_FIELD_NUMBER: _ClassVar[int]
    seq: int
    result: Result
    gap: Gap
    clock: ClockSample
    seal: Seal
    def __init__(self, seq: _Optional[int] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., gap: _Optional[_Union[Gap, _Mapping]] = ..., clock: _Optional[_Union[ClockSample, _Mapping]] = ..., seal: _Optional[_Union[Seal, _Mapping]] = ...) -> None: ...

class RecordBatch(_message.Message):
    __slots__ = ("agent_id", "epoch", "first_seq", "last_seq", "records")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    epoch: int
    first_seq: int
    last_seq: int
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, agent_id: _Optional[str] = ..., epoch: _Optional[int] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("seq", "reason")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    reason: str
    def __init__(self, seq: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class BatchAck(_message.Message):
    __slots__ = ("epoch", "acked_seq", "rejected")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    acked_seq: int
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    def __init__(self, epoch: _Optional[int] = ..., acked_seq: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ...) -> None: ...
