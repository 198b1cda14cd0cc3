"""Network speed on one 96³ patch: forward and forward+backward per preset, fp32 and bf16, against MONAI's U-Net.

    python benchmarks/bench_network.py                                   # v1, v2, v3, early fusion + MONAI
    python benchmarks/bench_network.py --presets autopet-v3 --repeats 2  # quicker

The comparison model is MONAI's `UNet(3, 2, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)`,
the official AutoPET baseline: it has the FLOPs of one Mirror U-Net branch (exactly those of the
`autopet-early-fusion` preset), so per-FLOP speed compares the implementations. FLOPs are counted by
`torch.utils.flop_counter.FlopCounterMode` (2 per multiply-add, backward included for forward+backward);
GFLOP/s are set against this CPU's fp32 and bf16 matmul peak measured in the same run.

Rows:
- forward: eval mode, all outputs (`model(x)`), batch 1, all torch threads; bf16 = autocast.
- forward+backward: train mode, loss with labels (`dice_ce_loss` for MONAI) and `backward()`.
- inference path: what `sliding_window_predict` runs for the final mask at `precision="bf16"`:
  the final-mask branch only (`parts=["logits"]`), BatchNorm folded, channels-last-3d, bf16 autocast;
  "1 stream" = one window at a time with all threads (or one), "N workers" = N windows at a time, one
  thread each (the default on CPUs).
- "% peak of its threads": against the one-thread matmul peak times the threads used, each measured
  alone, which load from other processes distorts much less than multi-threaded figures. The same execution is applied to MONAI's U-Net for a like-for-like row.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, matmul_peak, print_table, summary, timed, write_json

PRESETS = ("autopet-v1", "autopet-v2", "autopet-v3", "autopet-early-fusion")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--presets", nargs="+", default=list(PRESETS), help="presets to time (default: v1, v2, v3, early fusion)"
    )
    parser.add_argument("--side", type=int, default=96, help="patch side in voxels (default 96)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row after one warm-up (default 3)")
    parser.add_argument("--no-backward", action="store_true", help="skip the forward+backward rows")
    parser.add_argument("--no-monai", action="store_true", help="skip MONAI's U-Net")
    parser.add_argument("--out", default=str(RESULTS / "network.json"), help="JSON results file")
    return parser.parse_args(argv)


def count_flops(function) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def main(argv=None) -> int:
    import torch

    from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel
    from mirror_unet_hf.modeling_mirror_unet import dice_ce_loss, fold_batch_norm

    args = parse_args(argv)
    side = args.side
    threads = torch.get_num_threads()
    peak = matmul_peak()
    results = {
        "benchmark": "network, one patch",
        "machine_before": machine(),
        "matmul_peak": peak,
        "settings": {"side": side, "repeats": args.repeats, "presets": args.presets},
        "rows": [],
    }

    def autocast(precision):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def add_row(
        model_name,
        mode,
        precision,
        flops,
        runs,
        windows_per_run=1,
        execution=f"1 stream x {threads} threads",
        used=threads,
    ):
        seconds = statistics.median(runs) / windows_per_run
        gflops = flops / seconds / 1e9
        row = {
            "model": model_name,
            "mode": mode,
            "precision": precision,
            "execution": execution,
            "gflop": flops / 1e9,
            "seconds": seconds,
            "runs": summary(runs),
            "gflops": gflops,
            "percent_of_peak": 100.0 * gflops / peak[precision]["peak_gflops"],
            "percent_of_bf16_peak": 100.0 * gflops / peak["bf16"]["peak_gflops"],
            # against the matmul of the same number of threads, each measured alone (robust to load)
            "percent_of_thread_peak": 100.0 * gflops / (used * peak[precision]["one_thread_best_gflops"]),
        }
        results["rows"].append(row)
        print(
            f"  {model_name} {mode} {precision} {execution}: {seconds:.3f} s, {gflops:.1f} GFLOP/s",
            file=sys.stderr,
            flush=True,
        )

    models = []
    for preset in args.presets:
        torch.manual_seed(0)
        models.append((preset, MirrorUNetModel(MirrorUNetConfig.from_preset(preset))))
    if not args.no_monai:
        from monai.networks.nets import UNet

        torch.manual_seed(0)
        models.append(("monai-unet", UNet(3, 2, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)))

    x = torch.rand(1, 2, side, side, side)
    labels = torch.randint(0, 2, (1, side, side, side))
    for name, model in models:
        ours = name != "monai-unet"

        def forward(m=model):
            return m(x).logits if ours else m(x)

        model.eval()
        with torch.inference_mode():
            flops = count_flops(forward)
            for precision in ("fp32", "bf16"):
                with autocast(precision):
                    add_row(name, "forward", precision, flops, timed(forward, args.repeats))
        if not args.no_backward:
            model.train()

            def step(m=model):
                m.zero_grad(set_to_none=True)
                loss = m(x, labels=labels).loss if ours else dice_ce_loss(m(x), labels)
                loss.backward()

            flops = count_flops(step)
            for precision in ("fp32", "bf16"):
                with autocast(precision):
                    add_row(name, "forward+backward", precision, flops, timed(step, args.repeats))
            model.eval()

        # the inference path of sliding_window_predict(precision="bf16")
        if name in ("autopet-v3", "autopet-early-fusion", "monai-unet") or name == args.presets[0]:
            net = (fold_batch_norm(model) if ours else copy.deepcopy(model).eval()).to(
                memory_format=torch.channels_last_3d
            )
            xc = x.contiguous(memory_format=torch.channels_last_3d)

            def window(n=net):
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    return n(xc, parts=["logits"]).logits if ours else n(xc)

            with torch.inference_mode():
                flops = count_flops(window)
            suffix = "final-mask branch, BN folded, channels-last" if ours else "channels-last"
            add_row(name, f"inference path ({suffix})", "bf16", flops, timed(window, args.repeats))
            torch.set_num_threads(1)
            runs = timed(window, args.repeats)
            torch.set_num_threads(threads)
            add_row(name, f"inference path ({suffix})", "bf16", flops, runs, execution="1 stream x 1 thread", used=1)
            if threads > 1:
                with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                    batch = 2 * threads
                    runs = timed(lambda: list(pool.map(lambda _: window(), range(batch))), args.repeats)
                torch.set_num_threads(threads)
                add_row(name, f"inference path ({suffix})", "bf16", flops, runs, batch, f"{threads} workers x 1 thread")

    results["machine_after"] = machine()
    rows = [
        [
            r["model"],
            r["mode"],
            r["precision"],
            r["execution"],
            r["gflop"],
            r["seconds"],
            r["gflops"],
            r["percent_of_peak"],
            r["percent_of_bf16_peak"],
            r["percent_of_thread_peak"],
        ]
        for r in results["rows"]
    ]
    print_table(
        [
            "model",
            "mode",
            "prec",
            "execution",
            "GFLOP",
            "s / patch",
            "GFLOP/s",
            "% peak",
            "% bf16 peak",
            "% peak of its threads",
        ],
        rows,
        title=f"one {side}³ patch; matmul peak {peak['fp32']['peak_gflops']:.0f} GFLOP/s fp32, {peak['bf16']['peak_gflops']:.0f} bf16 "
        f"({threads} threads); load {results['machine_before']['load_average_1_5_15min']} -> "
        f"{results['machine_after']['load_average_1_5_15min']}",
    )
    print(f"wrote {write_json(results, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
