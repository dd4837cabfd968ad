"""Guards on a run's logdir: one process at a time, and no mixing of two different runs.

``lock`` takes ``<logdir>/.lock`` (atomically, holding the owner's pid and host), so a second
process training into the same logdir stops at once with a clear error; a lock left by a
process that died is taken over. ``check_config`` refuses a logdir that holds a run with a
different configuration, unless asked to overwrite: then the old run is moved aside, not deleted.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import socket
import time
from typing import Iterator

from keras_sparse import files
from keras_sparse.errors import ConfigError

CONFIG_FILE = "config.gin"
LOCK_FILE = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def lock(logdir: str) -> Iterator[None]:
    """Holds ``<logdir>/.lock`` for the duration of the block."""
    created = not os.path.exists(logdir)
    os.makedirs(logdir, exist_ok=True)
    path = os.path.join(logdir, LOCK_FILE)
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as f:
                    pid_text, _, host = f.read().strip().partition(" ")
                pid = int(pid_text)
            except (OSError, ValueError):
                pid, host = -1, ""
            if pid > 0 and (host != socket.gethostname() or _alive(pid)):
                raise ConfigError(
                    f"Another process (pid {pid} on {host or 'this host'}) is training into {logdir}: wait for it, "
                    f"or use another --logdir (remove {path} only if that process is gone).") from None
            os.remove(path)  # left by a process that died: take it over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
            if created and not os.listdir(logdir):
                os.rmdir(logdir)  # a run that failed its checks leaves no empty logdir behind


def check_config(logdir: str, config: str, overwrite: bool = False) -> str | None:
    """Refuses ``logdir`` if it holds a run whose ``config.gin`` differs from ``config``.

    With ``overwrite`` the old run's files (of any config) move to ``<logdir>.old-<time>``
    (returned) and the logdir starts empty. Call ``write_config`` once the new run has passed
    its checks.
    """
    path = os.path.join(logdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        previous = f.read()
    if previous == config and not overwrite:
        return None
    if not overwrite:
        diff = [line for line in difflib.unified_diff(previous.splitlines(), config.splitlines(), lineterm="", n=0)
                if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        shown = "; ".join(diff[:4]) + (" …" if len(diff) > 4 else "")
        raise ConfigError(f"{logdir} holds a run with a different config ({shown}): use another --logdir, "
                          "or pass --overwrite to move that run aside and start again.")
    backup = f"{os.path.normpath(logdir)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    os.makedirs(backup)
    for name in os.listdir(logdir):
        if name != LOCK_FILE:  # the lock is ours, and stays
            os.rename(os.path.join(logdir, name), os.path.join(backup, name))
    return backup


def write_config(logdir: str, config: str) -> None:
    """Records the run's config in ``<logdir>/config.gin`` (atomically)."""
    files.write_text(os.path.join(logdir, CONFIG_FILE), config)
