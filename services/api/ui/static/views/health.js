// Pipeline health: alerts, the flow and queue numbers from /v1/pipeline, dead letters with a replay button.
import { h, replaceChildren } from '../dom.js';
import { formatAge, formatTime } from '../format.js';
import { describeError } from '../messages.js';
import { FLOW_FIELDS, HISTORY_MINUTES, renderFlowCharts, renderFlowNumbers } from './health-flow.js';

const REFRESH_MS = 15000;

// /v1/pipeline's numbers, flattened: {"documents": {"queued": 3}} → "documents · queued: 3".
function flatten(value, prefix = '', out = []) {
  for (const [key, item] of Object.entries(value || {})) {
    const words = key.replace(/_s$/, '').replaceAll('_', ' ');
    const name = prefix ? `${prefix} · ${words}` : words;
    if (item && typeof item === 'object' && !Array.isArray(item)) flatten(item, name, out);
    else if (!Array.isArray(item)) out.push([name, describeValue(key, item)]);
  }
  return out;
}

function describeValue(key, value) {
  if (value === null || value === undefined) return '—';
  if (key.endsWith('_s')) return formatAge(value);
  if (key.endsWith('_at') || key.endsWith('_since')) return formatTime(value);
  return String(value);
}

function unavailable(error, what) {
  return h('p', { class: 'message message-warning', role: 'status' }, error.routeMissing
    ? `${what} is not available on this server yet (it answered ${error.status}).`
    : describeError(error));
}

export function mountHealth(container, { api, announce }) {
  const alerts = h('div', { id: 'alerts' });
  const flowNumbers = h('div', { id: 'flow-numbers' });
  const charts = h('div', { id: 'flow-charts', class: 'charts' });
  const summary = h('div', { id: 'pipeline-summary' });
  const processors = h('div', { id: 'processors' });
  const dead = h('div', { id: 'dead-letters' });
  const updated = h('p', { class: 'muted', id: 'health-updated' });
  let timer = null;
  let lastAlerts = '';

  function renderPipeline(data) {
    const list = Array.isArray(data.alerts) ? data.alerts : [];
    // Announce only a change: the panel refreshes every few seconds.
    const codes = list.map((a) => a.code).join(', ');
    if (codes !== lastAlerts && codes) announce(`Pipeline alerts: ${codes}`);
    lastAlerts = codes;
    replaceChildren(alerts, list.length
      ? h('ul', { class: 'alerts' }, list.map((a) => h('li', { class: 'alert' },
        h('code', { class: 'error-code' }, a.code), ' ', a.message,
        a.since ? h('span', { class: 'muted' }, ` (since ${formatTime(a.since)})`) : null)))
      : h('p', { class: 'ok' }, 'No alerts: the pipeline looks healthy.'));
    renderFlowNumbers(flowNumbers, data);
    const { alerts: _a, processors: seen, ...rest } = data;
    const numbers = Object.fromEntries(Object.entries(rest).filter(([key]) => !FLOW_FIELDS.includes(key)));
    replaceChildren(summary, h('dl', { class: 'fields' }, flatten(numbers).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
    const rows = Array.isArray(seen) ? seen : [];
    replaceChildren(processors, rows.length
      ? h('ul', { class: 'plain' }, rows.map((p) => h('li', {},
        h('code', {}, p.id ?? '?'),
        p.alive === false ? ' (stopped)' : p.alive === true ? ' (alive)' : '',
        ` last heartbeat ${formatTime(p.last_heartbeat)}`)))
      : h('p', { class: 'muted' }, 'No processor has been seen.'));
  }

  async function replay(event, button) {
    button.disabled = true;
    try {
      await api.replay(event.id);
      announce(`Event ${event.type} replayed`);
      await loadDead();
    } catch (error) {
      button.disabled = false;
      button.after(h('span', { class: 'message-error' }, ` ${describeError(error)}`));
    }
  }

  function renderDead(items) {
    if (!items.length) {
      replaceChildren(dead, h('p', { class: 'ok' }, 'No dead letters.'));
      return;
    }
    replaceChildren(dead, h('div', { class: 'table-wrap' }, h('table', { class: 'dead' },
      h('caption', { class: 'visually-hidden' }, 'Dead letters'),
      h('thead', {}, h('tr', {}, ['Event', 'Subject', 'Attempts', 'Why', 'Dead since']
        .map((n) => h('th', { scope: 'col' }, n)), h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
      h('tbody', {}, items.map((e) => {
        const button = h('button', { type: 'button', 'aria-label': `Replay event ${e.type} ${e.id}` }, 'Replay');
        button.addEventListener('click', () => replay(e, button));
        return h('tr', { dataset: { eventId: e.id } },
          h('td', { 'data-label': 'Event' }, h('code', {}, e.type)),
          h('td', { 'data-label': 'Subject' }, h('code', { class: 'wrap' }, e.subject ?? '')),
          h('td', { 'data-label': 'Attempts', class: 'num' }, e.attempts ?? ''),
          h('td', { 'data-label': 'Why' }, [e.dead_reason, e.last_error].filter(Boolean).join(': ')),
          h('td', { 'data-label': 'Dead since' }, formatTime(e.dead_at)),
          h('td', { 'data-label': 'Actions', class: 'actions' }, button));
      })))));
  }

  async function loadDead() {
    try {
      const body = await api.deadLetters();
      renderDead(Array.isArray(body) ? body : body.items || []);
    } catch (error) {
      replaceChildren(dead, unavailable(error, 'The dead-letter list'));
    }
  }

  async function loadHistory(nowIso) {
    try {
      const body = await api.pipelineHistory(HISTORY_MINUTES);
      renderFlowCharts(charts, Array.isArray(body?.items) ? body.items : [], nowIso);
    } catch (error) {
      replaceChildren(charts, unavailable(error, 'The pipeline history'));
    }
  }

  async function load() {
    let nowIso = null;
    try {
      const data = await api.pipeline();
      nowIso = data.generated_at;
      renderPipeline(data);
    } catch (error) {
      replaceChildren(alerts, unavailable(error, 'Pipeline health'));
      replaceChildren(flowNumbers, h('p', { class: 'muted' }, '—'));
      replaceChildren(summary, h('p', { class: 'muted' }, 'No queue numbers without pipeline health.'));
      replaceChildren(processors, h('p', { class: 'muted' }, '—'));
    }
    await Promise.all([loadHistory(nowIso), loadDead()]);
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every ${REFRESH_MS / 1000} s.`;
  }

  container.append(
    h('div', { class: 'section-head' },
      h('h1', { tabindex: '-1' }, 'Pipeline health'),
      h('button', { type: 'button', class: 'button-quiet', onClick: load }, 'Refresh now')),
    updated,
    h('section', { class: 'card', 'aria-labelledby': 'alerts-title' }, h('h2', { id: 'alerts-title' }, 'Alerts'), alerts),
    h('section', { class: 'card', 'aria-labelledby': 'flow-title' }, h('h2', { id: 'flow-title' }, 'Flow'), flowNumbers,
      h('h3', {}, `Last ${HISTORY_MINUTES} minutes`), charts),
    h('section', { class: 'card', 'aria-labelledby': 'queue-title' }, h('h2', { id: 'queue-title' }, 'Queue'), summary,
      h('h3', {}, 'Processors'), processors),
    h('section', { class: 'card', 'aria-labelledby': 'dead-title' }, h('h2', { id: 'dead-title' }, 'Dead letters'), dead));
  document.title = 'Pipeline health · kbingest';
  load();
  timer = window.setInterval(load, REFRESH_MS);
  return { dispose() { window.clearInterval(timer); } };
}
