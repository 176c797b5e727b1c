"""How busy a GPU was over a stretch of time, from NVML's utilization counter, sampled.

NVML's `utilization.gpu` is the percentage of its last sample period (1/6 s to 1 s, by
product) in which one or more kernels ran on the device: the figure `nvidia-smi` shows. The
meter reads it every `period_s` on a thread of its own and gives the mean of the readings
taken between `start` and `stop`. It is a busy fraction, not an efficiency: a kernel that
uses one multiprocessor counts as fully busy. Without NVML (no driver, no nvidia-ml-py) the
meter reads nothing and reports None.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("bench.gpu_meter")


def nvml_reader(index: int = 0) -> Callable[[], float] | None:
    """A function giving GPU `index`'s utilization as a fraction, or None without NVML."""
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # noqa: BLE001 - no package, no driver or no such GPU: nothing to read
        log.info("NVML is not available; the GPU's utilization is not measured")
        return None

    def read() -> float:
        return float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu) / 100

    return read


class UtilizationMeter:
    """The mean of a reader's values, sampled every period_s between start() and stop()."""

    def __init__(self, read: Callable[[], float] | None, period_s: float = 0.05) -> None:
        self._read = read
        self._period_s = period_s
        self._samples: list[float] = []
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Begin sampling (nothing happens without a reader)."""
        if self._read is None:
            return
        self._samples, self._done = [], threading.Event()
        self._thread = threading.Thread(target=self._sample, name="gpu-meter", daemon=True)
        self._thread.start()

    def stop(self) -> float | None:
        """Stop sampling; the mean reading since start(), or None when nothing was read."""
        if self._thread is None:
            return None
        self._done.set()
        self._thread.join()
        self._thread = None
        return sum(self._samples) / len(self._samples) if self._samples else None

    def _sample(self) -> None:
        assert self._read is not None
        while True:
            self._samples.append(self._read())
            if self._done.wait(self._period_s):
                return
