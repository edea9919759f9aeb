// One knowledge base: upload, search, document details and the live documents table.
import { h, replaceChildren } from '../dom.js';
import { countsSummary } from '../format.js';
import { describeError } from '../messages.js';
import { openEventStream } from '../sse.js';
import { createDocumentDetail } from './doc-detail.js';
import { createDocumentsTable } from './documents.js';
import { createIndexSettings } from './kb-index.js';
import { createSearch } from './search.js';
import { createUploader } from './upload.js';

// Without an event stream, refresh the list this often, and only while something is in flight.
const FALLBACK_REFRESH_MS = 10000;
const COUNTS_DEBOUNCE_MS = 400;

export function mountKbPage(container, { api, announce, signOut }, route) {
  const { kbId } = route;
  const hrefFor = (docId) => `#/kbs/${encodeURIComponent(kbId)}/docs/${encodeURIComponent(docId)}`;
  const title = h('h1', { tabindex: '-1' }, 'Knowledge base');
  const counts = h('p', { class: 'muted', id: 'kb-counts' });
  const live = h('p', { class: 'live', id: 'live-status', role: 'status', dataset: { state: 'connecting' } },
    'Connecting to live updates…');
  let stream = null;
  let fallback = null;
  let countsTimer = null;
  let disposed = false;

  const refreshCounts = () => {
    window.clearTimeout(countsTimer);
    countsTimer = window.setTimeout(async () => {
      try {
        counts.textContent = countsSummary((await api.getKb(kbId)).counts);
      } catch {
        // The counts line is a convenience; the table shows the real state.
      }
    }, COUNTS_DEBOUNCE_MS);
  };

  let table = null;
  const detail = createDocumentDetail({
    api, announce, closeHref: `#/kbs/${encodeURIComponent(kbId)}`, onChange: (doc) => table.insert(doc),
  });
  table = createDocumentsTable({
    api, kbId, announce, hrefFor,
    onChange: (doc) => { detail.update(doc); refreshCounts(); },
  });
  const indexSettings = createIndexSettings({ api, kbId, announce, onKb: (kb) => {
    counts.textContent = countsSummary(kb.counts);
    // A re-index switch changes chunk counts: re-read the list once it is done.
    if (!kb.index?.building) table.refresh();
  } });
  const uploader = createUploader({ api, kbId, hrefFor, announce, onUploaded: (doc) => table.insert(doc) });
  const search = createSearch({ api, kbId, hrefFor, announce });

  function setLive(state, text) {
    live.dataset.state = state;
    live.textContent = text;
  }

  function startFallback() {
    if (fallback) return;
    fallback = window.setInterval(() => { if (table.hasPending()) table.refresh(); }, FALLBACK_REFRESH_MS);
  }

  function stopFallback() {
    window.clearInterval(fallback);
    fallback = null;
  }

  function onState({ state, reconnected, status, detail: why }) {
    if (state === 'open') {
      stopFallback();
      setLive('open', 'Live updates on.');
      // Events missed while disconnected: one list refresh, not one request per document.
      if (reconnected) table.refresh();
    } else if (state === 'reconnecting') {
      setLive('reconnecting', `Live updates interrupted (${why || 'connection lost'}); reconnecting…`);
    } else if (state === 'unavailable') {
      startFallback();
      setLive('unavailable', `Live updates are not available on this server (the event stream answered ${status}); `
        + `statuses refresh every ${FALLBACK_REFRESH_MS / 1000} s while documents are in flight.`);
    } else if (state === 'unauthorized') {
      signOut('The API key was refused by the event stream; sign in again.');
    }
  }

  function onEvent(event) {
    // The server could not replay what was missed: refetch the list once, then keep listening.
    if (event.type === 'reset') {
      table.refresh();
      return;
    }
    if (event.type === 'knowledge_base') {
      try {
        indexSettings.applyEvent(JSON.parse(event.data));
      } catch {
        // A malformed event is skipped; the index section re-reads the KB while it builds.
      }
      return;
    }
    if (event.type !== 'document') return;
    try {
      table.applyEvent(JSON.parse(event.data));
    } catch {
      // A malformed event is skipped; the next list refresh repairs the row.
    }
  }

  async function load() {
    try {
      const kb = await api.getKb(kbId);
      title.textContent = kb.name;
      counts.textContent = countsSummary(kb.counts);
      indexSettings.show(kb);
      document.title = `${kb.name} · kbingest`;
    } catch (error) {
      replaceChildren(container, h('h1', { tabindex: '-1' }, 'Knowledge base'),
        h('p', { class: 'message message-error', role: 'alert' },
          error.status === 404 ? 'This knowledge base does not exist (or was deleted). ' : `${describeError(error)} `,
          h('a', { href: '#/' }, 'Back to knowledge bases')));
      return;
    }
    await table.refresh();
    if (disposed) return;
    stream = openEventStream({ url: api.eventsUrl(kbId), key: api.key, onEvent, onState });
    if (route.docId) showDetail(route.docId);
  }

  function showDetail(docId) {
    detail.show(docId, docId ? table.get(docId) : null);
    table.focusRow(docId);
  }

  container.append(
    h('nav', { class: 'breadcrumb', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/' }, 'Knowledge bases'), ' / '),
    h('div', { class: 'kb-head' }, title, counts, live),
    detail.element,
    h('div', { class: 'kb-grid' }, uploader.element, search.element),
    table.element,
    indexSettings.element);
  document.title = 'Knowledge base · kbingest';
  load();

  return {
    kbId,
    update(next) { showDetail(next.docId); },
    dispose() {
      disposed = true;
      stream?.close();
      stopFallback();
      window.clearTimeout(countsTimer);
      uploader.dispose();
      detail.dispose();
      indexSettings.dispose();
    },
  };
}
