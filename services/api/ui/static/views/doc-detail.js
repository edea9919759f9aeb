// One document's fields, its error if it failed, and a download of the original file.
import { h, replaceChildren } from '../dom.js';
import { formatBytes, formatTime, mediaTypeLabel } from '../format.js';
import { describeError } from '../messages.js';
import { failureBlock, statusBadge } from './documents.js';

export function createDocumentDetail({ api, closeHref }) {
  const element = h('section', { class: 'card detail', id: 'document-detail', 'aria-labelledby': 'detail-title',
    hidden: true });
  let current = null;

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
            field('Attempts', `${doc.attempts} of ${doc.max_attempts}`),
            field('Uploaded', formatTime(doc.created_at)),
            field('Processed', formatTime(doc.processed_at) || null),
            field('SHA-256', h('code', { class: 'wrap' }, doc.sha256)),
            field('Id', h('code', { class: 'wrap' }, doc.id))),
          doc.error ? h('div', { class: 'detail-error' }, h('h3', {}, 'Error'), failureBlock(doc.error),
            h('p', { class: 'muted' }, doc.error.retryable ? 'This error is worth retrying.' : 'Retrying will not help.'))
            : null,
          h('button', { type: 'button', class: 'button-quiet', onClick: () => download(doc, status) },
            'Download original'),
          status,
        ]);
  }

  return {
    element,
    get docId() { return current; },
    async show(docId, known) {
      current = docId;
      element.hidden = !docId;
      if (!docId) return;
      if (known) render(known);
      try {
        const doc = await api.getDocument(docId);
        if (current === docId) render(doc);
      } catch (error) {
        if (current === docId) replaceChildren(element, h('p', { class: 'message message-error', role: 'alert' },
          error.status === 404 ? 'This document does not exist (or was deleted).' : describeError(error)));
      }
      element.querySelector('h2')?.focus();
    },
    update(doc) {
      if (doc.id === current) render(doc);
    },
  };
}
