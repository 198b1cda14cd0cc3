"""One browser session's study and results, and the temporary folders that hold their files.

Each app has one temporary folder (``mirror-unet-demo-*`` under the system temp folder) with one
subfolder per session (its mask and lesion table). A session's subfolder goes when Gradio forgets the
session (time to live, closed tab: `forget`) or drops it for a newer one (then garbage collection tells:
the folder goes with the `Session` object); the app's folder goes with the app, at the latest when the
process exits. No Gradio here: the app passes `forget` as its session state's delete callback.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

from ..lesions import LesionTable
from ..viewer import ViewerStudy

APP_DIR_PREFIX = "mirror-unet-demo-"  # the app's temporary folder, one per app
MASK_FILE = "mask.nii.gz"
TABLE_FILE = "lesions.csv"


@dataclass
class Session:
    """One browser session's study and results; files go to its own temporary folder, which is removed
    by `close` or, at the latest, when the session is garbage-collected."""

    workdir: Path
    study: ViewerStudy | None = None
    table: LesionTable | None = None  # of the final mask
    classification: dict | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        # Gradio calls the State's delete callback when a session's time to live runs out (also an hour
        # after its tab closed), but not when it drops the least recently used session beyond
        # `state_session_capacity`: then only garbage collection tells, so the folder goes with the object.
        self._remove_folder = weakref.finalize(self, shutil.rmtree, self.workdir, True)

    @property
    def mask_file(self) -> Path:
        """Where the final mask of the segmented study is written (NIfTI)."""
        return self.workdir / MASK_FILE

    @property
    def table_file(self) -> Path:
        """Where the lesion table of the segmented study is written (CSV)."""
        return self.workdir / TABLE_FILE

    def start(self, study: ViewerStudy) -> None:
        """Hold a newly loaded study: the previous study's results and files go."""
        for stale in (self.mask_file, self.table_file):
            stale.unlink(missing_ok=True)
        self.study, self.table, self.classification, self.seconds = study, None, None, None

    def close(self) -> None:
        """Remove the session's files (idempotent)."""
        self._remove_folder()


def new_session(root: Path) -> Session:
    """A session with a new, empty folder under the app's folder `root`."""
    return Session(Path(tempfile.mkdtemp(prefix="session-", dir=root)))


def forget(session: Session | None) -> None:
    """The session state's delete callback: remove the session's files (a session that never loaded a
    study is None)."""
    if isinstance(session, Session):
        session.close()


def new_app_folder() -> Path:
    """A new temporary folder for the sessions of one app (see `remove_with`)."""
    return Path(tempfile.mkdtemp(prefix=APP_DIR_PREFIX))


def remove_with(owner: object, folder: Path) -> None:
    """Remove `folder` when `owner` (the app) is garbage-collected, at the latest when the process exits."""
    weakref.finalize(owner, shutil.rmtree, folder, True)
