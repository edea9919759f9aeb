// A knowledge base's index settings and re-index: the settings form ("Re-index" builds a new index
// generation beside the active one, which keeps serving search), progress while it builds, Cancel and
// Roll back.
import { h, replaceChildren } from '../dom.js';
import { describeError } from '../messages.js';

// While a generation builds, the KB is re-read this often for its progress.
const BUILDING_REFRESH_MS = 2000;
const SETTINGS = [
  { name: 'chunk_size', label: 'Chunk size', type: 'number', min: 200, max: 8000,
    hint: 'largest chunk, in characters (200–8000)' },
  { name: 'chunk_overlap', label: 'Chunk overlap', type: 'number', min: 0,
    hint: 'characters a chunk repeats (up to a third of the size)' },
  { name: 'embedding_model', label: 'Embedding model', type: 'text', hint: 'a litellm model name' },
];

export function createIndexSettings({ api, kbId, announce, onKb }) {
  const inputs = Object.fromEntries(SETTINGS.map((s) => [s.name, h('input', {
    id: `index-${s.name.replace(/_/g, '-')}`, name: s.name, type: s.type, min: s.min, max: s.max, required: true,
    inputmode: s.type === 'number' ? 'numeric' : null, 'aria-describedby': `index-${s.name}-hint`,
  })]));
  const active = h('p', { class: 'muted', id: 'index-active' });
  const progress = h('progress', { id: 'reindex-progress', max: '1', value: '0' });
  const progressText = h('span', { id: 'reindex-progress-text' });
  const building = h('div', { class: 'building', id: 'reindex-building', role: 'status', hidden: true },
    h('label', { for: 'reindex-progress' }, 'Re-index in progress'), progress, ' ', progressText);
  const message = h('p', { class: 'message', role: 'status', id: 'index-message', hidden: true });
  const submit = h('button', { type: 'submit', class: 'button-primary', id: 'reindex-button' }, 'Re-index');
  const cancel = h('button', { type: 'button', class: 'button-danger-quiet', id: 'reindex-cancel', hidden: true,
    onClick: () => {
      watching = null;
      act(() => api.cancelReindex(kbId), 'Re-index cancelled: the active index is unchanged.');
    } },
  'Cancel re-index');
  const rollback = h('button', { type: 'button', class: 'button-quiet', id: 'reindex-rollback', hidden: true,
    onClick: () => act(() => api.rollbackReindex(kbId), 'Rolled back to the previous index.') },
  'Roll back to the previous index');
  const form = h('form', { class: 'index-form', id: 'index-form' },
    SETTINGS.map((s) => h('div', { class: 'field' },
      h('label', { for: inputs[s.name].id }, s.label), inputs[s.name],
      h('span', { class: 'hint', id: `index-${s.name}-hint` }, s.hint))),
    h('div', { class: 'form-actions' }, submit));
  const element = h('section', { class: 'card', id: 'index-settings', 'aria-labelledby': 'index-title', hidden: true });
  replaceChildren(element, h('h2', { id: 'index-title' }, 'Index'), active, building,
    h('p', { class: 'hint' }, 'Changing a setting re-indexes every document into a new index; search keeps '
      + 'using the current one until the new one is complete, then switches at once.'),
    form, h('div', { class: 'detail-actions' }, cancel, rollback), message);

  let kb = null;
  let timer = null;
  let disposed = false;
  // {from}: the active generation when a build was started here or first seen; a different active
  // generation once nothing builds means it switched (the same one: it was cancelled).
  let watching = null;

  function say(text, kind = 'info') {
    message.className = `message message-${kind}`;
    message.textContent = text;
    message.hidden = !text;
  }

  function render(next, { resetForm = false } = {}) {
    kb = next;
    if (!kb.index) return; // an older server without index settings: the card stays hidden
    element.hidden = false;
    for (const s of SETTINGS) {
      if (resetForm || document.activeElement !== inputs[s.name]) inputs[s.name].value = kb[s.name] ?? '';
    }
    active.textContent = `Active index: generation ${kb.index.generation}`
      + ` · chunk size ${kb.chunk_size}, overlap ${kb.chunk_overlap}, model ${kb.embedding_model}`;
    const build = kb.index.building;
    building.hidden = !build;
    cancel.hidden = !build;
    submit.disabled = Boolean(build);
    rollback.hidden = Boolean(build) || !(kb.index.generation > 1);
    if (build) {
      progress.max = Math.max(build.total, 1);
      progress.value = build.done;
      progressText.textContent = `generation ${build.generation}: ${build.done} of ${build.total} documents`
        + (build.failed ? `, ${build.failed} failed` : '');
      if (!watching) watching = { from: kb.index.generation };
    } else if (watching) {
      if (kb.index.generation !== watching.from) {
        say(`Re-index finished: search uses generation ${kb.index.generation}.`);
        announce(`Re-index finished: generation ${kb.index.generation}`);
      }
      watching = null;
    }
    schedule();
  }

  function schedule() {
    window.clearTimeout(timer);
    if (disposed || !kb?.index?.building) return;
    timer = window.setTimeout(refresh, BUILDING_REFRESH_MS);
  }

  async function refresh() {
    try {
      const next = await api.getKb(kbId);
      if (disposed) return;
      render(next);
      onKb?.(next);
    } catch (error) {
      say(describeError(error), 'error');
      schedule();
    }
  }

  async function act(call, done) {
    say('');
    try {
      await call();
      say(done);
      announce(done);
    } catch (error) {
      say(describeError(error), 'error');
    }
    await refresh();
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (!kb) return;
    const changed = {};
    for (const s of SETTINGS) {
      const raw = inputs[s.name].value.trim();
      const value = s.type === 'number' ? Number(raw) : raw;
      if (value !== kb[s.name]) changed[s.name] = value;
    }
    // New settings travel with "reindex": true (a KB with documents refuses them otherwise); the same
    // settings again are a plain re-index.
    const call = Object.keys(changed).length
      ? () => api.updateKb(kbId, { ...changed, reindex: true })
      : () => api.reindex(kbId);
    watching = { from: kb.index.generation };
    act(call, 'Re-index started: search keeps using the current index until the new one is complete.');
  });

  return {
    element,
    show: (next) => render(next, { resetForm: !kb }),
    // A `knowledge_base` stream event: progress is applied as is; a switch, cancel or rollback
    // changes the settings too, so the KB is read again.
    applyEvent(data) {
      if (!kb?.index || !data?.index) return;
      if (data.change === 'index.progress') render({ ...kb, index: data.index });
      else refresh();
    },
    dispose() {
      disposed = true;
      window.clearTimeout(timer);
    },
  };
}
