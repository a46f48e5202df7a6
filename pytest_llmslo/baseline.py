"""Baselines: an earlier run's results.json read back, matched to this run's scenarios, compared.

`--slo-baseline PATH` names the file (or the run folder holding it); `load_baseline` reads it at
start-up, so a wrong path fails before any server starts. Each scenario run that has relative
objectives (``<= baseline + 10%``) gets a `Comparison`: the baseline's entry for the same scenario
and server, and how the two runs' fingerprints differ. The verdicts themselves are `slo.py`'s.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmslo import __version__
from pytest_llmslo.fingerprint import (
    Difference,
    Fingerprint,
    differences,
    gpu_inventory,
    gpu_model_name,
    model_hashes,
    refusal,
    sha256_text,
)
from pytest_llmslo.intervals import Interval
from pytest_llmslo.report import RESULTS_SCHEMA, jsonable, server_json
from pytest_llmslo.report_writer import RESULTS_NAME
from pytest_llmslo.slo import NO_BASELINE, Measurement

if TYPE_CHECKING:
    from pytest_llmslo.result import ScenarioResult

RECORDING = (
    "this run records the baseline (--slo-save-baseline without --slo-baseline): there is "
    "nothing to compare with yet"
)
# schemas whose files hold no per-metric measurements or fingerprints to compare with
_OLDER_SCHEMAS = (
    "pytest-llmslo/results/v1",
    "pytest-llmslo/results/v2",
    "pytest-llmslo/results/v3",
)


class BaselineError(ValueError):
    """A --slo-baseline that cannot be used: says which file, what is wrong and what to do."""


@dataclass(frozen=True)
class BaselineEntry:
    """One scenario on one server of the baseline run: what it measured and what it ran on."""

    scenario: str
    server: str
    spec: str
    fingerprint: Fingerprint | None
    measurements: Mapping[str, Measurement]

    def describe(self) -> str:
        return f"{self.scenario}[{self.server}] of {self.spec}"


@dataclass(frozen=True)
class Baseline:
    """A baseline run's results.json, read back."""

    path: Path
    run_id: str | None
    entries: tuple[BaselineEntry, ...]

    def match(self, spec_path: str, scenario: str, server: str) -> BaselineEntry | None:
        """The entry for the same scenario and server names; of several (one spec file of many
        in that run), the one from a spec file of the same name."""
        same = [e for e in self.entries if e.scenario == scenario and e.server == server]
        name = Path(spec_path).name
        return next((e for e in same if Path(e.spec).name == name), same[0] if same else None)

    def listing(self) -> str:
        return ", ".join(e.describe() for e in self.entries) or "no scenario at all"


def baseline_file(path: Path) -> Path:
    """The results.json `path` names: the file itself, or the one in a run folder."""
    return path / RESULTS_NAME if path.is_dir() else path


def load_baseline(path: Path) -> Baseline:
    """Read a baseline; BaselineError says what is wrong with it and how to get a usable one."""
    file = baseline_file(path)
    if not file.is_file():
        where = f"{path} holds no {RESULTS_NAME}" if path.is_dir() else f"{path} does not exist"
        raise BaselineError(
            f"{where}; give the {RESULTS_NAME} of an earlier run (or its run folder), as "
            "written by --slo-report or --slo-save-baseline"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BaselineError(f"{file} is not a results.json (not readable JSON: {exc})") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema in _OLDER_SCHEMAS:
        raise BaselineError(
            f"{file} has the schema {schema}, which holds no measurements or fingerprints to "
            f"compare with; re-record the baseline with this version ({RESULTS_SCHEMA})"
        )
    if schema != RESULTS_SCHEMA:
        raise BaselineError(
            f"{file} is not a results.json of pytest-llmslo (schema {schema!r}, expected "
            f"{RESULTS_SCHEMA!r}); give the {RESULTS_NAME} of an earlier run"
        )
    try:
        entries = tuple(_entry(s) for s in data["scenarios"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BaselineError(
            f"{file}: a scenario entry cannot be read ({type(exc).__name__}: {exc}); "
            "re-record the baseline"
        ) from None
    run = data.get("run")
    run_id = run.get("id") if isinstance(run, dict) else None
    return Baseline(file, run_id if isinstance(run_id, str) else None, entries)


def _entry(data: Mapping[str, Any]) -> BaselineEntry:
    fingerprint = data.get("fingerprint")
    return BaselineEntry(
        scenario=str(data["scenario"]),
        server=str(data["server"]),
        spec=str(data.get("spec") or ""),
        fingerprint=Fingerprint.from_dict(fingerprint) if isinstance(fingerprint, dict) else None,
        measurements={
            str(metric): measurement_from_json(m)
            for metric, m in (data.get("measurements") or {}).items()
        },
    )


def measurement_from_json(data: Mapping[str, Any]) -> Measurement:
    """The inverse of `measurement_json`: a null value is NaN, null interval sides unbounded."""
    value = math.nan if data.get("value") is None else float(data["value"])
    n = data.get("n")
    raw = data.get("interval")
    interval = None
    if isinstance(raw, dict):
        low = -math.inf if raw.get("low") is None else float(raw["low"])
        high = math.inf if raw.get("high") is None else float(raw["high"])
        size = int(n) if n is not None else 0
        interval = Interval(low, high, float(raw["confidence"]), str(raw["method"]), size)
    reason = str(data.get("reason") or "")
    return Measurement(value, None if n is None else int(n), reason, interval)


# --- comparing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """What one scenario run's relative objectives are judged against.

    Exactly one applies: ``skip`` (this run records the baseline), ``missing`` (no baseline
    value can be had), ``refused`` (the runs' setups differ in hardware or model), or ``entry``.
    """

    source: str | None = None  # the baseline file
    entry: BaselineEntry | None = None
    differences: tuple[Difference, ...] = ()
    refused: str | None = None
    missing: str | None = None
    skip: str | None = None

    def measure(self, metric: str) -> Measurement:
        """The baseline's value of `metric`; NaN with the reason when there is none to use."""
        if self.skip is not None:
            return Measurement(math.nan, reason=self.skip)
        if self.refused is not None:
            return Measurement(math.nan, reason=self.refused)
        if self.entry is None:
            return Measurement(math.nan, reason=self.missing or NO_BASELINE)
        got = self.entry.measurements.get(metric)
        if got is None:
            held = ", ".join(sorted(self.entry.measurements)) or "none"
            return Measurement(
                math.nan,
                reason=f"the baseline {self.source} has no {metric} for "
                f"{self.entry.describe()} (it has: {held}); re-record it with this objective",
            )
        if math.isnan(got.value):
            return Measurement(
                math.nan, reason=f"the baseline run did not measure {metric}: {got.reason}"
            )
        return got


def compare(
    baseline: Baseline | None,
    result: ScenarioResult,
    *,
    allow_mismatch: bool = False,
    recording: bool = False,
) -> Comparison:
    """The comparison for `result`'s relative objectives (see `Comparison`)."""
    if baseline is None:
        return Comparison(skip=RECORDING) if recording else Comparison(missing=NO_BASELINE)
    source = str(baseline.path)
    entry = baseline.match(result.spec_path, result.scenario.name, result.server.name)
    if entry is None:
        return Comparison(
            source,
            missing=f"the baseline {source} has no run of scenario {result.scenario.name!r} on "
            f"server {result.server.name!r}; it has: {baseline.listing()}",
        )
    if entry.fingerprint is None or result.fingerprint is None:
        return Comparison(source, entry)
    found = tuple(differences(entry.fingerprint, result.fingerprint))
    return Comparison(source, entry, found, refusal(found, allow=allow_mismatch))


# --- fingerprints ---------------------------------------------------------------------------


@functools.cache
def _gpus() -> tuple[tuple[str, ...], str | None]:
    # nvidia-smi takes a while and its answer does not change within a run
    names, driver = gpu_inventory()
    return tuple(names), driver


def run_fingerprint(result: ScenarioResult) -> Fingerprint:
    """What `result` depended on: hardware, serving stack, model, server settings, spec."""
    names, driver = _gpus()
    endpoint = result.endpoint
    model = result.server.model or (endpoint.model if endpoint is not None else "")
    try:
        config_hash, weights_hash = model_hashes(model)
    except OSError:  # an unreadable model folder: the server says so, not the fingerprint
        config_hash, weights_hash = None, None
    return Fingerprint(
        plugin_version=__version__,
        gpu_model=gpu_model_name(names),
        gpu_count=len(names),
        driver=driver,
        backend=result.server.backend,
        backend_version=endpoint.version if endpoint is not None else None,
        model=model,
        model_config_hash=config_hash,
        weights_index_hash=weights_hash,
        server_args=server_args(result),
        spec_hash=spec_hash(result),
    )


def server_args(result: ScenarioResult) -> tuple[str, ...]:
    """The server's settings as flags, with credentials hidden."""
    from pytest_llmslo.servers.base import args_to_flags

    data = server_json(result.server)
    return (*args_to_flags(data["args"]), *data["extra_args"])


def spec_hash(result: ScenarioResult) -> str:
    """sha256 of the scenario's definition and its server's (credentials hidden)."""
    definition = {"scenario": jsonable(result.scenario), "server": server_json(result.server)}
    return sha256_text(json.dumps(definition, sort_keys=True, default=str))
