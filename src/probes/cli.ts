/**
 * `edgekeeper probes`: status and latest percentiles from a running daemon (GET /v1/probes).
 * `edgekeeper doctor`: checks this machine for what the probes need and prints the fixes.
 */
import { type CliCommand, DEFAULT_HTTP, daemonJson, defineCommand, output } from '../cli.js';
import { PROBE_NAMES, PROBES } from './catalog.js';
import { checkEnvironment, type HostAccess } from './environment.js';

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
    usage: `Usage: edgekeeper doctor [--bpftrace PATH] [--tracefs DIR] [--no-mount] [-w simple|table|json]

Checks, on this machine: root with CAP_BPF + CAP_PERFMON, the bpftrace binary and its version,
setpriv, tracefs (mounted when missing and allowed, unless --no-mount), BTF (not needed), and
every tracepoint each probe attaches to. Prints what is missing with the exact fix.
Exit code 0 when every probe can run, 1 otherwise.`,
    options: {
      bpftrace: { type: 'string', value: 'PATH', default: 'bpftrace' },
      tracefs: { type: 'string', value: 'DIR', default: '/sys/kernel/tracing' },
      'no-mount': { type: 'boolean' },
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
      const allOk = PROBE_NAMES.every((p) => report.unavailable[p] === undefined);
      output(format, {
        json: { ok: allOk, ...report },
        table: report.checks.map((c) => ({
          check: c.name,
          ok: c.ok ? 'ok' : 'FAIL',
          detail: c.detail,
          fix: c.fix,
        })),
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

export const probesCliCommands: CliCommand[] = [probesCommand, doctorCommand()];
