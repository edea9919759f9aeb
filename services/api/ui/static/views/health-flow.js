// The health page's flow: processor slots, drain rate and utilization now (/v1/pipeline), and the last
// hour as charts (/v1/pipeline/history, one sample per reconciler pass).
import { lineChart } from '../chart.js';
import { h, replaceChildren } from '../dom.js';

export const HISTORY_MINUTES = 60;

const count = (v) => String(Math.round(v));
const rate = (v) => (v < 100 ? v.toFixed(1) : String(Math.round(v)));
const percent = (v) => `${Math.round(v * 100)} %`;

// The flow fields of /v1/pipeline; the rest of the report is listed as plain numbers.
export const FLOW_FIELDS = ['slots', 'drain_rate_per_min', 'utilization'];

export function renderFlowNumbers(container, data) {
  const slots = data.slots || {};
  const known = Number.isFinite(slots.total);
  replaceChildren(container, h('dl', { class: 'fields' },
    h('dt', {}, 'Processor slots'),
    h('dd', { id: 'slots' }, known ? `${slots.busy} busy of ${slots.total}` : '—'),
    h('dt', {}, 'Drain rate (last 5 min)'),
    h('dd', {}, Number.isFinite(data.drain_rate_per_min) ? `${rate(data.drain_rate_per_min)} documents / min` : '—'),
    h('dt', {}, 'Slot utilization (last 5 min)'),
    h('dd', {}, Number.isFinite(data.utilization) ? percent(data.utilization) : '— (no processor)')));
}

export function renderFlowCharts(container, items, nowIso) {
  if (!items.length) {
    replaceChildren(container, h('p', { class: 'muted' },
      'No samples yet: the reconciler records one per pass, the charts fill in from there.'));
    return;
  }
  const times = items.map((s) => Date.parse(s.at));
  const parsed = Date.parse(nowIso);
  const end = Math.max(Number.isFinite(parsed) ? parsed : Date.now(), times[times.length - 1]);
  const frame = { times, start: end - HISTORY_MINUTES * 60_000, end, windowLabel: `${HISTORY_MINUTES} min` };
  const column = (name) => items.map((s) => s[name]);
  replaceChildren(container,
    lineChart({ ...frame, title: 'Queue depth', format: count,
      series: [{ name: 'queued', values: column('queued') }, { name: 'due', values: column('queued_due') }] }),
    lineChart({ ...frame, title: 'Throughput (documents / min)', format: rate,
      series: [{ name: 'drained', values: column('drain_rate_per_min') }] }),
    lineChart({ ...frame, title: 'Slot utilization', format: percent, max: 1,
      series: [{ name: 'utilization', values: column('utilization') }] }));
}
