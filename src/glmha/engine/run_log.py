"""A run's messages and stops: ``train.log`` and the console (:class:`RunLog`), SIGINT / SIGTERM (:func:`stop_on_signals`)."""
from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Mapping

import torch
import yaml


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training after a checkpoint was written; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def stop_on_signals():
    """Record SIGINT / SIGTERM instead of dying, so the loop can write a checkpoint first; a second signal stops at once."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set in the main thread
        yield received
        return

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class RunLog:
    """The run's messages: on the console and, with the config and versions at the top of each start, in ``train.log``."""

    def __init__(self, path: Path | None):
        self.file = open(path, "a", encoding="utf-8") if path is not None else None

    def header(self, cfg: Mapping, device: torch.device) -> None:
        import platform

        from .._version import __version__

        where = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
        self.line(f"==== glmha train started {time.strftime('%Y-%m-%d %H:%M:%S')}", console=False)
        self.line(f"versions: glmha {__version__}, torch {torch.__version__}, python {platform.python_version()}; device {where}", console=False)
        self.line("config:\n" + yaml.safe_dump(json.loads(json.dumps(cfg, default=str)), sort_keys=False).rstrip(), console=False)

    def line(self, text: str, console: bool = True) -> None:
        if self.file is None:
            return  # other ranks than 0 stay quiet
        if console:
            from tqdm.auto import tqdm

            tqdm.write(text)  # above a running progress bar
        self.file.write(text + "\n")
        self.file.flush()

    def close(self, error: BaseException | None = None) -> None:
        if self.file is not None:
            if error is not None:
                self.line(f"stopped: {one_line(error)}", console=False)
            self.file.close()
            self.file = None


@contextlib.contextmanager
def _run_log(path: Path | None):
    log = RunLog(path)
    try:
        yield log
    except BaseException as err:
        log.close(err)
        raise
    log.close()


def one_line(err: BaseException) -> str:
    """A multi-line error message (the key lists of a checkpoint that does not fit) as one line."""
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
