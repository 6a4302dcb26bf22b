// golden.mjs writes ../testdata/golden.json: what the pinned
// @pydantic/genai-prices calcPrice answers for probe names of every dumped
// model, so that go test ./pricing/ checks the Go lookups and costs
// against the source itself. Run it through scripts/refresh-prices.sh.
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { calcPrice } from '@pydantic/genai-prices';

const here = dirname(fileURLToPath(import.meta.url));
const data = JSON.parse(readFileSync(join(here, '..', 'data', 'genai-prices.json'), 'utf8'));

// [input, cache read, cache write, output]: a short call, and a long one
// past the 200k and 272k tiers.
const usages = [[1000, 300, 100, 200], [300000, 100000, 50000, 20000]];
// Before most start dates and inside DeepSeek's windows; and the snapshot's noon.
const times = ['2025-01-01T02:00:00Z', '2026-12-01T12:00:00Z'];

function equalsNames(m, out) {
  if (m.equals !== undefined) out.push(m.equals);
  for (const k of ['or', 'and']) for (const s of m[k] ?? []) equalsNames(s, out);
  return out;
}

// A case is [provider id, model name, time index, usage index, total USD];
// a name the source does not price is one case [provider id, name, null].
// Probes: the model id, its first equals name, and the id upper-cased with
// a compact date appended.
const cases = [];
for (const p of data.providers) {
  for (const m of p.models) {
    const probes = [...new Set([m.id, ...equalsNames(m.match, []).slice(0, 1), m.id.toUpperCase() + '-20240229'])];
    for (const probe of probes) {
      const rows = [];
      let unpriced = false;
      times.forEach((t, ti) => usages.forEach(([i, cr, cw, o], ui) => {
        let r;
        try {
          r = calcPrice({ input_tokens: i, cache_read_tokens: cr, cache_write_tokens: cw, output_tokens: o }, probe, { providerId: p.id, timestamp: new Date(t) });
        } catch {
          return; // the source rejects this usage for this price: nothing to compare
        }
        if (!r) unpriced = true;
        else rows.push([p.id, probe, ti, ui, Number(r.total_price.toPrecision(15))]);
      }));
      if (unpriced) cases.push([p.id, probe, null]);
      else cases.push(...rows);
    }
  }
}
mkdirSync(join(here, '..', 'testdata'), { recursive: true });
writeFileSync(
  join(here, '..', 'testdata', 'golden.json'),
  `{"times": ${JSON.stringify(times)}, "usages": ${JSON.stringify(usages)}, "cases": [\n` + cases.map((c) => JSON.stringify(c)).join(',\n') + '\n]}\n',
);
console.log(`wrote ${cases.length} golden cases`);
