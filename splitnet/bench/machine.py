"""What a benchmark ran on, written beside every result: a figure without its machine is a rumour.

The load average matters here: on a shared machine it says how many other jobs the
contenders were competing with (read it before and after a suite).
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """Cores, CPU model, load average, memory, software versions."""
    info: dict[str, Any] = {"cores": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version(),
                            "torch": torch.__version__, "platform": platform.platform(),
                            "load_avg": [round(v, 2) for v in os.getloadavg()]}
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        pass
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info
