"""Memory of the demo server over rounds of sessions: does an ended session give back what it used?

    python benchmarks/bench_demo_memory.py                       # 4 rounds of 8 sessions, bundled checkpoint
    python benchmarks/bench_demo_memory.py --rounds 8 --shape 128 128 96
    python benchmarks/bench_demo_memory.py --model path/to/checkpoint --sessions 4

The demo (`build_demo` + `launch_demo`) runs in its own process on a loopback port, as in production but
in Gradio's end-to-end test mode (a closed session is forgotten 1 s after its client closes instead of an
hour). The studies are phantoms (`make_phantoms`, seed 21) of --shape voxels; the model is --model
(default: the bundled demo/checkpoint). One warm-up session first, then per round: --sessions sessions at
once (one gradio_client `Client` each, in threads) upload a study, segment it, render once and close.
Once the server has forgotten them it collects garbage, counts its live Session and ViewerStudy objects,
and hands back the memory its allocator keeps free (malloc_trim); its VmRSS is read before and after.

Reported per round: the round's seconds and peak RSS, the RSS after the round as it was and trimmed, live
objects, session folders left, Gradio's cache; and the trimmed RSS growth from round 1 to the last.
Untrimmed, glibc keeps freed memory for reuse in per-thread arenas and the RSS wanders by tens of MB from
round to round; trimmed, it stays within about 10 MB when nothing leaks, while keeping every session alive
(tried on purpose) added ~65 MB per round of 8 sessions. A leak of L MB per session shows as about
(rounds - 1) x sessions x L MB of growth. Other processes move these figures: compare runs made on the
same machine, never against a fixed limit (tests/test_demo_load.py asserts the object counts and folders).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine, print_table, write_json

# The server: the demo as `mirror-unet demo` serves it, plus a census on SIGUSR1 (garbage collection, live
# Session/ViewerStudy objects, malloc_trim) written as JSON for this script to read.
LAUNCHER = """
import ctypes, gc, json, signal, sys
from pathlib import Path
options = json.loads(sys.argv[1])
from mirror_unet_hf import viewer
from mirror_unet_hf.demo import app, session

def census(signum, frame):
    def count():
        kinds = [type(o) for o in gc.get_objects()]
        return {"sessions": kinds.count(session.Session), "studies": kinds.count(viewer.ViewerStudy)}
    before = count()
    gc.collect()
    after = count()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path(options["census"]).write_text(json.dumps({"before_gc": before, "after_gc": after}))
signal.signal(signal.SIGUSR1, census)

demo = app.build_demo(options["model"], None, queue_size=options["sessions"] + 2)
print("SESSIONS_ROOT", demo.sessions_root, flush=True)
app.launch_demo(demo, server_name="127.0.0.1", server_port=options["port"], ssr_mode=False, quiet=True,
                state_session_capacity=options["sessions"])
"""
WAIT_S = 600  # for the server to start, to forget closed sessions, to answer a census


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=str(ROOT / "demo" / "checkpoint"), help="save_pretrained folder (default: demo/checkpoint)"
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds of sessions after the warm-up (default 4)")
    parser.add_argument("--sessions", type=int, default=8, help="sessions at once in each round (default 8)")
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 64], help="phantom study shape in voxels")
    parser.add_argument("--out", default=str(RESULTS / "demo_memory.json"), help="JSON results file")
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.sessions < 1:
        parser.error("--rounds must be at least 2 (growth is round 1 to the last) and --sessions at least 1")
    return args


# ------------------------------------------------------------------------------------------- setup


def make_studies(folder: Path, count: int, shape) -> list[SimpleNamespace]:
    """`count` phantom studies as upload files named after the study (study0_CTres.nii.gz, study0_SUV.nii.gz)."""
    from mirror_unet_hf.data import make_phantoms

    dataset = make_phantoms("autopet", folder / "phantoms", count, seed=21, shape=tuple(shape))
    studies = []
    for i, study in enumerate(sorted(p.parent for p in dataset.rglob("SUV.nii.gz"))):
        files = SimpleNamespace(ct=folder / f"study{i}_CTres.nii.gz", pet=folder / f"study{i}_SUV.nii.gz")
        files.ct.write_bytes((study / "CTres.nii.gz").read_bytes())
        files.pet.write_bytes((study / "SUV.nii.gz").read_bytes())
        studies.append(files)
    return studies


class Server(SimpleNamespace):
    """The demo in its own process group, with its own TMPDIR and GRADIO_TEMP_DIR under `folder`."""

    @classmethod
    def start(cls, folder: Path, model: str, sessions: int) -> Server:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        for name in ("tmp", "gradio"):
            (folder / name).mkdir(parents=True)
        options = {"model": model, "port": port, "sessions": sessions, "census": str(folder / "census.json")}
        env = {
            **os.environ,
            "TMPDIR": str(folder / "tmp"),
            "GRADIO_TEMP_DIR": str(folder / "gradio"),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "GRADIO_IS_E2E_TEST": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        (folder / "launcher.py").write_text(LAUNCHER)
        log = (folder / "server.log").open("w")
        command = [sys.executable, str(folder / "launcher.py"), json.dumps(options)]
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        server = cls(
            process=process,
            log=log,
            log_path=folder / "server.log",
            url=f"http://127.0.0.1:{port}/",
            gradio=folder / "gradio",
            census_path=folder / "census.json",
        )
        server.wait_until_up()
        return server

    def wait_until_up(self) -> None:
        import httpx

        deadline = time.monotonic() + WAIT_S
        while self.process.poll() is None and time.monotonic() < deadline:
            lines = self.log_path.read_text().splitlines()
            roots = [line.split(" ", 1)[1] for line in lines if line.startswith("SESSIONS_ROOT ")]
            try:
                if roots and httpx.get(self.url, timeout=30).status_code == 200:
                    self.sessions_root = Path(roots[0])
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the demo server did not start:\n{self.log_path.read_text()[-3000:]}")

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024

    def session_folders(self) -> int:
        return len(list(self.sessions_root.glob("session-*")))

    def cache_mb(self) -> float:
        return sum(p.stat().st_size for p in self.gradio.rglob("*") if p.is_file()) / 2**20

    def settle(self) -> dict:
        """Wait until the closed sessions' folders are gone, then the census; RSS before and after the trim."""
        start = time.monotonic()
        while self.session_folders() and time.monotonic() - start < WAIT_S:
            time.sleep(0.1)
        forgotten_s, rss = time.monotonic() - start, self.rss_mb()
        census = self.census()
        return {
            "forgotten_s": round(forgotten_s, 2),
            "rss_mb": round(rss, 1),
            "rss_trimmed_mb": round(self.rss_mb(), 1),
            "live_after_gc": census["after_gc"],
            "live_before_gc": census["before_gc"],
            "session_folders": self.session_folders(),
            "gradio_cache_mb": round(self.cache_mb(), 1),
        }

    def census(self) -> dict:
        """SIGUSR1 to the server: garbage collection, live objects, allocator trimmed; its JSON answer."""
        self.census_path.unlink(missing_ok=True)
        os.kill(self.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                return json.loads(self.census_path.read_text())
            except (OSError, ValueError):  # not written yet, or half written
                time.sleep(0.1)
        raise RuntimeError(f"the server wrote no census:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


# ------------------------------------------------------------------------------------------ sessions


def run_session(server: Server, study: SimpleNamespace) -> None:
    """Upload the study, segment it, render once (a slider move), close."""
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False, download_files=False)
    try:
        loaded = client.predict(handle_file(str(study.ct)), handle_file(str(study.pet)), None, api_name="/load_files")
        slices = [update["value"] if isinstance(update, dict) else update for update in loaded[1:4]]
        client.predict(*slices, "fusion", "none", "Soft tissue", 8, 0.5, True, api_name="/segment")
        client.predict(*slices, "pet", "final_mask", "Soft tissue", 8, 0.5, False, api_name="/render")
    finally:
        client.close()


def run_round(server: Server, studies: list[SimpleNamespace]) -> dict:
    """All studies' sessions at once, one thread each, sampling the server's RSS every 0.1 s."""
    errors, peak, done = [], [0.0], threading.Event()

    def monitor():
        while not done.is_set():
            peak[0] = max(peak[0], server.rss_mb())
            time.sleep(0.1)

    def work(study):
        try:
            run_session(server, study)
        except Exception as error:
            errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=work, args=(study,)) for study in studies]
    watcher = threading.Thread(target=monitor, daemon=True)
    start = time.monotonic()
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()
    if errors:
        raise RuntimeError(f"{len(errors)} sessions failed: {errors[:3]}")
    return {"seconds": round(time.monotonic() - start, 2), "peak_rss_mb": round(peak[0], 1)}


# ---------------------------------------------------------------------------------------------- main


def measure(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """The warm-up session's figures, then each round's."""
    with tempfile.TemporaryDirectory(prefix="bench-demo-memory-") as scratch:
        folder = Path(scratch)
        studies = make_studies(folder, args.sessions, args.shape)
        server = Server.start(folder / "server", args.model, args.sessions)
        try:
            run_session(server, studies[0])
            warmup = server.settle()
            rounds = []
            for number in range(1, args.rounds + 1):
                rounds.append({"round": number, **run_round(server, studies), **server.settle()})
                print(
                    f"round {number}: RSS {rounds[-1]['rss_mb']:.0f} MB, trimmed {rounds[-1]['rss_trimmed_mb']:.0f} MB",
                    flush=True,
                )
        finally:
            server.stop()
    return warmup, rounds


def report(args: argparse.Namespace, warmup: dict, rounds: list[dict]) -> float:
    """Print the table and the growth; returns the trimmed growth from round 1 to the last, MB."""
    headers = [
        "round",
        "seconds",
        "peak RSS MB",
        "RSS MB",
        "trimmed MB",
        "live sessions",
        "live studies",
        "folders",
        "cache MB",
    ]
    rows = [
        [
            r["round"],
            r["seconds"],
            r["peak_rss_mb"],
            r["rss_mb"],
            r["rss_trimmed_mb"],
            r["live_after_gc"]["sessions"],
            r["live_after_gc"]["studies"],
            r["session_folders"],
            r["gradio_cache_mb"],
        ]
        for r in rounds
    ]
    shape = "x".join(map(str, args.shape))
    print_table(headers, rows, title=f"\n{args.sessions} sessions per round, {shape} voxels, model {args.model}")
    growth = rounds[-1]["rss_trimmed_mb"] - rounds[0]["rss_trimmed_mb"]
    print(f"after the warm-up session: RSS {warmup['rss_mb']:.0f} MB, trimmed {warmup['rss_trimmed_mb']:.0f} MB")
    print(
        f"trimmed RSS growth from round 1 to round {args.rounds}: {growth:+.1f} MB "
        f"({growth / ((args.rounds - 1) * args.sessions):+.2f} MB per session after round 1)"
    )
    return growth


def main(argv=None) -> int:
    args = parse_args(argv)
    warmup, rounds = measure(args)
    growth = report(args, warmup, rounds)
    model = Path(args.model).resolve()
    model = str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else args.model
    settings = {"model": model, "rounds": args.rounds, "sessions": args.sessions, "shape": args.shape}
    untrimmed = rounds[-1]["rss_mb"] - rounds[0]["rss_mb"]
    write_json(
        {
            "machine": machine(),
            "settings": settings,
            "warmup": warmup,
            "rounds": rounds,
            "trimmed_growth_mb": round(growth, 1),
            "growth_mb": round(untrimmed, 1),
        },
        args.out,
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
