"""The DPT head of the published DUSt3R ViT-L architecture: contiguous (NCHW) vs channels-last convolutions
(``DPTHead(channels_last=False / True)``).

Not a test. One head (view 1's, random weights) on random decoder tokens of ``B`` pairs at 512x336 (21 x 32 tokens),
timed after one warm-up call, each variant in a fresh subprocess so that the resident-set peak (sampled every
millisecond, above the level after building the head and its inputs) is its own. The largest absolute difference of
the raw output from the contiguous variant is printed (last-bit kernel differences).

    python benchmarks/bench_heads.py                  # B = 1 and 4, CPU
    python benchmarks/bench_heads.py --batch 8 --device cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_during, randomize_weights_  # noqa: E402

SIZE = (336, 512)


def child(variant: str, batch: int, device_name: str, repeats: int) -> None:
    import torch

    from easi3r.backbones.heads import DPTHead

    device = torch.device(device_name)
    torch.manual_seed(0)
    head = DPTHead(1024, 768, 12, channels_last=variant == "channels_last").eval().requires_grad_(False)
    randomize_weights_(head)
    head = head.to(device)
    n = (SIZE[0] // 16) * (SIZE[1] // 16)
    g = torch.Generator().manual_seed(1)
    tokens: list[torch.Tensor | None] = [None] * 13
    for hook, dim in zip(head.hooks, (1024, 768, 768, 768)):
        tokens[hook] = torch.randn(batch, n, dim, generator=g).to(device)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            out = head(tokens, SIZE)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    run()  # warm-up (kernel selection)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out, peak = peak_rss_during(run)
    seconds = (time.perf_counter() - t0) / repeats
    torch.save(out.contiguous().cpu(), f"/tmp/bench_heads_{variant}_{batch}.pt")
    print("RESULT " + json.dumps({"seconds": seconds, "peak": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.device, args.repeats)
        return
    import torch

    print(f"torch {torch.__version__}, {args.device}, CPU threads {torch.get_num_threads()}, DPT head (ViT-L), "
          f"{SIZE[1]}x{SIZE[0]}")  # fmt: skip
    print(f"{'B':>3} {'variant':>14} {'s / call':>9} {'peak MiB':>9} {'max |diff|':>11}")
    for batch in args.batch:
        res = {}
        for variant in ("contiguous", "channels_last"):
            cmd = [sys.executable, __file__, "--child", variant, str(batch), "--device", args.device,
                   "--repeats", str(args.repeats)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"child failed ({variant}, B={batch}):\n{proc.stderr[-3000:]}")
            res[variant] = json.loads(line[7:])
            ref = torch.load(f"/tmp/bench_heads_contiguous_{batch}.pt")
            diff = float((torch.load(f"/tmp/bench_heads_{variant}_{batch}.pt") - ref).abs().max())
            r = res[variant]
            print(f"{batch:>3} {variant:>14} {r['seconds']:>9.2f} {r['peak'] / 2**20:>9.0f} {diff:>11.2e}", flush=True)
        ratio = res["contiguous"]["seconds"] / res["channels_last"]["seconds"]
        mem = res["channels_last"]["peak"] / res["contiguous"]["peak"]
        print(f"B={batch}: channels-last {ratio:.2f}x the speed, {mem:.2f}x the peak memory of contiguous")


if __name__ == "__main__":
    main()
