/**
 * `edgekeeper probes`: status and latest percentiles from a running daemon (GET /v1/probes).
 * `edgekeeper doctor`: checks this machine for what the probes need and prints the fixes.
 */
import { release } from 'node:os';
import { type CliCommand, DEFAULT_HTTP, daemonJson, defineCommand, output } from '../cli.js';
import { PROBE_NAMES, PROBES } from './catalog.js';
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

export const probesCommand: CliCommand = defineCommand({
  name: 'probes',
  summary: 'Show each eBPF probe’s state and the latest latency percentiles of a running daemon',
  usage: `Usage: edgekeeper probes [--http HOST:PORT] [-w simple|table|json]

Asks the running daemon (GET /v1/probes) for each probe's state - running, idle (duty cycle)
or unavailable: <reason> - and the latest p50/p90/p99 of fsync, the daemon's own fsync, runqlat
and biolat per device. --http defaults to ${DEFAULT_HTTP}. -w json (or --json) prints the raw answer.
Run \`edgekeeper doctor\` to see why a probe is unavailable and how to fix it.`,
  options: { http: { type: 'string', value: 'HOST:PORT', default: DEFAULT_HTTP } },
  formats: ['simple', 'table', 'json'],
  async main({ values, format }) {
    const { body } = await daemonJson<Record<string, unknown>>(values.http as string, 'GET', '/v1/probes');
    const probes = (body.probes ?? {}) as Record<string, string>;
    const latest = (body.latest ?? {}) as Record<string, Record<string, unknown> | undefined>;
    output(format, {
      json: body,
      table: PROBE_NAMES.map((p) => {
        const l = latest[p];
        return {
          probe: p,
          state: probes[p] ?? '-',
          p50: fmtMs(l?.p50Ms),
          p90: fmtMs(l?.p90Ms),
          p99: fmtMs(l?.p99Ms),
        };
      }),
      simple: () => {
        const out: string[] = ['probe       state'];
        for (const p of PROBE_NAMES) out.push(`${p.padEnd(11)} ${probes[p] ?? '-'}`);
        out.push('', 'latest interval:');
        out.push(
          pct('fsync', latest.fsync),
          pct('fsync (own)', latest.fsyncOwn),
          pct('runqlat', latest.runqlat),
        );
        for (const [dev, p] of Object.entries((latest.biolat ?? {}) as Record<string, unknown>))
          out.push(pct(`biolat ${dev}`, p));
        const oom = body.lastOomKill as Record<string, unknown> | undefined;
        if (oom)
          out.push(
            '',
            `last OOM kill: pid ${oom.pid} (${oom.comm}) at ${new Date(Number(oom.at)).toISOString()}`,
          );
        return out;
      },
    });
    return 0;
  },
});

/** `doctor` with an injectable host, so tests can play a machine without root or tracefs. */
export function doctorCommand(host?: HostAccess): CliCommand {
  return defineCommand({
    name: 'doctor',
    summary: 'Check this machine for what the eBPF probes need, and say how to fix what is missing',
    usage: `Usage: edgekeeper doctor [--bpftrace PATH] [--tracefs DIR] [--no-mount] [--unit [--unit-file FILE]] [-w simple|table|json]

Checks, on this machine: root with CAP_BPF + CAP_PERFMON, the bpftrace binary and its version,
setpriv, tracefs (mounted when missing and allowed, unless --no-mount), BTF (not needed), and
every tracepoint each probe attaches to. Prints what is missing with the exact fix.
--unit also checks edgekeeper.service as systemd loads it (or --unit-file FILE alone): its
system call filter, capabilities, user and memlock limit against what bpftrace needs, the
program it runs, and a second unit file hiding the first. A shell has none of the unit's
sandbox, so without --unit a probe can pass here and still fail under systemd.
Exit code 0 when every probe can run (and the unit lets them), 1 otherwise.`,
    options: {
      bpftrace: { type: 'string', value: 'PATH', default: 'bpftrace' },
      tracefs: { type: 'string', value: 'DIR', default: '/sys/kernel/tracing' },
      'no-mount': { type: 'boolean' },
      unit: { type: 'boolean' },
      'unit-file': { type: 'string', value: 'FILE' },
    },
    formats: ['simple', 'table', 'json'],
    async main({ values, format }) {
      const report = await checkEnvironment({
        bpftracePath: values.bpftrace as string,
        tracefsDir: values.tracefs as string,
        mountTracefs: !values['no-mount'],
        probes: PROBE_NAMES,
        host,
      });
      const unit =
        values.unit || values['unit-file']
          ? await unitChecks(values['unit-file'] as string | undefined, host)
          : undefined;
      const allOk =
        PROBE_NAMES.every((p) => report.unavailable[p] === undefined) && (unit?.every((c) => c.ok) ?? true);
      output(format, {
        json: { ok: allOk, ...report, unit },
        table: [...report.checks, ...(unit ?? []).map((c) => ({ ...c, name: `unit: ${c.name}` }))].map(
          (c) => ({
            check: c.name,
            ok: c.ok ? 'ok' : 'FAIL',
            detail: c.detail,
            fix: c.fix,
          }),
        ),
        simple: () => {
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
          if (
            !allOk &&
            report.checks.some((c) => !c.ok && (c.name === 'root' || c.name === 'capabilities'))
          ) {
            out.push(
              '',
              'systemd: run as root (no User=) with CapabilityBoundingSet=CAP_BPF CAP_PERFMON (add CAP_SYS_ADMIN only to let edgekeeper mount tracefs).',
            );
          }
          return out;
        },
      });
      return allOk ? 0 : 1;
    },
  });
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
