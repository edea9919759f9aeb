// Small inline SVG line charts over time: no library, nothing downloaded, classes only (the CSP forbids inline style).
import { h } from './dom.js';

const SVG_NS = 'http://www.w3.org/2000/svg';
const WIDTH = 300;
const HEIGHT = 80;
// Values are drawn inside this inset so a line at zero or at the top is not hidden by the grid lines.
const INSET = 3;
// Samples further apart than this many usual steps were not taken (no reconciler): the line breaks there.
const GAP_STEPS = 3;

function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  return el;
}

// 1, 2 or 5 × 10^n at or above value: a scale a person reads at a glance.
export function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * power).find((m) => m >= value);
}

function usualStep(times) {
  const steps = times.slice(1).map((t, i) => t - times[i]).filter((d) => d > 0).sort((a, b) => a - b);
  return steps.length ? steps[Math.floor(steps.length / 2)] : Infinity;
}

// Path data of one series; a missing value or a gap starts a new segment, a lone point is drawn as a dot.
export function linePath(times, values, { start, end, max }) {
  const step = usualStep(times);
  const segments = [];
  let previous = null;
  times.forEach((t, i) => {
    const v = values[i];
    if (!Number.isFinite(v) || t < start) {
      previous = null;
      return;
    }
    const x = (((t - start) / (end - start)) * WIDTH).toFixed(1);
    const y = (HEIGHT - INSET - (Math.min(Math.max(v, 0), max) / max) * (HEIGHT - 2 * INSET)).toFixed(1);
    if (previous === null || t - previous > GAP_STEPS * step) segments.push([]);
    segments[segments.length - 1].push(`${x},${y}`);
    previous = t;
  });
  return segments.map(([first, ...rest]) => `M${first}${rest.length ? `L${rest.join('L')}` : 'h0.1'}`).join('');
}

function lastValue(values) {
  for (let i = values.length - 1; i >= 0; i -= 1) if (Number.isFinite(values[i])) return values[i];
  return null;
}

// series: [{name, values}] (at most 3, coloured by position); times in ms; format(number) → text.
export function lineChart({ title, times, series, start, end, max, format, windowLabel }) {
  const peak = Math.max(0, ...series.flatMap((s) => s.values.filter(Number.isFinite)));
  const top = max ?? niceMax(peak);
  const describe = (s) => {
    const now = lastValue(s.values);
    return `${s.name} ${now === null ? 'unknown' : format(now)}`;
  };
  const summary = `${title} over the last ${windowLabel}: now ${series.map(describe).join(', ')}; `
    + `peak ${format(peak)}`;
  const plot = svg('svg', {
    class: 'chart-plot', viewBox: `0 0 ${WIDTH} ${HEIGHT}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': summary,
  });
  plot.append(svg('line', { class: 'chart-grid', x1: 0, y1: 0.5, x2: WIDTH, y2: 0.5 }));
  plot.append(svg('line', { class: 'chart-grid', x1: 0, y1: HEIGHT - 0.5, x2: WIDTH, y2: HEIGHT - 0.5 }));
  series.forEach((s, i) => {
    const d = linePath(times, s.values, { start, end, max: top });
    if (d) plot.append(svg('path', { class: `chart-line series-${i + 1}`, d, 'vector-effect': 'non-scaling-stroke' }));
  });
  return h('figure', { class: 'chart' },
    h('figcaption', {},
      h('span', { class: 'chart-title' }, title),
      series.map((s, i) => h('span', { class: 'chart-legend' },
        h('span', { class: `chart-swatch series-${i + 1}`, 'aria-hidden': 'true' }), describe(s)))),
    plot,
    h('div', { class: 'chart-axis', 'aria-hidden': 'true' },
      h('span', {}, `${windowLabel} ago`), h('span', {}, `scale 0–${format(top)}`), h('span', {}, 'now')));
}
