/**
 * The operator pages, rendered on the server as plain HTML: no script at all (the Content
 * Security Policy forbids it), forms for every action, one stylesheet. Every text from a node or
 * the database goes through esc(); node names in paths through encodeURIComponent.
 */
import type { HealthSummary } from '../codec.js';
import {
  type EventView,
  fmtDuration,
  type Health,
  HEALTH_STATES,
  type ListQuery,
  type ListResult,
  type NodeDetail,
  type NodeRowView,
} from './nodes.js';

export const CSP =
  "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

export function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const LABEL: Record<Health, string> = {
  stale: 'STALE',
  alert: 'ALERT',
  warn: 'WARN',
  ok: 'OK',
  revoked: 'REVOKED',
  retired: 'RETIRED',
};

function badge(h: Health): string {
  return `<span class="badge b-${h}">${LABEL[h]}</span>`;
}

export function ago(t: Date | null, now: number): string {
  if (!t) return 'never';
  const s = (now - t.getTime()) / 1000;
  if (s < -5) return `in ${fmtDuration(-s)}`;
  return s < 5 ? 'just now' : `${fmtDuration(s)} ago`;
}

function when(t: Date | null, now: number): string {
  if (!t) return '<span class="muted">never</span>';
  return `<time datetime="${t.toISOString()}" title="${t.toISOString()}">${ago(t, now)}</time>`;
}

const num = (n: number) => n.toLocaleString('en-US');

function nodeHref(name: string): string {
  return `/nodes/${encodeURIComponent(name)}`;
}

export interface PageContext {
  now: number;
  /** The session's CSRF token; absent: no write forms (read-only or Basic/bearer). */
  csrf?: string;
  /** Signed in with a session (shows "log out"). */
  session: boolean;
  /** No admin token on this server: everything is read-only. */
  readOnly: boolean;
}

function shell(title: string, body: string, ctx: PageContext): string {
  const right = ctx.session
    ? `<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" value="${esc(ctx.csrf ?? '')}"><button class="link">Log out</button></form>`
    : '';
  const ro = ctx.readOnly
    ? '<div class="note">Read-only: this fleet server runs without an admin token, so nothing can be changed here.</div>'
    : '';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/ui.css"></head>
<body><header><a class="home" href="/">edgekeeper fleet</a><span class="grow"></span>
<span class="muted">as of ${new Date(ctx.now).toISOString().slice(0, 19).replace('T', ' ')} UTC</span>${right}</header>
${ro}<main>${body}</main></body></html>`;
}

function csrfField(ctx: PageContext): string {
  return `<input type="hidden" name="csrf" value="${esc(ctx.csrf ?? '')}">`;
}

// --- the node list ----------------------------------------------------------------------------

function listHref(
  q: Required<ListQuery>,
  state: string,
  over: Partial<Record<string, string | number>> = {},
): string {
  const p = new URLSearchParams();
  const v: Record<string, string | number> = {
    state,
    q: q.q,
    sort: q.sort,
    limit: q.limit,
    page: 1,
    ...over,
  } as Record<string, string | number>;
  if (v.state && v.state !== 'active') p.set('state', String(v.state));
  if (v.q) p.set('q', String(v.q));
  if (v.sort && v.sort !== 'health') p.set('sort', String(v.sort));
  if (v.limit && Number(v.limit) !== 50) p.set('limit', String(v.limit));
  if (v.page && Number(v.page) !== 1) p.set('page', String(v.page));
  const s = p.toString();
  return s ? `/?${s}` : '/';
}

function stateParam(q: Required<ListQuery>): string {
  const s = q.states;
  if (s.length === 1) return s[0]!;
  if (s.length === HEALTH_STATES.length) return 'all';
  if (s.length === 3 && !s.includes('ok')) return 'problems';
  return 'active';
}

function backlogCell(n: NodeRowView): string {
  if (!n.backlog) return '<span class="muted">–</span>';
  if (n.backlogRecords === 0) return '<span class="muted">0</span>';
  // The age matters once uploads fall behind; a few seconds is a node working normally.
  const age =
    n.oldestUnsentSeconds && n.oldestUnsentSeconds >= 60
      ? ` <span class="age">· ${fmtDuration(n.oldestUnsentSeconds)} old</span>`
      : '';
  return `${num(n.backlogRecords)}${age}`;
}

function versionCell(n: NodeRowView): string {
  const a = n.appliedVersion;
  const d = n.desiredVersion;
  if (!a && !d) return '<span class="muted">–</span>';
  if (d && a !== d)
    return `<span class="pending" title="applied ${esc(a ?? 'none')}, desired ${esc(d)}">${esc(a ?? '–')} → ${esc(d)}</span>`;
  return `${esc(a ?? '–')}`;
}

export function fleetPage(r: ListResult, q: Required<ListQuery>, ctx: PageContext, message?: string): string {
  const state = stateParam(q);
  const active = r.counts.stale + r.counts.alert + r.counts.warn + r.counts.ok + r.counts.revoked;
  const chip = (s: string, label: string, n: number) =>
    `<a class="chip c-${s}${state === s ? ' on' : ''}" href="${esc(listHref(q, s))}">${num(n)} ${label}</a>`;
  const chips = [
    chip('active', 'nodes', active),
    chip('problems', 'with problems', r.counts.stale + r.counts.alert + r.counts.warn),
    ...(['stale', 'alert', 'warn', 'ok', 'revoked', 'retired'] as const).map((h) =>
      chip(h, LABEL[h], r.counts[h]),
    ),
  ].join('');
  const sortLink = (key: ListQuery['sort'] & string, label: string) =>
    q.sort === key
      ? `<span class="sorted">${label} ▾</span>`
      : `<a href="${esc(listHref(q, state, { sort: key }))}">${label}</a>`;
  const rows = r.nodes
    .map(
      (n) => `<tr class="h-${n.health}"><td>${badge(n.health)}</td>
<td class="name"><a href="${esc(nodeHref(n.name))}">${esc(n.name)}</a></td>
<td class="problem" title="${esc(n.problem ?? '')}">${n.problem ? esc(n.problem) : '<span class="muted">–</span>'}</td>
<td>${when(n.lastSeen, ctx.now)}</td><td class="num">${backlogCell(n)}</td><td>${versionCell(n)}</td></tr>`,
    )
    .join('\n');
  const pages = Math.max(1, Math.ceil(r.total / r.limit));
  const from = r.total === 0 ? 0 : (r.page - 1) * r.limit + 1;
  const to = Math.min(r.total, r.page * r.limit);
  const nav = `<div class="pager">${r.nodes.length ? `${num(from)}–${num(to)} of ${num(r.total)}` : `no nodes on page ${num(r.page)}`}
${r.page > 1 ? `<a href="${esc(listHref(q, state, { page: r.page - 1 }))}">‹ previous</a>` : ''}
<span>page ${num(r.page)} of ${num(pages)}</span>
${r.page < pages ? `<a href="${esc(listHref(q, state, { page: r.page + 1 }))}">next ›</a>` : ''}</div>`;
  const stateOptions = ['active', 'problems', 'all', ...HEALTH_STATES]
    .map(
      (s) =>
        `<option value="${s}"${s === state ? ' selected' : ''}>${s === 'active' ? 'all but retired' : s}</option>`,
    )
    .join('');
  const limitOptions = [25, 50, 100, 200, 500]
    .map((l) => `<option${l === r.limit ? ' selected' : ''}>${l}</option>`)
    .join('');
  const add =
    ctx.csrf !== undefined
      ? `<details class="add"><summary>Add a node</summary><form method="post" action="/nodes">${csrfField(ctx)}
<input name="name" required maxlength="128" pattern="[A-Za-z0-9._\\-]{1,128}" placeholder="node name" aria-label="new node name">
<button>Add and show its token</button></form></details>`
      : '';
  const body = `${message ? `<div class="flash">${esc(message)}</div>` : ''}
<div class="bar"><nav class="chips">${chips}</nav>${add}</div>
<form class="filters" method="get" action="/">
<input type="search" name="q" value="${esc(q.q)}" maxlength="128" placeholder="search name or problem" aria-label="search">
<label>show <select name="state">${stateOptions}</select></label>
<label>per page <select name="limit">${limitOptions}</select></label>
${q.sort !== 'health' ? `<input type="hidden" name="sort" value="${esc(q.sort)}">` : ''}
<button>Apply</button>${q.q || state !== 'active' ? ' <a href="/">clear</a>' : ''}
<span class="grow"></span>${nav}
</form>
<table class="nodes"><thead><tr><th class="hcol">${sortLink('health', 'Health')}</th><th>${sortLink('name', 'Node')}</th><th>Problem</th>
<th>${sortLink('contact', 'Last contact')}</th><th class="num">${sortLink('backlog', 'Backlog')}</th><th>Version</th></tr></thead>
<tbody>
${rows || '<tr><td colspan="6" class="empty">No nodes match.</td></tr>'}
</tbody></table>
${nav}`;
  return shell(
    `edgekeeper fleet: ${num(r.counts.stale + r.counts.alert + r.counts.warn)} with problems`,
    body,
    ctx,
  );
}

// --- one node -----------------------------------------------------------------------------------

const EVENT_TONE: Record<string, string> = {
  'node.not_ready': 'alert',
  'node.ready': 'ok',
  'alert.raised': 'alert',
  'alert.cleared': 'ok',
  'uplink.down': 'warn',
  'uplink.up': 'ok',
  'disk.full': 'alert',
  'disk.ok': 'ok',
  'device.offline': 'warn',
  'device.online': 'ok',
  'sync.gap': 'warn',
};

function eventDetail(data: string | null): string {
  if (!data) return '';
  let text = data;
  try {
    const v = JSON.parse(data) as unknown;
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      const parts: string[] = [];
      const walk = (o: Record<string, unknown>, prefix: string) => {
        for (const [k, x] of Object.entries(o)) {
          if (x && typeof x === 'object' && !Array.isArray(x) && !prefix)
            walk(x as Record<string, unknown>, `${k}.`);
          else if (typeof x === 'number' && /Bytes$/.test(k)) parts.push(`${prefix}${k}: ${fmtBytes(x)}`);
          else
            parts.push(
              `${prefix}${k}: ${typeof x === 'object' && x !== null ? JSON.stringify(x) : String(x)}`,
            );
        }
      };
      walk(v as Record<string, unknown>, '');
      text = parts.join('; ');
    }
  } catch {
    // Not JSON: shown as it is.
  }
  return text.length > 300 ? `${text.slice(0, 299)}…` : text;
}

function fmtBytes(n: number | undefined): string {
  if (n === undefined) return '?';
  if (n < 1e6) return `${Math.round(n / 1e3)} KB`;
  if (n < 1e9) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e9).toFixed(2)} GB`;
}

function summaryRows(s: HealthSummary | null): string {
  if (!s)
    return '<tr><th>Node health</th><td class="muted">not reported (the node predates health upload, or never sent a batch)</td></tr>';
  const failing = Object.entries(s.failing);
  const ready = s.ready
    ? 'yes'
    : `<span class="t-alert">no</span><ul class="plain">${failing.map(([k, v]) => `<li><b>${esc(k)}</b>: ${esc(v)}</li>`).join('')}</ul>`;
  const d = s.disk;
  const disk = `${d.full ? '<span class="t-alert">FULL</span> · ' : ''}database ${fmtBytes(d.dbBytes)} of ${fmtBytes(d.quotaBytes)} quota · backlog ${fmtBytes(d.backlogBytes)} of ${fmtBytes(d.budgetBytes)}${
    d.usedBytes !== undefined && d.totalBytes
      ? ` · file system ${Math.round((d.usedBytes / d.totalBytes) * 100)}% used`
      : ''
  }`;
  const up = `${esc(s.uplink.state)}${s.uplink.lastError ? ` · last error: ${esc(s.uplink.lastError)}` : ''}`;
  return `<tr><th>Ready</th><td>${ready}</td></tr><tr><th>Disk</th><td>${disk}</td></tr><tr><th>Uplink</th><td>${up}</td></tr>`;
}

export interface NodePageData {
  node: NodeRowView & NodeDetail;
  events: EventView[];
  eventsFilter: 'health' | 'all';
  /** The desired state text to show in the form (after a refused edit: what was typed). */
  desiredText?: string;
  error?: string;
  message?: string;
}

export function nodePage(d: NodePageData, ctx: PageContext): string {
  const n = d.node;
  const s = n.summary;
  const href = nodeHref(n.name);
  const alerts = s?.alerts.length
    ? `<ul class="alerts">${s.alerts.map((a) => `<li><span class="sev s-${esc(a.severity)}">${esc(a.severity)}</span> ${esc(a.text)}</li>`).join('')}</ul>`
    : s
      ? '<p class="muted">No alerts in the latest batch.</p>'
      : '<p class="muted">Unknown.</p>';
  const frame = n.frameAt
    ? `<figure class="frame${n.health === 'stale' ? ' old' : ''}">${
        n.health === 'stale'
          ? `<div class="stale-note">STALE: this frame is from ${ago(n.frameAt, ctx.now)}; the node has not reported since ${ago(n.lastSeen, ctx.now)}</div>`
          : ''
      }<img src="${esc(`/v1/nodes/${encodeURIComponent(n.name)}/frame?t=${n.frameAt.getTime()}`)}" alt="status frame of ${esc(n.name)}">
<figcaption>Status frame uploaded ${when(n.frameAt, ctx.now)}</figcaption></figure>`
    : '<p class="muted frame-none">No status frame uploaded yet.</p>';
  const events = d.events.length
    ? `<table class="events"><thead><tr><th>When</th><th>Event</th><th>Subject</th><th>Details</th></tr></thead><tbody>${d.events
        .map(
          (e) =>
            `<tr><td>${e.ts ? when(e.ts, ctx.now) : esc(String(e.tsMs))}</td><td><span class="ev t-${EVENT_TONE[e.kind] ?? 'none'}">${esc(e.kind)}</span></td><td>${esc(e.subject ?? '')}</td><td class="detail">${esc(eventDetail(e.data))}</td></tr>`,
        )
        .join('')}</tbody></table>`
    : '<p class="muted">No events.</p>';
  const evLink = (f: 'health' | 'all', label: string) =>
    d.eventsFilter === f ? `<b>${label}</b>` : `<a href="${esc(`${href}?events=${f}`)}">${label}</a>`;
  const desiredJson = d.desiredText ?? (n.desiredKeys ? JSON.stringify(n.desiredKeys, null, 2) : '{}');
  const writable = ctx.csrf !== undefined && n.status !== 'decommissioned';
  const desired = `<h2>Desired state</h2>
<p>${n.desiredVersion ? `version ${esc(n.desiredVersion)}${n.desiredAt ? `, set ${when(n.desiredAt, ctx.now)}` : ''}` : 'none set'} · applied on the node: ${esc(n.appliedVersion ?? 'none')}${
    n.desiredVersion && n.appliedVersion !== n.desiredVersion
      ? ' <span class="pending">(not yet applied)</span>'
      : ''
  }</p>
${
  writable
    ? `<form method="post" action="${esc(`${href}/desired`)}" class="desired">${csrfField(ctx)}
<textarea name="keys" rows="8" spellcheck="false" aria-label="desired keys as JSON">${esc(desiredJson)}</textarea>
<button>Save as a new version</button> <span class="muted">a JSON object: key → value</span></form>`
    : `<pre class="json">${esc(desiredJson)}</pre>`
}`;
  const confirm = (action: string, label: string, what: string) =>
    `<details class="danger"><summary>${label}…</summary><form method="post" action="${esc(`${href}/${action}`)}">${csrfField(ctx)}<p>${what}</p><button class="${action}">${label} ${esc(n.name)}</button></form></details>`;
  const lifecycle =
    ctx.csrf !== undefined
      ? `<h2>Lifecycle</h2><div class="actions">${
          n.status === 'decommissioned'
            ? '<p class="muted">Decommissioned: its data stays, it can no longer upload.</p>'
            : `${confirm('rotate', n.status === 'revoked' ? 'Reinstate with a new token' : 'Rotate token', 'A new token is shown once; the current one is refused from then on.')}
${n.status === 'active' ? confirm('revoke', 'Revoke', 'Its token is refused at once (a stolen or lost node). A new token reinstates it.') : ''}
${confirm('decommission', 'Decommission', 'The node is gone for good: its token is dropped and it leaves the list. Its data stays.')}`
        }</div>`
      : '';
  const body = `${d.message ? `<div class="flash">${esc(d.message)}</div>` : ''}${d.error ? `<div class="error">${esc(d.error)}</div>` : ''}
<div class="title">${badge(n.health)} <h1>${esc(n.name)}</h1> <span class="problem t-${n.health}">${esc(n.problem ?? '')}</span></div>
<div class="node-grid"><section>
<table class="facts">
<tr><th>Last contact</th><td>${when(n.lastSeen, ctx.now)}${
    n.expectBy && n.status === 'active'
      ? n.expectBy.getTime() >= ctx.now
        ? ` · next batch due in ${fmtDuration((n.expectBy.getTime() - ctx.now) / 1000)}`
        : ` · <span class="t-stale">next batch overdue by ${fmtDuration((ctx.now - n.expectBy.getTime()) / 1000)}</span>`
      : ''
  }</td></tr>
<tr><th>Status</th><td>${esc(n.status)}${n.statusAt && n.status !== 'active' ? ` ${when(n.statusAt, ctx.now)}` : ''}${n.refusedAt ? ` · last refused upload ${when(n.refusedAt, ctx.now)}` : ''}</td></tr>
${summaryRows(s)}
<tr><th>Backlog</th><td>${n.backlog ? `${num(n.backlogRecords)} records (events ${num(n.backlog.events)}, reports ${num(n.backlog.reports)}, samples ${num(n.backlog.samples)})${n.oldestUnsentSeconds ? `, oldest ${fmtDuration(n.oldestUnsentSeconds)}` : ''}` : 'unknown'}</td></tr>
<tr><th>Batches</th><td>last seq ${num(n.lastSeq)}${n.stream ? ` · stream ${esc(n.stream)}` : ''}</td></tr>
<tr><th>Token</th><td>${n.tokenAt ? `set ${when(n.tokenAt, ctx.now)}` : 'none (client certificate only)'} · managed by ${n.managedBy === 'file' ? 'the nodes file' : 'the admin API'}</td></tr>
<tr><th>Added</th><td>${when(n.createdAt, ctx.now)}</td></tr>
</table>
<h2>Alerts now</h2>${alerts}
${desired}
${lifecycle}
</section><section>${frame}</section></div>
<h2>Events <span class="evf">${evLink('health', 'health')} · ${evLink('all', 'all')}</span></h2>
${events}`;
  return shell(`${n.name}: ${LABEL[n.health]}`, body, ctx);
}

// --- small pages -----------------------------------------------------------------------------------

export function loginPage(opts: { next: string; error?: string; now: number }): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgekeeper fleet: log in</title>
<link rel="stylesheet" href="/ui.css"></head><body class="login">
<form method="post" action="/login" class="login-box">
<h1>edgekeeper fleet</h1>
${opts.error ? `<div class="error">${esc(opts.error)}</div>` : ''}
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus maxlength="1024">
<input type="hidden" name="next" value="${esc(opts.next)}">
<button>Log in</button>
<p class="muted">The token the fleet server was started with (--admin-token).</p>
</form></body></html>`;
}

export function tokenPage(name: string, token: string, what: string, ctx: PageContext): string {
  const body = `<div class="title"><h1>${esc(what)}: ${esc(name)}</h1></div>
<p>This token is shown <b>once</b>. Put it on the node, in the file named by <code>sync.tokenFile</code>, then restart the node's daemon:</p>
<pre class="token">${esc(token)}</pre>
<p><a href="${esc(nodeHref(name))}">Go to ${esc(name)}</a> · <a href="/">Back to the fleet</a></p>`;
  return shell(`${what}: ${name}`, body, ctx);
}

export function errorPage(status: number, message: string, ctx: PageContext | undefined): string {
  const body = `<div class="error"><b>${status}</b> ${esc(message)}</div><p><a href="/">Back to the fleet</a></p>`;
  if (!ctx)
    return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${status}</title><link rel="stylesheet" href="/ui.css"></head><body><main>${body}</main></body></html>`;
  return shell(`${status}`, body, ctx);
}

export const STYLESHEET = `:root{--ok:#1a7f37;--warn:#a85d00;--alert:#c62828;--stale:#6b3fb8;--revoked:#37474f;--retired:#8a8f96;--line:#e4e6e9;--muted:#68707a}
*{box-sizing:border-box}
body{margin:0;font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1b1f24;background:#f6f7f8}
a{color:#0b5cad;text-decoration:none}a:hover{text-decoration:underline}
header{display:flex;align-items:center;gap:14px;padding:7px 16px;background:#1f2933;color:#dfe3e8}
header .home{color:#fff;font-weight:600;font-size:15px}
header .muted{color:#9aa5b1}
.grow{flex:1}
button{font:inherit;padding:3px 10px;border:1px solid #8a96a3;border-radius:3px;background:#fff;cursor:pointer}
button.link{border:0;background:none;color:#dfe3e8;text-decoration:underline;padding:0}
form.inline{display:inline}
main{padding:10px 16px 30px}
.muted{color:var(--muted)}
.note{background:#fff7e0;border-bottom:1px solid #e8d9a8;padding:6px 16px}
.flash{background:#e7f5ea;border:1px solid #b9dfc2;padding:6px 10px;margin-bottom:8px;border-radius:3px}
.error{background:#fdecea;border:1px solid #f3bab4;padding:6px 10px;margin-bottom:8px;border-radius:3px;color:#8a1c12}
.bar{display:flex;align-items:flex-start;gap:12px;margin-bottom:6px}
.chips{display:flex;flex-wrap:wrap;gap:6px;flex:1}
.chip{padding:2px 9px;border-radius:12px;background:#e9ecef;color:#1b1f24;border:1px solid transparent;white-space:nowrap}
.chip.on{border-color:#1b1f24;font-weight:600}
.c-stale{background:#ece4f8}.c-alert{background:#fbe3e1}.c-warn{background:#fdf0d9}.c-ok{background:#e3f2e6}.c-revoked{background:#dde3e6}.c-retired{background:#eceeef}
details.add summary{cursor:pointer;color:#0b5cad}
details.add form{margin-top:4px;display:flex;gap:6px}
.filters{display:flex;align-items:center;gap:10px;margin:6px 0 8px}
.filters input[type=search]{width:280px;padding:3px 6px;border:1px solid #a9b2bc;border-radius:3px}
select,input,textarea{font:inherit}
.badge{display:inline-block;min-width:64px;padding:1px 6px;border-radius:3px;font-weight:700;font-size:11px;letter-spacing:.03em;text-align:center;color:#fff}
.b-ok{background:var(--ok)}.b-warn{background:var(--warn)}.b-alert{background:var(--alert)}.b-stale{background:var(--stale)}.b-revoked{background:var(--revoked)}.b-retired{background:var(--retired)}
table.nodes{width:100%;border-collapse:collapse;background:#fff;border:1px solid var(--line);table-layout:fixed}
table.nodes th{position:sticky;top:0;background:#eef0f2;text-align:left;font-weight:600;padding:5px 8px;border-bottom:1px solid #c9ced4;white-space:nowrap}
table.nodes th.hcol{width:92px}
table.nodes th:nth-child(2){width:17%}table.nodes th:nth-child(4){width:12%}table.nodes th:nth-child(5){width:12%}table.nodes th:nth-child(6){width:9%}
table.nodes td{padding:3px 8px;border-bottom:1px solid var(--line);white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
table.nodes tr:hover td{background:#f3f7fb}
.name a{font-weight:600}
.num{text-align:right}
.sorted{font-weight:700}
.h-alert .problem{color:var(--alert)}.h-warn .problem{color:var(--warn)}.h-stale .problem{color:var(--stale)}.h-revoked .problem,.h-retired .problem{color:var(--muted)}
.pending{color:var(--warn);font-weight:600}
.empty{text-align:center;color:var(--muted);padding:20px}
.pager{display:flex;gap:14px;align-items:center;padding:6px 2px}
.age{color:var(--warn)}
.title{display:flex;align-items:center;gap:10px;margin:4px 0 10px}
.title h1{font-size:20px;margin:0}
.title .problem{font-size:14px;font-weight:600}
.t-alert{color:var(--alert)}.t-warn{color:var(--warn)}.t-stale{color:var(--stale)}.t-ok{color:var(--ok)}.t-revoked,.t-retired{color:var(--muted)}
.node-grid{display:grid;grid-template-columns:minmax(380px,1fr) auto;gap:20px;align-items:start}
table.facts{border-collapse:collapse;background:#fff;border:1px solid var(--line);width:100%}
table.facts th{text-align:left;vertical-align:top;padding:4px 8px;width:110px;color:var(--muted);font-weight:600;border-bottom:1px solid var(--line)}
table.facts td{padding:4px 8px;border-bottom:1px solid var(--line)}
ul.plain{margin:2px 0;padding-left:16px}
h2{font-size:14px;margin:16px 0 6px}
ul.alerts{list-style:none;margin:0;padding:0}
ul.alerts li{padding:3px 0}
.sev{display:inline-block;width:62px;font-size:11px;font-weight:700;text-transform:uppercase}
.s-critical{color:var(--alert)}.s-warning{color:var(--warn)}.s-info{color:var(--muted)}
figure.frame{margin:0;position:relative}
figure.frame img{display:block;max-width:100%;border:1px solid #c9ced4;background:#000}
figure.frame.old img{opacity:.45;filter:grayscale(1)}
.stale-note{position:absolute;z-index:1;top:0;left:0;right:0;text-align:center;background:var(--stale);color:#fff;font-weight:700;padding:19px 8px}
figcaption{color:var(--muted);margin-top:4px}
.frame-none{width:400px}
textarea{width:100%;font:12px/1.35 ui-monospace,"DejaVu Sans Mono",monospace;border:1px solid #a9b2bc;border-radius:3px;padding:6px}
pre.json,pre.token{background:#fff;border:1px solid var(--line);padding:8px;overflow:auto}
pre.token{font-size:15px;font-weight:600}
.actions{display:flex;flex-direction:column;gap:6px}
details.danger summary{cursor:pointer;color:#8a1c12}
details.danger form{padding:6px 10px;border-left:3px solid #f3bab4;margin-top:4px}
table.events{width:100%;border-collapse:collapse;background:#fff;border:1px solid var(--line)}
table.events th{text-align:left;background:#eef0f2;padding:4px 8px}
table.events td{padding:3px 8px;border-bottom:1px solid var(--line);vertical-align:top}
table.events td.detail{color:#3b4249;word-break:break-word}
.ev{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px}
.evf{font-weight:400;font-size:12px;margin-left:8px}
body.login{display:flex;justify-content:center;align-items:center;min-height:100vh}
.login-box{background:#fff;border:1px solid #d4d9de;border-radius:6px;padding:24px 28px;width:340px;display:flex;flex-direction:column;gap:8px}
.login-box h1{font-size:18px;margin:0 0 8px}
.login-box input{padding:5px 7px;border:1px solid #a9b2bc;border-radius:3px}
`;
