// Upload many files at once: a drop zone that is also a button, per-file progress and plain-word results.
import { h, replaceChildren } from '../dom.js';
import { formatBytes } from '../format.js';
import { describeError } from '../messages.js';

const PARALLEL_UPLOADS = 3;

export function createUploader({ api, kbId, hrefFor, announce, onUploaded }) {
  // The drop zone button is the one control people and screen readers use; the input stays out of sight.
  const input = h('input', { type: 'file', id: 'file-input', multiple: true, hidden: true });
  const zone = h('button', { type: 'button', id: 'dropzone', class: 'dropzone', 'aria-describedby': 'dropzone-hint' },
    h('span', { class: 'dropzone-title' }, 'Choose files or drop them here'),
    h('span', { id: 'dropzone-hint', class: 'hint' },
      'PDF, Word, PowerPoint, Excel, CSV, HTML, Markdown, plain text and e-mail; many files at once.'));
  const list = h('ul', { class: 'uploads', 'aria-label': 'Uploads' });
  const clear = h('button', { type: 'button', class: 'button-quiet', hidden: true, onClick: clearFinished },
    'Clear finished uploads');
  const queue = [];
  let running = 0;
  let batch = { done: 0, refused: 0, total: 0 };

  function clearFinished() {
    for (const item of [...list.children]) if (item.dataset.state !== 'uploading' && item.dataset.state !== 'waiting') item.remove();
    clear.hidden = true;
  }

  function outcome(item, state, ...content) {
    item.dataset.state = state;
    replaceChildren(item.querySelector('.upload-result'), ...content);
  }

  function refusal(error) {
    const existing = error.extra?.document_id;
    if ((error.code === 'duplicate_document' || error.code === 'duplicate_content') && existing) {
      return [describeError(error), ' ', h('a', { href: hrefFor(existing) }, 'Open the existing document')];
    }
    return [describeError(error)];
  }

  async function uploadOne({ file, item }) {
    const bar = item.querySelector('progress');
    item.dataset.state = 'uploading';
    outcome(item, 'uploading', 'Uploading…');
    const result = await api.upload(kbId, file, (fraction) => { bar.value = Math.round(fraction * 100); });
    bar.value = 100;
    if (result.document) {
      outcome(item, 'uploaded', 'Uploaded: queued for processing.');
      onUploaded(result.document);
    } else {
      batch.refused += 1;
      outcome(item, 'refused', ...refusal(result.error));
    }
    batch.done += 1;
  }

  function pump() {
    while (running < PARALLEL_UPLOADS && queue.length) {
      running += 1;
      uploadOne(queue.shift()).finally(() => {
        running -= 1;
        if (!running && !queue.length) finishBatch();
        pump();
      });
    }
  }

  function finishBatch() {
    const ok = batch.done - batch.refused;
    announce(`${ok} of ${batch.total} file${batch.total === 1 ? '' : 's'} uploaded`
      + (batch.refused ? `, ${batch.refused} refused` : ''));
    batch = { done: 0, refused: 0, total: 0 };
    clear.hidden = false;
  }

  function enqueue(files) {
    if (!files.length) return;
    for (const file of files) {
      const item = h('li', { class: 'upload', dataset: { state: 'waiting', filename: file.name } },
        h('span', { class: 'upload-name' }, file.name, ' ', h('span', { class: 'muted' }, formatBytes(file.size))),
        h('progress', { max: '100', value: '0', 'aria-label': `Upload of ${file.name}` }),
        h('span', { class: 'upload-result' }, 'Waiting…'));
      list.prepend(item);
      queue.push({ file, item });
    }
    batch.total += files.length;
    announce(`Uploading ${files.length} file${files.length === 1 ? '' : 's'}`);
    pump();
  }

  zone.addEventListener('click', () => input.click());
  input.addEventListener('change', () => {
    enqueue([...input.files]);
    input.value = '';
  });
  for (const type of ['dragenter', 'dragover']) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add('dragging');
    });
  }
  zone.addEventListener('dragleave', () => zone.classList.remove('dragging'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('dragging');
    enqueue([...(event.dataTransfer?.files || [])]);
  });
  // A file dropped next to the zone must not make the browser navigate away to it.
  const swallow = (event) => { if (event.dataTransfer?.types?.includes('Files')) event.preventDefault(); };
  window.addEventListener('dragover', swallow);
  window.addEventListener('drop', swallow);

  const element = h('section', { class: 'card', 'aria-labelledby': 'upload-title' },
    h('h2', { id: 'upload-title' }, 'Upload'),
    input, zone, list, clear);
  return {
    element,
    dispose() {
      window.removeEventListener('dragover', swallow);
      window.removeEventListener('drop', swallow);
    },
  };
}
