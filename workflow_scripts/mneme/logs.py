"""Logging for rule scripts: everything goes to the rule's log file and to stderr."""

from __future__ import annotations

import logging
import sys


def setup_logging(log_path: str | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send `mneme.*` and root logging to ``log_path`` (the rule's log:) and stderr.

    Uncaught exceptions are logged too, so a failed job's log says why it failed.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True
    )

    def excepthook(exc_type, exc, tb):
        logging.getLogger("mneme").error("job failed", exc_info=(exc_type, exc, tb))

    sys.excepthook = excepthook
    return logging.getLogger("mneme")


def set_threads(threads: int) -> None:
    """Use exactly the cores Snakemake gave the job."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
