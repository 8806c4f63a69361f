"""GPU metrics (observability/gpu_metrics.py) against a fake NVML module of two GPUs:
Triton's names, label and units on the exposition text, a value NVML refuses left out
alone, the factory's None (one INFO line) wherever there is nothing to read, and the real
nvidia-ml-py on this machine."""

from __future__ import annotations

import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tensorgate.observability.gpu_metrics import gpu_collector

UUIDS = ["GPU-11111111-2222-3333-4444-555555555555", "GPU-66666666-7777-8888-9999-000000000000"]
NOT_SUPPORTED, GPU_IS_LOST, LIBRARY_NOT_FOUND = 3, 15, 12


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value


class FakeNVML:
    """The functions gpu_metrics calls, as pynvml has them (units: percent, bytes, mW,
    mJ). ``fail[(name, index)] = code`` makes that call raise NVMLError(code)."""

    NVMLError = NVMLError

    def __init__(self, count: int = 2, init_error: int | None = None) -> None:
        self.count = count
        self.init_error = init_error
        self.fail: dict[tuple[str, int], int] = {}
        self.calls: list[tuple[str, int | None]] = []
        self.energy_mj = [5_000_000, 7_000_000]
        # GPU 1's UUID as bytes, as nvidia-ml-py gave it before it decoded
        self.uuids = [UUIDS[0], UUIDS[1].encode()]

    def _call(self, name: str, index: int | None):
        self.calls.append((name, index))
        code = self.fail.get((name, index))
        if code is not None:
            raise NVMLError(code)

    def nvmlInit(self):
        self._call("nvmlInit", None)
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self):
        self._call("nvmlShutdown", None)

    def nvmlDeviceGetCount(self):
        self._call("nvmlDeviceGetCount", None)
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index):
        self._call("nvmlDeviceGetHandleByIndex", index)
        return SimpleNamespace(index=index)

    def nvmlDeviceGetUUID(self, handle):
        self._call("nvmlDeviceGetUUID", handle.index)
        return self.uuids[handle.index]

    def nvmlDeviceGetUtilizationRates(self, handle):
        self._call("nvmlDeviceGetUtilizationRates", handle.index)
        return SimpleNamespace(gpu=(42, 100)[handle.index], memory=7)

    def nvmlDeviceGetMemoryInfo(self, handle):
        self._call("nvmlDeviceGetMemoryInfo", handle.index)
        return SimpleNamespace(total=(85899345920, 42949672960)[handle.index],
                               used=(1073741824, 0)[handle.index], free=0)

    def nvmlDeviceGetPowerUsage(self, handle):
        self._call("nvmlDeviceGetPowerUsage", handle.index)
        return (70250, 51091)[handle.index]

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        self._call("nvmlDeviceGetEnforcedPowerLimit", handle.index)
        return (700000, 400000)[handle.index]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        self._call("nvmlDeviceGetTotalEnergyConsumption", handle.index)
        return self.energy_mj[handle.index]


def _scrape(collector) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def _samples(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def _info_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "tensorgate.metrics" and r.levelno == logging.INFO]


def test_two_gpus_triton_names_label_and_units():
    nvml = FakeNVML()
    collector = gpu_collector(True, nvml)
    assert collector.uuids == UUIDS  # bytes decoded
    nvml.energy_mj = [5_002_500, 7_000_000]  # GPU 0 used 2.5 J since the start
    text = _scrape(collector)
    a, b = UUIDS
    # generate_latest's counter metadata says nv_energy_consumption_total; the sample is
    # Triton's name, and metrics.exposition renames the metadata to match it
    assert text == f"""\
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{{gpu_uuid="{a}"}} 0.42
nv_gpu_utilization{{gpu_uuid="{b}"}} 1.0
# HELP nv_gpu_memory_total_bytes GPU total memory, in bytes
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{{gpu_uuid="{a}"}} 8.589934592e+10
nv_gpu_memory_total_bytes{{gpu_uuid="{b}"}} 4.294967296e+10
# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{{gpu_uuid="{a}"}} 1.073741824e+09
nv_gpu_memory_used_bytes{{gpu_uuid="{b}"}} 0.0
# HELP nv_gpu_power_usage GPU power usage in watts
# TYPE nv_gpu_power_usage gauge
nv_gpu_power_usage{{gpu_uuid="{a}"}} 70.25
nv_gpu_power_usage{{gpu_uuid="{b}"}} 51.091
# HELP nv_gpu_power_limit GPU power management limit in watts
# TYPE nv_gpu_power_limit gauge
nv_gpu_power_limit{{gpu_uuid="{a}"}} 700.0
nv_gpu_power_limit{{gpu_uuid="{b}"}} 400.0
# HELP nv_energy_consumption_total GPU energy consumption in joules since the server started
# TYPE nv_energy_consumption_total counter
nv_energy_consumption{{gpu_uuid="{a}"}} 2.5
nv_energy_consumption{{gpu_uuid="{b}"}} 0.0
"""


def test_one_nvml_call_per_gpu_and_value_per_scrape():
    nvml = FakeNVML()
    collector = gpu_collector(True, nvml)
    before = len(nvml.calls)
    _scrape(collector)
    scrape = sorted(nvml.calls[before:])
    assert scrape == sorted(
        (name, index) for index in (0, 1) for name in (
            "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo",
            "nvmlDeviceGetPowerUsage", "nvmlDeviceGetEnforcedPowerLimit",
            "nvmlDeviceGetTotalEnergyConsumption",
        ))


def test_energy_is_a_counter_since_start_that_survives_a_reset():
    nvml = FakeNVML()
    collector = gpu_collector(True, nvml)
    a = UUIDS[0]

    def joules():
        family = next(f for f in collector.collect() if f.name == "nv_energy_consumption")
        assert family.type == "counter"
        return {s.labels["gpu_uuid"]: s.value for s in family.samples
                if s.name == "nv_energy_consumption"}

    nvml.energy_mj[0] += 1000
    assert joules()[a] == 1.0
    nvml.energy_mj[0] = 400  # the GPU was reset: NVML's counter starts again
    assert joules()[a] == 1.0
    nvml.energy_mj[0] = 2400
    assert joules()[a] == 3.0


def test_a_value_nvml_refuses_leaves_out_that_sample_only(caplog):
    nvml = FakeNVML()
    collector = gpu_collector(True, nvml)
    nvml.fail[("nvmlDeviceGetPowerUsage", 1)] = GPU_IS_LOST
    with caplog.at_level(logging.INFO, logger="tensorgate.metrics"):
        first, second = _scrape(collector), _scrape(collector)
    assert first == second
    samples = _samples(first)
    assert len(samples) == 11  # 12 less GPU 1's power usage
    assert f'nv_gpu_power_usage{{gpu_uuid="{UUIDS[0]}"}} 70.25' in samples
    assert not any(s.startswith(f'nv_gpu_power_usage{{gpu_uuid="{UUIDS[1]}"}}')
                   for s in samples)
    assert f'nv_gpu_power_limit{{gpu_uuid="{UUIDS[1]}"}} 400.0' in samples
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once, not per scrape
    assert "power usage" in warnings[0].getMessage()
    assert UUIDS[1] in warnings[0].getMessage()
    nvml.fail.clear()  # it answers again: back in the next scrape
    assert len(_samples(_scrape(collector))) == 12


def test_a_value_the_gpu_does_not_support_is_not_asked_again():
    nvml = FakeNVML()
    collector = gpu_collector(True, nvml)
    nvml.fail[("nvmlDeviceGetEnforcedPowerLimit", 0)] = NOT_SUPPORTED
    _scrape(collector)
    text = _scrape(collector)
    assert nvml.calls.count(("nvmlDeviceGetEnforcedPowerLimit", 0)) == 1
    assert nvml.calls.count(("nvmlDeviceGetEnforcedPowerLimit", 1)) == 2
    assert f'nv_gpu_power_limit{{gpu_uuid="{UUIDS[0]}"}}' not in text


def test_every_value_refused_leaves_no_empty_family():
    nvml = FakeNVML(count=1)
    collector = gpu_collector(True, nvml)
    nvml.fail[("nvmlDeviceGetMemoryInfo", 0)] = GPU_IS_LOST
    text = _scrape(collector)
    assert "nv_gpu_memory" not in text
    assert "nv_gpu_utilization" in text


def test_energy_absent_at_start_counts_from_its_first_reading():
    nvml = FakeNVML(count=1)
    nvml.fail[("nvmlDeviceGetTotalEnergyConsumption", 0)] = GPU_IS_LOST
    collector = gpu_collector(True, nvml)
    assert "nv_energy_consumption" not in _scrape(collector)
    nvml.fail.clear()
    nvml.energy_mj[0] += 9000  # before the first reading: not counted
    assert f'nv_energy_consumption{{gpu_uuid="{UUIDS[0]}"}} 0.0' in _scrape(collector)
    nvml.energy_mj[0] += 1500
    assert f'nv_energy_consumption{{gpu_uuid="{UUIDS[0]}"}} 1.5' in _scrape(collector)


def test_a_gpu_without_a_uuid_is_skipped():
    nvml = FakeNVML()
    nvml.fail[("nvmlDeviceGetUUID", 0)] = GPU_IS_LOST
    collector = gpu_collector(True, nvml)
    assert collector.uuids == [UUIDS[1]]
    assert UUIDS[0] not in _scrape(collector)


def test_close_shuts_nvml_down_once():
    nvml = FakeNVML()
    collector = gpu_collector(True, nvml)
    assert ("nvmlShutdown", None) not in nvml.calls
    collector.close()
    collector.close()
    assert nvml.calls.count(("nvmlShutdown", None)) == 1
    assert _scrape(collector) == ""


def test_flag_off_touches_nothing(caplog):
    nvml = FakeNVML()
    with caplog.at_level(logging.INFO, logger="tensorgate.metrics"):
        assert gpu_collector(False, nvml) is None
    assert nvml.calls == []
    assert _info_lines(caplog) == ["GPU metrics off (--allow-gpu-metrics false)"]


def test_nvidia_ml_py_not_installed(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    with caplog.at_level(logging.INFO, logger="tensorgate.metrics"):
        assert gpu_collector(True) is None
    [line] = _info_lines(caplog)
    assert "nvidia-ml-py is not installed" in line


def test_no_nvml_library(caplog):
    nvml = FakeNVML(init_error=LIBRARY_NOT_FOUND)
    with caplog.at_level(logging.INFO, logger="tensorgate.metrics"):
        assert gpu_collector(True, nvml) is None
    assert nvml.calls == [("nvmlInit", None)]
    [line] = _info_lines(caplog)
    assert line.startswith("GPU metrics off: NVML did not start")


def test_zero_gpus(caplog):
    nvml = FakeNVML(count=0)
    with caplog.at_level(logging.INFO, logger="tensorgate.metrics"):
        assert gpu_collector(True, nvml) is None
    assert _info_lines(caplog) == ["GPU metrics off: NVML sees no GPU"]
    assert nvml.calls[-1] == ("nvmlShutdown", None)


def test_count_refused(caplog):
    nvml = FakeNVML()
    nvml.fail[("nvmlDeviceGetCount", None)] = GPU_IS_LOST
    with caplog.at_level(logging.INFO, logger="tensorgate.metrics"):
        assert gpu_collector(True, nvml) is None
    [line] = _info_lines(caplog)
    assert "could not count" in line
    assert nvml.calls[-1] == ("nvmlShutdown", None)


def test_importing_the_module_does_not_load_nvml():
    code = ("import sys, tensorgate.observability.gpu_metrics as g; "
            "assert g.gpu_collector(False) is None; assert 'pynvml' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_real_nvml(caplog):
    """The CI path: the real nvidia-ml-py on a machine without an NVIDIA driver gives
    None and one INFO line, no exception; on a GPU machine, a collector for its GPUs."""
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    with caplog.at_level(logging.INFO, logger="tensorgate.metrics"):
        collector = gpu_collector(True)
    if collector is None:
        [line] = _info_lines(caplog)
        assert line.startswith("GPU metrics off: NVML")
        return
    try:
        assert all(u.startswith(("GPU-", "MIG-")) for u in collector.uuids)
        assert 'nv_gpu_memory_total_bytes{gpu_uuid="' in _scrape(collector)
    finally:
        collector.close()
