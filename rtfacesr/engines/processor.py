"""What the processor offers, read once per process: the instruction sets that decide which
kernels OpenVINO and oneDNN can run (the machine key of `auto`, the int8 recipe)."""

from __future__ import annotations

from functools import cache


@cache
def cpu_flags() -> frozenset[str]:
    """The processor's instruction-set flags as Linux lists them (/proc/cpuinfo); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as handle:
            return frozenset(next((line for line in handle if line.startswith("flags")), "").partition(":")[2].split())
    except OSError:
        return frozenset()


def has_amx_int8() -> bool:
    """Intel AMX's int8 tiles (Xeon Sapphire Rapids and later)."""
    return "amx_int8" in cpu_flags()
