"""Which device, backend and precision a model runs with.

On a GPU: TensorRT where it is installed, else torch CUDA; `auto` precision is fp32 there. On the
CPU, `auto` is measured once per model and machine (CPU model, its instruction sets, the
runtimes' versions, the thread count) and remembered: every backend and precision the machine
offers (torch, ONNX Runtime, OpenVINO; fp32, bf16 where the CPU has bf16 instructions, int8 with
OpenVINO) is timed on a real face crop, and the fastest whose output stays within the accuracy
bound of fp32 (`accuracy.py`) wins.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch

from rtfacesr.cache import cache_dir
from rtfacesr.outputs import atomic_write_bytes
from rtfacesr.engines.accuracy import MAX_MEAN_LEVELS, compare
from rtfacesr.engines.inputs import CALIBRATION_RECIPE, sample_input
from rtfacesr.engines.onnx_export import ExportFailed
from rtfacesr.engines.openvino_engine import OpenVINOEngine, cpu_capabilities
from rtfacesr.engines.ort_engine import OnnxRuntimeEngine
from rtfacesr.engines.processor import cpu_flags
from rtfacesr.engines.quantize import fast_recipe_name, int8_note, int8_path, quantisation_seconds
from rtfacesr.engines.torch_engine import TorchEngine, torch_has_bf16
from rtfacesr.errors import OptionError, UserError
from rtfacesr.extras import available
from rtfacesr.models.zoo import ModelChoice, as_choice
from rtfacesr.options import BACKENDS, PRECISIONS, check_choice, check_device

CHOICE_RECORD = "engine-choice.json"
QUANTISE_BUDGET_S = 180.0  # auto tries int8 only where quantising (once per model and machine) would take about this at most
ENGINES = {"torch": TorchEngine, "onnxruntime": OnnxRuntimeEngine, "openvino": OpenVINOEngine}


def resolve_device(device: str) -> torch.device:
    """auto: the CUDA GPU where PyTorch sees one, else the CPU."""
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError(f"--device {device} was asked for, but PyTorch sees no CUDA GPU")
    return torch.device(device)


@dataclass(frozen=True)
class Trial:
    """One backend and precision timed on the sample, and how far its output is from fp32's."""

    backend: str
    precision: str
    ms: float | None  # None: it could not run here
    mean_levels: float | None = None
    max_levels: float | None = None
    psnr_db: float | None = None
    label_agreement: float | None = None
    within_bound: bool = False
    note: str = ""


def cpu_candidates(model: ModelChoice, backend: str, precision: str) -> list[tuple[str, str]]:
    """The (backend, precision) pairs this CPU offers for `model`, narrowed by what was asked."""
    bf16_ok = available("openvino") and "BF16" in cpu_capabilities()
    pairs = [("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("torch", "bf16"), ("openvino", "bf16"), ("openvino", "int8")]
    # Detectors see photos of every size: OpenVINO compiles per input shape, ONNX Runtime not.
    per_shape = model.spec.kind != "detector" or backend == "openvino"
    offered = {
        ("torch", "fp32"): not model.spec.graph,
        ("onnxruntime", "fp32"): available("onnxruntime"),
        ("openvino", "fp32"): available("openvino") and per_shape,
        ("torch", "bf16"): not model.spec.graph and torch_has_bf16(),
        ("openvino", "bf16"): bf16_ok and per_shape,
        ("openvino", "int8"): available("openvino") and available("nncf") and model.spec.kind != "detector",
    }
    return [(b, p) for b, p in pairs if offered[(b, p)] and backend in ("auto", b) and precision in ("auto", p)]


def machine_key() -> str:
    versions = {module: _version(module) for module in ("onnxruntime", "openvino", "nncf")}
    flags = " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx", "avx_vnni", "avx2"))))
    return (f"{platform.processor() or platform.machine()}|{flags}|torch {torch.__version__}|{versions}|{torch.get_num_threads()} threads"
            f"|int8 {CALIBRATION_RECIPE} {fast_recipe_name()} within {MAX_MEAN_LEVELS:g}")


def _version(module: str) -> str | None:
    if not available(module):
        return None
    return getattr(__import__(module), "__version__", "?")


def measure(model: ModelChoice, pairs: list[tuple[str, str]]) -> list[Trial]:
    """Each pair on the model's sample input: warmed up, then the median of a few calls; the
    reference output is torch fp32's (or the first fp32 engine's, for ONNX graphs)."""
    sample = sample_input(model.spec)
    heavy = bool(model.spec.contract.crop_size and model.spec.contract.crop_size >= 512)
    warm_ups, repeats = (1, 1) if heavy else (3, 3)
    trials, reference = [], None
    for backend, precision in sorted(pairs, key=lambda pair: pair[1] != "fp32"):  # an fp32 reference first
        timed = [t.ms for t in trials if t.ms is not None and t.precision == "fp32"]
        if (precision == "int8" and len(pairs) > 1 and timed and not _int8_made(model)  # made already: nothing to wait for
                and quantisation_seconds(model.spec, min(timed)) > QUANTISE_BUDGET_S):
            trials.append(Trial(backend, precision, None, note=f"not tried: quantising would take about {quantisation_seconds(model.spec, min(timed)):.0f} s; ask for --precision int8"))
            continue
        try:
            engine = ENGINES[backend](model, torch.device("cpu"), precision)
            for _ in range(warm_ups):
                output = engine(sample)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                output = engine(sample)
                times.append((time.perf_counter() - start) * 1000)
            engine.close()
        except (ExportFailed, UserError) as error:  # this pair cannot run here: say why, try the others
            trials.append(Trial(backend, precision, None, note=str(error)[:160]))
            continue
        if reference is None:
            reference = output
        note = int8_note(int8_path(model)) if precision == "int8" else ""  # how it was quantised
        trials.append(Trial(backend, precision, round(float(np.median(times)), 2), **compare(model.spec, reference, output), note=note))
    return trials


def _int8_made(model: ModelChoice) -> bool:
    return available("nncf") and int8_path(model).is_file()  # its path names NNCF's version


def measured_choice(model: ModelChoice, backend: str = "auto", precision: str = "auto") -> dict:
    """The fastest pair within the bound, measured once per model, machine and request, and
    remembered; the record (chosen pair and every trial) is what `engines list` shows."""
    def key() -> str:  # an int8 model made since (asked for) is a new choice: measured again
        return f"{model.identity}|{backend}|{precision}|{machine_key()}" + ("|int8 made" if _int8_made(model) else "")

    path = cache_dir() / CHOICE_RECORD
    records = json.loads(path.read_text()) if path.exists() else {}
    if key() not in records:
        pairs = cpu_candidates(model, backend, precision)
        if not pairs:
            raise OptionError(f"no {backend} {precision} engine for {model.name} on this CPU")
        if len(pairs) > 1:
            print(f"rtfacesr: timing {len(pairs)} CPU engines for {model.name} (once; remembered)", file=sys.stderr)
        trials = measure(model, pairs) if len(pairs) > 1 else [Trial(*pairs[0], None, within_bound=True, note="the only choice")]
        usable = [t for t in trials if t.within_bound and (t.ms is not None or len(trials) == 1)]
        if not usable:
            raise UserError(f"no CPU engine could run {model.name}: " + "; ".join(f"{t.backend} {t.precision}: {t.note}" for t in trials))
        best = min(usable, key=lambda t: t.ms if t.ms is not None else 0.0)
        records[key()] = {"model": model.name, "backend": best.backend, "precision": best.precision,
                        "why": "the fastest within the accuracy bound of fp32" if len(trials) > 1 else best.note,
                        "trials": [asdict(t) for t in trials]}
        atomic_write_bytes(path, json.dumps(records, indent=2).encode())
    return records[key()]


def remembered_choices() -> list[dict]:
    path = cache_dir() / CHOICE_RECORD
    return list(json.loads(path.read_text()).values()) if path.exists() else []


class Resolved(NamedTuple):
    backend: str
    precision: str
    reason: str  # why: asked for, a GPU's default, or the measured choice


def resolve(backend: str, precision: str, model: str | ModelChoice, device: torch.device) -> Resolved:
    """What to build: `auto` on a GPU is TensorRT, then torch CUDA, in fp32 unless asked;
    `auto` backend on the CPU, with any precision, is measured (`measured_choice`)."""
    check_choice("backend", backend, BACKENDS)
    check_choice("precision", precision, PRECISIONS)
    model = as_choice(model)
    if model.spec.graph and backend == "torch":
        raise OptionError(f"model '{model.name}' is an ONNX graph: it runs on onnxruntime, openvino or tensorrt, not torch")
    if device.type == "cuda":
        reason = "asked for" if backend != "auto" else "the GPU's default"
        if backend == "auto":
            backend = "tensorrt" if available("tensorrt") else "onnxruntime" if model.spec.graph else "torch"
        return Resolved(backend, "fp32" if precision == "auto" else precision, reason)
    if backend == "tensorrt":
        raise UserError("the tensorrt backend needs an NVIDIA GPU (--device cuda)")
    if backend != "auto":  # a chosen backend: auto precision is fp32 there (measured: only with auto backends)
        return Resolved(backend, "fp32" if precision == "auto" else precision, "asked for")
    choice = measured_choice(model, backend, precision)
    return Resolved(choice["backend"], choice["precision"], f"auto, measured: {choice['why']}")


def resolve_backend(backend: str, model: str | ModelChoice, device: torch.device) -> str:
    """The backend `auto` stands for when fp32 is asked for (see `resolve`)."""
    return resolve(backend, "fp32", model, device).backend


def engine_threads() -> int:
    """The engine's thread count: all cores (measured best on 2 cores, where the other stages
    wait on the model anyway), leaving one free from 4 cores up for decoding, MediaPipe and
    encoding."""
    cores = os.cpu_count() or 1
    return cores if cores <= 3 else cores - 1


def keyframe_threads() -> int:
    """Live keyframe SR: the model's worker runs its engine on half the cores (one on 2). Its
    thread yields to the frame stages, and only the pool threads it starts itself inherit that
    (an engine's pool made earlier, by the main thread, would compete with the frames at full
    priority). Measured on 2 cores in benchmarks/README.md (one face: p95 latency 56 against 82 ms)."""
    return max(1, (os.cpu_count() or 1) // 2)
