"""The demo under load (issue 9, item 6), served by a separate process on a loopback port so that its
live objects and its temporary folders can be inspected from outside.

- 8 sessions at once (one gradio_client `Client` each, in threads) upload 8 different studies and
  segment them: each gets exactly what its study gives alone (the same server, one session at a time).
- A malformed upload (random bytes named .nii.gz) and an oversized one, during the load, are refused
  with a message; the other sessions finish.
- The queue is bounded: with the model busy, requests beyond `queue_size` are refused ("Queue is full")
  instead of waiting without bound.
- Sessions that end leave nothing behind: their folders go (closed session: Gradio's delete callback;
  dropped beyond `state_session_capacity`: the session's finalizer), no Session or ViewerStudy object
  survives its session (counted in the server with gc), and the app's temporary folder and Gradio's
  cached files go when the server stops (SIGTERM).

Only what cannot drift with the machine's load is asserted: results, messages, object counts and
folders; every wait is on an event (a file, a folder gone, a barrier), with generous limits. How the
server's memory (RSS) evolves from round to round is measured by ``benchmarks/bench_demo_memory.py``.
Run with ``-s`` to see the figures. MIRROR_UNET_LOAD_ROUNDS (default 2) sets the rounds of 8 sessions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("gradio", reason="the demo extra is not installed: pip install 'mirror-unet-hf[demo]'")

from test_demo_app import (  # the small model and helpers of the demo tests
    free_port,
    named,
    small_model,
    value,
)

from mirror_unet_hf.data import make_phantoms
from mirror_unet_hf.inference import load_model, predict_study, study_inputs
from mirror_unet_hf.sliding_window import SlidingWindowSettings

pytestmark = pytest.mark.slow  # a server process, dozens of sessions: minutes on a small machine

REPO = Path(__file__).resolve().parents[1]
SESSIONS = 8  # clients at once
ROUNDS = max(2, int(os.environ.get("MIRROR_UNET_LOAD_ROUNDS", "2")))  # rounds of SESSIONS sessions
SHAPE = (96, 96, 64)  # voxels per study: ~14 MB of arrays per loaded and segmented session, uploads of ~2.7 MB
UPLOAD_LIMIT_MB = 4
CAPACITY = SESSIONS  # sessions whose state the server keeps (state_session_capacity; MAX_SESSIONS = 32 in production)
# Requests allowed to wait at once. A round never needs more than SESSIONS - 1: each client has at most one
# request in flight and at least one of them is being processed.
QUEUE_SIZE = SESSIONS + 2
# Limits of waits on events, generous so that a loaded machine only makes the test slower, never fail:
FORGET_WAIT_S = 300  # for the server to forget closed sessions (1 s after closing in GRADIO_IS_E2E_TEST mode)
START_WAIT_S = 300  # for the server to start, to answer a census, to stop
GATE_WAIT_S = 600  # for the blocked segmentation to start, and for the test to open its gate
ROUND_WAIT_S = 1800  # for one round of SESSIONS sessions

# The server process. Test instrumentation only: Gradio's delete callbacks are logged (one line each); a
# segmentation of a study whose case id starts with "blocker" waits at a gate until the test opens it, so
# that the queue can be filled deterministically, however fast or slow the machine; SIGUSR1 writes a census
# of live sessions and studies.
LAUNCHER = '''
import json, sys, time
from pathlib import Path
options = json.loads(sys.argv[1])
from mirror_unet_hf import viewer
from mirror_unet_hf.demo import app, handlers, session

forget = session.forget
def logged_forget(state):
    with open(options["forget_log"], "a") as log:
        log.write(f"{getattr(state, 'workdir', state)}\\n")
    forget(state)
session.forget = logged_forget  # build_demo reads it when it builds the page

predict = handlers.predict_study
def gated_predict(model, sources, settings, **kwargs):
    if str(kwargs.get("case_id", "")).startswith("blocker"):
        Path(options["gate"], "entered").touch()
        deadline = time.monotonic() + options["gate_wait_s"]
        while not Path(options["gate"], "open").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return predict(model, sources, settings, **kwargs)
handlers.predict_study = gated_predict

import gc, signal
def census(signum, frame):
    """Live sessions and studies, before and after a full garbage collection."""
    def count():
        kinds = [type(o) for o in gc.get_objects()]
        return {"sessions": kinds.count(session.Session), "studies": kinds.count(viewer.ViewerStudy),
                "gradio_sessions": sum(kind.__name__ == "SessionState" for kind in kinds)}
    before = count()
    gc.collect()
    Path(options["census"]).write_text(json.dumps({"before_gc": before, "after_gc": count()}))
signal.signal(signal.SIGUSR1, census)

demo = app.build_demo(options["model"], None, max_upload_mb=options["max_upload_mb"], queue_size=options["queue_size"])
print("SESSIONS_ROOT", demo.sessions_root, flush=True)
app.launch_demo(demo, server_name="127.0.0.1", server_port=options["port"], ssr_mode=False, quiet=True,
                state_session_capacity=options["capacity"])
print("STOPPED", flush=True)
'''


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 different phantom studies (files named after the study), a blocker study, the small model of the
    demo tests, a malformed and an oversized upload, and what the model gives on each study in this process."""
    root = tmp_path_factory.mktemp("load")
    dataset = make_phantoms("autopet", root / "phantoms", SESSIONS + 1, seed=21, shape=SHAPE)
    folders = sorted(p.parent for p in dataset.rglob("SUV.nii.gz"))
    studies = []
    for i, folder in enumerate(folders):
        name = "blocker" if i == SESSIONS else f"study{i}"
        files = SimpleNamespace(
            name=name, ct=root / "uploads" / f"{name}_CTres.nii.gz", pet=root / "uploads" / f"{name}_SUV.nii.gz"
        )
        files.ct.parent.mkdir(exist_ok=True)
        files.ct.write_bytes((folder / "CTres.nii.gz").read_bytes())
        files.pet.write_bytes((folder / "SUV.nii.gz").read_bytes())
        studies.append(files)
    model_dir = small_model(root / "model", "autopet-v3", study_inputs(folders[0], ["ct", "pet"]))
    model = load_model(model_dir)
    for files in studies:  # fp32, as the demo
        mask = predict_study(
            model, {"ct": nib.load(files.ct), "pet": nib.load(files.pet)}, SlidingWindowSettings()
        ).mask
        files.expected = np.asanyarray(nib.as_closest_canonical(mask).dataobj)
    malformed = root / "bad" / "malformed_CTres.nii.gz"
    malformed.parent.mkdir()
    malformed.write_bytes(np.random.default_rng(0).bytes(200_000))
    oversized = root / "bad" / "oversized_CTres.nii.gz"
    oversized.write_bytes(np.random.default_rng(1).bytes(int((UPLOAD_LIMIT_MB + 1) * 2**20)))
    return SimpleNamespace(
        root=root,
        model=model_dir,
        studies=studies[:SESSIONS],
        blocker=studies[SESSIONS],
        malformed=malformed,
        oversized=oversized,
    )


class Server(SimpleNamespace):
    """The demo in its own process (its own process group), with its own TMPDIR and GRADIO_TEMP_DIR."""

    def app_folders(self) -> list[Path]:
        return sorted(self.tmp.glob("mirror-unet-demo-*"))

    def session_folders(self) -> list[Path]:
        return sorted(self.sessions_root.glob("session-*"))

    def forgotten(self) -> int:
        """Gradio's delete callbacks so far."""
        return len(self.forget_log.read_text().splitlines()) if self.forget_log.exists() else 0

    def census(self) -> dict:
        """Live Session and ViewerStudy objects in the server, before and after a full garbage collection."""
        self.census_path.unlink(missing_ok=True)
        os.kill(self.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + START_WAIT_S
        while time.monotonic() < deadline:
            try:
                return json.loads(self.census_path.read_text())
            except (OSError, ValueError):
                time.sleep(0.1)
        raise AssertionError(f"the server wrote no census:\n{self.log()}")

    def cache_files(self) -> list[Path]:
        return [p for p in self.gradio.rglob("*") if p.is_file()]

    def wait_until_forgotten(self) -> float:
        """Seconds until no session folder is left (sessions closed: forgotten 1 s later in E2E mode), at most
        `FORGET_WAIT_S`; the caller asserts what is left."""
        start = time.monotonic()
        while self.session_folders() and time.monotonic() - start < FORGET_WAIT_S:
            time.sleep(0.1)
        return time.monotonic() - start

    def stop(self) -> int:
        """SIGTERM to the server's process group (as docker stop / a Space restart), SIGKILL if it hangs."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=START_WAIT_S)  # a clean exit; only a hung server is killed
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
            except ProcessLookupError:
                pass
        self.output.close()
        return self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def server(data, tmp_path_factory):
    """The demo in a separate process on a free loopback port; always stopped after the module."""
    import httpx

    folder = tmp_path_factory.mktemp("server")
    for name in ("tmp", "gradio", "gate"):
        (folder / name).mkdir()
    port = free_port()
    options = {
        "model": str(data.model),
        "port": port,
        "max_upload_mb": UPLOAD_LIMIT_MB,
        "queue_size": QUEUE_SIZE,
        "capacity": CAPACITY,
        "forget_log": str(folder / "forgotten.log"),
        "gate": str(folder / "gate"),
        "census": str(folder / "census.json"),
        "gate_wait_s": GATE_WAIT_S,
    }
    (folder / "launcher.py").write_text(LAUNCHER)
    env = {
        **os.environ,
        "TMPDIR": str(folder / "tmp"),
        "GRADIO_TEMP_DIR": str(folder / "gradio"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        # Gradio's own end-to-end test mode: a closed session (client closed, browser tab gone) is forgotten
        # after 1 s instead of an hour, and heartbeats come every 0.25 s. Nothing else changes.
        "GRADIO_IS_E2E_TEST": "1",
    }
    env.pop("MIRROR_UNET_MODEL", None)
    output = (folder / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, str(folder / "launcher.py"), json.dumps(options)],
        cwd=REPO,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(
        process=process,
        output=output,
        log_path=folder / "server.log",
        url=f"http://127.0.0.1:{port}/",
        tmp=folder / "tmp",
        gradio=folder / "gradio",
        gate=folder / "gate",
        forget_log=folder / "forgotten.log",
        census_path=folder / "census.json",
    )
    try:
        started = time.monotonic()
        while process.poll() is None and time.monotonic() - started < START_WAIT_S:
            try:
                if httpx.get(server.url, timeout=30).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        assert process.poll() is None, f"the demo server exited:\n{server.log()}"
        roots = [
            line.split(" ", 1)[1]
            for line in server.log_path.read_text().splitlines()
            if line.startswith("SESSIONS_ROOT ")
        ]
        assert roots, f"the demo server did not start:\n{server.log()}"
        server.sessions_root = Path(roots[0])
        print(f"\n[load] server pid {process.pid} up in {time.monotonic() - started:.1f} s")
        yield server
    finally:
        server.stop()


def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False, download_files=False)  # files stay on the server; fetched by URL below


def fetch_mask(server, update) -> np.ndarray:
    """The mask a browser would download, read in RAS."""
    import gzip

    import httpx

    file = value(update)
    answer = httpx.get(file.get("url") or f"{server.url}gradio_api/file={file['path']}", timeout=30)
    answer.raise_for_status()
    image = nib.Nifti1Image.from_bytes(gzip.decompress(answer.content))
    return np.asanyarray(nib.as_closest_canonical(image).dataobj)


def upload(session, ct: Path, pet: Path):
    from gradio_client import handle_file

    return named(session.predict(handle_file(str(ct)), handle_file(str(pet)), None, api_name="/load_files"))


def run_session(
    server, study, *, malformed: Path | None = None, oversized: Path | None = None, loaded=None
) -> SimpleNamespace:
    """One session: (optionally a bad upload first), upload the study, `loaded()`, segment, render once, close."""
    from gradio_client.exceptions import AppError

    started = time.monotonic()
    session = client(server)
    result = SimpleNamespace(name=study.name, refused=[])
    try:
        for bad in (malformed, oversized):
            if bad is not None:
                try:
                    upload(session, bad, study.pet)
                    result.refused.append(None)
                except (AppError, ValueError) as error:
                    result.refused.append(f"{type(error).__name__}: {error}")
        loaded_study = upload(session, study.ct, study.pet)
        result.status = loaded_study.status
        if loaded is not None:
            loaded()
        slices = (
            value(loaded_study.axial_slider),
            value(loaded_study.coronal_slider),
            value(loaded_study.sagittal_slider),
        )
        out = named(session.predict(*slices, "fusion", "none", "Soft tissue", 8, 0.5, True, api_name="/segment"))
        result.table, result.totals = out.table["data"], out.totals
        result.mask = fetch_mask(server, out.mask)
        session.predict(*slices, "pet", "final_mask", "Soft tissue", 8, 0.5, False, api_name="/render")  # a slider move
    finally:
        session.close()
    result.seconds = time.monotonic() - started
    return result


def run_round(server, studies, extra=None, **bad) -> tuple[dict, list, SimpleNamespace]:
    """SESSIONS sessions at once, one thread each (`bad` uploads go to the first sessions); `extra()` runs in one
    more thread. Every session waits at a barrier once its study is loaded, so that all are open at once
    however the machine schedules them; the session folders are counted there (`overlap.folders`)."""
    results, errors, overlap = {}, [], SimpleNamespace(folders=None)

    def count_folders():
        overlap.folders = len(server.session_folders())

    barrier = threading.Barrier(len(studies), action=count_folders, timeout=ROUND_WAIT_S)

    def work(i, study):
        try:
            extras = {key: path for key, path in bad.items() if i == list(bad).index(key)}
            results[study.name] = run_session(server, study, loaded=barrier.wait, **extras)
        except Exception as error:
            barrier.abort()  # the others stop waiting for this session
            errors.append(f"{study.name}: {type(error).__name__}: {error}")

    def work_extra():
        try:
            results["extra"] = extra()
        except Exception as error:
            errors.append(f"extra: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=work, args=(i, study)) for i, study in enumerate(studies)]
    threads += [threading.Thread(target=work_extra)] if extra else []
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=ROUND_WAIT_S)
    overlap.seconds = time.monotonic() - started
    assert not any(thread.is_alive() for thread in threads), f"a session did not finish in {ROUND_WAIT_S} s"
    return results, errors, overlap


@pytest.fixture(scope="module")
def reference(server, data):
    """Each study alone, one session at a time on the same server (the first one also warms the server up)."""
    results = {study.name: run_session(server, study) for study in data.studies}
    server.wait_until_forgotten()
    print(f"[load] one session at a time: {', '.join(f'{r.seconds:.1f}' for r in results.values())} s")
    return SimpleNamespace(results=results)


# ------------------------------------------------------------------------------------------------ tests


def test_each_study_alone_gives_what_the_model_gives_and_the_studies_differ(reference, data):
    masks = {study.name: reference.results[study.name].mask for study in data.studies}
    for study in data.studies:
        np.testing.assert_array_equal(masks[study.name], study.expected, err_msg=study.name)
    names = list(masks)
    for i, a in enumerate(names):  # so that a session given another session's result cannot pass unnoticed
        assert all(not np.array_equal(masks[a], masks[b]) for b in names[:i]), f"{a}'s mask equals another study's"
    assert sum(bool(r.table) for r in reference.results.values()) >= SESSIONS // 2  # most studies have lesions to list


def test_eight_sessions_at_once_each_get_their_own_result_while_bad_uploads_are_refused(server, data, reference):
    import httpx

    def raw_oversized_upload():  # straight to the server, past the client's own size check
        with data.oversized.open("rb") as stream:
            answer = httpx.post(
                server.url + "gradio_api/upload", files={"files": (data.oversized.name, stream)}, timeout=300
            )
        return SimpleNamespace(status=answer.status_code, text=answer.text)

    results, errors, overlap = run_round(
        server, data.studies, extra=raw_oversized_upload, malformed=data.malformed, oversized=data.oversized
    )
    print(
        f"[load] {SESSIONS} sessions at once: {overlap.seconds:.1f} s for the round, per session "
        f"{', '.join(f'{results[s.name].seconds:.1f}' for s in data.studies if s.name in results)} s; "
        f"{overlap.folders} session folders once all had loaded"
    )
    assert not errors, errors
    assert overlap.folders == SESSIONS  # all sessions were open at once, each with its own folder
    for study in data.studies:
        got, alone = results[study.name], reference.results[study.name]
        assert f"**{study.name}_SUV**" in got.status  # its own upload, not another session's
        np.testing.assert_array_equal(got.mask, alone.mask, err_msg=f"{study.name}: not what the study gives alone")
        assert got.table == alone.table and got.totals == alone.totals
    malformed, oversized = results[data.studies[0].name].refused[0], results[data.studies[1].name].refused[0]
    raw = results["extra"]
    print(
        f"[load] malformed upload: {malformed}\n[load] oversized upload: {oversized}\n"
        f"[load] oversized upload past the client: HTTP {raw.status} {raw.text[:200]}"
    )
    assert malformed is not None and "file 'malformed_CTres.nii.gz': not a readable NIfTI file" in malformed
    assert "Traceback" not in malformed
    assert oversized is not None and f"exceeds the maximum file size of {UPLOAD_LIMIT_MB * 2**20} bytes" in oversized
    assert raw.status == 413
    assert data.oversized.name not in [p.name for p in server.cache_files()]
    server.wait_until_forgotten()


def test_no_session_object_or_folder_outlives_rounds_of_sessions(server, data, reference):
    rounds = []
    for number in range(1, ROUNDS + 1):
        before = server.forgotten()
        results, errors, overlap = run_round(server, data.studies)
        assert not errors, errors
        for study in data.studies:  # still no cross-talk
            np.testing.assert_array_equal(results[study.name].mask, reference.results[study.name].mask)
        waited = server.wait_until_forgotten()
        rounds.append(
            SimpleNamespace(
                number=number,
                overlap=overlap,
                waited=waited,
                census=server.census(),
                folders=len(server.session_folders()),
                forgotten=server.forgotten() - before,
                cache=server.cache_files(),
            )
        )
    for r in rounds:
        cache_mb = sum(p.stat().st_size for p in r.cache) / 2**20
        print(
            f"[load] round {r.number}: {r.overlap.seconds:.1f} s, {r.overlap.folders} session folders once all had "
            f"loaded; sessions closed and forgotten after {r.waited:.1f} s ({r.forgotten} delete callbacks): "
            f"{r.folders} session folders, live {r.census['before_gc']}; Gradio cache {len(r.cache)} files, {cache_mb:.1f} MB"
        )
    assert all(r.overlap.folders == SESSIONS for r in rounds)  # the sessions did overlap (else this proves little)
    assert all(r.folders == 0 for r in rounds), "closed sessions' folders were not removed"
    for r in rounds:  # nothing holds an ended session's study, not even until the next garbage collection
        assert r.census["before_gc"]["sessions"] == r.census["after_gc"]["sessions"] == 0, r.census
        assert r.census["before_gc"]["studies"] == r.census["after_gc"]["studies"] == 0, r.census


def test_sessions_beyond_capacity_are_dropped_and_their_folders_go_with_them(server, data, reference):
    sessions, counts = [], []
    before = server.forgotten()
    try:
        for i in range(CAPACITY + 2):  # two more sessions than the server keeps, none closed
            session = client(server)
            sessions.append(session)
            study = data.studies[i % SESSIONS]
            assert f"**{study.name}_SUV**" in upload(session, study.ct, study.pet).status
            counts.append(len(server.session_folders()))
        dropped = server.forgotten() - before
        print(
            f"[load] session folders while {CAPACITY + 2} sessions load: {counts}; "
            f"delete callbacks for the {CAPACITY + 2 - CAPACITY} dropped sessions: {dropped}"
        )
        assert counts == [*range(1, CAPACITY + 1), CAPACITY, CAPACITY]
        # the oldest session was dropped: it has to load its study again
        from gradio_client.exceptions import AppError

        with pytest.raises(AppError, match="no study loaded yet"):
            sessions[0].predict(1, 1, 1, None, None, "Soft tissue", 8, 0.5, True, api_name="/segment")
    finally:
        for session in sessions:
            session.close()
    server.wait_until_forgotten()
    assert server.session_folders() == []


def test_a_full_queue_refuses_more_requests_with_a_message(server, data):
    import httpx
    from gradio_client.exceptions import AppError

    blocker = client(server)
    late = client(server)
    gate = server.gate
    try:
        loaded = upload(blocker, data.blocker.ct, data.blocker.pet)
        job = blocker.submit(
            value(loaded.axial_slider),
            value(loaded.coronal_slider),
            value(loaded.sagittal_slider),
            "fusion",
            "none",
            "Soft tissue",
            8,
            0.5,
            True,
            api_name="/segment",
        )
        deadline = time.monotonic() + GATE_WAIT_S
        while not (gate / "entered").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (gate / "entered").exists(), "the blocking segmentation never started"
        # the model is busy: every further segmentation waits in the queue, until the queue is full
        answers = [
            httpx.post(
                server.url + "gradio_api/call/segment",
                json={"data": [1, 1, 1, None, None, "Soft tissue", 8, 0.5, True]},
                timeout=120,
            )
            for _ in range(QUEUE_SIZE + 3)
        ]
        codes = [a.status_code for a in answers]
        refusal = answers[-1].json().get("detail", "")
        with pytest.raises(Exception) as client_side:
            late.predict(1, 1, 1, None, None, "Soft tissue", 8, 0.5, True, api_name="/segment")
        print(
            f"[load] queue of {QUEUE_SIZE}: answers {codes}; server: {refusal!r}; "
            f"client: {type(client_side.value).__name__}: {client_side.value}"
        )
        assert codes == [200] * QUEUE_SIZE + [503] * 3
        assert refusal == f"Queue is full. Max size is {QUEUE_SIZE} and size is {QUEUE_SIZE}."
        assert type(client_side.value).__name__ == "QueueError" and "Queue is full" in str(client_side.value)
    finally:
        (gate / "open").touch()
    out = named(job.result(timeout=GATE_WAIT_S))
    assert "lesion" in out.totals  # the blocked request finished normally once the model was free
    # the queued requests were answered (no study in their sessions), and the server serves again
    with pytest.raises(AppError, match="no study loaded yet"):
        late.predict(1, 1, 1, None, None, "Soft tissue", 8, 0.5, True, api_name="/segment")
    blocker.close()
    late.close()


def test_stopping_the_server_removes_its_temporary_folders_and_cached_files(server, reference):
    assert server.app_folders() == [server.sessions_root]  # one folder for the whole app, in the server's TMPDIR
    cached = [p for p in server.cache_files() if p.stat().st_size]
    assert cached  # uploads, images, masks
    code = server.stop()
    left = server.cache_files()
    print(
        f"[load] stopped with SIGTERM: exit code {code}; Gradio cache {len(cached)} files "
        f"before, {len(left)} after ({sum(p.stat().st_size for p in left)} bytes)"
    )
    assert code == 0, server.log()
    assert "STOPPED" in server.log()  # launch_demo returned: SIGTERM stopped the server as Ctrl+C does
    assert server.app_folders() == []
    assert list(server.tmp.iterdir()) == []
    assert [p for p in left if p.stat().st_size] == []  # left: Gradio's empty upload temporaries (one per upload)
