"""The sandbox's seccomp filter: a classic-BPF program refusing system calls that code-as-action never needs.

bubblewrap installs it (``bwrap --seccomp FD``) as the last step before it executes the command, so
bubblewrap's own setup is not filtered and nothing the command does afterwards escapes it (a filter is
inherited across fork and execve and cannot be removed). Refused calls fail with ``EPERM``, not with a
kill, so programs see an ordinary error:

- mounting and changing the root (``mount``, ``umount2``, the new mount API, ``pivot_root``, ``chroot``);
- reaching into other processes (``ptrace`` attach/seize, ``process_vm_readv/writev``, ``kcmp``,
  ``pidfd_getfd``); ``PTRACE_TRACEME`` stays allowed, so a debugger can still run its own child;
- new namespaces (``setns``; ``unshare`` and ``clone`` with a ``CLONE_NEW*`` flag). ``clone3`` passes its
  flags in memory, where a filter cannot read them, so it fails with ``ENOSYS`` and the C library falls
  back to ``clone`` (what Docker, systemd and Chromium do);
- the kernel's keyrings, eBPF, perf events, userfaultfd, io_uring and file handles (``open_by_handle_at``);
- kernel modules, kexec, reboot, swap, accounting, quotas, the kernel log (``syslog``);
- the clock (``settimeofday``, ``clock_settime``, ``clock_adjtime``, ``adjtimex``, ``stime``) and the
  host and domain names;
- port I/O and the x86 LDT/vm86 calls.

A filter sees the ABI a call came in by (``seccomp_data.arch``) and numbers differ between ABIs, so the
program checks the architecture first. On x86-64 the 32-bit ``int 0x80`` ABI gets its own table of
i386 numbers and the x32 ABI (numbers with bit 30 set) is refused outright; on AArch64 the 32-bit ARM
compat ABI is refused outright; any other architecture value is refused. The tables below were taken
from the kernel's uapi headers (``asm/unistd_64.h``, ``asm/unistd_32.h``, ``asm-generic/unistd.h``);
``tests/agent/test_sandbox_seccomp.py`` checks them against the headers where these are installed.

Layout of ``struct seccomp_data`` (include/uapi/linux/seccomp.h): ``int nr`` at 0, ``u32 arch`` at 4,
``u64 instruction_pointer`` at 8, ``u64 args[6]`` at 16; on these little-endian machines the low 32 bits
of argument i are at 16 + 8i.
"""

from __future__ import annotations

import errno
import functools
import platform
import struct
import sys

from lagoon.agent.runtime import SandboxError

# Classic BPF opcodes (include/uapi/linux/filter.h) and seccomp return values (linux/seccomp.h).
_LD_W_ABS = 0x20
_JMP_JEQ_K = 0x15
_JMP_JGE_K = 0x35
_JMP_JSET_K = 0x45
_RET_K = 0x06
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

PTRACE_ATTACH = 16
PTRACE_SEIZE = 0x4206
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
# | CLONE_NEWTIME (include/uapi/linux/sched.h). In clone()'s low byte (the exit signal) 0x80 never occurs.
CLONE_NEW_ANY = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80

REFUSED = (
    "mount", "umount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "open_tree_attr", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr",
    "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "setns",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "open_by_handle_at",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "init_module", "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms",
    "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd",
    "lookup_dcookie", "vhangup", "syslog", "uselib", "_sysctl", "nfsservctl",
    "settimeofday", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64", "adjtimex", "stime",
    "sethostname", "setdomainname",
    "iopl", "ioperm", "modify_ldt", "vm86", "vm86old",
)
"""System calls refused with EPERM whatever their arguments (those an ABI lacks are skipped)."""

# Per-ABI numbers of every call the filter names. open_tree_attr (6.15) is newer than the headers the
# tables come from; since 5.1 (number 424) new calls share one number on every architecture.
SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "move_mount": 429, "open_tree": 428,
        "open_tree_attr": 467, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "pidfd_getfd": 438,
        "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "open_by_handle_at": 304, "init_module": 175, "finit_module": 313, "delete_module": 176,
        "create_module": 174, "query_module": 178, "get_kernel_syms": 177, "kexec_load": 246,
        "kexec_file_load": 320, "reboot": 169, "swapon": 167, "swapoff": 168, "settimeofday": 164,
        "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159, "sethostname": 170, "setdomainname": 171,
        "setns": 308, "unshare": 272, "clone": 56, "clone3": 435, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "acct": 163, "quotactl": 179, "quotactl_fd": 443, "lookup_dcookie": 212,
        "vhangup": 153, "iopl": 172, "ioperm": 173, "modify_ldt": 154, "syslog": 103, "uselib": 134,
        "_sysctl": 156, "nfsservctl": 180,
    },
    "i386": {
        "mount": 21, "umount": 22, "umount2": 52, "pivot_root": 217, "chroot": 61, "move_mount": 429,
        "open_tree": 428, "open_tree_attr": 467, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "ptrace": 26, "process_vm_readv": 347, "process_vm_writev": 348, "kcmp": 349,
        "pidfd_getfd": 438, "keyctl": 288, "add_key": 286, "request_key": 287, "bpf": 357, "perf_event_open": 336,
        "userfaultfd": 374, "open_by_handle_at": 342, "init_module": 128, "finit_module": 350,
        "delete_module": 129, "create_module": 127, "query_module": 167, "get_kernel_syms": 130,
        "kexec_load": 283, "reboot": 88, "swapon": 87, "swapoff": 115, "settimeofday": 79, "clock_settime": 264,
        "clock_settime64": 404, "clock_adjtime": 343, "clock_adjtime64": 405, "adjtimex": 124, "stime": 25,
        "sethostname": 74, "setdomainname": 121, "setns": 346, "unshare": 310, "clone": 120, "clone3": 435,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "acct": 51, "quotactl": 131,
        "quotactl_fd": 443, "lookup_dcookie": 253, "vhangup": 111, "iopl": 110, "ioperm": 101, "modify_ldt": 123,
        "vm86": 166, "vm86old": 113, "syslog": 103, "uselib": 86, "_sysctl": 149, "nfsservctl": 169,
    },
    "aarch64": {  # asm-generic/unistd.h, 64-bit
        "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "move_mount": 429, "open_tree": 428,
        "open_tree_attr": 467, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272, "pidfd_getfd": 438,
        "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
        "open_by_handle_at": 265, "init_module": 105, "finit_module": 273, "delete_module": 106,
        "kexec_load": 104, "kexec_file_load": 294, "reboot": 142, "swapon": 224, "swapoff": 225,
        "settimeofday": 170, "clock_settime": 112, "clock_adjtime": 266, "adjtimex": 171, "sethostname": 161,
        "setdomainname": 162, "setns": 268, "unshare": 97, "clone": 220, "clone3": 435, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "acct": 89, "quotactl": 60, "quotactl_fd": 443,
        "lookup_dcookie": 18, "vhangup": 58, "syslog": 116, "nfsservctl": 42,
    },
}
_AUDIT_ARCH = {"x86_64": AUDIT_ARCH_X86_64, "i386": AUDIT_ARCH_I386, "aarch64": AUDIT_ARCH_AARCH64}
_ABIS_OF_MACHINE = {"x86_64": ("x86_64", "i386"), "amd64": ("x86_64", "i386"), "aarch64": ("aarch64",),
                    "arm64": ("aarch64",)}


class _Program:
    """A tiny classic-BPF assembler: instructions with symbolic jump targets, resolved by `assemble`."""

    def __init__(self) -> None:
        self.code: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        assert name not in self.labels, name
        self.labels[name] = len(self.code)

    def load(self, offset: int) -> None:
        self.code.append((_LD_W_ABS, 0, 0, offset))

    def jump(self, op: int, value: int, if_true: str | int = 0, if_false: str | int = 0) -> None:
        """Conditional jump; a target is a label or 0 (the next instruction)."""
        self.code.append((op, if_true, if_false, value))

    def ret(self, value: int) -> None:
        self.code.append((_RET_K, 0, 0, value))

    def assemble(self) -> bytes:
        out = []
        for index, (op, if_true, if_false, value) in enumerate(self.code):
            offsets = []
            for target in (if_true, if_false):
                offset = target if isinstance(target, int) else self.labels[target] - index - 1
                assert 0 <= offset <= 255, f"BPF jump out of range at {index}: {offset}"  # jt/jf are u8
                offsets.append(offset)
            out.append(struct.pack("=HBBI", op, offsets[0], offsets[1], value & 0xFFFFFFFF))
        assert len(out) <= 4096, "BPF_MAXINSNS"
        return b"".join(out)


def _arg_low(index: int) -> int:
    assert sys.byteorder == "little"
    return 16 + 8 * index


def build_filter(abis: tuple[str, ...]) -> bytes:
    """The filter program for a machine whose ABIs are `abis` (native first); any other ABI is refused."""
    program = _Program()
    deny, no_sys = RET_ERRNO | errno.EPERM, RET_ERRNO | errno.ENOSYS
    program.load(4)  # arch
    for abi in abis:
        program.jump(_JMP_JEQ_K, _AUDIT_ARCH[abi], if_true=abi)
    program.ret(deny)  # an ABI without a table (x32 is checked below, ARM compat lands here)
    for abi in abis:
        numbers = SYSCALLS[abi]
        program.label(abi)
        program.load(0)  # nr
        if abi == "x86_64":
            program.jump(_JMP_JGE_K, X32_SYSCALL_BIT, if_true=f"{abi}.deny")
        program.jump(_JMP_JEQ_K, numbers["ptrace"], if_true=f"{abi}.ptrace")
        program.jump(_JMP_JEQ_K, numbers["clone"], if_true=f"{abi}.flags")
        program.jump(_JMP_JEQ_K, numbers["unshare"], if_true=f"{abi}.flags")
        program.jump(_JMP_JEQ_K, numbers["clone3"], if_true=f"{abi}.nosys")
        for name in REFUSED:
            if name in numbers:
                program.jump(_JMP_JEQ_K, numbers[name], if_true=f"{abi}.deny")
        program.ret(RET_ALLOW)
        program.label(f"{abi}.ptrace")  # refuse attaching to a process; a child's PTRACE_TRACEME is fine
        program.load(_arg_low(0))
        program.jump(_JMP_JEQ_K, PTRACE_ATTACH, if_true=f"{abi}.deny")
        program.jump(_JMP_JEQ_K, PTRACE_SEIZE, if_true=f"{abi}.deny")
        program.ret(RET_ALLOW)
        program.label(f"{abi}.flags")  # clone(flags, ...) and unshare(flags): no new namespaces
        program.load(_arg_low(0))
        program.jump(_JMP_JSET_K, CLONE_NEW_ANY, if_true=f"{abi}.deny")
        program.ret(RET_ALLOW)
        program.label(f"{abi}.nosys")
        program.ret(no_sys)
        program.label(f"{abi}.deny")
        program.ret(deny)
    return program.assemble()


@functools.lru_cache(maxsize=1)
def sandbox_filter() -> bytes:
    """The compiled filter for this machine; `SandboxError` on an architecture without tables."""
    machine = platform.machine().lower()
    abis = _ABIS_OF_MACHINE.get(machine)
    if abis is None or sys.byteorder != "little":
        raise SandboxError(f"lagoon has no seccomp tables for this machine ({machine}); set "
                           "agent.sandbox.seccomp = false to run without the system-call filter")
    return build_filter(abis)
