"""Training step speed and peak memory: `autopet-v3` at 96³ patches, batch 2, against MONAI's U-Net.

    python benchmarks/bench_train.py                    # all variants, 3 timed steps each
    python benchmarks/bench_train.py --steps 2 --patch 64

Each variant runs in its own process (its own peak resident memory, VmHWM of that process; DataLoader
worker processes not included): a training
loop of Adam steps (forward with labels, loss, backward, optimizer step) in train mode:

- v3-fp32, v3-bf16: `MirrorUNetModel(autopet-v3)` (official widths; loss = its multi-task loss) on
  pre-made tensors (random inputs, labels with lesions), fp32 or bf16 autocast;
- v3-bf16-channels-last: the same with model and inputs in channels-last-3d layout;
- monai-fp32, monai-bf16: MONAI's `UNet(3, 2, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)`, the
  official single-task baseline, with MONAI's `DiceCELoss`, in the same loop;
- v3-bf16-loader: v3 bf16 fed by the real loader (`MirrorPatchDataset` over prepared phantom studies,
  `DataLoader` with `--loader-workers` workers, as `train/train.py`), to show whether data loading is
  the bottleneck: its step time is compared with v3-bf16 on pre-made tensors.

Reported: median seconds per step after `--warmup` steps, steps per second, peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, memory_mib, print_table, run_child, summary, write_json

VARIANTS = ("v3-fp32", "v3-bf16", "v3-bf16-channels-last", "monai-fp32", "monai-bf16", "v3-bf16-loader")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--patch", type=int, default=96, help="patch side (default 96)")
    parser.add_argument("--batch", type=int, default=2, help="patches per step (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument(
        "--loader-workers", type=int, default=2, help="DataLoader workers for v3-bf16-loader (train.py's default 2)"
    )
    parser.add_argument("--phantoms", type=int, default=8, help="phantom studies for the loader variant (default 8)")
    parser.add_argument("--out", default=str(RESULTS / "train.json"))
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def premade_batches(batch: int, patch: int, count: int):
    import torch

    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        x = torch.rand(batch, 2, patch, patch, patch, generator=g)
        labels = torch.zeros(batch, patch, patch, patch, dtype=torch.long)
        labels[:, patch // 3 : patch // 2, patch // 3 : patch // 2, patch // 3 : patch // 2] = 1
        batches.append({"pixel_values": x, "labels": labels})
    return batches


def loader_batches(args, data_dir: Path):
    """An endless iterator over batches of the real loader, as `train/train.py` builds it."""
    import torch
    from datasets import concatenate_datasets

    from mirror_unet_hf import MirrorUNetConfig
    from mirror_unet_hf.data import MirrorPatchDataset, load_mirror_dataset

    config = MirrorUNetConfig.from_preset("autopet-v3")
    splits = load_mirror_dataset("autopet", data_dir / "raw", fold=0, num_folds=2, cache_dir=data_dir / "cache")
    studies = concatenate_datasets([splits["train"], splits["validation"]])
    dataset = MirrorPatchDataset(studies, config, (args.patch,) * 3, patches_per_volume=4)

    def collate(items):
        return {key: torch.stack([item[key] for item in items]) for key in ("pixel_values", "labels")}

    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch,
        num_workers=args.loader_workers,
        drop_last=True,
        collate_fn=collate,
        persistent_workers=args.loader_workers > 0,
    )
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        yield from loader
        epoch += 1


def child(args) -> int:
    import torch

    variant = args.child
    torch.manual_seed(0)
    bf16 = "bf16" in variant
    channels_last = "channels-last" in variant
    if variant.startswith("monai"):
        from monai.losses import DiceCELoss
        from monai.networks.nets import UNet

        model = UNet(3, 2, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)
        criterion = DiceCELoss(to_onehot_y=True, softmax=True)

        def loss_of(batch):
            return criterion(model(batch["pixel_values"]).float(), batch["labels"][:, None])
    else:
        from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel

        model = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-v3"))

        def loss_of(batch):
            return model(batch["pixel_values"], labels=batch["labels"]).loss

    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    total = args.warmup + args.steps
    if variant.endswith("loader"):
        source = loader_batches(args, Path(args.data))
    else:
        source = iter(premade_batches(args.batch, args.patch, total))
    seconds, waits = [], []
    for step in range(total):
        start = time.perf_counter()
        batch = next(source)
        got = time.perf_counter()
        if channels_last:
            batch = {**batch, "pixel_values": batch["pixel_values"].contiguous(memory_format=torch.channels_last_3d)}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            raise SystemExit(f"{variant}: loss is {loss.item()}")
        if step >= args.warmup:
            seconds.append(time.perf_counter() - start)
            waits.append(got - start)
    Path(args.result).write_text(
        json.dumps({"seconds": seconds, "data_wait_seconds": waits, "peak_rss_mib": memory_mib()["peak_rss_mib"]})
    )
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    results = {
        "benchmark": "training steps",
        "machine_before": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "child", "result", "data")},
        "variants": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_train_") as scratch:
        scratch = Path(scratch)
        if "v3-bf16-loader" in args.variants:
            from mirror_unet_hf.data import make_phantoms

            make_phantoms("autopet", scratch / "raw", n=args.phantoms, seed=0)
        for variant in [v for v in VARIANTS if v in args.variants]:
            result = scratch / f"{variant}.json"
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                variant,
                "--result",
                str(result),
                "--data",
                str(scratch),
                "--patch",
                str(args.patch),
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--loader-workers",
                str(args.loader_workers),
            ]
            code, wall, peak_mib = run_child(command)
            if code != 0:
                raise SystemExit(f"variant {variant} failed with exit code {code}")
            record = json.loads(result.read_text())
            peak_mib = record["peak_rss_mib"]  # the child's own VmHWM (DataLoader worker processes not included)
            median = statistics.median(record["seconds"])
            results["variants"][variant] = {
                "seconds_per_step": summary(record["seconds"]),
                "steps_per_second": 1.0 / median,
                "data_wait_seconds": summary(record["data_wait_seconds"]),
                "peak_rss_mib": peak_mib,
                "process_seconds": wall,
            }
            print(f"  {variant}: {median:.2f} s/step, peak {peak_mib:.0f} MiB", file=sys.stderr, flush=True)
    variants = results["variants"]
    for name, entry in variants.items():
        base = "monai-bf16" if "bf16" in name else "monai-fp32"
        if base in variants:
            entry["time_vs_monai"] = entry["seconds_per_step"]["median"] / variants[base]["seconds_per_step"]["median"]
    if "v3-bf16-loader" in variants and "v3-bf16" in variants:
        variants["v3-bf16-loader"]["time_vs_premade"] = (
            variants["v3-bf16-loader"]["seconds_per_step"]["median"] / variants["v3-bf16"]["seconds_per_step"]["median"]
        )
    results["machine_after"] = machine()
    rows = [
        [
            name,
            e["seconds_per_step"]["median"],
            e["steps_per_second"],
            e.get("time_vs_monai"),
            e["data_wait_seconds"]["median"],
            e["peak_rss_mib"],
        ]
        for name, e in variants.items()
    ]
    print_table(
        ["variant", "s / step", "steps / s", "time vs MONAI", "data wait s", "peak MiB"],
        rows,
        title=f"training steps: batch {args.batch} x {args.patch}³, Adam; load {results['machine_before']['load_average_1_5_15min']} -> "
        f"{results['machine_after']['load_average_1_5_15min']}",
    )
    if "v3-bf16-loader" in variants and "v3-bf16" in variants:
        print(f"real loader / pre-made tensors step time: {variants['v3-bf16-loader']['time_vs_premade']:.2f}")
    print(f"wrote {write_json(results, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
