"""Inference engines for every model (SR, face restoration, face parsing) behind one interface.

An engine is called with a float32 NCHW batch (RGB in [0, 1]; face parsers: their normalised
input) and returns the float32 NCHW result on the same device. Backends:

- torch: CPU or CUDA; on CUDA fp16, channels_last, and (built-in models) one CUDA graph per
  input shape (the crop buckets keep the shapes few).
- onnxruntime: an ONNX file exported from the project's own module (cached), on the CPU or the
  CUDA execution provider; on CUDA, inputs and outputs stay torch CUDA tensors (I/O binding).
- tensorrt: an engine built from that ONNX file with the TensorRT Python API, one optimisation
  profile per crop bucket with batch 1..max faces, cached and keyed by everything that makes it
  stale; bound to torch CUDA tensors on torch's current stream (no pycuda).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rtfacesr.align import FACE_SIZE_BUCKETS
from rtfacesr.cache import atomic_write_bytes, cache_dir
from rtfacesr.errors import UserError
from rtfacesr.models.zoo import ModelChoice, as_choice

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16")
ONNX_OPSET = 17


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class TorchEngine:
    name = "torch"

    def __init__(self, model: str | ModelChoice, device: torch.device, precision: str = "fp32", cuda_graphs: bool = True):
        model = as_choice(model)
        self.device = device
        self.precision = precision if device.type == "cuda" else "fp32"
        self.dtype = torch.float16 if self.precision == "fp16" else torch.float32
        module = model.build().to(device, self.dtype)
        if device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        # CUDA graphs only for the built-in architectures, whose forward is known to be capturable
        # (no host syncs or data-dependent shapes); zoo models run eagerly.
        self.cuda_graphs = cuda_graphs and device.type == "cuda" and model.spec.source == "built-in"
        self._graphs: dict[tuple, tuple] = {}

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, self.dtype)
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        if not self.cuda_graphs:
            return self.module(batch).float()
        graph, static_in, static_out = self._graph_for(batch)
        static_in.copy_(batch)
        graph.replay()
        return static_out.float().clone()

    def _graph_for(self, batch: torch.Tensor):
        """Capture the model once per input shape; later calls replay it without launch overhead."""
        key = tuple(batch.shape)
        if key not in self._graphs:
            static_in = batch.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: allocations and cuDNN algorithm choice happen here
                    self.module(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.module(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        return self._graphs[key]


def _export_routes(module: torch.nn.Module, fixed_side: int | None):
    """The ways to export, best first: (what the file accepts, function writing it to a buffer).

    The TorchScript exporter takes most models with every axis dynamic. It cannot trace
    CodeFormer (a module looked up by a traced size) or a dynamic batch through GFPGAN's
    modulated convolutions (weights shaped by the batch); torch.export handles the first, and a
    fixed batch of 1 the second, at the cost of one engine call per face.
    """
    side = fixed_side or 64
    sample = (torch.rand(1, 3, side, side),)
    names = {"input_names": ["input"], "output_names": ["output"]}
    spatial = {} if fixed_side else {2: "height", 3: "width"}
    axes = {"input": {0: "batch", **spatial}, "output": {0: "batch", **{k: f"out_{v}" for k, v in spatial.items()}}}

    def torchscript(buffer, dynamic_axes):
        torch.onnx.export(module, sample, buffer, **names, dynamic_axes=dynamic_axes, opset_version=ONNX_OPSET, dynamo=False)

    def torch_export(buffer):
        batch = torch.export.Dim("batch", min=1, max=64)
        shapes = {"x": {0: batch, **({} if fixed_side else {2: torch.export.Dim("height"), 3: torch.export.Dim("width")})}}
        program = torch.onnx.export(module, (torch.rand(2, 3, side, side),), **names, dynamic_shapes=shapes, opset_version=ONNX_OPSET + 1, dynamo=True)
        program.save(buffer)

    yield "dynamic", lambda buffer: torchscript(buffer, axes)
    if available("onnxscript"):
        yield "dynamic", torch_export
    if fixed_side:
        yield "batch 1", lambda buffer: torchscript(buffer, None)


def export_onnx(model: str | ModelChoice) -> Path:
    """The model as ONNX, exported once per weights file and setting: dynamic batch (and size,
    for SR models) where the exporters manage it, else a fixed batch of 1."""
    model = as_choice(model)
    target = cache_dir() / "onnx" / f"{model.identity}-opset{ONNX_OPSET}.onnx"
    if target.exists():
        return target
    if not available("onnx"):
        raise UserError("ONNX export needs the onnx package: pip install 'rtfacesr[onnx]'")
    import io
    import logging
    import warnings

    module = model.build()
    failures = []
    for _, export in _export_routes(module, model.spec.contract.crop_size):
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' deprecation and tracing notices
            logging.disable(logging.WARNING)
            try:
                export(buffer)
            except Exception as error:  # noqa: BLE001  (an exporter failing just means: try the next way)
                failures.append(f"{type(error).__name__}: {' '.join(str(error).split())[:120]}")
                continue
            finally:
                logging.disable(logging.NOTSET)
        atomic_write_bytes(target, buffer.getvalue())
        return target
    raise UserError(f"{model.name} cannot be exported to ONNX ({'; '.join(failures)}); use --backend torch")


class OnnxRuntimeEngine:
    name = "onnxruntime"

    def __init__(self, model: str | ModelChoice, device: torch.device, precision: str = "fp32"):
        if not available("onnxruntime"):
            raise UserError("the onnxruntime backend needs onnxruntime: pip install 'rtfacesr[onnx]'")
        if precision != "fp32":
            raise UserError("the onnxruntime backend runs fp32 models; use --precision fp32 (fp16 is for torch and tensorrt)")
        import onnxruntime as ort

        model = as_choice(model)
        self.device = device
        self.precision = precision
        self.scale = model.spec.scale
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError("onnxruntime has no CUDA execution provider here: pip install onnxruntime-gpu")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # Idle worker threads sleep instead of spinning: the other pipeline stages need the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(export_onnx(model)), options, providers=providers)
        self.out_channels = self.session.get_outputs()[0].shape[1]  # 3 for images, 19 for parsers
        self.batch_of_one = self.session.get_inputs()[0].shape[0] == 1  # see _export_routes

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.batch_of_one and batch.shape[0] > 1:
            return torch.cat([self._run(face[None]) for face in batch])
        return self._run(batch)

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.float().contiguous()
        if self.device.type != "cuda":
            return torch.from_numpy(self.session.run(None, {"input": batch.numpy()})[0])
        import numpy as np

        batch = batch.to(self.device)
        n, _, h, w = batch.shape
        out = torch.empty((n, self.out_channels, h * self.scale, w * self.scale), device=self.device)
        binding = self.session.io_binding()
        index = self.device.index or 0
        binding.bind_input("input", "cuda", index, np.float32, tuple(batch.shape), batch.data_ptr())
        binding.bind_output("output", "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream().synchronize()
        self.session.run_with_iobinding(binding)
        return out


@dataclass(frozen=True)
class EngineKey:
    """Everything a TensorRT engine depends on; any change means a rebuild."""

    model: str
    onnx_sha256: str
    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str
    buckets: tuple[int, ...]
    max_batch: int

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def plan_path(self, folder: Path) -> Path:
        return folder / f"{self.model}-{self.precision}-{self.digest()}.plan"


def engine_folder() -> Path:
    return cache_dir() / "engines"


def cached_engines(folder: Path | None = None) -> list[dict]:
    """What `rtfacesr engines list` shows: each plan with the key it was built for."""
    folder = folder or engine_folder()
    found = []
    for meta in sorted(folder.glob("*.json")):
        plan = meta.with_suffix(".plan")
        if plan.exists():
            found.append({"plan": str(plan), "bytes": plan.stat().st_size, **json.loads(meta.read_text())})
    return found


class TensorRTEngine:
    name = "tensorrt"

    def __init__(self, model: str | ModelChoice, device: torch.device, precision: str = "fp16", max_batch: int = 8, progress=None):
        if device.type != "cuda":
            raise UserError("the tensorrt backend needs an NVIDIA GPU (--device cuda)")
        if not available("tensorrt"):
            raise UserError("the tensorrt backend needs TensorRT: pip install 'rtfacesr[tensorrt]'")
        import tensorrt as trt

        model = as_choice(model)
        self.trt = trt
        self.device, self.precision = device, precision
        self.buckets = crop_sizes(model)
        self.scale = model.spec.scale
        self.logger = trt.Logger(trt.Logger.WARNING)
        onnx_path = export_onnx(model)
        properties = torch.cuda.get_device_properties(device)
        self.key = EngineKey(
            model=model.name,
            onnx_sha256=hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
            tensorrt=trt.__version__,
            gpu=properties.name,
            compute_capability=f"{properties.major}.{properties.minor}",
            precision=precision,
            buckets=self.buckets,
            max_batch=max_batch,
        )
        plan = self.key.plan_path(engine_folder())
        if not plan.exists():
            self._build(onnx_path, plan, progress)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise UserError(f"{plan}: TensorRT could not load this engine; delete it with `rtfacesr engines clear`")
        self.batch_of_one = self.engine.get_tensor_shape("input")[0] == 1
        self.contexts = {}
        for profile, size in enumerate(self.buckets):
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(profile, torch.cuda.current_stream(device).cuda_stream)
            self.contexts[size] = context

    def _build(self, onnx_path: Path, plan: Path, progress) -> None:
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise UserError(f"TensorRT could not parse {onnx_path.name}: {errors}")
        config = builder.create_builder_config()
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        timing_path = engine_folder() / f"timing-{self.key.gpu.replace(' ', '_')}-{self.key.tensorrt}.cache"
        timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.exists() else b"")
        config.set_timing_cache(timing, ignore_mismatch=False)
        max_batch = self.key.max_batch if network.get_input(0).shape[0] == -1 else 1  # see _export_routes
        for size in self.buckets:
            profile = builder.create_optimization_profile()
            profile.set_shape("input", (1, 3, size, size), (1, 3, size, size), (max_batch, 3, size, size))
            config.add_optimization_profile(profile)
        if progress:
            progress(f"building TensorRT engine for {self.key.model} ({self.precision}, buckets {self.buckets}); this takes minutes once")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise UserError(f"TensorRT failed to build an engine for {self.key.model}")
        atomic_write_bytes(plan, bytes(serialized))
        atomic_write_bytes(plan.with_suffix(".json"), json.dumps(asdict(self.key), indent=2).encode())
        atomic_write_bytes(timing_path, bytes(config.get_timing_cache().serialize()))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.batch_of_one and batch.shape[0] > 1:
            return torch.cat([self(face[None]) for face in batch])
        size = batch.shape[-1]
        if size not in self.contexts:
            raise UserError(f"no TensorRT profile for {size} px crops (buckets {self.buckets}); use the default face sizes")
        batch = batch.to(self.device, torch.float32).contiguous()
        context = self.contexts[size]
        context.set_input_shape("input", tuple(batch.shape))
        out = torch.empty(tuple(context.get_tensor_shape("output")), device=self.device)
        context.set_tensor_address("input", batch.data_ptr())
        context.set_tensor_address("output", out.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out


def crop_sizes(model: ModelChoice) -> tuple[int, ...]:
    """The crop sides the pipeline will feed this model: its fixed size, or the buckets."""
    fixed = model.spec.contract.crop_size
    return (fixed,) if fixed else FACE_SIZE_BUCKETS


def _sample_face(side: int) -> torch.Tensor:
    """A real face crop (astronaut.png) as a 1 x 3 x side x side batch: CPU kernels can run at
    very different speeds on noise and on images, so the choice is timed on an image."""
    from rtfacesr.demo import astronaut_face

    return torch.from_numpy(astronaut_face(side)).permute(2, 0, 1)[None].float() / 255


def _fastest_cpu_backend(model: ModelChoice) -> str:
    """Time torch and ONNX Runtime on a face crop of the size the model will get (the middle
    bucket, or its fixed size); remember the winner for this model, machine and library
    versions, so the measurement (and the ONNX export) happens once. A model that cannot be
    exported runs on torch."""
    if not available("onnxruntime"):
        return "torch"
    import os
    import sys

    import onnxruntime

    key = f"{model.identity}|face sample|torch {torch.__version__}|onnxruntime {onnxruntime.__version__}|{os.cpu_count()} cpus|{torch.get_num_threads()} threads"
    record = cache_dir() / "cpu-backend-choice.json"
    choices = json.loads(record.read_text()) if record.exists() else {}
    if key not in choices:
        fixed = model.spec.contract.crop_size
        if fixed:
            print(f"rtfacesr: timing torch against ONNX Runtime for {model.name} (once; remembered)", file=sys.stderr)
        sample = _sample_face(fixed or FACE_SIZE_BUCKETS[1])
        # torch's first calls of a small shape run at half speed (measured here); at 512 one
        # warm-up call is enough and each costs seconds.
        warm_ups = 1 if fixed else 4
        timings = {}
        for name, engine_class in (("torch", TorchEngine), ("onnxruntime", OnnxRuntimeEngine)):
            try:
                engine = engine_class(model, torch.device("cpu"))
            except UserError:  # no ONNX form: torch it is
                continue
            for _ in range(warm_ups):
                engine(sample)
            start = time.perf_counter()
            engine(sample)
            timings[name] = time.perf_counter() - start
        choices[key] = min(timings, key=timings.get)
        atomic_write_bytes(record, json.dumps(choices, indent=2).encode())
    return choices[key]


def resolve_backend(backend: str, model: str | ModelChoice, device: torch.device) -> str:
    """auto: TensorRT, then torch CUDA, then the faster CPU backend as measured."""
    if backend not in BACKENDS:
        raise UserError(f"backend must be one of {', '.join(BACKENDS)}, not '{backend}'")
    if backend != "auto":
        return backend
    if device.type == "cuda":
        return "tensorrt" if available("tensorrt") else "torch"
    return _fastest_cpu_backend(as_choice(model))


def create_engine(model: str | ModelChoice, backend: str, device: torch.device, precision: str = "fp32", max_batch: int = 8):
    if precision not in PRECISIONS:
        raise UserError(f"precision must be fp32 or fp16, not '{precision}'")
    model = as_choice(model)
    if not model.spec.runs_fp16:
        precision = "fp32"
    backend = resolve_backend(backend, model, device)
    if backend == "torch":
        return TorchEngine(model, device, precision)
    if backend == "onnxruntime":
        return OnnxRuntimeEngine(model, device, precision)
    return TensorRTEngine(model, device, precision, max_batch=max_batch)
