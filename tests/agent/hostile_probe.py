"""Runs inside a sandbox as a hostile agent would: tries to change the kernel's and the host's settings and
prints one JSON object {attempt: outcome}. An outcome is an errno name when refused and OK/WROTE/OPENED when
it went through. Standard library only (it runs under whatever Python the sandbox has).

Every attempt is harmless even where containment fails: a sysctl is written with the value it already holds
(printk_ratelimit, the issue's own reproduction, is left to the test that restores it), calls that would
change the machine get arguments the kernel rejects after its permission check (an invalid reboot magic, a
clock that cannot be set, kexec flags that do not exist) or only query (adjtimex with no modes), and what
could succeed acts on the sandbox itself (its own UTS and mount namespaces, its own child).

    python3 hostile_probe.py '{"numbers": {name: number, ...}}'    # the native ABI's syscall numbers
"""

import ctypes
import errno
import json
import mmap
import os
import platform
import signal
import socket
import struct
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NUMBERS = json.loads(sys.argv[1])["numbers"]
report = {}


def outcome(result: int, success: str = "OK") -> str:
    if result != -1:
        return success
    code = ctypes.get_errno()
    return errno.errorcode.get(code, str(code))


def wrapper(name: str, *args) -> str:
    """Call glibc's own wrapper (its syscall numbers are independent of lagoon's tables)."""
    function = getattr(libc, name, None)
    if function is None:
        return "no-wrapper"
    ctypes.set_errno(0)
    return outcome(function(*args))


def raw(name: str, *args) -> str:
    ctypes.set_errno(0)
    return outcome(libc.syscall(ctypes.c_long(NUMBERS[name]), *[ctypes.c_long(a) for a in args]))


def isolated(function) -> str:
    """`function`'s outcome, run in a child process, so that an attempt that succeeds (a new namespace, a
    mount, a chroot) cannot change what the next attempt starts from."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, function().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as handle:
        return handle.read() or "child-died"


def attempt(key, function) -> None:
    try:
        report[key] = function()
    except OSError as error:
        report[key] = errno.errorcode.get(error.errno, str(error.errno))


# /proc/sys: open for writing; write back the value it holds if that ever succeeds.
for path in ["kernel/core_pattern", "kernel/panic", "vm/overcommit_memory", "fs/file-max", "kernel/sysrq",
             "kernel/hostname", "kernel/domainname", "vm/drop_caches", "net/ipv4/ip_forward"]:
    def write_same(path=f"/proc/sys/{path}"):
        fd = os.open(path, os.O_WRONLY)
        try:
            if path.endswith("drop_caches"):
                return "OPENED"  # never written: the open alone is the breach
            with open(path) as handle:
                os.write(fd, handle.read().encode())
            return "WROTE"
        finally:
            os.close(fd)
    attempt(f"proc_sys:{path}", write_same)
attempt("access_w:/proc/sys/kernel/core_pattern",
        lambda: "OK" if os.access("/proc/sys/kernel/core_pattern", os.W_OK) else "EACCES")
attempt("sysrq_trigger", lambda: os.close(os.open("/proc/sysrq-trigger", os.O_WRONLY)) or "OPENED")
attempt("sys", lambda: str(sorted(os.listdir("/sys"))))

# Host and domain names: the current values, so nothing changes even if allowed.
hostname = socket.gethostname().encode()
report["sethostname"] = wrapper("sethostname", hostname, len(hostname))
with open("/proc/sys/kernel/domainname") as handle:
    domain = handle.read().strip().encode()
report["setdomainname"] = wrapper("setdomainname", domain, len(domain))

# The clock.
report["settimeofday"] = raw("settimeofday", 0, 0)  # no time and no zone: a no-op if allowed (glibc's wrapper
# would dereference the null time)
timespec = (ctypes.c_long * 2)(int(time.monotonic()), 0)
report["clock_settime"] = wrapper("clock_settime", 1, timespec)  # CLOCK_MONOTONIC cannot be set: EINVAL if allowed
timex = ctypes.create_string_buffer(512)  # struct timex with modes = 0: a query
report["adjtimex"] = wrapper("adjtimex", timex)
report["clock_adjtime"] = wrapper("clock_adjtime", 0, timex)

# Kernel modules, kexec, reboot, swap, accounting: arguments the kernel rejects after its permission check.
report["init_module"] = wrapper("init_module", None, 0, b"")
report["finit_module"] = raw("finit_module", -1, 0, 0)
report["delete_module"] = wrapper("delete_module", b"lagoon_no_such_module", os.O_NONBLOCK)
report["kexec_load"] = raw("kexec_load", 0, 0, 0, 0xDEAD0000)
report["reboot"] = raw("reboot", 0, 0, 0, 0)  # magic 0: EINVAL even for a process allowed to reboot
report["swapon"] = wrapper("swapon", b"/nonexistent-swap", 0)
report["acct"] = wrapper("acct", b"/nonexistent-acct")
report["syslog"] = wrapper("klogctl", 10, None, 0)  # SYSLOG_ACTION_SIZE_BUFFER: a read of the kernel log's size

# Mounts and the root.
report["mount"] = isolated(lambda: wrapper("mount", b"none", b"/tmp", b"tmpfs", 0, None))
report["umount2"] = isolated(lambda: wrapper("umount2", b"/proc", 2))  # MNT_DETACH
report["fsopen"] = isolated(lambda: wrapper("fsopen", b"tmpfs", 0))
report["open_tree"] = isolated(lambda: wrapper("open_tree", -100, b"/tmp", 1))  # AT_FDCWD, OPEN_TREE_CLONE
report["chroot"] = isolated(lambda: wrapper("chroot", b"/tmp"))

# Namespaces.
report["unshare_user"] = isolated(lambda: wrapper("unshare", 0x10000000))
report["unshare_mount"] = isolated(lambda: wrapper("unshare", 0x00020000))
report["unshare_net"] = isolated(lambda: wrapper("unshare", 0x40000000))
report["unshare_files"] = isolated(lambda: wrapper("unshare", 0x400))  # CLONE_FILES: no namespace, allowed
report["setns"] = isolated(lambda: wrapper("setns", os.open("/proc/self/ns/net", os.O_RDONLY), 0))
report["clone3"] = isolated(lambda: raw("clone3", 0, 0))

# Other processes: a child of our own, which PTRACE_ATTACH and process_vm_readv must not reach.
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
report["ptrace_attach"] = wrapper("ptrace", 16, child, None, None)
report["ptrace_seize"] = wrapper("ptrace", 0x4206, child, None, None)
local = (ctypes.c_char * 8)()
iovec = struct.pack("=QQ", ctypes.addressof(local), 8)
local_iov = ctypes.create_string_buffer(iovec)
report["process_vm_readv"] = wrapper("process_vm_readv", child, local_iov, 1, local_iov, 1, 0)
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
traced = os.fork()  # what a debugger does with its own inferior stays allowed
if traced == 0:
    os._exit(0 if libc.ptrace(0, 0, None, None) == 0 else 1)  # PTRACE_TRACEME
report["ptrace_traceme"] = "OK" if os.waitpid(traced, 0)[1] == 0 else "refused"

# Keyrings, eBPF, perf events, userfaultfd, io_uring, file handles.
report["keyctl"] = raw("keyctl", 0, -2, 0)  # KEYCTL_GET_KEYRING_ID of the process keyring
key_type = ctypes.create_string_buffer(b"user")  # buffers the kernel may read or write stay alive
report["add_key"] = raw("add_key", ctypes.addressof(key_type), 0, 0, 0, -2)
attr = ctypes.create_string_buffer(128)
report["bpf"] = raw("bpf", 0, ctypes.addressof(attr), 128)  # BPF_MAP_CREATE of nothing: EINVAL if allowed
struct.pack_into("=II", attr, 0, 1, 128)  # PERF_TYPE_SOFTWARE, size 128, config 0 (cpu-clock)
report["perf_event_open"] = raw("perf_event_open", ctypes.addressof(attr), 0, -1, -1, 0)
report["userfaultfd"] = raw("userfaultfd", 1)  # UFFD_USER_MODE_ONLY
uring_params = ctypes.create_string_buffer(120)  # struct io_uring_params, which the kernel fills in
report["io_uring_setup"] = raw("io_uring_setup", 1, ctypes.addressof(uring_params))
report["open_by_handle_at"] = wrapper("open_by_handle_at", -100, ctypes.create_string_buffer(136), 0)

# Raw and packet sockets.
attempt("raw_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close() or "OK")
attempt("packet_socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close() or "OK")

if platform.machine() == "x86_64":
    # The 32-bit ABI through int 0x80 from this 64-bit process, and the x32 ABI: same calls, other numbers.
    def int80(nr: int, a: int = 0, b: int = 0, c: int = 0) -> int:
        code = (b"\x53\xb8" + struct.pack("<I", nr) + b"\xbb" + struct.pack("<I", a & 0xFFFFFFFF) + b"\xb9"
                + struct.pack("<I", b & 0xFFFFFFFF) + b"\xba" + struct.pack("<I", c & 0xFFFFFFFF) + b"\xcd\x80\x5b\xc3")
        page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(code)
        function = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
        return function()

    def int80_outcome(result: int) -> str:
        return "OK" if result >= 0 else errno.errorcode.get(-result, str(-result))

    # Each in a child: a kernel without IA32 emulation answers int 0x80 with SIGSEGV ("child-died").
    report["i386_getpid"] = isolated(lambda: int80_outcome(int80(20)))
    report["i386_keyctl"] = isolated(lambda: int80_outcome(int80(288, 0, -2, 0)))
    report["i386_unshare_user"] = isolated(lambda: int80_outcome(int80(310, 0x10000000)))
    report["i386_mount"] = isolated(lambda: int80_outcome(int80(21)))
    report["i386_sethostname"] = isolated(lambda: int80_outcome(int80(74, 0, 0)))
    report["x32_getpid"] = outcome(libc.syscall(ctypes.c_long(39 | 0x40000000)))

with open("/proc/self/status") as handle:
    status = dict(line.split(":\t", 1) for line in handle.read().splitlines() if ":\t" in line)
report["status"] = {key: status[key].strip() for key in ("Uid", "Gid", "CapEff", "CapPrm", "CapBnd", "CapAmb",
                                                         "NoNewPrivs", "Seccomp")}
with open("/proc/self/mountinfo") as handle:
    report["mountinfo"] = handle.read()
print(json.dumps(report))
