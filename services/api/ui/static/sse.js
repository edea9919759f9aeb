// Server-Sent Events over fetch(): EventSource can't send an Authorization header, fetch can.
// The parser follows the WHATWG event-stream rules; the connection reconnects with Last-Event-ID.

export class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = '';
    this.afterCr = false;
    this.lastEventId = '';
    this.retryMs = null;
    this.reset();
  }

  reset() {
    this.eventType = '';
    this.data = [];
  }

  // Feed decoded text in any chunking; complete events are dispatched to onEvent.
  feed(text) {
    if (!text) return;
    // A CRLF may be split across chunks: the LF after a chunk-final CR belongs to that line end.
    this.buffer += this.afterCr && text.startsWith('\n') ? text.slice(1) : text;
    this.afterCr = false;
    const lineEnd = /\r\n|\r|\n/g;
    let start = 0;
    let match;
    while ((match = lineEnd.exec(this.buffer)) !== null) {
      this.line(this.buffer.slice(start, match.index));
      start = lineEnd.lastIndex;
      if (match[0] === '\r' && start === this.buffer.length) this.afterCr = true;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === '') {
      this.dispatch();
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.eventType = value;
    else if (field === 'data') this.data.push(value);
    else if (field === 'id' && !value.includes('\0')) this.lastEventId = value;
    else if (field === 'retry' && /^\d+$/.test(value)) this.retryMs = Number(value);
  }

  dispatch() {
    if (this.data.length === 0) {
      this.reset();
      return;
    }
    const event = { type: this.eventType || 'message', data: this.data.join('\n'), id: this.lastEventId };
    this.reset();
    this.onEvent(event);
  }
}

const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 30000;
const ROUTE_MISSING_RETRY_MS = 60000;
// With no byte (data or keep-alive comment) for this long the connection is presumed dead.
const IDLE_TIMEOUT_MS = 60000;

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = window.setTimeout(resolve, ms);
    signal.addEventListener('abort', () => { window.clearTimeout(timer); resolve(); }, { once: true });
  });
}

/*
 * Keep one event stream open until close(). onState receives
 * {state: 'connecting'|'open'|'reconnecting'|'unavailable'|'unauthorized', reconnected, status, detail}.
 */
export function openEventStream({ url, key, onEvent, onState }) {
  const controller = new AbortController();
  let lastEventId = '';
  let everOpened = false;

  async function readStream(response) {
    const parser = new SseParser((event) => onEvent(event));
    parser.lastEventId = lastEventId;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let idle = null;
    const armIdle = () => {
      window.clearTimeout(idle);
      idle = window.setTimeout(() => reader.cancel('idle'), IDLE_TIMEOUT_MS);
    };
    armIdle();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        armIdle();
        parser.feed(value);
        lastEventId = parser.lastEventId;
      }
    } finally {
      window.clearTimeout(idle);
    }
    return parser.retryMs;
  }

  async function run() {
    let delay = FIRST_RETRY_MS;
    onState({ state: 'connecting' });
    while (!controller.signal.aborted) {
      const headers = { Authorization: `Bearer ${key}`, Accept: 'text/event-stream' };
      if (lastEventId) headers['Last-Event-ID'] = lastEventId;
      let wait = delay;
      try {
        const response = await fetch(url, { headers, signal: controller.signal, cache: 'no-store' });
        const type = response.headers.get('content-type') || '';
        if (response.status === 401 || response.status === 403) {
          onState({ state: 'unauthorized', status: response.status });
          return;
        }
        if (response.ok && type.startsWith('text/event-stream')) {
          onState({ state: 'open', reconnected: everOpened });
          everOpened = true;
          delay = FIRST_RETRY_MS;
          const retryMs = await readStream(response);
          wait = retryMs ?? FIRST_RETRY_MS;
          if (!controller.signal.aborted) onState({ state: 'reconnecting', detail: 'the stream ended' });
        } else if (response.status === 404 || response.status === 405 || response.status === 501
                   || (response.ok && !type.startsWith('text/event-stream'))) {
          response.body?.cancel();
          onState({ state: 'unavailable', status: response.status });
          wait = ROUTE_MISSING_RETRY_MS;
        } else {
          response.body?.cancel();
          onState({ state: 'reconnecting', status: response.status, detail: `HTTP ${response.status}` });
        }
      } catch (error) {
        if (controller.signal.aborted) return;
        onState({ state: 'reconnecting', detail: error?.message || 'network error' });
      }
      // Jitter keeps many open tabs from reconnecting in lockstep after a server restart.
      await sleep(wait * (0.75 + Math.random() * 0.5), controller.signal);
      delay = Math.min(delay * 2, MAX_RETRY_MS);
    }
  }

  run();
  return { close: () => controller.abort() };
}
