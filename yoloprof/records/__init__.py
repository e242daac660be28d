"""The typed record chain: TrialSpec -> rank records -> TrialResult -> Ranking -> report.

Every record is a dataclass that round-trips through JSON (`to_dict` / `from_dict`), so a scan
folder can be re-analysed and re-rendered without the hardware it was measured on. Units live in
field names. A value that could not be measured is None ("n/a"), never a made-up number.
"""

from yoloprof.records.base import SCHEMA_VERSION, RecordError, from_dict, read_json, to_dict, write_json
from yoloprof.records.ceilings import (
    AllReduceCeiling,
    AllReducePoint,
    ComputeCeiling,
    ComputePoint,
    LoaderCeiling,
    LoaderPoint,
)
from yoloprof.records.epoch import EpochCosts, EpochPart, EpochPrediction, RunPlan
from yoloprof.records.doctor import CollectiveCheck, DoctorReport, Finding, GpuLink, NvmlGpu
from yoloprof.records.result import Breakdown, RankStat, Ranking, TrialResult, Verdict
from yoloprof.records.search import Decision
from yoloprof.records.scan import DatasetInfo, Environment, GpuInfo, MemoryBudget, OptimizerPlan, ScanMeta
from yoloprof.records.telemetry import CpuSample, GpuSample, TelemetryHeader, TelemetrySummary
from yoloprof.records.trial import (
    PRECISIONS,
    BucketSample,
    Knobs,
    RankEnd,
    RankInfo,
    RankRecords,
    StepSample,
    TrialSpec,
    batch_that_runs,
    capped_batch_note,
    precision_name,
)

__all__ = [
    "SCHEMA_VERSION",
    "RecordError",
    "from_dict",
    "read_json",
    "to_dict",
    "write_json",
    "AllReduceCeiling",
    "AllReducePoint",
    "ComputeCeiling",
    "ComputePoint",
    "LoaderCeiling",
    "LoaderPoint",
    "Breakdown",
    "RankStat",
    "Ranking",
    "TrialResult",
    "Verdict",
    "DatasetInfo",
    "Environment",
    "GpuInfo",
    "ScanMeta",
    "MemoryBudget",
    "OptimizerPlan",
    "CpuSample",
    "GpuSample",
    "TelemetryHeader",
    "TelemetrySummary",
    "BucketSample",
    "Knobs",
    "RankEnd",
    "RankInfo",
    "RankRecords",
    "StepSample",
    "TrialSpec",
    "CollectiveCheck",
    "DoctorReport",
    "Finding",
    "GpuLink",
    "NvmlGpu",
    "Decision",
    "EpochCosts",
    "EpochPart",
    "EpochPrediction",
    "RunPlan",
    "PRECISIONS",
    "precision_name",
    "batch_that_runs",
    "capped_batch_note",
]
