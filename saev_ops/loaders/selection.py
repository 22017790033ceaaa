"""What a loader reads: which recorded layers and which tokens. Shared by every loader config."""

from __future__ import annotations

import dataclasses
from typing import TypedDict

import numpy as np
import torch

from saev_ops.shards.reader import ShardReader


class Batch(TypedDict):
    """One batch from any loader. ``act`` is float32 (B, d_model); the index tensors are int64 (B,)."""

    act: torch.Tensor
    example_idx: torch.Tensor
    token_idx: torch.Tensor
    layer: torch.Tensor


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardSelection:
    """Which activations to read."""

    layers: tuple[int, ...] = (-1,)
    """Model layer numbers as recorded (``-1``: the last recorded layer). Several layers give one row per
    (example, layer, token), layers in the order they were recorded."""
    tokens: str = "patches"
    """A selection of :data:`saev_ops.tokens.SELECTIONS`: ``patches``, ``cls+patches`` (no registers), ``cls``,
    ``special`` (CLS + registers) or ``all``."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """A selection resolved against one dataset: layer positions and token indices."""

    layer_idx: tuple[int, ...]
    layer_numbers: tuple[int, ...]
    token_idx: np.ndarray  # int64, selected positions on the token axis
    n_tokens: int  # tokens per example on disk

    @property
    def rows_per_example(self) -> int:
        return len(self.layer_idx) * len(self.token_idx)


def plan(reader: ShardReader, selection: ShardSelection) -> Plan:
    if not selection.layers:
        from saev_ops import errors

        raise errors.ConfigError("selection.layers must name at least one layer")
    idx = tuple(sorted({reader.layer_index(layer) for layer in selection.layers}))  # rows follow the file's layer order
    numbers = tuple(reader.md.layers[i] for i in idx)
    tokens = np.asarray(reader.layout.indices(selection.tokens), dtype=np.int64)
    return Plan(idx, numbers, tokens, reader.tokens_per_example)


def to_batch(act: np.ndarray, example_idx: np.ndarray, token_idx: np.ndarray, layer: np.ndarray) -> Batch:
    """A batch over ``act`` without a copy (a loader asked to pin its batches cuts them into pinned buffers)."""
    return Batch(act=torch.from_numpy(act), example_idx=torch.from_numpy(example_idx),
                 token_idx=torch.from_numpy(token_idx), layer=torch.from_numpy(layer))


def examples_of(batch: Batch, rows: torch.Tensor) -> str:
    """The distinct examples of a batch's selected ``rows`` (a boolean mask), for messages: ``"3, 17 and 4 more"``."""
    examples = torch.unique(batch["example_idx"][rows.cpu()]).tolist()
    shown = ", ".join(str(e) for e in examples[:10])
    return shown + (f" and {len(examples) - 10} more" if len(examples) > 10 else "")
