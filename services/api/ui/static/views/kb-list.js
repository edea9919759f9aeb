// Knowledge bases: list with document counts, create, delete (after a confirmation).
import { confirmDialog, h, replaceChildren } from '../dom.js';
import { countsSummary, formatTime } from '../format.js';
import { describeError } from '../messages.js';

export function mountKbList(container, { api, announce, navigate }) {
  const nameInput = h('input', { id: 'kb-name', name: 'name', required: true, maxlength: '200', autocomplete: 'off' });
  const formMessage = h('p', { class: 'message message-error', role: 'alert', hidden: true });
  const listMessage = h('p', { class: 'message message-error', role: 'alert', hidden: true });
  const tbody = h('tbody');
  const table = h('table', { class: 'kbs', hidden: true },
    h('caption', { class: 'visually-hidden' }, 'Knowledge bases'),
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, 'Name'),
      h('th', { scope: 'col' }, 'Documents'),
      h('th', { scope: 'col' }, 'Created'),
      h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
    tbody);
  const empty = h('p', { class: 'muted', hidden: true }, 'No knowledge bases yet: create one above.');
  let disposed = false;

  function showError(target, error, ...extra) {
    replaceChildren(target, describeError(error), ...extra);
    target.hidden = false;
  }

  async function create(event) {
    event.preventDefault();
    formMessage.hidden = true;
    const name = nameInput.value.trim();
    if (!name) return;
    try {
      const kb = await api.createKb(name);
      announce(`Knowledge base ${kb.name} created`);
      navigate(`#/kbs/${kb.id}`);
    } catch (error) {
      const existing = error.code === 'duplicate_name' && error.extra.knowledge_base_id;
      showError(formMessage, error, existing ? [' ', h('a', { href: `#/kbs/${existing}` }, 'Open it')] : []);
      nameInput.focus();
    }
  }

  async function remove(kb, row) {
    const ok = await confirmDialog(
      `Delete the knowledge base “${kb.name}” and all its documents? This cannot be undone.`, 'Delete knowledge base');
    if (!ok) return;
    try {
      await api.deleteKb(kb.id);
      row.remove();
      announce(`Knowledge base ${kb.name} deleted`);
      empty.hidden = tbody.children.length > 0;
      table.hidden = !empty.hidden;
    } catch (error) {
      showError(listMessage, error);
    }
  }

  function renderRow(kb) {
    const counts = h('td', { 'data-label': 'Documents' }, '…');
    const row = h('tr', { dataset: { kbId: kb.id } },
      h('td', { 'data-label': 'Name' }, h('a', { href: `#/kbs/${kb.id}`, class: 'strong' }, kb.name)),
      counts,
      h('td', { 'data-label': 'Created' }, h('time', { datetime: kb.created_at }, formatTime(kb.created_at))),
      h('td', { 'data-label': 'Actions', class: 'actions' },
        h('button', { type: 'button', class: 'button-danger-quiet', 'aria-label': `Delete knowledge base ${kb.name}`,
          onClick: () => remove(kb, row) }, 'Delete')));
    api.getKb(kb.id)
      .then((full) => { counts.textContent = countsSummary(full.counts); })
      .catch(() => { counts.textContent = '—'; });
    return row;
  }

  async function load() {
    try {
      const { items } = await api.listKbs();
      if (disposed) return;
      replaceChildren(tbody, items.map(renderRow));
      empty.hidden = items.length > 0;
      table.hidden = items.length === 0;
    } catch (error) {
      if (!disposed) showError(listMessage, error);
    }
  }

  container.append(
    h('h1', { tabindex: '-1' }, 'Knowledge bases'),
    h('section', { class: 'card', 'aria-labelledby': 'create-kb-title' },
      h('h2', { id: 'create-kb-title' }, 'New knowledge base'),
      h('form', { class: 'inline-form', onSubmit: create },
        h('label', { for: 'kb-name' }, 'Name'),
        nameInput,
        h('button', { type: 'submit', class: 'button-primary' }, 'Create')),
      formMessage),
    h('section', { class: 'card', 'aria-labelledby': 'kb-list-title' },
      h('h2', { id: 'kb-list-title' }, 'Your knowledge bases'),
      listMessage, empty, h('div', { class: 'table-wrap' }, table)));
  document.title = 'Knowledge bases · kbingest';
  load();
  return { dispose() { disposed = true; } };
}
