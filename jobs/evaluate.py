"""`avfusion evaluate CHECKPOINT --shards DIR`: robustness of a trained model.

Accuracy (top-1/top-5) and mean attention [w_audio, w_video] under normal input,
missing modalities, and the corruption suite (``--suite default``: severity 3;
``--suite full``: severities 1–5), beside the audio-only and video-only baselines
when their checkpoints are given. Writes robustness.json, robustness.md and PNGs.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avfusion evaluate", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("checkpoint", help="fused model checkpoint (last.pt from avfusion train)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", help="shard folder; evaluates --split")
    src.add_argument("--folder", help="folder of videos, labelled by --labels (VGGSound CSV)")
    p.add_argument("--labels", help="with --folder: VGGSound-format labels")
    p.add_argument("--split", default="test")
    p.add_argument("--audio-baseline", help="audio-only checkpoint to compare with")
    p.add_argument("--video-baseline", help="video-only checkpoint to compare with")
    p.add_argument("--suite", default="default", choices=["default", "full"])
    p.add_argument("--conditions", help="comma-separated instead of a suite, e.g. normal,muted_audio,gaussian_blur@5")
    p.add_argument("--out", default="robustness", help="report folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    return p


def _folder_batches(folder: str, labels: str, clip, label_map: dict, batch_size: int, workers: int):
    from avfusion import storage
    from avfusion.decode import DecodeLimits, decode_clip
    from avfusion.probe import MediaError
    from avfusion.sources import scan_folder

    tasks, _ = scan_folder(folder, labels)
    tasks = [t for t in tasks if t.label in label_map]

    def load(task):
        try:
            with storage.local_copy(task.source) as local:  # s3://… clips are fetched for PyAV
                clip_data = decode_clip(local, clip, task.start, DecodeLimits(threads=1))
        except MediaError as exc:
            print(f"skipping {task.source}: {exc}", file=sys.stderr)
            return None
        return {"key": task.key, "waveform": clip_data.waveform, "frames": clip_data.frames,
                "target": label_map[task.label]}

    with ThreadPoolExecutor(max(1, workers)) as pool:
        batch = []
        for sample in pool.map(load, tasks):
            if sample is not None:
                batch.append(sample)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
    return len(tasks)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.folder and not args.labels:
        print("avfusion evaluate: --folder needs --labels", file=sys.stderr)
        return 2
    from tqdm import tqdm

    from avfusion.config import ClipSpec
    from avfusion.robustness import Condition, conditions, evaluate, markdown_table, write_report
    from avfusion.train import model_from_checkpoint
    from shards.loader import Dataset, data_loader, eval_stages

    try:
        model, ckpt = model_from_checkpoint(args.checkpoint)
        models = {"fused": model}
        for name, path in (("audio-only", args.audio_baseline), ("video-only", args.video_baseline)):
            if path:
                baseline, bckpt = model_from_checkpoint(path)
                if bckpt["label_map"] != ckpt["label_map"]:
                    raise ValueError(f"{path} was trained on a different label map than {args.checkpoint}")
                models[name] = baseline
        conds = ([Condition.parse(c.strip()) for c in args.conditions.split(",")] if args.conditions
                 else conditions(args.suite))
        if Condition() not in conds:  # clean input is the reference every comparison needs
            conds.insert(0, Condition())
    except (OSError, ValueError, KeyError) as exc:
        print(f"avfusion evaluate: {exc}", file=sys.stderr)
        return 2
    if model.cfg.modalities != "both":
        print("avfusion evaluate: the first checkpoint must be a fused (both-modality) model", file=sys.stderr)
        return 2
    label_map = ckpt["label_map"]
    if args.shards:
        data = Dataset.open(args.shards)
        if data.label_map != label_map:
            print("avfusion evaluate: the shards' label map differs from the checkpoint's", file=sys.stderr)
            return 2
        total = data.count(args.split)
        batches = data_loader(eval_stages(data.urls, args.batch_size, split=args.split, compact_frames=False,
                                          collation_fn=lambda xs: xs), args.workers)
    else:
        total = None
        batches = _folder_batches(args.folder, args.labels, ClipSpec(**ckpt["clip"]), label_map, args.batch_size,
                                  args.workers)
    with tqdm(total=total * len(conds) if total else None, desc="evaluate", unit="clip") as bar:
        results = evaluate(models, batches, conds, seed=args.seed, progress=bar)
    n = results["normal"]["fused"]["n"]
    paths = write_report(results, args.out, {"checkpoint": args.checkpoint, "split": args.split,
                                                   "seed": args.seed, "n_clips": n, "models": list(models),
                                                   "label_map": label_map})
    print(markdown_table(results))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
