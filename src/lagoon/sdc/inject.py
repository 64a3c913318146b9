"""Fault injection: flip a chosen bit of a chosen tensor on a chosen rank at a chosen step; raise, hang, die.

Bit names by dtype (IEEE-754 layouts; bf16 is fp32's top half):

    dtype      sign  exponent bits (lowest = "exponent")  mantissa bits (lowest = "mantissa")
    float32    31    23–30                                 0–22
    bfloat16   15     7–14                                 0–6
    float16    15    10–14                                 0–9
    float64    63    52–62                                 0–51

"exponent" flips the lowest exponent bit (the value doubles or halves), "mantissa" the lowest mantissa
bit (one ulp: invisible to a loss curve, the hardest case for any check that looks at values), "sign"
negates. Integer tensors take "sign" (the top bit) or a bit index.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterable

import torch

from lagoon.errors import LagoonError
from lagoon.sdc.config import FaultSpec

_LAYOUT = {  # dtype: (integer view, sign bit, lowest exponent bit, lowest mantissa bit)
    torch.float32: (torch.int32, 31, 23, 0),
    torch.bfloat16: (torch.int16, 15, 7, 0),
    torch.float16: (torch.int16, 15, 10, 0),
    torch.float64: (torch.int64, 63, 52, 0),
}
_INTEGER_VIEWS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class InjectedFault(RuntimeError):
    """Raised on purpose by a ``raise`` fault."""


def bit_index(dtype: torch.dtype, bit: str) -> int:
    """The bit position `bit` ("sign", "exponent", "mantissa" or a number) names in an element of `dtype`."""
    width = torch.empty((), dtype=dtype).element_size() * 8
    if bit.isdigit():
        index = int(bit)
        if index >= width:
            raise LagoonError(f"bit {index} does not exist in a {width}-bit {dtype} element")
        return index
    if dtype in _LAYOUT:
        _, sign, exponent, mantissa = _LAYOUT[dtype]
        return {"sign": sign, "exponent": exponent, "mantissa": mantissa}[bit]
    if bit == "sign":
        return width - 1
    raise LagoonError(f"{dtype} has no {bit} bits; give a bit index instead")


@torch.no_grad()
def flip_bit(tensor: torch.Tensor, element: int, bit: str | int) -> tuple[float, float]:
    """Flip one bit of `tensor.view(-1)[element]` in place; returns (old, new) values as floats."""
    flat = tensor.detach().view(-1)
    if not 0 <= element < flat.numel():
        raise LagoonError(f"element {element} is out of range for a tensor of {flat.numel()} elements")
    index = bit_index(flat.dtype, str(bit))
    width = flat.element_size() * 8
    view = flat.view(_LAYOUT[flat.dtype][0] if flat.dtype in _LAYOUT else _INTEGER_VIEWS[flat.element_size()])
    mask = 1 << index
    if mask >= 1 << (width - 1):  # the top bit as a signed value of the view's width
        mask -= 1 << width
    old = float(flat[element])
    view[element : element + 1].bitwise_xor_(torch.tensor(mask, dtype=view.dtype, device=view.device))
    return old, float(flat[element])


def local_tensor(param: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard, or the tensor itself."""
    return param.to_local() if hasattr(param, "to_local") else param


class FaultInjector:
    """Fires configured faults at the quiet point after their step on their rank (see `FaultSpec`)."""

    def __init__(self, faults: Iterable[FaultSpec], rank: int, say=None):
        self.faults = [f for f in faults]
        self.rank = rank
        self.fired: set[int] = set()
        self.say = say or (lambda message: print(f"lagoon: {message}", file=sys.stderr, flush=True))
        self.log: list[dict] = []

    def due(self, step: int, kinds: tuple[str, ...]) -> list[tuple[int, FaultSpec]]:
        """Faults of `kinds` for this rank at `step` that should fire now."""
        return [(i, f) for i, f in enumerate(self.faults)
                if f.kind in kinds and f.step == step and f.rank == self.rank and (f.repeat or i not in self.fired)]

    def after_step(self, step: int, model: torch.nn.Module) -> list[dict]:
        """Fire this rank's bitflip/raise/hang/die faults for `step`; returns records of the flips."""
        records = []
        for index, fault in self.due(step, ("bitflip", "raise", "hang", "die")):
            self.fired.add(index)
            if fault.kind == "bitflip":
                name, param = pick_parameter(model, fault.parameter)
                old, new = flip_bit(local_tensor(param.data), fault.element, fault.bit)
                record = {"fault": "bitflip", "step": step, "rank": self.rank, "parameter": name,
                          "element": fault.element, "bit": fault.bit, "old": old, "new": new}
                self.say(f"fault injection: flipped the {fault.bit} bit of {name}[{fault.element}] on rank "
                         f"{self.rank} after step {step} ({old!r} -> {new!r})")
                self.log.append(record)
                records.append(record)
            elif fault.kind == "raise":
                raise InjectedFault(f"injected fault: rank {self.rank} raises after step {step}")
            elif fault.kind == "hang":
                self.say(f"fault injection: rank {self.rank} hangs after step {step}")
                threading.Event().wait()
            elif fault.kind == "die":
                self.say(f"fault injection: rank {self.rank} dies (SIGKILL) after step {step}")
                os.kill(os.getpid(), signal.SIGKILL)
        return records

    def corrupt_newton_schulz(self, step: int, name: str, result: torch.Tensor) -> dict | None:
        """Flip a bit of an owner's Newton–Schulz result in place if an ``ns_corrupt`` fault is due for it."""
        for index, fault in self.due(step, ("ns_corrupt",)):
            if fault.parameter and fault.parameter != name:
                continue
            self.fired.add(index)
            old, new = flip_bit(result, fault.element, fault.bit)
            record = {"fault": "ns_corrupt", "step": step, "rank": self.rank, "parameter": name,
                      "element": fault.element, "bit": fault.bit, "old": old, "new": new}
            self.say(f"fault injection: corrupted the Newton–Schulz result of {name} on its owner rank {self.rank} "
                     f"at step {step} ({old!r} -> {new!r})")
            self.log.append(record)
            return record
        return None


def pick_parameter(model: torch.nn.Module, name: str) -> tuple[str, torch.nn.Parameter]:
    params = dict(model.named_parameters())
    if not name:
        first = next(iter(params))
        return first, params[first]
    if name not in params:
        close = [n for n in params if name.split(".")[-1] in n][:3]
        raise LagoonError(f"sdc.faults: the model has no parameter {name!r}" + (f" (similar: {', '.join(close)})" if close else ""))
    return name, params[name]
