"""The sandbox's seccomp filter: its tables agree with the kernel's headers, and the compiled program, run by
a reference classic-BPF interpreter, refuses exactly what it should for every ABI (the kernel's verdicts
inside a real sandbox are checked by test_sandbox_kernel.py)."""

from __future__ import annotations

import errno
import re
import struct
from pathlib import Path

import pytest

from lagoon.agent import seccomp
from lagoon.agent.seccomp import (AUDIT_ARCH_AARCH64, AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, RET_ALLOW, RET_ERRNO,
                                  SYSCALLS, build_filter)

EPERM, ENOSYS = RET_ERRNO | errno.EPERM, RET_ERRNO | errno.ENOSYS
AUDIT_ARCH_ARM = 0x40000028
HEADERS = {
    "x86_64": [Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"), Path("/usr/include/asm/unistd_64.h")],
    "i386": [Path("/usr/include/x86_64-linux-gnu/asm/unistd_32.h"), Path("/usr/include/asm/unistd_32.h")],
    "aarch64": [Path("/usr/include/asm-generic/unistd.h")],
}
# A few calls every program makes, which must pass: read, write, getpid, execve (or their ABI's numbers).
EVERYDAY = {"x86_64": [0, 1, 39, 59, 257], "i386": [3, 4, 20, 11, 295], "aarch64": [63, 64, 172, 221, 56]}
ARCH = {"x86_64": AUDIT_ARCH_X86_64, "i386": AUDIT_ARCH_I386, "aarch64": AUDIT_ARCH_AARCH64}


def run_bpf(program: bytes, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """A reference classic-BPF interpreter for the instructions the filter uses, over a seccomp_data."""
    padded = (list(args) + [0] * 6)[:6]
    data = struct.pack("=iIQ6Q", nr, arch, 0, *padded)
    code = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    pc, accumulator = 0, 0
    while True:
        op, jt, jf, k = code[pc]
        if op == 0x20:  # ld [k]
            accumulator = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif op in (0x15, 0x35, 0x45):  # jeq, jge, jset
            taken = {0x15: accumulator == k, 0x35: accumulator >= k, 0x45: bool(accumulator & k)}[op]
            pc += 1 + (jt if taken else jf)
        elif op == 0x06:  # ret k
            return k
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")


def header_numbers(abi: str) -> dict[str, int] | None:
    for path in HEADERS[abi]:
        if path.is_file():
            text = path.read_text()
            numbers = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define\s+__NR_(\w+)\s+(\d+)\b", text)}
            return numbers
    return None


@pytest.mark.parametrize("abi", sorted(SYSCALLS))
def test_tables_agree_with_the_kernel_headers(abi):
    numbers = header_numbers(abi)
    if numbers is None:
        pytest.skip(f"no uapi header for {abi} on this machine (linux-libc-dev)")
    for name, number in SYSCALLS[abi].items():
        if name in numbers:
            assert numbers[name] == number, (abi, name)
        else:  # newer than the installed headers: the numbers shared by every architecture since 5.1
            assert number >= 424 and name == "open_tree_attr", (abi, name)
    if abi == "aarch64":
        return
    for name in seccomp.REFUSED:  # every refused call the ABI has is in its table
        assert name not in numbers or name in SYSCALLS[abi], (abi, name)


@pytest.mark.parametrize("machine_abis", [("x86_64", "i386"), ("aarch64",)])
def test_the_program_refuses_the_listed_calls_and_nothing_everyday(machine_abis):
    program = build_filter(machine_abis)
    for abi in machine_abis:
        arch, numbers = ARCH[abi], SYSCALLS[abi]
        for name in seccomp.REFUSED:
            if name in numbers:
                assert run_bpf(program, numbers[name], arch) == EPERM, (abi, name)
        for nr in EVERYDAY[abi]:
            assert run_bpf(program, nr, arch) == RET_ALLOW, (abi, nr)
        # Arguments matter for three calls only.
        assert run_bpf(program, numbers["ptrace"], arch, (16, 1)) == EPERM  # PTRACE_ATTACH
        assert run_bpf(program, numbers["ptrace"], arch, (0x4206, 1)) == EPERM  # PTRACE_SEIZE
        assert run_bpf(program, numbers["ptrace"], arch, (0,)) == RET_ALLOW  # PTRACE_TRACEME
        assert run_bpf(program, numbers["ptrace"], arch, (2, 5)) == RET_ALLOW  # PTRACE_PEEKDATA of a tracee
        for flag in (0x10000000, 0x00020000, 0x20000000, 0x40000000, 0x80, 0x02000000, 0x04000000, 0x08000000):
            assert run_bpf(program, numbers["unshare"], arch, (flag,)) == EPERM, (abi, hex(flag))
            assert run_bpf(program, numbers["clone"], arch, (flag | 17,)) == EPERM, (abi, hex(flag))
        assert run_bpf(program, numbers["unshare"], arch, (0x400,)) == RET_ALLOW  # CLONE_FILES: no namespace
        assert run_bpf(program, numbers["clone"], arch, (0x01200011,)) == RET_ALLOW  # fork()'s flags
        assert run_bpf(program, numbers["clone"], arch, (0x003D0F00,)) == RET_ALLOW  # pthread_create's flags
        assert run_bpf(program, numbers["clone3"], arch) == ENOSYS  # flags in memory: the C library falls back
    # Any other ABI is refused outright: x32 on x86-64, 32-bit ARM on AArch64, and unknown architectures.
    if "x86_64" in machine_abis:
        assert run_bpf(program, 39 | 0x40000000, AUDIT_ARCH_X86_64) == EPERM
    assert run_bpf(program, 20, AUDIT_ARCH_ARM) == EPERM
    assert run_bpf(program, 0, 0xDEADBEEF) == EPERM


def test_the_program_is_valid_classic_bpf():
    program = seccomp.sandbox_filter()
    assert len(program) % 8 == 0 and len(program) // 8 <= 4096
    assert struct.unpack("=HBBI", program[:8]) == (0x20, 0, 0, 4)  # it starts by loading the architecture
