"""The static KV cache of the GPT decode loop: one buffer for all layers, a row table for beams, device lengths.

Layout (the decode kernel's): ``buf`` [layers, 2, rows, heads, max_len, head_dim]; layer l reads ``buf[l, 0]`` as
k and ``buf[l, 1]`` as v. ``table`` int32 [rows, max_len]: the physical row that holds position s of logical row
r. ``lengths`` int32 [rows]: tokens cached per row (the next token goes to that position). ``tickets`` int32
[layers, rows * heads]: the decode attention's split counters (``gpt_decode_attention(tickets=)``).

The prompt is prefilled once, at batch 1, into physical row 0; ``share_prompt`` points every logical row's prompt
positions at it (the official code prefills ``num_beams`` identical rows). A beam reorder permutes the table and
the lengths (one gather of rows x max_len int32 for all layers); the cache itself is never copied.
"""

from __future__ import annotations

import torch

__all__ = ["KVCache"]


class KVCache:
    def __init__(self, layers: int, rows: int, heads: int, max_len: int, head_dim: int, dtype, device):
        self.layers, self.rows, self.heads, self.max_len, self.head_dim = layers, rows, heads, max_len, head_dim
        self.buf = torch.zeros((layers, 2, rows, heads, max_len, head_dim), dtype=dtype, device=device)
        self.table = torch.empty((rows, max_len), dtype=torch.int32, device=device)
        self.lengths = torch.zeros((rows,), dtype=torch.int32, device=device)
        # per layer, the decode attention's arrival counters (its split merge folded into its one launch): zero
        # between launches, each launch leaves them zero
        self.tickets = torch.zeros((layers, rows * heads), dtype=torch.int32, device=device)
        self._rows = torch.arange(rows, dtype=torch.int32, device=device)
        self.reset()

    def reset(self) -> None:
        """An identity table and empty rows: the state every generation starts from."""
        self.table.copy_(self._rows[:, None].expand(self.rows, self.max_len))
        self.lengths.zero_()

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.buf[i, 0], self.buf[i, 1]

    def share_prompt(self, prompt_len: int) -> None:
        """After a batch-1 prefill of ``prompt_len`` tokens into physical row 0: every row reads its prompt there."""
        self.table[:, :prompt_len] = 0
        self.lengths.fill_(prompt_len)

    def reorder(self, rows: torch.Tensor) -> None:
        """Logical row r continues logical row ``rows[r]`` (a beam reorder); ``rows`` int64 [rows] on the device."""
        self.table.copy_(self.table.index_select(0, rows))
        self.lengths.copy_(self.lengths.index_select(0, rows))
