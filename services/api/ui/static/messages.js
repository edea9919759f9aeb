import { formatBytes } from './format.js';

// Error codes in plain words: the server's catalogue (GET /v1/errors, shared/errors.py), never a copy.
// Loaded once, before any view imports this module (top-level await); without it the server's own
// message is shown.
async function loadCatalogue() {
  try {
    const response = await fetch(new URL('/v1/errors', window.location.origin), { headers: { Accept: 'application/json' } });
    if (response.ok) return await response.json();
    console.warn(`kbingest: error catalogue answered HTTP ${response.status}`);
  } catch (error) {
    console.warn('kbingest: error catalogue unavailable', error);
  }
  return { request: {}, document: {} };
}

const CATALOGUE = await loadCatalogue();

// What the UI adds to a catalogue message (how to fix it here), and the failures only a browser sees.
const UI_HINTS = { unauthorized: 'Sign in with an API key.' };
const CLIENT_ERRORS = {
  network_error: 'The kbingest API could not be reached. Is it running?',
  upload_interrupted: 'The connection closed during the upload. A very large file may be over the server’s size limit.',
};

function sentence(words) {
  const text = words.charAt(0).toUpperCase() + words.slice(1);
  return /[.!?]$/.test(text) ? text : `${text}.`;
}

function fill(template, error) {
  const extra = error.extra || {};
  const values = {
    message: error.message || '',
    status: extra.status || 'existing',
    max_size: extra.max_bytes ? formatBytes(extra.max_bytes) : 'its limit',
  };
  return template.replace(/\{(\w+)\}/g, (_, name) => values[name] ?? '');
}

export function describeError(error) {
  if (!error || typeof error !== 'object' || !('code' in error)) return String(error?.message || error);
  if (CLIENT_ERRORS[error.code]) return CLIENT_ERRORS[error.code];
  const meaning = CATALOGUE.request?.[error.code];
  if (!meaning) return error.message || `Request failed (HTTP ${error.status}).`;
  const hint = UI_HINTS[error.code];
  return sentence(fill(meaning.message, error)) + (hint ? ` ${hint}` : '');
}

// "pdf_encrypted — The PDF is password-protected." for a document's `error` object.
export function describeFailure(error) {
  if (!error) return '';
  const meaning = CATALOGUE.document?.[error.code];
  return meaning ? sentence(meaning.message) : '';
}
