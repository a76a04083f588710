/**
 * `edgekeeper probes`: status and latest percentiles from a running daemon (GET /v1/probes).
 * `edgekeeper doctor`: checks this machine for what the probes need and prints the fixes.
 */
import { parseArgs } from 'node:util';
import type { CliCommand } from '../part.js';
import { PROBE_NAMES, PROBES } from './catalog.js';
import { release } from 'node:os';
import { type CheckItem, checkEnvironment, type HostAccess, realHost } from './environment.js';
import { checkUnit, loadUnit, parseSyscallGroups } from './unit.js';

function fmtMs(v: unknown): string {
  return typeof v === 'number'
    ? v < 1
      ? `${(v * 1000).toFixed(0)} us`
      : `${v.toFixed(v < 10 ? 2 : 0)} ms`
    : '-';
}

function pct(label: string, p: unknown): string {
  if (!p || typeof p !== 'object') return `  ${label.padEnd(12)} no data yet`;
  const x = p as Record<string, unknown>;
  return `  ${label.padEnd(12)} p50 ${fmtMs(x.p50Ms).padStart(8)}  p90 ${fmtMs(x.p90Ms).padStart(8)}  p99 ${fmtMs(x.p99Ms).padStart(8)}  (${x.count} events)`;
}

export const probesCommand: CliCommand = {
  name: 'probes',
  summary: 'Show each eBPF probe’s state and the latest latency percentiles of a running daemon',
  usage: `Usage: edgekeeper probes [--http HOST:PORT] [--json]

Asks the running daemon (GET /v1/probes) for each probe's state - running, idle (duty cycle)
or unavailable: <reason> - and the latest p50/p90/p99 of fsync, the daemon's own fsync, runqlat
and biolat per device. --http defaults to 127.0.0.1:9480. --json prints the raw answer.
Run \`edgekeeper doctor\` to see why a probe is unavailable and how to fix it.`,
  async run(args) {
    let values: { http?: string; json?: boolean; help?: boolean };
    try {
      ({ values } = parseArgs({
        args,
        options: {
          http: { type: 'string' },
          json: { type: 'boolean' },
          help: { type: 'boolean', short: 'h' },
        },
      }));
    } catch (err) {
      process.stderr.write(`${(err as Error).message}\n${probesCommand.usage}\n`);
      return 2;
    }
    if (values.help) {
      process.stdout.write(`${probesCommand.usage}\n`);
      return 0;
    }
    const http = values.http ?? '127.0.0.1:9480';
    let body: Record<string, unknown>;
    try {
      const res = await fetch(`http://${http}/v1/probes`, { signal: AbortSignal.timeout(5000) });
      if (!res.ok) throw new Error(`HTTP ${res.status}: ${(await res.text()).slice(0, 200)}`);
      body = (await res.json()) as Record<string, unknown>;
    } catch (err) {
      process.stderr.write(
        `cannot reach the daemon at ${http}: ${(err as Error).message}\nIs edgekeeper running? (--http HOST:PORT)\n`,
      );
      return 1;
    }
    if (values.json) {
      process.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
      return 0;
    }
    const probes = (body.probes ?? {}) as Record<string, string>;
    const out: string[] = ['probe       state'];
    for (const p of PROBE_NAMES) out.push(`${p.padEnd(11)} ${probes[p] ?? '-'}`);
    const latest = (body.latest ?? {}) as Record<string, unknown>;
    out.push('', 'latest interval:');
    out.push(pct('fsync', latest.fsync), pct('fsync (own)', latest.fsyncOwn), pct('runqlat', latest.runqlat));
    for (const [dev, p] of Object.entries((latest.biolat ?? {}) as Record<string, unknown>))
      out.push(pct(`biolat ${dev}`, p));
    const oom = body.lastOomKill as Record<string, unknown> | undefined;
    if (oom)
      out.push(
        '',
        `last OOM kill: pid ${oom.pid} (${oom.comm}) at ${new Date(Number(oom.at)).toISOString()}`,
      );
    process.stdout.write(`${out.join('\n')}\n`);
    return 0;
  },
};

/** `doctor` with an injectable host, so tests can play a machine without root or tracefs. */
export function doctorCommand(host?: HostAccess): CliCommand {
  const cmd: CliCommand = {
    name: 'doctor',
    summary: 'Check this machine for what the eBPF probes need, and say how to fix what is missing',
    usage: `Usage: edgekeeper doctor [--bpftrace PATH] [--tracefs DIR] [--no-mount] [--unit [--unit-file FILE]] [--json]

Checks, on this machine: root with CAP_BPF + CAP_PERFMON, the bpftrace binary and its version,
setpriv, tracefs (mounted when missing and allowed, unless --no-mount), BTF (not needed), and
every tracepoint each probe attaches to. Prints what is missing with the exact fix.
--unit also checks edgekeeper.service as systemd loads it (or --unit-file FILE alone): its
system call filter, capabilities, user and memlock limit against what bpftrace needs, the
program it runs, and a second unit file hiding the first. A shell has none of the unit's
sandbox, so without --unit a probe can pass here and still fail under systemd.
Exit code 0 when every probe can run (and the unit lets them), 1 otherwise.`,
    async run(args) {
      let values: {
        bpftrace?: string;
        tracefs?: string;
        'no-mount'?: boolean;
        unit?: boolean;
        'unit-file'?: string;
        json?: boolean;
        help?: boolean;
      };
      try {
        ({ values } = parseArgs({
          args,
          options: {
            bpftrace: { type: 'string' },
            tracefs: { type: 'string' },
            'no-mount': { type: 'boolean' },
            unit: { type: 'boolean' },
            'unit-file': { type: 'string' },
            json: { type: 'boolean' },
            help: { type: 'boolean', short: 'h' },
          },
        }));
      } catch (err) {
        process.stderr.write(`${(err as Error).message}\n${cmd.usage}\n`);
        return 2;
      }
      if (values.help) {
        process.stdout.write(`${cmd.usage}\n`);
        return 0;
      }
      const report = await checkEnvironment({
        bpftracePath: values.bpftrace ?? 'bpftrace',
        tracefsDir: values.tracefs ?? '/sys/kernel/tracing',
        mountTracefs: !values['no-mount'],
        probes: PROBE_NAMES,
        host,
      });
      const unit =
        values.unit || values['unit-file'] ? await unitChecks(values['unit-file'], host) : undefined;
      const allOk =
        PROBE_NAMES.every((p) => report.unavailable[p] === undefined) && (unit?.every((c) => c.ok) ?? true);
      if (values.json) {
        process.stdout.write(`${JSON.stringify({ ok: allOk, ...report, unit }, null, 2)}\n`);
        return allOk ? 0 : 1;
      }
      const out: string[] = [];
      for (const c of report.checks) {
        out.push(`${c.ok ? 'ok  ' : 'FAIL'} ${c.name}: ${c.detail}`);
        if (!c.ok && c.fix) out.push(`     fix: ${c.fix}`);
      }
      out.push('');
      for (const p of PROBE_NAMES) {
        const why = report.unavailable[p];
        out.push(`${p.padEnd(11)} ${why ? `unavailable: ${why}` : 'can run'}  (${PROBES[p].summary})`);
      }
      if (unit) {
        out.push('', 'systemd unit:');
        for (const c of unit) {
          out.push(`${c.ok ? 'ok  ' : 'FAIL'} ${c.name}: ${c.detail}`);
          if (!c.ok && c.fix) out.push(`     fix: ${c.fix}`);
        }
      }
      if (!allOk && report.checks.some((c) => !c.ok && (c.name === 'root' || c.name === 'capabilities'))) {
        out.push(
          '',
          'systemd: run as root (no User=) with CapabilityBoundingSet=CAP_BPF CAP_PERFMON (add CAP_SYS_ADMIN only to let edgekeeper mount tracefs).',
        );
      }
      process.stdout.write(`${out.join('\n')}\n`);
      return allOk ? 0 : 1;
    },
  };
  return cmd;
}

/** The unit's checks; never throws (a missing unit or systemd-analyze is a failed check). */
async function unitChecks(file: string | undefined, host: HostAccess = realHost): Promise<CheckItem[]> {
  let unit: ReturnType<typeof loadUnit>;
  try {
    unit = loadUnit('edgekeeper.service', file);
  } catch (err) {
    return [{ name: 'unit', ok: false, detail: (err as Error).message }];
  }
  if (!unit) {
    return [
      {
        name: 'unit',
        ok: false,
        detail: 'edgekeeper.service is not installed',
        fix: 'install the edgekeeper package (docs/operations.md)',
      },
    ];
  }
  const r = await host.run('systemd-analyze', ['syscall-filter', '--no-pager'], 15_000);
  if (r.code !== 0) {
    return [
      {
        name: 'SystemCallFilter',
        ok: false,
        detail: `systemd-analyze syscall-filter failed: ${r.stderr.trim().slice(0, 120)}`,
        fix: 'apt-get install systemd',
      },
    ];
  }
  return checkUnit({ unit, groups: parseSyscallGroups(r.stdout), kernelRelease: release() });
}

export const probesCliCommands: CliCommand[] = [probesCommand, doctorCommand()];
