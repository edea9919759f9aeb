// The documents table of one KB: filter, paging, retry/delete, and live status from stream events.
import { confirmDialog, h, replaceChildren } from '../dom.js';
import { formatBytes, formatTime, queueLabel, stageLabel } from '../format.js';
import { describeError, describeFailure } from '../messages.js';
import { STATUSES } from '../vocabulary.js';

const PAGE_SIZE = 100;
const TERMINAL = new Set(['ready', 'failed']);
// Queue positions move as other documents start, and events do not carry them: queued rows re-read them.
const QUEUE_REFRESH_MS = 15000;

export function failureBlock(error) {
  if (!error) return null;
  const plain = describeFailure(error);
  return h('div', { class: 'failure' },
    h('code', { class: 'error-code' }, error.code), ' ',
    h('span', { class: 'error-message' }, error.message),
    plain && plain !== error.message ? h('span', { class: 'error-plain' }, ` ${plain}`) : null);
}

export function statusBadge(doc) {
  const queue = queueLabel(doc);
  return h('span', { class: 'status' },
    h('span', { class: `badge badge-${doc.status}` }, doc.status),
    doc.status === 'processing' && doc.stage ? h('span', { class: 'stage' }, stageLabel(doc.stage)) : null,
    queue ? h('span', { class: 'queue muted' }, ` · ${queue}`) : null);
}

export function createDocumentsTable({ api, kbId, announce, hrefFor, onChange }) {
  // id → {doc, row, touched}; `touched` orders event updates against list snapshots fetched meanwhile.
  const entries = new Map();
  let filter = '';
  let nextCursor = null;
  let clock = 0;
  let generation = 0;
  const fetching = new Set();

  const select = h('select', { id: 'status-filter', onChange: () => { filter = select.value; refresh(); } },
    h('option', { value: '' }, 'All documents'),
    STATUSES.map((s) => h('option', { value: s }, s === 'deleting' ? 'being deleted' : s)));
  const message = h('p', { class: 'message message-error', role: 'alert', hidden: true });
  const tbody = h('tbody');
  const table = h('table', { class: 'documents' },
    h('caption', { class: 'visually-hidden' }, 'Documents of this knowledge base'),
    h('thead', {}, h('tr', {},
      ['File', 'Status', 'Chunks', 'Size', 'Updated'].map((name) => h('th', { scope: 'col' }, name)),
      h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
    tbody);
  const empty = h('p', { class: 'muted', id: 'documents-empty' });
  const more = h('button', { type: 'button', class: 'button-quiet', hidden: true, onClick: () => loadPage(true) },
    'Load more');

  const matches = (doc) => (filter ? doc.status === filter : doc.status !== 'deleting');

  function showError(error) {
    message.textContent = describeError(error);
    message.hidden = false;
  }

  function updateEmpty() {
    empty.hidden = entries.size > 0;
    table.hidden = entries.size === 0;
    empty.textContent = filter ? `No ${filter} documents.` : 'No documents yet: upload some above.';
  }

  async function retry(doc) {
    try {
      upsert(await api.retryDocument(doc.id), { touch: true });
      announce(`${doc.filename} queued again`);
    } catch (error) {
      showError(error);
    }
  }

  async function remove(doc) {
    if (!(await confirmDialog(`Delete “${doc.filename}”? Its search index entries go too.`, 'Delete document'))) return;
    try {
      await api.deleteDocument(doc.id);
      drop(doc.id);
      announce(`${doc.filename} deleted`);
    } catch (error) {
      showError(error);
    }
  }

  function renderRow(doc) {
    return h('tr', { id: `doc-${doc.id}`, dataset: { documentId: doc.id, status: doc.status, stage: doc.stage || '' } },
      h('td', { 'data-label': 'File', class: 'file' },
        h('a', { href: hrefFor(doc.id), class: 'filename', 'data-action': 'open' }, doc.filename),
        doc.status === 'failed' ? failureBlock(doc.error) : null),
      h('td', { 'data-label': 'Status' }, statusBadge(doc)),
      h('td', { 'data-label': 'Chunks', class: 'num' }, doc.chunk_count ?? '—'),
      h('td', { 'data-label': 'Size', class: 'num' }, formatBytes(doc.size_bytes)),
      h('td', { 'data-label': 'Updated' }, h('time', { datetime: doc.updated_at }, formatTime(doc.updated_at))),
      h('td', { 'data-label': 'Actions', class: 'actions' },
        doc.status === 'failed'
          ? h('button', { type: 'button', 'data-action': 'retry', 'aria-label': `Retry ${doc.filename}`,
            onClick: () => retry(doc) }, 'Retry')
          : null,
        doc.status === 'deleting' ? null
          : h('button', { type: 'button', class: 'button-danger-quiet', 'data-action': 'delete',
            'aria-label': `Delete ${doc.filename}`, onClick: () => remove(doc) }, 'Delete')));
  }

  // Newest first, like the API; a row keeps keyboard focus when it is re-rendered.
  function place(doc, row, old) {
    if (old) {
      const focused = old.contains(document.activeElement) ? document.activeElement.dataset.action : null;
      old.replaceWith(row);
      if (focused) (row.querySelector(`[data-action="${focused}"]`) || row.querySelector('a'))?.focus();
      return;
    }
    const before = [...tbody.children].find((tr) => entries.get(tr.dataset.documentId)?.doc.created_at < doc.created_at);
    tbody.insertBefore(row, before || null);
  }

  function upsert(doc, { touch = false } = {}) {
    const entry = entries.get(doc.id);
    if (!matches(doc)) {
      drop(doc.id, doc);
      return;
    }
    const row = renderRow(doc);
    place(doc, row, entry?.row);
    entries.set(doc.id, { doc, row, touched: touch ? ++clock : entry?.touched ?? 0 });
    updateEmpty();
    onChange(doc);
    if (doc.status === 'queued') scheduleQueueRefresh();
  }

  // One list request for the queued rows' positions; stops once none is queued or the table is gone.
  let queueTimer = null;
  function scheduleQueueRefresh() {
    if (queueTimer) return;
    queueTimer = window.setTimeout(async () => {
      queueTimer = null;
      const queued = () => [...entries.values()].some(({ doc }) => doc.status === 'queued');
      if (!element.isConnected || !queued()) return;
      try {
        const page = await api.listDocuments(kbId, { status: 'queued', limit: PAGE_SIZE });
        for (const fresh of page.items) {
          const doc = entries.get(fresh.id)?.doc;
          if (doc?.status !== 'queued' || (doc.queue_position === fresh.queue_position && doc.eta_s === fresh.eta_s)) {
            continue;
          }
          upsert({ ...doc, queue_position: fresh.queue_position, eta_s: fresh.eta_s });
        }
      } catch {
        // Positions are an estimate: the next round tries again.
      }
      if (queued()) scheduleQueueRefresh();
    }, QUEUE_REFRESH_MS);
  }

  // `now` is the document's state when it only left the current filter; absent, it is gone.
  function drop(docId, now = null) {
    const entry = entries.get(docId);
    if (!entry) return;
    entry.row.remove();
    entries.delete(docId);
    updateEmpty();
    onChange(now || { ...entry.doc, status: 'deleted' });
  }

  function announceStatus(doc) {
    if (doc.status === 'ready') announce(`${doc.filename} is ready`);
    else if (doc.status === 'failed') announce(`${doc.filename} failed: ${doc.error?.code || 'unknown error'}`);
  }

  // A fetched snapshot never overrides an event applied after the fetch started (it could be older).
  function merge(doc, since) {
    const entry = entries.get(doc.id);
    if (entry && entry.touched > since && (entry.doc.status !== doc.status || entry.doc.stage !== doc.stage)) return;
    upsert(doc);
  }

  async function fetchOne(docId) {
    if (fetching.has(docId)) return;
    fetching.add(docId);
    const since = clock;
    try {
      merge(await api.getDocument(docId), since);
    } catch (error) {
      if (error.status === 404) drop(docId);
    } finally {
      fetching.delete(docId);
    }
  }

  async function loadPage(append) {
    const since = clock;
    // A newer load (say, another filter) makes this one's answer stale.
    const mine = append ? generation : ++generation;
    message.hidden = true;
    try {
      const page = await api.listDocuments(kbId, { status: filter, cursor: append ? nextCursor : null, limit: PAGE_SIZE });
      if (mine !== generation) return;
      if (!append) {
        const keep = new Set(page.items.map((d) => d.id));
        for (const [id, entry] of entries) if (!keep.has(id) && entry.touched <= since) drop(id, entry.doc);
      }
      for (const doc of page.items) merge(doc, since);
      nextCursor = page.next_cursor;
      more.hidden = !nextCursor;
    } catch (error) {
      showError(error);
    }
    updateEmpty();
  }

  function refresh() {
    return loadPage(false);
  }

  // One `document` event of the KB's stream: {document_id, status, stage, version, type}.
  function applyEvent(event) {
    const docId = event.document_id;
    if (!docId) return;
    const entry = entries.get(docId);
    if (event.type === 'document.deleted' || event.status === 'deleted') {
      drop(docId);
      return;
    }
    if (!entry) {
      if (event.status !== 'deleting' || filter === 'deleting') fetchOne(docId);
      return;
    }
    // A version's events describe the replacement, not the document (which stays ready meanwhile).
    if (String(event.type || '').startsWith('document.version_')) {
      fetchOne(docId);
      return;
    }
    if (Number.isInteger(event.version) && event.version < entry.doc.version) return;
    const doc = {
      ...entry.doc,
      status: event.status || entry.doc.status,
      stage: 'stage' in event ? event.stage : entry.doc.stage,
      version: Number.isInteger(event.version) ? event.version : entry.doc.version,
    };
    const changed = doc.status !== entry.doc.status;
    if (doc.status !== 'failed') doc.error = null;
    // A document back in the queue stands somewhere new: unknown until the next read.
    if (changed) Object.assign(doc, { queue_position: null, eta_s: null });
    upsert(doc, { touch: true });
    // Terminal states carry fields the event does not (error, chunk_count): fetch them once.
    if (changed && TERMINAL.has(doc.status)) fetchOne(docId).then(() => announceStatus(entries.get(docId)?.doc || doc));
  }

  const element = h('section', { class: 'card', 'aria-labelledby': 'documents-title' },
    h('div', { class: 'section-head' },
      h('h2', { id: 'documents-title' }, 'Documents'),
      h('div', { class: 'filter' }, h('label', { for: 'status-filter' }, 'Show'), select)),
    message, empty, h('div', { class: 'table-wrap' }, table), more);
  updateEmpty();

  return {
    element,
    refresh,
    applyEvent,
    insert: (doc) => upsert(doc, { touch: true }),
    get: (docId) => entries.get(docId)?.doc || null,
    hasPending: () => [...entries.values()].some(({ doc }) => doc.status === 'queued' || doc.status === 'processing'),
    focusRow: (docId) => {
      const row = entries.get(docId)?.row;
      for (const other of tbody.querySelectorAll('tr.highlight')) other.classList.remove('highlight');
      if (!row) return;
      row.classList.add('highlight');
      row.scrollIntoView({ block: 'nearest' });
    },
  };
}
