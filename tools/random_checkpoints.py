"""Write randomly initialised checkpoints in the official files' key layouts.

    python tools/random_checkpoints.py FOLDER [--only gfpgan,codeformer,...]

The weights are noise, so the faces they make are too; what they are good for is everything
that does not depend on the weights: import and identification, every backend's export, and
timings (a convolution costs the same whatever its weights). Used by the zoo benchmark, and by
users who want to try the zoo's plumbing before downloading 350 MB files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def _gfpgan():
    from spandrel.architectures.GFPGAN import GFPGAN

    net = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
                 num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    return {"params_ema": net.state_dict()}  # GFPGANv1.x.pth: BasicSR's EMA weights


def _codeformer():
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    net = CodeFormer(dim_embd=512, n_head=8, n_layers=9, codebook_size=1024, latent_size=256,
                     connect_list=["32", "64", "128", "256"], fix_modules=["quantize", "generator"])
    return {"params_ema": net.state_dict()}


def _restoreformer():
    from spandrel.architectures.RestoreFormer import RestoreFormer

    return RestoreFormer().state_dict()


def _restoreformer_pp():
    from rtfacesr.models.restoreformer_pp import RestoreFormerPP

    return {"state_dict": {f"vqvae.{k}": v for k, v in RestoreFormerPP().state_dict().items()}, "epoch": 0}  # Lightning


def _general_x4v3():
    from spandrel.architectures.Compact import Compact

    return {"params": Compact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32, upscale=4, act_type="prelu").state_dict()}


def _bisenet():
    from rtfacesr.models.parsers import BiSeNet

    return BiSeNet().state_dict()


def _parsenet():
    from rtfacesr.models.parsers import ParseNet

    return ParseNet().state_dict()


CHECKPOINTS = {
    "gfpgan": ("GFPGANv1.4-random.pth", _gfpgan),
    "codeformer": ("codeformer-random.pth", _codeformer),
    "restoreformer": ("RestoreFormer-random.pth", _restoreformer),
    "restoreformer++": ("RestoreFormer++-random.ckpt", _restoreformer_pp),
    "general-x4v3": ("realesr-general-x4v3-random.pth", _general_x4v3),
    "bisenet": ("parsing_bisenet-random.pth", _bisenet),
    "parsenet": ("parsing_parsenet-random.pth", _parsenet),
}


def write_checkpoints(folder: Path, only: list[str] | None = None, seed: int = 0) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, (filename, make) in CHECKPOINTS.items():
        if only and name not in only:
            continue
        torch.manual_seed(seed)
        path = folder / filename
        if not path.exists():
            torch.save(make(), path)
        written[name] = path
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(CHECKPOINTS)}")
    args = parser.parse_args()
    for name, path in write_checkpoints(args.folder, args.only.split(",") if args.only else None).items():
        print(f"{name}: {path} ({path.stat().st_size / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
