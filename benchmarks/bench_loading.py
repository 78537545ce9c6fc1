"""Memory of loading a full-size checkpoint (not a test).

Writes a random full ViT-L / ViT-B / DPT DUSt3R checkpoint once (``--dir``, default ``/tmp/easi3r_bench_loading``,
about 2.3 GB per format): the official ``.pth`` and the hub's ``config.json`` + ``model.safetensors``. Each load then
runs in a fresh subprocess; a thread samples the resident set size every millisecond during
:func:`easi3r.load_backbone` and the peak above the level just before it is printed, as a ratio to the parameter
bytes. ``easi3r`` builds the network on the meta device and makes the memory-mapped checkpoint tensors its weights
(target: <= 1.15x); ``--baseline`` also measures the copying path (random init, ``torch.load`` into memory,
``load_state_dict`` copy), for comparison. Pages of a memory-mapped file count in the resident set once they are
read; loading reads none of them, the first forward pass reads them all (file-backed: the kernel may drop them).

Run (a few minutes the first time; on a quiet machine)::

    nice python benchmarks/bench_loading.py [--baseline]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from common import peak_rss_during

from easi3r.backbones import DUSt3R, DUSt3RConfig, load_backbone

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers.checkpoints import dust3r_config_to_official, save_pretrained_folder, save_pth  # noqa: E402


def parameter_bytes(net: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in net.parameters())  # shared tensors counted once


def write_checkpoints(folder: Path) -> tuple[Path, Path]:
    pth, hub = folder / "vitl_dpt.pth", folder / "vitl_dpt_hub"
    if pth.is_file() and (hub / "model.safetensors").is_file():
        return pth, hub
    torch.manual_seed(0)
    net = DUSt3R(DUSt3RConfig())
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.02)
    config = dust3r_config_to_official(net.config)
    save_pth(pth, config, net.state_dict())
    save_pretrained_folder(hub, config, net.state_dict())
    return pth, hub


def _copying_load(path: str) -> torch.nn.Module:
    """The loading path without meta device and mmap: random init, whole file in memory, copy into the params."""
    from easi3r.backbones.checkpoint import _read_safetensors, _read_torch_checkpoint, load_weights

    p = Path(path)
    net = DUSt3R(DUSt3RConfig())
    sd = _read_safetensors(p / "model.safetensors") if p.is_dir() else _read_torch_checkpoint(p, mmap=False).state_dict
    load_weights(net, sd)
    return net


def child(path: str, mode: str) -> None:
    def load() -> torch.nn.Module:
        return load_backbone(path, "cpu") if mode == "easi3r" else _copying_load(path)

    net, peak = peak_rss_during(load)
    print(json.dumps({"peak": peak, "params": parameter_bytes(net)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/easi3r_bench_loading"))
    parser.add_argument("--baseline", action="store_true", help="also measure the copying load")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    pth, hub = write_checkpoints(args.dir)
    modes = ["easi3r", "copy"] if args.baseline else ["easi3r"]
    print(f"{'format':<14} {'loader':<8} {'peak RSS above baseline':>24} {'parameter bytes':>16} {'ratio':>7}")
    for label, path in (("pth", pth), ("safetensors", hub)):
        for mode in modes:
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(path), mode], check=True, capture_output=True, text=True
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"{label:<14} {mode:<8} {r['peak'] / 2**30:>20.3f} GiB {r['params'] / 2**30:>12.3f} GiB "
                f"{r['peak'] / r['params']:>6.2f}x"
            )


if __name__ == "__main__":
    main()
