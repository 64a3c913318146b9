"""The KV cache for continuous batching: one row per running sequence, rows join and leave between steps.

Shape legend: R row capacity (max batch), B rows in this step, T new positions per row, C cache slots,
S visible key slots, K key/value heads, Dh head width.

Each layer stores keys and values as [R, K, C, Dh]. Global-attention layers keep every position
(C grows by doubling up to the model's context length). Sliding-window layers keep only the last W
positions in a ring (C = W, position p in slot p mod W): attention does not depend on the order of the
keys, and RoPE has already been applied to them, so a ring needs no reordering.

A step is either a prefill of new rows (every row starts at position 0; the forward pass attends to its
own new keys under a causal, window and padding mask, and the cache stores them) or a decode of rows
0..B-1 with one token each (the new key is written first, then attention reads the stored slots under
a mask of the slots each row has filled). Running rows are kept contiguous: when one finishes the last
row moves into its place, so a decode step reads plain slices.
"""

from __future__ import annotations

import torch

from lagoon.model.config import ModelConfig


class KVCache:
    """Implements the model's ``cache.update(layer_idx, key, value) -> (keys, values, mask)`` hook."""

    def __init__(self, config: ModelConfig, max_rows: int, max_len: int, dtype: torch.dtype,
                 device: torch.device | str, initial_len: int = 256):
        self.max_rows = max_rows
        self.max_len = max_len
        self.dtype = dtype
        self.device = torch.device(device)
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.windows = [config.sliding_window if kind == "sliding_attention" else None for kind in config.layer_types]
        self.full_capacity = min(initial_len, max_len)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for window in self.windows:
            slots = min(window, max_len) if window is not None else self.full_capacity
            shape = (max_rows, self.num_kv_heads, slots, self.head_dim)
            self.keys.append(torch.zeros(shape, dtype=dtype, device=self.device))
            self.values.append(torch.zeros(shape, dtype=dtype, device=self.device))
        self._step: _Step | None = None

    # ------------------------------------------------------------------------------------------------
    def slots(self, layer_idx: int) -> int:
        return self.keys[layer_idx].shape[2]

    def ensure_capacity(self, length: int) -> None:
        """Make the global layers hold at least `length` positions per row (doubling, up to max_len)."""
        assert length <= self.max_len, (length, self.max_len)
        if length <= self.full_capacity:
            return
        capacity = self.full_capacity
        while capacity < length:
            capacity = min(capacity * 2, self.max_len)
        for i, window in enumerate(self.windows):
            if window is None:
                for store in (self.keys, self.values):
                    old = store[i]
                    grown = torch.zeros(old.shape[0], old.shape[1], capacity, old.shape[3], dtype=old.dtype,
                                        device=old.device)
                    grown[:, :, : old.shape[2]] = old
                    store[i] = grown
        self.full_capacity = capacity

    def move_row(self, source: int, target: int) -> None:
        """Copy row `source` into row `target` in every layer (compaction after a row finishes)."""
        if source == target:
            return
        for store in (self.keys, self.values):
            for tensor in store:
                tensor[target] = tensor[source]

    # ------------------------------------------------------------------------------------------------
    def begin_prefill(self, rows: list[int], lengths: list[int]) -> None:
        """The next forward writes `lengths[b]` positions (0..n-1) of new row `rows[b]`; input is right-padded."""
        assert len(rows) == len(lengths) and rows
        self.ensure_capacity(max(lengths))
        self._step = _Step("prefill", rows=rows, lengths=lengths, device=self.device)

    def begin_decode(self, positions: list[int]) -> None:
        """The next forward feeds one token per row 0..B-1, row b at position `positions[b]`."""
        self.ensure_capacity(max(positions) + 1)
        self._step = _Step("decode", positions=positions, device=self.device)

    def end_step(self) -> None:
        self._step = None

    def update(self, layer_idx: int, key_BKTDh: torch.Tensor, value_BKTDh: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        step = self._step
        assert step is not None, "call begin_prefill/begin_decode before the forward pass"
        window = self.windows[layer_idx]
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if step.kind == "prefill":
            for b, (row, length) in enumerate(zip(step.rows, step.lengths)):
                start = 0 if window is None else max(0, length - window)
                slots = torch.arange(start, length, device=self.device)
                if window is not None:
                    slots = slots % window
                keys[row][:, slots] = key_BKTDh[b, :, start:length].to(keys.dtype)
                values[row][:, slots] = value_BKTDh[b, :, start:length].to(values.dtype)
            return key_BKTDh, value_BKTDh, step.prefill_mask(window)

        B = key_BKTDh.shape[0]
        assert key_BKTDh.shape[2] == 1 and B == len(step.positions)
        positions_B = step.positions_B
        slots_B = positions_B if window is None else positions_B % window
        rows_B = step.rows_B
        keys[rows_B, :, slots_B] = key_BKTDh[:, :, 0].to(keys.dtype)
        values[rows_B, :, slots_B] = value_BKTDh[:, :, 0].to(values.dtype)
        visible = step.max_position + 1 if window is None else min(window, step.max_position + 1)
        return keys[:B, :, :visible], values[:B, :, :visible], step.decode_mask(visible)


class _Step:
    """Per-step index tensors and masks, built once and shared by every layer of the same kind."""

    def __init__(self, kind: str, device: torch.device, rows: list[int] | None = None,
                 lengths: list[int] | None = None, positions: list[int] | None = None):
        self.kind = kind
        self.device = device
        self.rows = rows or []
        self.lengths = lengths or []
        self.positions = positions or []
        if kind == "decode":
            self.positions_B = torch.tensor(self.positions, device=device)
            self.rows_B = torch.arange(len(self.positions), device=device)
            self.max_position = max(self.positions)
        self._masks: dict[object, torch.Tensor] = {}

    def prefill_mask(self, window: int | None) -> torch.Tensor:
        """[B, 1, T, T]: causal, within the window, and only real (unpadded) keys."""
        if window not in self._masks:
            T = max(self.lengths)
            query_T1 = torch.arange(T, device=self.device)[:, None]
            key_1T = torch.arange(T, device=self.device)[None, :]
            mask_TT = key_1T <= query_T1
            if window is not None:
                mask_TT = mask_TT & (key_1T > query_T1 - window)
            length_B = torch.tensor(self.lengths, device=self.device)
            mask_BTT = mask_TT[None] & (key_1T[None] < length_B[:, None, None])
            # Padded queries far past a short row's end could see no key at all; let them see everything
            # (their outputs are discarded) so attention never divides by zero.
            mask_BTT = mask_BTT | ~mask_BTT.any(dim=-1, keepdim=True)
            self._masks[window] = mask_BTT[:, None]
        return self._masks[window]

    def decode_mask(self, visible: int) -> torch.Tensor:
        """[B, 1, 1, S]: slot s holds a position this row has filled (in a ring, every slot once it is full)."""
        if visible not in self._masks:
            slot_S = torch.arange(visible, device=self.device)
            self._masks[visible] = (slot_S[None, :] <= self.positions_B[:, None])[:, None, None, :]
        return self._masks[visible]
