"""GPU metrics under Triton's names, read through NVML at scrape time (issue #19).

Per GPU, labelled ``gpu_uuid`` as Triton labels them: ``nv_gpu_utilization`` (0..1),
``nv_gpu_memory_total_bytes``, ``nv_gpu_memory_used_bytes``, ``nv_gpu_power_usage`` and
``nv_gpu_power_limit`` (watts), gauges; ``nv_energy_consumption``, a counter of joules
since the server started.

No thread polls: each scrape makes one NVML call per GPU and value. A value NVML refuses
is left out of that scrape, the others are still served; the failure is logged once per
GPU and value, and a value the GPU does not support is not asked for again.

Where there is nothing to read (``--allow-gpu-metrics false``, nvidia-ml-py not
installed, no NVIDIA driver, no GPU) ``gpu_collector`` says so in one INFO line and
returns None: no ``nv_gpu_*`` family at all, and no NVML call per scrape.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client.core import GaugeMetricFamily, Metric

log = logging.getLogger("tensorgate.metrics")

LABEL = "gpu_uuid"
_NOT_SUPPORTED = 3  # NVML_ERROR_NOT_SUPPORTED: the GPU never has this value

# Triton's help texts (core/src/metrics.cc); the energy one says "server", not "Triton".
_HELP = {
    "nv_gpu_utilization": "GPU utilization rate [0.0 - 1.0)",
    "nv_gpu_memory_total_bytes": "GPU total memory, in bytes",
    "nv_gpu_memory_used_bytes": "GPU used memory, in bytes",
    "nv_gpu_power_usage": "GPU power usage in watts",
    "nv_gpu_power_limit": "GPU power management limit in watts",
    "nv_energy_consumption": "GPU energy consumption in joules since the server started",
}


class _Device:
    __slots__ = ("index", "handle", "uuid", "energy_last_mj", "energy_total_mj")

    def __init__(self, index: int, handle, uuid: str) -> None:
        self.index = index
        self.handle = handle
        self.uuid = uuid
        self.energy_last_mj: int | None = None  # NVML's counter at the last reading
        self.energy_total_mj = 0  # counted since the first reading


class GpuCollector:
    """Yields the GPU families at scrape time, one NVML call per GPU and value."""

    def __init__(self, nvml, devices: list[_Device]) -> None:
        self._nvml = nvml
        self._devices = devices
        self._energy_lock = threading.Lock()  # scrapes run on several threads
        self._reported: set[tuple[str, str]] = set()  # (uuid, what) failures logged
        self._unsupported: set[tuple[str, str]] = set()
        for device in devices:  # energy counts from here, the server's start
            self._energy(device)

    @property
    def uuids(self) -> list[str]:
        return [d.uuid for d in self._devices]

    def _read(self, device: _Device, what: str, call):
        """``call(handle)``, or None when NVML refuses (logged once per GPU and value)."""
        key = (device.uuid, what)
        if key in self._unsupported:
            return None
        try:
            return call(device.handle)
        except self._nvml.NVMLError as exc:
            if getattr(exc, "value", None) == _NOT_SUPPORTED:
                self._unsupported.add(key)
                log.info("GPU %s (%s): NVML does not support reading its %s; left out of "
                         "/metrics", device.index, device.uuid, what)
            elif key not in self._reported:
                self._reported.add(key)
                log.warning("GPU %s (%s): NVML failed to read its %s (%s); left out of "
                            "/metrics while it fails", device.index, device.uuid, what, exc)
            return None

    def _energy(self, device: _Device) -> int | None:
        """Millijoules since the first reading. NVML's counter is since the driver
        loaded; a reading below the last one (GPU reset) counts on from there. Read under
        the lock, so concurrent scrapes see the readings in order."""
        with self._energy_lock:
            reading = self._read(device, "energy consumption",
                                 self._nvml.nvmlDeviceGetTotalEnergyConsumption)
            if reading is not None:
                last = device.energy_last_mj
                if last is not None and reading > last:
                    device.energy_total_mj += reading - last
                device.energy_last_mj = reading
            return None if device.energy_last_mj is None else device.energy_total_mj

    def collect(self):
        nvml = self._nvml
        util, total, used, power, limit = (
            GaugeMetricFamily(name, _HELP[name], labels=[LABEL]) for name in (
                "nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes",
                "nv_gpu_power_usage", "nv_gpu_power_limit",
            ))
        # Triton's counter has no _total suffix (metrics.exposition names its metadata)
        energy = Metric("nv_energy_consumption", _HELP["nv_energy_consumption"], "counter")
        for d in self._devices:
            labels = [d.uuid]
            rates = self._read(d, "utilization", nvml.nvmlDeviceGetUtilizationRates)
            if rates is not None:
                util.add_metric(labels, rates.gpu / 100)  # percent
            memory = self._read(d, "memory", nvml.nvmlDeviceGetMemoryInfo)
            if memory is not None:
                total.add_metric(labels, memory.total)
                used.add_metric(labels, memory.used)
            mw = self._read(d, "power usage", nvml.nvmlDeviceGetPowerUsage)
            if mw is not None:
                power.add_metric(labels, mw / 1000)
            mw = self._read(d, "power limit", nvml.nvmlDeviceGetEnforcedPowerLimit)
            if mw is not None:
                limit.add_metric(labels, mw / 1000)
            mj = self._energy(d)
            if mj is not None:
                energy.add_sample("nv_energy_consumption", {LABEL: d.uuid}, mj / 1000)
        for family in (util, total, used, power, limit, energy):
            if family.samples:
                yield family

    def close(self) -> None:
        """Shut NVML down, once; later scrapes yield nothing."""
        devices, self._devices = self._devices, []
        if devices:
            _shutdown(self._nvml)


def gpu_collector(enabled: bool, nvml=None) -> GpuCollector | None:
    """The GPU collector, or None (and one INFO line saying why) when there is nothing to
    report. ``nvml``: the NVML module, ``pynvml`` from nvidia-ml-py unless given (tests
    pass a fake); imported here so a server without GPU metrics never loads it."""
    if not enabled:
        log.info("GPU metrics off (--allow-gpu-metrics false)")
        return None
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            log.info("GPU metrics off: nvidia-ml-py is not installed "
                     "(pip install 'tensorgate[gpu]' on a GPU machine)")
            return None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        log.info("GPU metrics off: NVML did not start: %s", exc)
        return None
    devices = []
    try:
        count = nvml.nvmlDeviceGetCount()
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = nvml.nvmlDeviceGetUUID(handle)
            except nvml.NVMLError as exc:
                log.warning("GPU %d: NVML gave no handle or UUID (%s); no metrics for it",
                            index, exc)
                continue
            if isinstance(uuid, bytes):  # older nvidia-ml-py returned bytes
                uuid = uuid.decode()
            devices.append(_Device(index, handle, uuid))
    except nvml.NVMLError as exc:
        log.info("GPU metrics off: NVML could not count the GPUs (%s)", exc)
        _shutdown(nvml)
        return None
    if not devices:
        log.info("GPU metrics off: %s", "NVML sees no GPU" if count == 0
                 else f"none of {count} GPUs gave a handle and UUID")
        _shutdown(nvml)
        return None
    log.info("GPU metrics for %d GPU(s): %s", len(devices), ", ".join(d.uuid for d in devices))
    return GpuCollector(nvml, devices)


def _shutdown(nvml) -> None:
    try:
        nvml.nvmlShutdown()
    except nvml.NVMLError as exc:
        log.debug("nvmlShutdown: %s", exc)
