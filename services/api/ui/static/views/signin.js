// Sign in with an API key: checked against the API before it is kept (in this tab only).
import { Api } from '../api.js';
import { h } from '../dom.js';
import { describeError } from '../messages.js';

export function mountSignIn(container, { message, onSignedIn }) {
  const input = h('input', {
    id: 'api-key', name: 'api-key', type: 'password', autocomplete: 'off', spellcheck: 'false',
    required: true, 'aria-describedby': 'api-key-hint signin-error',
  });
  const error = h('p', { id: 'signin-error', class: 'message message-error', role: 'alert' }, message || '');
  error.hidden = !message;
  const button = h('button', { type: 'submit', class: 'button-primary' }, 'Sign in');

  async function submit(event) {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    button.disabled = true;
    error.hidden = true;
    try {
      await new Api(key).listKbs();
      onSignedIn(key);
    } catch (failure) {
      error.textContent = describeError(failure);
      error.hidden = false;
      input.focus();
      input.select();
    } finally {
      button.disabled = false;
    }
  }

  container.append(h('section', { class: 'card signin', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title', tabindex: '-1' }, 'Sign in'),
    h('form', { onSubmit: submit },
      h('label', { for: 'api-key' }, 'API key'),
      input,
      h('p', { id: 'api-key-hint', class: 'hint' },
        'The local stack prints its key at start-up and keeps it in .kbingest/api_key; ',
        h('code', {}, 'kbingest keys create'), ' makes more. The key stays in this browser tab only.'),
      error,
      button)));
  input.focus();
  return { dispose() {} };
}
