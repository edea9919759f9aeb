// The shell: sign-in gate, hash routes (#/, #/kbs/ID, #/kbs/ID/docs/DOC_ID, #/health) and the current view.
import { Api } from './api.js';
import { clearKey, loadKey, saveKey } from './auth.js';
import { announce } from './dom.js';
import { describeError } from './messages.js';
import { mountHealth } from './views/health.js';
import { mountKbList } from './views/kb-list.js';
import { mountKbPage } from './views/kb-page.js';
import { mountSignIn } from './views/signin.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const shell = { api: null, view: null, signInMessage: '' };

function parseRoute(hash) {
  const parts = hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] === 'kbs' && parts[1]) {
    return { name: 'kb', kbId: parts[1], docId: parts[2] === 'docs' ? parts[3] || null : null };
  }
  if (parts[0] === 'health') return { name: 'health' };
  return { name: 'kbs' };
}

function signIn(key) {
  saveKey(key);
  shell.api = new Api(key, { onUnauthorized: (error) => signOut(describeError(error)) });
  shell.signInMessage = '';
}

function signOut(message = '') {
  if (!shell.api && !message) return;
  clearKey();
  shell.api = null;
  shell.signInMessage = message;
  render({ focus: true });
}

const context = () => ({
  api: shell.api,
  announce,
  signOut,
  navigate: (hash) => { window.location.hash = hash; },
});

function markNav(route) {
  for (const link of nav.querySelectorAll('a[data-nav]')) {
    const current = (route.name === 'health') === (link.dataset.nav === 'health');
    if (current) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

function render({ focus = false } = {}) {
  const route = parseRoute(window.location.hash);
  // Another document of the same KB page: update in place, keeping its event stream open.
  if (shell.api && route.name === 'kb' && shell.view?.kbId === route.kbId) {
    shell.view.update(route);
    return;
  }
  shell.view?.dispose?.();
  main.replaceChildren();
  nav.hidden = !shell.api;
  if (!shell.api) {
    shell.view = mountSignIn(main, {
      message: shell.signInMessage,
      onSignedIn: (key) => {
        signIn(key);
        announce('Signed in');
        render({ focus: true });
      },
    });
  } else if (route.name === 'kb') {
    shell.view = mountKbPage(main, context(), route);
  } else if (route.name === 'health') {
    shell.view = mountHealth(main, context());
  } else {
    shell.view = mountKbList(main, context());
  }
  markNav(route);
  if (focus) main.querySelector('h1')?.focus();
}

function start() {
  const key = loadKey();
  if (key) signIn(key);
  document.getElementById('sign-out').addEventListener('click', () => {
    signOut();
    announce('Signed out');
  });
  // The skip link must not change the hash: the hash is the route.
  document.getElementById('skip-link').addEventListener('click', (event) => {
    event.preventDefault();
    main.focus();
  });
  window.addEventListener('hashchange', () => render({ focus: true }));
  render();
}

start();
