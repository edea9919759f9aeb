// Formatting for people: sizes, times, media types, stages.
import { STAGES, STATUSES } from './vocabulary.js';

export function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return '';
  const units = ['B', 'KB', 'MB', 'GB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value >= 10 || unit === 0 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}

export function formatTime(iso) {
  if (!iso) return '';
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

export function formatAge(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return '—';
  const s = Math.round(Number(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

// "~2 min" for an ETA: seconds under a minute, then minutes, then hours and minutes ("now" under a second).
export function formatEta(seconds) {
  const s = Math.round(Number(seconds));
  if (s < 1) return 'now';
  if (s < 60) return `~${s} s`;
  const m = Math.round(s / 60);
  if (m < 60) return `~${m} min`;
  return m % 60 ? `~${Math.floor(m / 60)} h ${m % 60} min` : `~${m / 60} h`;
}

// "37 ahead · ~2 min" for a queued document ("next" when none is ahead, no ETA part when unknown); "" otherwise.
export function queueLabel(doc) {
  if (doc.status !== 'queued' || !Number.isInteger(doc.queue_position)) return '';
  const ahead = doc.queue_position === 0 ? 'next' : `${doc.queue_position} ahead`;
  return Number.isFinite(doc.eta_s) ? `${ahead} · ${formatEta(doc.eta_s)}` : ahead;
}

const MEDIA_LABELS = {
  'application/pdf': 'PDF',
  'application/vnd.openxmlformats-officedocument.wordprocessingml.document': 'Word',
  'application/vnd.openxmlformats-officedocument.presentationml.presentation': 'PowerPoint',
  'application/vnd.openxmlformats-officedocument.spreadsheetml.sheet': 'Excel',
  'text/csv': 'CSV',
  'text/html': 'HTML',
  'text/markdown': 'Markdown',
  'text/plain': 'Text',
  'message/rfc822': 'E-mail',
};

export function mediaTypeLabel(mediaType) {
  return MEDIA_LABELS[mediaType] || mediaType;
}

// "extracting (2 of 5)" for a processing document, "" otherwise.
export function stageLabel(stage) {
  if (!stage) return '';
  const index = STAGES.indexOf(stage);
  return index < 0 ? stage : `${stage} (${index + 1} of ${STAGES.length})`;
}

export function countsSummary(counts) {
  if (!counts) return '';
  const parts = STATUSES.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`);
  return parts.length ? parts.join(' · ') : 'empty';
}
