// The kbingest HTTP API (CONTRACT.md) seen from the browser: JSON in and out, errors as ApiError.

export class ApiError extends Error {
  constructor(status, code, message, extra = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.extra = extra;
  }

  // A route this server does not have (yet): FastAPI's own 404, not "knowledge base not found".
  get routeMissing() {
    return (this.status === 404 && this.message === 'Not Found') || this.status === 405 || this.status === 501;
  }
}

export function errorFromBody(status, statusText, bodyText) {
  let body = null;
  try {
    body = bodyText ? JSON.parse(bodyText) : null;
  } catch {
    body = null;
  }
  const error = body && typeof body === 'object' ? body.error : null;
  if (error && typeof error.code === 'string') {
    const { code, message, ...extra } = error;
    return new ApiError(status, code, message || statusText || `HTTP ${status}`, extra);
  }
  return new ApiError(status, `http_${status}`, statusText || `HTTP ${status}`);
}

export function networkError(cause) {
  return new ApiError(0, 'network_error', `the API could not be reached (${cause?.message || 'network error'})`);
}

export class Api {
  constructor(key, { onUnauthorized } = {}) {
    this.key = key;
    this.onUnauthorized = onUnauthorized || (() => {});
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.key}`, ...extra };
  }

  async request(method, path, { json, query, signal } = {}) {
    const url = new URL(path, window.location.origin);
    for (const [name, value] of Object.entries(query || {})) {
      if (value !== null && value !== undefined && value !== '') url.searchParams.set(name, value);
    }
    const init = { method, headers: this.headers({ Accept: 'application/json' }), signal };
    if (json !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(json);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (cause) {
      if (cause?.name === 'AbortError') throw cause;
      throw networkError(cause);
    }
    const text = await response.text();
    if (!response.ok) {
      const error = errorFromBody(response.status, response.statusText, text);
      if (response.status === 401) this.onUnauthorized(error);
      throw error;
    }
    return text ? JSON.parse(text) : null;
  }

  listKbs() { return this.request('GET', '/v1/knowledge-bases'); }
  getKb(kbId) { return this.request('GET', `/v1/knowledge-bases/${kbId}`); }
  createKb(name) { return this.request('POST', '/v1/knowledge-bases', { json: { name } }); }
  deleteKb(kbId) { return this.request('DELETE', `/v1/knowledge-bases/${kbId}`); }
  updateKb(kbId, fields) { return this.request('PATCH', `/v1/knowledge-bases/${kbId}`, { json: fields }); }
  reindex(kbId) { return this.request('POST', `/v1/knowledge-bases/${kbId}/reindex`); }
  cancelReindex(kbId) { return this.request('POST', `/v1/knowledge-bases/${kbId}/reindex/cancel`); }
  rollbackReindex(kbId) { return this.request('POST', `/v1/knowledge-bases/${kbId}/reindex/rollback`); }

  listDocuments(kbId, { status, cursor, limit = 100 } = {}) {
    return this.request('GET', `/v1/knowledge-bases/${kbId}/documents`, { query: { status, cursor, limit } });
  }

  getDocument(docId) { return this.request('GET', `/v1/documents/${docId}`); }
  listVersions(docId) { return this.request('GET', `/v1/documents/${docId}/versions`); }
  retryDocument(docId) { return this.request('POST', `/v1/documents/${docId}/retry`); }
  deleteDocument(docId) { return this.request('DELETE', `/v1/documents/${docId}`); }

  search(kbId, query, limit) {
    return this.request('POST', `/v1/knowledge-bases/${kbId}/search`, { json: { query, limit } });
  }

  pipeline() { return this.request('GET', '/v1/pipeline'); }
  pipelineHistory(minutes) { return this.request('GET', '/v1/pipeline/history', { query: { minutes } }); }
  deadLetters() { return this.request('GET', '/v1/outbox/dead'); }
  replay(eventId) { return this.request('POST', `/v1/outbox/${eventId}/replay`); }

  eventsUrl(kbId) { return `/v1/knowledge-bases/${kbId}/events`; }

  async downloadContent(docId) {
    let response;
    try {
      response = await fetch(`/v1/documents/${docId}/content`, { headers: this.headers() });
    } catch (cause) {
      throw networkError(cause);
    }
    if (!response.ok) throw errorFromBody(response.status, response.statusText, await response.text());
    return response.blob();
  }

  // XMLHttpRequest, not fetch: it reports upload progress. Resolves {document} or {error}, never rejects.
  upload(kbId, file, onProgress) {
    return this.sendFile('POST', `/v1/knowledge-bases/${kbId}/documents`, file, onProgress);
  }

  // New content for a document, processed beside the current version (200 and unchanged when identical).
  replaceContent(docId, file, onProgress) {
    return this.sendFile('PUT', `/v1/documents/${docId}/content`, file, onProgress);
  }

  sendFile(method, path, file, onProgress) {
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open(method, path);
      xhr.setRequestHeader('Authorization', `Bearer ${this.key}`);
      xhr.setRequestHeader('Accept', 'application/json');
      xhr.upload.addEventListener('progress', (event) => {
        if (event.lengthComputable) onProgress(event.loaded / event.total);
      });
      xhr.addEventListener('load', () => {
        if (xhr.status >= 200 && xhr.status < 300) {
          resolve({ document: JSON.parse(xhr.responseText), status: xhr.status });
          return;
        }
        const error = errorFromBody(xhr.status, xhr.statusText, xhr.responseText);
        if (xhr.status === 401) this.onUnauthorized(error);
        resolve({ error });
      });
      xhr.addEventListener('error', () => resolve({ error: new ApiError(0, 'upload_interrupted',
        'the connection closed during the upload') }));
      const form = new FormData();
      form.append('file', file, file.name);
      xhr.send(form);
    });
  }
}
