// dump.mjs writes ../data/genai-prices.json: the providers llmusage prices
// from the data embedded in @pydantic/genai-prices (the version pinned in
// package-lock.json), trimmed to the fields the Go package pricing reads,
// and ../data/LICENSE-genai-prices. Run it through scripts/refresh-prices.sh.
//
// Usage: node dump.mjs YYYY-MM-DD   (the snapshot date: the version's publish date)
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { findProvider } from '@pydantic/genai-prices';

const here = dirname(fileURLToPath(import.meta.url));
const pkgDir = join(here, 'node_modules', '@pydantic', 'genai-prices');
const dataDir = join(here, '..', 'data');

// The genai-prices provider ids that pricing/providers.go maps llmusage
// provider names to. Their fallback_model_providers are added below.
const wanted = [
  'openai', 'anthropic', 'groq', 'google', 'mistral', 'deepseek', 'x-ai', 'cohere',
  'aws', 'azure', 'together', 'fireworks', 'perplexity', 'openrouter',
];

// The price keys pricing reads: tokens per million, and calls per thousand.
const priceKeys = ['input_mtok', 'cache_read_mtok', 'cache_write_mtok', 'output_mtok', 'requests_kcount'];

const date = process.argv[2];
if (!/^\d{4}-\d{2}-\d{2}$/.test(date ?? '')) {
  console.error('usage: node dump.mjs YYYY-MM-DD');
  process.exit(2);
}
const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));

function trimPrices(p) {
  const out = {};
  for (const k of priceKeys) {
    if (p[k] === undefined) continue;
    const v = p[k];
    out[k] = typeof v === 'number' ? v : { base: v.base, tiers: v.tiers.map((t) => ({ start: t.start, price: t.price })) };
  }
  return out;
}

function trimModel(m) {
  const out = { id: m.id };
  if (m.name !== undefined) out.name = m.name;
  out.match = m.match;
  if (m.deprecated) out.deprecated = true;
  if (m.context_window !== undefined) out.context_window = m.context_window;
  out.prices = Array.isArray(m.prices)
    ? m.prices.map((c) => (c.constraint === undefined ? { prices: trimPrices(c.prices) } : { constraint: c.constraint, prices: trimPrices(c.prices) }))
    : trimPrices(m.prices);
  return out;
}

const ids = [...wanted];
const providers = [];
for (let i = 0; i < ids.length; i++) {
  const p = findProvider({ providerId: ids[i] });
  if (!p || p.id !== ids[i]) throw new Error(`genai-prices ${pkg.version} has no provider ${ids[i]}`);
  for (const f of p.fallback_model_providers ?? []) if (!ids.includes(f)) ids.push(f);
  providers.push({ id: p.id, name: p.name, fallback_model_providers: p.fallback_model_providers, models: p.models.map(trimModel) });
}

// One provider header per line group and one model per line, so that a
// refresh diffs model by model.
const lines = [
  '{',
  `"source": "genai-prices", "package": ${JSON.stringify(pkg.name)}, "version": ${JSON.stringify(pkg.version)}, "date": ${JSON.stringify(date)},`,
  '"providers": [',
];
providers.forEach((p, i) => {
  const head = { id: p.id, name: p.name };
  if (p.fallback_model_providers) head.fallback_model_providers = p.fallback_model_providers;
  lines.push(JSON.stringify(head).slice(0, -1) + ', "models": [');
  p.models.forEach((m, j) => lines.push(JSON.stringify(m) + (j < p.models.length - 1 ? ',' : '')));
  lines.push(']}' + (i < providers.length - 1 ? ',' : ''));
});
lines.push(']', '}', '');
writeFileSync(join(dataDir, 'genai-prices.json'), lines.join('\n'));

const licence = readFileSync(join(pkgDir, 'LICENSE'), 'utf8');
writeFileSync(
  join(dataDir, 'LICENSE-genai-prices'),
  `Price data from ${pkg.name} ${pkg.version} (https://github.com/pydantic/genai-prices), under this licence:\n\n${licence}`,
);
console.log(`wrote ${providers.length} providers, ${providers.reduce((n, p) => n + p.models.length, 0)} models of ${pkg.name} ${pkg.version} (${date})`);
