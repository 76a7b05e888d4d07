"""File-mode throughput of the threaded video pipeline against its slowest face stage alone.

    python benchmarks/video_throughput.py [VIDEO] [--scale 1] [--model realesr-animevideov3] [--repeats 3]

Both figures come from the same run: end-to-end FPS (frames written / wall time) and the FPS the
slower of the two face stages (enhance: the model; compose: segmentation and fusion) would reach
on its own (1 / its median time per frame). The pipeline hides the other stages (decode,
keypoints, encode) behind it when the first is close to the second. Prints the median over the
repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from rtfacesr.options import EnhanceOptions
from rtfacesr.pipeline import FaceEnhancer
from rtfacesr.video import enhance_video_file

DEFAULT_VIDEO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces" / "videos" / "sadtalker_hdtf_aoc.mp4"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path, nargs="?", default=DEFAULT_VIDEO)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not args.video.exists():
        print(f"{args.video} not found", file=sys.stderr)
        return 0
    rows = []
    with FaceEnhancer(EnhanceOptions(scale=args.scale, model=args.model, backend=args.backend)) as enhancer, tempfile.TemporaryDirectory() as folder:
        for run in range(args.repeats):
            stats = enhance_video_file(args.video, Path(folder) / "out.mp4", enhancer)
            pipeline, alone = stats.fps, min(stats.stage_fps(name) for name in ("enhance", "compose") if name in stats.stage_ms)
            rows.append((pipeline, alone, pipeline / alone))
            print(f"run {run + 1}: {stats.frames_out} frames, pipeline {pipeline:.2f} fps, slowest face stage alone {alone:.2f} fps, "
                  f"ratio {100 * pipeline / alone:.1f}%  | {stats.line()}")
        backend = enhancer.superres.backend
    pipeline, alone, ratio = (statistics.median(column) for column in zip(*rows))
    print(f"\n{args.video.name}, {args.model} ({backend}), scale {args.scale}, median of {args.repeats}: "
          f"pipeline {pipeline:.2f} fps, slowest face stage alone {alone:.2f} fps, ratio {100 * ratio:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
