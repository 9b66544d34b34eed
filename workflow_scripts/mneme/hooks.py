"""Running a model only up to one decoder block: the hook shared by extraction and the organisms.

A forward hook on block L records its output and raises :class:`StopForward`, so later blocks, the
final norm and the LM head never run. A leaf module (torch only): extraction and the organism
methods both use it, and an edit to either of them does not re-run the other.
"""

from __future__ import annotations

import torch


class StopForward(Exception):
    """Raised by the hook once the wanted block has run, to skip everything after it."""


def find_blocks(model: torch.nn.Module, n_blocks: int) -> torch.nn.ModuleList:
    """The decoder block list: the ModuleList whose length is the configured number of blocks."""
    candidates = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_blocks]
    if not candidates:
        raise RuntimeError(f"no ModuleList of {n_blocks} decoder blocks found in {type(model).__name__}")
    return candidates[0]


def output_of(model: torch.nn.Module, block: torch.nn.Module, **inputs) -> torch.Tensor:
    """The output of ``block`` when ``model`` runs on ``inputs``; nothing after the block runs."""
    captured: list[torch.Tensor] = []

    def hook(module, args, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise StopForward

    handle = block.register_forward_hook(hook)
    try:
        model(**inputs)
    except StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"the hook on {type(block).__name__} did not fire")
    return captured[0]
