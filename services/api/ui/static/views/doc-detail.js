// One document's fields, its error if it failed, a download of the original file, "Replace" with new
// content (processed beside the current version, which stays searchable) and its versions.
import { h, replaceChildren } from '../dom.js';
import { formatBytes, formatTime, mediaTypeLabel, stageLabel } from '../format.js';
import { describeError } from '../messages.js';
import { failureBlock, statusBadge } from './documents.js';

// A replacement in progress is re-read this often (events may not carry pending_version).
const PENDING_REFRESH_MS = 2000;

function pendingBlock(doc) {
  const pending = doc.pending_version;
  if (!pending) return null;
  if (pending.status === 'failed') {
    return h('div', { class: 'pending pending-failed', id: 'pending-version', role: 'status' },
      h('h3', {}, `New version ${pending.version} failed`),
      failureBlock(pending.error),
      h('p', { class: 'muted' }, 'The current version stays ready and searchable.'));
  }
  const stage = pending.stage ? ` · ${stageLabel(pending.stage)}` : '';
  return h('div', { class: 'pending', id: 'pending-version', role: 'status' },
    h('h3', {}, `New version ${pending.version}`),
    h('p', {}, h('span', { class: `badge badge-${pending.status === 'processing' ? 'processing' : 'queued'}` },
      pending.status), stage),
    h('p', { class: 'muted' }, 'Search serves the current version until the new one is ready.'));
}

function versionsTable(items, currentVersion) {
  const rows = items.map((v) => h('tr', { dataset: { version: v.version } },
    h('td', { 'data-label': 'Version', class: 'num' }, String(v.version),
      v.version === currentVersion ? h('span', { class: 'muted' }, ' (current)') : null),
    h('td', { 'data-label': 'Status' }, v.status),
    h('td', { 'data-label': 'Size', class: 'num' }, formatBytes(v.size_bytes)),
    h('td', { 'data-label': 'Uploaded' }, formatTime(v.created_at)),
    h('td', { 'data-label': 'SHA-256' }, h('code', { title: v.sha256 }, `${String(v.sha256).slice(0, 12)}…`))));
  return h('table', { class: 'versions', id: 'versions-table' },
    h('caption', { class: 'visually-hidden' }, 'Versions of this document'),
    h('thead', {}, h('tr', {}, ['Version', 'Status', 'Size', 'Uploaded', 'SHA-256'].map((name) =>
      h('th', { scope: 'col' }, name)))),
    h('tbody', {}, rows));
}

export function createDocumentDetail({ api, closeHref, announce, onChange }) {
  const element = h('section', { class: 'card detail', id: 'document-detail', 'aria-labelledby': 'detail-title',
    hidden: true });
  let current = null;
  let shown = null;
  let pollTimer = null;
  let versionsKey = null;

  // Kept across re-renders: a replacement's upload outlives the status updates that arrive meanwhile.
  const replaceInput = h('input', { type: 'file', id: 'replace-input', hidden: true });
  const replaceButton = h('button', { type: 'button', id: 'replace-button', class: 'button-quiet',
    'aria-describedby': 'replace-hint' }, 'Replace file…');
  const replaceProgress = h('progress', { max: '100', value: '0', hidden: true, 'aria-label': 'Upload of the new version' });
  const replaceMessage = h('p', { class: 'message', id: 'replace-message', role: 'status', hidden: true });
  const replaceBox = h('div', { class: 'replace' },
    replaceButton, replaceInput, replaceProgress,
    h('p', { class: 'hint', id: 'replace-hint' },
      'Upload new content for this document; it keeps its name and id, and search keeps serving the current '
      + 'version until the new one is ready.'),
    replaceMessage);
  const versions = h('div', { class: 'versions-wrap', id: 'versions' });

  function say(text, kind = 'info') {
    replaceMessage.className = `message message-${kind}`;
    replaceMessage.textContent = text;
    replaceMessage.hidden = !text;
  }

  async function replace(file) {
    const doc = shown;
    if (!doc || !file) return;
    replaceButton.disabled = true;
    replaceProgress.hidden = false;
    replaceProgress.value = 0;
    say(`Uploading ${file.name}…`);
    const result = await api.replaceContent(doc.id, file, (fraction) => { replaceProgress.value = Math.round(fraction * 100); });
    replaceButton.disabled = false;
    replaceProgress.hidden = true;
    if (result.error) {
      say(describeError(result.error), 'error');
      return;
    }
    if (result.status === 200) {
      say('Identical content: nothing changed.');
    } else {
      say('New version uploaded: processing it beside the current one.');
      announce?.(`New version of ${doc.filename} uploaded`);
    }
    show(result.document);
  }

  replaceButton.addEventListener('click', () => replaceInput.click());
  replaceInput.addEventListener('change', () => {
    const [file] = replaceInput.files;
    replaceInput.value = '';
    replace(file);
  });

  async function download(doc, status) {
    try {
      const url = URL.createObjectURL(await api.downloadContent(doc.id));
      const link = h('a', { href: url, download: doc.filename });
      document.body.append(link);
      link.click();
      link.remove();
      window.setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (error) {
      status.textContent = describeError(error);
      status.hidden = false;
    }
  }

  async function loadVersions(doc) {
    const key = `${doc.id}:${doc.content_version}:${doc.pending_version?.version}:${doc.pending_version?.status}`;
    if (key === versionsKey) return;
    versionsKey = key;
    try {
      const { items } = await api.listVersions(doc.id);
      if (current !== doc.id) return;
      replaceChildren(versions, h('h3', {}, 'Versions'),
        items.length ? versionsTable(items, doc.content_version) : h('p', { class: 'muted' }, 'No versions yet.'));
    } catch (error) {
      versionsKey = null;
      // An older server without versions: nothing to show, not an error.
      replaceChildren(versions, error.routeMissing ? null
        : h('p', { class: 'message message-error', role: 'alert' }, describeError(error)));
    }
  }

  const replacing = (doc) => (doc.pending_version && doc.pending_version.status !== 'failed')
    || doc.status === 'queued' || doc.status === 'processing';

  function schedulePoll(doc) {
    window.clearTimeout(pollTimer);
    if (!replacing(doc)) return;
    pollTimer = window.setTimeout(async () => {
      if (current !== doc.id) return;
      try {
        const fresh = await api.getDocument(doc.id);
        if (current !== doc.id) return;
        show(fresh);
        onChange?.(fresh);
      } catch {
        schedulePoll(doc); // the next round tries again; a deleted document is shown by its event
      }
    }, PENDING_REFRESH_MS);
  }

  function show(doc) {
    const before = shown?.id === doc.id ? shown.pending_version : null;
    const after = doc.pending_version;
    shown = doc;
    render(doc);
    loadVersions(doc);
    schedulePoll(doc);
    // The upload's "processing it" note ends with the replacement: served, or failed (shown above).
    if (before && !after && doc.status === 'ready') say(`Version ${doc.content_version} is now served.`);
    else if (before && after?.status === 'failed' && before.status !== 'failed') say('');
  }

  function render(doc) {
    const status = h('p', { class: 'message message-error', role: 'alert', hidden: true });
    const field = (name, value) => [h('dt', {}, name), h('dd', {}, value ?? '—')];
    replaceChildren(element,
      h('div', { class: 'section-head' },
        h('h2', { id: 'detail-title', tabindex: '-1' }, doc.filename),
        h('a', { href: closeHref, class: 'button-quiet' }, 'Close details')),
      doc.status === 'deleted'
        ? h('p', { class: 'muted' }, 'This document has been deleted.')
        : [
          h('dl', { class: 'fields' },
            field('Status', statusBadge(doc)),
            field('Type', mediaTypeLabel(doc.media_type)),
            field('Size', formatBytes(doc.size_bytes)),
            field('Chunks', doc.chunk_count),
            Number.isInteger(doc.content_version) ? field('Version', String(doc.content_version)) : null,
            field('Attempts', `${doc.attempts} of ${doc.max_attempts}`),
            field('Uploaded', formatTime(doc.created_at)),
            field('Processed', formatTime(doc.processed_at) || null),
            field('SHA-256', h('code', { class: 'wrap' }, doc.sha256)),
            field('Id', h('code', { class: 'wrap' }, doc.id))),
          doc.error ? h('div', { class: 'detail-error' }, h('h3', {}, 'Error'), failureBlock(doc.error),
            h('p', { class: 'muted' }, doc.error.retryable ? 'This error is worth retrying.' : 'Retrying will not help.'))
            : null,
          pendingBlock(doc),
          h('div', { class: 'detail-actions' },
            h('button', { type: 'button', class: 'button-quiet', onClick: () => download(doc, status) },
              'Download original')),
          status,
          doc.status === 'deleting' ? null : replaceBox,
          versions,
        ]);
  }

  return {
    element,
    get docId() { return current; },
    async show(docId, known) {
      if (docId !== current) {
        versionsKey = null;
        shown = null;
        say('');
        replaceChildren(versions);
        window.clearTimeout(pollTimer);
      }
      current = docId;
      element.hidden = !docId;
      if (!docId) return;
      if (known) show(known);
      try {
        const doc = await api.getDocument(docId);
        if (current === docId) show(doc);
      } catch (error) {
        if (current === docId) replaceChildren(element, h('p', { class: 'message message-error', role: 'alert' },
          error.status === 404 ? 'This document does not exist (or was deleted).' : describeError(error)));
      }
      element.querySelector('h2')?.focus();
    },
    update(doc) {
      if (doc.id === current) show({ ...shown, ...doc });
    },
    dispose() {
      window.clearTimeout(pollTimer);
    },
  };
}
