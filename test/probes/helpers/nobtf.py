#!/usr/bin/env python3
"""Run a command as if the kernel had no BTF (like a stock Raspberry Pi OS kernel).

Hiding /sys/kernel/btf/vmlinux in a private mount namespace is not enough for bpftrace 0.17: it
also fetches the kernel's BTF by id through the bpf() syscall (BPF_BTF_GET_NEXT_ID, then
BPF_BTF_GET_FD_BY_ID). So, after the caller has hidden the file, this installs a seccomp filter
that fails exactly those two bpf() commands with EPERM, then execs the command.

Usage: unshare -m sh -c 'mount --bind /dev/null /sys/kernel/btf/vmlinux && exec python3 nobtf.py CMD...'
"""
import ctypes
import os
import platform
import struct
import sys

# Syscall number of bpf() per architecture (asm/unistd.h).
BPF_NR = {'x86_64': 321, 'aarch64': 280, 'armv7l': 386, 'armv6l': 386}[platform.machine()]
BPF_BTF_GET_FD_BY_ID = 19
BPF_BTF_GET_NEXT_ID = 23
EPERM = 1

# Classic BPF over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6];}.
LD_W_ABS = 0x20
JEQ_K = 0x15
RET_K = 0x06
ALLOW = 0x7FFF0000
ERRNO = 0x00050000 | EPERM


def insn(code, jt, jf, k):
    return struct.pack('HBBI', code, jt, jf, k)


prog = b''.join([
    insn(LD_W_ABS, 0, 0, 0),                       # A = nr
    insn(JEQ_K, 0, 3, BPF_NR),                     # not bpf(): allow
    insn(LD_W_ABS, 0, 0, 16),                      # A = low 32 bits of args[0] (the command)
    insn(JEQ_K, 2, 0, BPF_BTF_GET_NEXT_ID),
    insn(JEQ_K, 1, 0, BPF_BTF_GET_FD_BY_ID),
    insn(RET_K, 0, 0, ALLOW),
    insn(RET_K, 0, 0, ERRNO),
])
count = len(prog) // 8
buf = ctypes.create_string_buffer(prog)


class SockFprog(ctypes.Structure):
    _fields_ = [('len', ctypes.c_ushort), ('filter', ctypes.c_void_p)]


fprog = SockFprog(count, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
    sys.exit(f'prctl(NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}')
if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
    sys.exit(f'prctl(SECCOMP) failed: {os.strerror(ctypes.get_errno())}')
os.execvp(sys.argv[1], sys.argv[1:])
