"""Server telemetry: GPU memory (NVML or nvidia-smi), host RSS and Prometheus /metrics."""

from typing import TYPE_CHECKING, Any

from pytest_llmslo.telemetry.analysis import (
    NOT_SERVED,
    GpuMemory,
    LoadWindow,
    PhaseFigures,
    Samples,
    Series,
    ServerMetrics,
    TelemetryReport,
    peak_between,
    phase_figures,
)
from pytest_llmslo.telemetry.gpu import (
    GpuDevice,
    GpuProbe,
    NvidiaSmiProbe,
    NvmlProbe,
    open_gpu_probe,
    parse_smi_apps,
    parse_smi_gpus,
)
from pytest_llmslo.telemetry.host import tree_rss
from pytest_llmslo.telemetry.prometheus import parse_prometheus, parse_samples

if TYPE_CHECKING:
    from pytest_llmslo.telemetry.sampler import Telemetry

__all__ = [
    "NOT_SERVED",
    "GpuDevice",
    "GpuMemory",
    "GpuProbe",
    "LoadWindow",
    "NvidiaSmiProbe",
    "NvmlProbe",
    "PhaseFigures",
    "Samples",
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
    "tree_rss",
]


def __getattr__(name: str) -> Any:
    # the sampler scrapes /metrics with httpx: loaded when a server is sampled, not when a
    # report reads figures
    if name == "Telemetry":
        from pytest_llmslo.telemetry.sampler import Telemetry

        return Telemetry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
