// API error codes and document failure codes in plain words.
import { formatBytes, mediaTypeLabel } from './format.js';

const REQUEST_ERRORS = {
  unauthorized: () => 'No API key was sent. Sign in with an API key.',
  invalid_api_key: () => 'That API key was refused: it is unknown or has been revoked.',
  forbidden: () => 'This API key may not access this knowledge base.',
  duplicate_name: (e) => e.message || 'A knowledge base with this name already exists.',
  duplicate_document: (e) => `A document with this name is already in this knowledge base (${e.extra.status || 'existing'}).`,
  duplicate_content: (e) => `A document with the same content is already in this knowledge base`
    + `${e.extra.filename ? ` as “${e.extra.filename}”` : ''} (${e.extra.status || 'existing'}).`,
  not_retryable: (e) => `Only failed documents can be retried (${e.extra.status ? `this one is ${e.extra.status}` : e.message}).`,
  file_too_large: (e) => (e.extra.max_bytes
    ? `Too large: the server accepts files up to ${formatBytes(e.extra.max_bytes)}.`
    : 'Too large for this server.'),
  too_many_files: (e) => e.message,
  unsupported_media_type: (e) => {
    const supported = Array.isArray(e.extra.supported) ? e.extra.supported.map(mediaTypeLabel) : [];
    return `Unsupported file type${supported.length ? `. Supported: ${[...new Set(supported)].join(', ')}` : ''}.`;
  },
  empty_file: () => 'The file is empty (0 bytes): nothing to index.',
  validation_error: (e) => `The request was refused: ${e.message}`,
  idempotency_key_reused: (e) => e.message,
  database_unavailable: () => 'The server’s database is unavailable right now. Try again in a moment.',
  storage_unavailable: () => 'The server’s file storage is unavailable right now; nothing was stored. Try again in a moment.',
  embedder_unavailable: () => 'Search is unavailable: the embedding model is not answering. Try again in a moment.',
  rate_limited: () => 'The server is busy. Try again in a moment.',
  internal_error: () => 'Unexpected server error (it has been logged on the server).',
  network_error: () => 'The kbingest API could not be reached. Is it running?',
  upload_interrupted: () => 'The connection closed during the upload. A very large file may be over the server’s size limit.',
};

export function describeError(error) {
  if (!error || typeof error !== 'object' || !('code' in error)) return String(error?.message || error);
  const describe = REQUEST_ERRORS[error.code];
  return describe ? describe(error) : (error.message || `Request failed (HTTP ${error.status}).`);
}

const FAILURES = {
  unsupported_media_type: 'This file type cannot be extracted.',
  file_too_large: 'The file is over the size limit.',
  empty_file: 'The file is empty.',
  empty_text: 'No text could be extracted (a scan without a text layer, or an empty document).',
  pdf_encrypted: 'The PDF is password-protected.',
  corrupt_file: 'The file is damaged or not what its type says.',
  extract_timeout: 'Extracting the text took too long.',
  extract_crashed: 'The extractor crashed or ran out of memory on this file.',
  storage_unavailable: 'The file storage was unavailable.',
  object_missing: 'The stored file is missing.',
  embedder_unavailable: 'The embedding model was unavailable.',
  embedder_rate_limited: 'The embedding provider refused more requests (rate limit).',
  embed_timeout: 'Embedding took too long.',
  index_unavailable: 'The search index was unavailable.',
  stage_timeout: 'A processing stage took too long.',
  stalled: 'The processor stopped reporting progress.',
  max_attempts_exceeded: 'Every attempt failed.',
  internal_error: 'An unexpected error in the processor.',
  cancelled: 'The batch was cancelled before this document was processed.',
};

// "pdf_encrypted — The PDF is password-protected." for a document's `error` object.
export function describeFailure(error) {
  if (!error) return '';
  return FAILURES[error.code] || '';
}
