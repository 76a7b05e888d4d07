"""CPU time of every zoo architecture at its crop size, per backend, and which export to ONNX
and run on OpenVINO.

    python benchmarks/zoo_engines.py [--repeats 3] [--only gfpgan,codeformer,...] [--json FILE]

The checkpoints are random instances in the official layouts (tools/random_checkpoints.py):
timings and exportability do not depend on the weights, and nothing is downloaded. Each model
is imported into a temporary cache, run on torch (one warm-up, then the median of `--repeats`),
exported to ONNX and run on ONNX Runtime and on OpenVINO (fp32, and bf16 where the CPU has it)
the same way, and on torch bf16; the max abs differences from torch fp32 are in 0..1 units (int8
is left out: quantising a 512 px network by accuracy control takes many minutes). All rows come from one run on one machine, so their ratios are comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from random_checkpoints import write_checkpoints  # noqa: E402

from rtfacesr.errors import UserError  # noqa: E402

SR_SIDE = 192  # the middle crop bucket, for SR models


def _median_ms(run, batch, repeats: int) -> tuple[float, torch.Tensor]:
    output = run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        output = run(batch)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), output


def measure(name: str, path: Path, repeats: int) -> dict:
    from rtfacesr.engines.ort_engine import OnnxRuntimeEngine
    from rtfacesr.engines.torch_engine import TorchEngine
    from rtfacesr.models import zoo

    spec = zoo.import_checkpoint(path, f"random-{name}")
    side = spec.contract.crop_size or SR_SIDE
    batch = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    row = {"architecture": spec.architecture, "kind": spec.kind, "side": side}
    with torch.inference_mode():
        row["torch_ms"], expected = _median_ms(TorchEngine(spec.name, torch.device("cpu")), batch, repeats)
    try:
        engine = OnnxRuntimeEngine(spec.name, torch.device("cpu"))
    except UserError as error:
        row["onnx"] = f"fails: {error}"
        return row
    row["onnx"] = "ok, batch 1 only" if engine.batch_of_one else "ok"
    row["onnxruntime_ms"], got = _median_ms(engine, batch, repeats)
    row["max_abs_diff"] = float((got - expected).abs().max())
    from rtfacesr.engines.openvino_engine import OpenVINOEngine

    cpu = torch.device("cpu")
    for label, make in (("openvino", lambda: OpenVINOEngine(spec.name, cpu, "fp32")), ("openvino_bf16", lambda: OpenVINOEngine(spec.name, cpu, "bf16")),
                        ("torch_bf16", lambda: TorchEngine(spec.name, cpu, "bf16"))):
        try:
            with torch.inference_mode():
                row[f"{label}_ms"], got = _median_ms(make(), batch, repeats)
            row[f"{label}_diff"] = float((got - expected).abs().max())
        except (UserError, RuntimeError) as error:
            row[label] = f"fails: {' '.join(str(error).split())[:100]}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", help="comma-separated subset (see tools/random_checkpoints.py)")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["RTFACESR_CACHE"] = str(Path(folder) / "cache")
        files = write_checkpoints(Path(folder) / "checkpoints", args.only.split(",") if args.only else None)
        rows = [{"model": name, **measure(name, path, args.repeats)} for name, path in files.items()]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}\n")
    engines = (("openvino", "OpenVINO fp32"), ("openvino_bf16", "OpenVINO bf16"), ("torch_bf16", "torch bf16"))
    print("| model | architecture | crop | torch CPU | ONNX export | ONNX Runtime CPU | its max abs diff | " + " | ".join(f"{name} (max abs diff)" for _, name in engines) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(engines))
    for r in rows:
        ort = f"{r['onnxruntime_ms']:.0f} ms" if "onnxruntime_ms" in r else "-"
        diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "-"
        others = [f"{r[key + '_ms']:.0f} ms ({r[key + '_diff']:.1e})" if key + "_ms" in r else r.get(key, "-") for key, _ in engines]
        print(f"| {r['model']} | {r['architecture']} | {r['side']} | {r['torch_ms']:.0f} ms | {r['onnx']} | {ort} | {diff} | " + " | ".join(others) + " |")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
