"""Server telemetry: GPU memory (NVML or nvidia-smi), host RSS and Prometheus /metrics."""

from pytest_llmslo.telemetry.gpu import (
    GpuDevice,
    GpuProbe,
    NvidiaSmiProbe,
    NvmlProbe,
    open_gpu_probe,
    parse_smi_apps,
    parse_smi_gpus,
)
from pytest_llmslo.telemetry.host import process_tree, tree_rss
from pytest_llmslo.telemetry.prometheus import parse_prometheus, parse_samples
from pytest_llmslo.telemetry.sampler import (
    NOT_SERVED,
    GpuMemory,
    LoadWindow,
    PhaseFigures,
    Series,
    ServerMetrics,
    Telemetry,
    TelemetryReport,
    peak_between,
    phase_figures,
)

__all__ = [
    "NOT_SERVED",
    "GpuDevice",
    "GpuMemory",
    "GpuProbe",
    "LoadWindow",
    "NvidiaSmiProbe",
    "NvmlProbe",
    "PhaseFigures",
    "Series",
    "ServerMetrics",
    "Telemetry",
    "TelemetryReport",
    "open_gpu_probe",
    "parse_prometheus",
    "parse_samples",
    "parse_smi_apps",
    "parse_smi_gpus",
    "peak_between",
    "phase_figures",
    "process_tree",
    "tree_rss",
]
