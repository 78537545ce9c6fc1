"""Run Easi3R on a folder of frames (or a video) and save every output file.

python examples/run_folder.py path/to/frames out/ --backbone monst3r
python examples/run_folder.py --demo out/          # offline: synthetic frames + a random network
"""

from __future__ import annotations

import argparse

from easi3r import Easi3R


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", nargs="?", help="folder of images or a video file")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--backbone", default="dust3r", help="dust3r, monst3r, a hub id or a checkpoint path")
    parser.add_argument("--demo", action="store_true", help="synthetic video and a random network (no download)")
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()

    if args.demo:
        from easi3r.demo import demo_backbone, render_video
        from easi3r.frames import load_frames

        frames = load_frames(render_video(6).frames, image_size=256)
        runner = Easi3R(backbone=demo_backbone(frames.images), image_size=256, iterations=args.iterations)
    else:
        if args.input is None:
            parser.error("give an input folder or video, or --demo")
        frames = args.input
        runner = Easi3R(backbone=args.backbone, iterations=args.iterations)

    rec = runner.run(frames)
    written = rec.save(args.out)
    print(
        f"{rec.num_frames} frames, {100 * rec.masks.mean():.1f} % of pixels dynamic, mean focal "
        f"{rec.focals.mean():.1f} px at {rec.size[1]}x{rec.size[0]}"
    )
    for name, path in written.items():
        print(f"  {name:<18} {path}")


if __name__ == "__main__":
    main()
