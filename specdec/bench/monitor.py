"""Resource monitoring while a benchmark runs.

With a CUDA GPU and nvidia-ml-py: a thread samples NVML per device (power, utilization,
memory, temperature) and reads the total-energy counter. Without one: CPU utilization and the
process's peak RSS through psutil, and energy from Intel RAPL (/sys/class/powercap/intel-rapl*)
when readable. Where no energy counter exists, energy is ``None`` and ``energy_reason`` says why:
never a made-up number.

:meth:`Monitor.energy_j` reads the counter at any moment, so the runner can attribute energy to
each request (the methods alternate, so a run-level total cannot be split between them).
"""

from __future__ import annotations

import glob
import os
import threading
import time

import psutil


def physical_gpus(indices: list[int], cuda_visible_devices: str | None) -> list[str]:
    """The physical GPUs (NVML index or UUID, as text) behind torch's CUDA ``indices``: torch
    numbers the GPUs that ``CUDA_VISIBLE_DEVICES`` lets through from 0."""
    if cuda_visible_devices is None or not cuda_visible_devices.strip():
        return [str(i) for i in indices]
    visible = [v.strip() for v in cuda_visible_devices.split(",") if v.strip()]
    return [visible[i] for i in indices if i < len(visible)]


def rapl_package_zones(root: str = "/sys/class/powercap") -> list[tuple[str, str]]:
    """(path, name) of the RAPL package domains. The ``psys`` (platform) domain already contains
    the packages, so summing it with them would count the same joules twice: it is left out."""
    zones = []
    for path in sorted(p for p in glob.glob(os.path.join(root, "intel-rapl:*")) if os.path.basename(p).count(":") == 1):
        try:
            with open(os.path.join(path, "name")) as f:
                name = f.read().strip()
        except OSError:
            name = os.path.basename(path)
        if name.startswith("package"):
            zones.append((path, name))
    return zones


class _Rapl:
    """Package energy counters of Intel RAPL (microjoules, wrapping at max_energy_range_uj);
    ``domains`` names what is summed."""

    def __init__(self) -> None:
        self.zones = []
        self.reason = None
        paths = [path for path, _ in rapl_package_zones()]
        self.domains = [name for _, name in rapl_package_zones()]
        if not paths:
            self.reason = "no RAPL package energy counter on this machine (/sys/class/powercap/intel-rapl* absent)"
            return
        for path in paths:
            try:
                with open(os.path.join(path, "energy_uj")) as f:
                    int(f.read())
                with open(os.path.join(path, "max_energy_range_uj")) as f:
                    wrap = int(f.read())
                self.zones.append((path, wrap))
            except (OSError, ValueError):
                self.reason = f"RAPL counter {path}/energy_uj is not readable (needs root on most kernels)"
                self.zones = []
                return
        self._last = self._raw()
        self._total = 0.0

    def _raw(self) -> list[int]:
        values = []
        for path, _ in self.zones:
            with open(os.path.join(path, "energy_uj")) as f:
                values.append(int(f.read()))
        return values

    def joules(self) -> float:
        """Energy since construction (J), unwrapping counter overflow."""
        now = self._raw()
        for i, (value, (_, wrap)) in enumerate(zip(now, self.zones)):
            delta = value - self._last[i]
            self._total += (delta if delta >= 0 else delta + wrap) / 1e6
        self._last = now
        return self._total


class Monitor:
    """Start with :meth:`start`, stop with :meth:`stop` (returns :meth:`summary`)."""

    def __init__(self, device, interval_s: float = 0.1, enabled: bool = True, cuda_indices: list[int] | None = None) -> None:
        self.device = device
        # The GPUs the models sit on (torch indices); NVML sees every GPU of the machine.
        self.cuda_indices = cuda_indices if cuda_indices is not None else [getattr(device, "index", None) or 0]
        self.interval_s = interval_s
        self.enabled = enabled
        self.kind = "none"
        self.samples: dict = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = None
        self._handles = []
        self._rapl: _Rapl | None = None
        self.energy_reason = "monitoring is off (run.monitor / ENABLE_GPU_MONITOR)" if not enabled else None
        self._process = psutil.Process()
        self._peak_rss = 0
        self._energy_start: list[float] = []
        self.started_at = self.stopped_at = None
        if enabled:
            self._setup()

    def _setup(self) -> None:
        if getattr(self.device, "type", "cpu") == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
                gpus = physical_gpus(sorted(set(self.cuda_indices)), os.environ.get("CUDA_VISIBLE_DEVICES"))
                self._handles = [pynvml.nvmlDeviceGetHandleByUUID(g) if not g.isdigit()
                                 else pynvml.nvmlDeviceGetHandleByIndex(int(g)) for g in gpus]
                self.gpus_measured = gpus
                self.kind = "nvml"
                count = len(self._handles)
                self.samples = {i: {"power_w": [], "util_pct": [], "mem_bytes": [], "temp_c": []} for i in range(count)}
                try:
                    self._energy_start = [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000 for h in self._handles]
                except pynvml.NVMLError:
                    self._energy_start = []
                    self.energy_reason = "NVML total-energy counter unsupported on this GPU: energy integrated from power samples"
                return
            except Exception as error:  # no driver, no library
                self.energy_reason = f"NVML unavailable ({error.__class__.__name__}: {error})"
        self.kind = "cpu"
        self.samples = {"cpu": {"cpu_pct": [], "rss_bytes": []}}
        self._rapl = _Rapl()
        if self._rapl.reason:
            self.energy_reason = (self.energy_reason + "; " if self.energy_reason else "") + self._rapl.reason
        self._process.cpu_percent(None)

    def energy_j(self) -> float | None:
        """Energy counter now (J since start, all devices), or None when there is none."""
        if self.kind == "nvml" and self._energy_start:
            try:
                return sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000 - s
                           for h, s in zip(self._handles, self._energy_start))
            except self._nvml.NVMLError:
                return None
        if self.kind == "cpu" and self._rapl is not None and self._rapl.zones:
            return self._rapl.joules()
        return None

    def start(self) -> "Monitor":
        self.started_at = time.time()
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="specdec-monitor", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        try:
            if self.kind == "nvml":
                n = self._nvml
                for i, h in enumerate(self._handles):
                    s = self.samples[i]
                    s["power_w"].append(n.nvmlDeviceGetPowerUsage(h) / 1000)
                    s["util_pct"].append(n.nvmlDeviceGetUtilizationRates(h).gpu)
                    s["mem_bytes"].append(n.nvmlDeviceGetMemoryInfo(h).used)
                    s["temp_c"].append(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))
            elif self.kind == "cpu":
                rss = self._process.memory_info().rss
                self._peak_rss = max(self._peak_rss, rss)
                self.samples["cpu"]["cpu_pct"].append(self._process.cpu_percent(None))
                self.samples["cpu"]["rss_bytes"].append(rss)
        except Exception:  # a failed sample must never stop a benchmark
            pass

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.sample()
        self.stopped_at = time.time()
        return self.summary()

    def summary(self) -> dict:
        """Per-device figures (averages, peaks), total energy and why energy may be None."""
        elapsed = (self.stopped_at or time.time()) - (self.started_at or time.time())
        out = {"kind": self.kind, "interval_s": self.interval_s, "elapsed_s": elapsed, "devices": {},
               "energy_j": None, "energy_reason": self.energy_reason}
        if self.kind == "nvml":
            energies = []
            for i, s in self.samples.items():
                power = s["power_w"]
                integrated = sum(power) / len(power) * elapsed if power else None
                out["devices"][str(i)] = {
                    "name": _nvml_name(self._nvml, self._handles[i]),
                    "power_avg_w": sum(power) / len(power) if power else None,
                    "power_peak_w": max(power, default=None),
                    "util_avg_pct": sum(s["util_pct"]) / len(s["util_pct"]) if s["util_pct"] else None,
                    "mem_peak_bytes": max(s["mem_bytes"], default=None),
                    "temp_peak_c": max(s["temp_c"], default=None),
                    "samples": len(power),
                }
                energies.append(integrated)
            out["energy_devices"] = [f"GPU {g}" for g in getattr(self, "gpus_measured", [])]
            counter = self.energy_j()
            if counter is not None:
                out["energy_j"] = counter
                out["energy_source"] = "nvml_total_energy"
            elif energies and None not in energies:
                out["energy_j"] = sum(energies)
                out["energy_source"] = "integrated_power_samples"
        elif self.kind == "cpu":
            s = self.samples["cpu"]
            try:
                import resource

                maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            except Exception:
                maxrss = 0
            out["devices"]["cpu"] = {
                "cpu_avg_pct": sum(s["cpu_pct"]) / len(s["cpu_pct"]) if s["cpu_pct"] else None,
                "cpu_peak_pct": max(s["cpu_pct"], default=None),
                "cpus": psutil.cpu_count(),
                "peak_rss_bytes": max(self._peak_rss, maxrss) or None,
                "samples": len(s["cpu_pct"]),
            }
            energy = self.energy_j()
            if energy is not None:
                out["energy_j"] = energy
                out["energy_source"] = "rapl"
                out["energy_devices"] = [f"RAPL {name}" for name in self._rapl.domains]
        return out

    def close(self) -> None:
        if self.kind == "nvml":
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass


def _nvml_name(nvml, handle) -> str:
    name = nvml.nvmlDeviceGetName(handle)
    return name.decode() if isinstance(name, bytes) else name
