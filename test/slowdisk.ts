/**
 * The slow-disk recipe (see docs/development.md): run a command under strace, which
 * delays every fsync and fdatasync by `delayMs` and leaves other syscalls alone, as an SD card.
 */
export function slowDisk(delayMs = 15): string[] {
  return [
    'strace',
    '-f',
    '-qq',
    '--seccomp-bpf',
    '-o',
    '/dev/null',
    '-e',
    'trace=fsync,fdatasync',
    '-e',
    `inject=fsync,fdatasync:delay_enter=${delayMs * 1000}`,
  ];
}
