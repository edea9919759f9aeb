// Semantic search over the ready chunks of one KB: filename, chunk number, score and text.
import { h, replaceChildren } from '../dom.js';
import { describeError } from '../messages.js';

const SNIPPET_CHARS = 300;

// Extracted text keeps the PDF's line breaks; a result reads better as one paragraph.
function snippet(text) {
  const flat = String(text).replace(/\s+/g, ' ').trim();
  return flat.length > SNIPPET_CHARS ? `${flat.slice(0, SNIPPET_CHARS)}…` : flat;
}

export function createSearch({ api, kbId, hrefFor, announce }) {
  const input = h('input', { id: 'search-query', type: 'search', name: 'query', required: true, autocomplete: 'off' });
  const limit = h('select', { id: 'search-limit', name: 'limit' },
    [5, 10, 20].map((n) => h('option', { value: String(n), selected: n === 5 }, String(n))));
  const results = h('div', { class: 'search-results', id: 'search-results', 'aria-live': 'polite' });

  function render(items, query) {
    if (!items.length) {
      replaceChildren(results, h('p', { class: 'muted' },
        `Nothing matches “${query}”. Only documents that are ready can be found.`));
      return;
    }
    replaceChildren(results,
      h('p', { class: 'muted' }, `${items.length} passage${items.length === 1 ? '' : 's'} for “${query}”`),
      h('ol', { class: 'hits' }, items.map((hit) => h('li', { class: 'hit', dataset: { documentId: hit.document_id } },
        h('div', { class: 'hit-head' },
          h('a', { href: hrefFor(hit.document_id), class: 'filename' }, hit.filename),
          h('span', { class: 'muted' }, `chunk ${hit.chunk_no}`),
          h('span', { class: 'score', title: 'similarity score' }, `score ${Number(hit.score).toFixed(3)}`)),
        h('p', { class: 'hit-text' }, snippet(hit.text))))));
  }

  async function submit(event) {
    event.preventDefault();
    const query = input.value.trim();
    if (!query) return;
    replaceChildren(results, h('p', { class: 'muted' }, 'Searching…'));
    try {
      const { items } = await api.search(kbId, query, Number(limit.value));
      render(items, query);
      announce(`${items.length} result${items.length === 1 ? '' : 's'}`);
    } catch (error) {
      const text = error.routeMissing
        ? 'Search is not available on this server yet (the search route answered 404).'
        : describeError(error);
      replaceChildren(results, h('p', { class: 'message message-error', role: 'alert' }, text));
    }
  }

  const element = h('section', { class: 'card', 'aria-labelledby': 'search-title' },
    h('h2', { id: 'search-title' }, 'Search'),
    h('form', { class: 'search-form', role: 'search', onSubmit: submit },
      h('div', { class: 'field grow' }, h('label', { for: 'search-query' }, 'Search this knowledge base'), input),
      h('div', { class: 'field' }, h('label', { for: 'search-limit' }, 'Results'), limit),
      h('button', { type: 'submit', class: 'button-primary' }, 'Search')),
    results);
  return { element };
}
