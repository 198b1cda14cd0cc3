"""Where the time of one window goes: a torch.profiler table for the inference path and the fp32 reference.

    python benchmarks/profile_window.py [--preset autopet-v3] [--side 96] [--threads 1] [--rows 12]

Profiles `--windows` forward passes of the final-mask branch at `--threads` intra-op threads (1 = what
each CPU worker of `sliding_window_predict` runs): bf16 (BatchNorm folded, channels-last-3d, autocast)
and fp32 (the model as it is). Prints the operators sorted by self CPU time and writes the top rows to
benchmarks/results/profile.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_json


def main(argv=None) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel
    from mirror_unet_hf.modeling_mirror_unet import fold_batch_norm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="autopet-v3")
    parser.add_argument("--side", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--out", default=str(RESULTS / "profile.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MirrorUNetModel(MirrorUNetConfig.from_preset(args.preset)).eval()
    x = torch.rand(1, len(model.config.modalities), args.side, args.side, args.side)
    paths = {
        "bf16 inference path": (
            fold_batch_norm(model).to(memory_format=torch.channels_last_3d),
            x.contiguous(memory_format=torch.channels_last_3d),
            True,
        ),
        "fp32": (model, x, False),
    }
    results = {"machine": machine(), "settings": vars(args), "paths": {}}
    for name, (net, inputs, bf16) in paths.items():

        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net(inputs, parts=["logits"])

        run()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.windows):
                run()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        print(
            f"\n{name}: {args.windows} windows of {args.side}³, {args.threads} thread(s), "
            f"{total / 1e6 / args.windows:.3f} s per window (profiled)"
        )
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
        results["paths"][name] = {
            "seconds_per_window": total / 1e6 / args.windows,
            "top": [
                {
                    "op": e.key,
                    "calls": e.count,
                    "self_seconds_per_window": e.self_cpu_time_total / 1e6 / args.windows,
                    "share": e.self_cpu_time_total / total,
                }
                for e in events[: args.rows]
            ],
        }
    print(f"wrote {write_json(results, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
