// Runs one scenario of the official OpenAI or Anthropic SDK against a base
// URL (the fake provider, internal/upstreamtest, or the sidecar's proxy
// mode) and prints ONE JSON line to stdout:
//
//   {"ok":true,"text":"...","usage":{...}|null,"chunks":N,"toolCalls":[...],"model":"..."}
//   {"ok":true,"aborted":true,...}                       (the *-abort scenarios)
//   {"ok":false,"status":429,"errorClass":"RateLimitError","message":"..."}
//
// usage is the SDK's own view: the answer's usage object as the SDK
// returns it (snake_case, as on the wire), null where the SDK got none.
// chunks is the number of stream events the SDK yielded (0 without a
// stream). toolCalls are {id, name, arguments} (OpenAI, arguments a JSON
// text) or {id, name, input} (Anthropic, input parsed by the SDK).
//
// Every line also says elapsedMs, the scenario's time (of its last call
// for the *-twice scenarios), and attempts, the HTTP requests the SDK
// sent for that call (its retries included).
//
// The *-default scenarios make the client with the SDK's default options
// (maxRetries 2, its own timeout), as an application does: they show what
// the SDK does on its own with the sidecar's 429 (retry, or raise).
//
// Usage: node test/sdk/run.mjs <scenario> <baseURL>
// The OpenAI base URL is used as is (e.g. http://127.0.0.1:9470/openai/v1);
// the Anthropic SDK appends /v1/messages to its own (e.g.
// http://127.0.0.1:9470/anthropic). Exit status 0 whenever a line was
// printed, 2 on a usage error.
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';

const [scenario, baseURL] = process.argv.slice(2);

// The user header the sidecar attributes usage to.
const userHeaders = { 'X-LLMUsage-User': 'sdk-user' };
const messages = [{ role: 'user', content: 'Say hello' }];
const openaiModel = 'gpt-4';
const anthropicModel = 'claude-3-opus';
const weatherTool = {
  name: 'get_weather',
  description: 'The weather in a city',
  parameters: {
    type: 'object',
    properties: { city: { type: 'string' } },
    required: ['city'],
  },
};

// attempts counts the HTTP requests the SDKs send (their retries
// included); countingFetch is the fetch the clients are given.
let attempts = 0;
const countingFetch = (...args) => {
  attempts++;
  return fetch(...args);
};

// openaiDefault and anthropicDefault are clients with the SDKs' default
// options (retries and timeout), but for the test's key and base URL.
function openaiDefault() {
  return new OpenAI({ apiKey: 'sk-test-secret-key', baseURL, defaultHeaders: userHeaders, fetch: countingFetch });
}

function anthropicDefault() {
  return new Anthropic({ apiKey: 'sk-ant-test-secret-key', baseURL, defaultHeaders: userHeaders, fetch: countingFetch });
}

// lastCall runs the calls in order and times the last one alone.
let lastCallStart;
async function lastCall(...calls) {
  let out;
  for (const call of calls) {
    attempts = 0;
    lastCallStart = performance.now();
    out = await call();
  }
  return out;
}

function openai(headers = userHeaders) {
  return new OpenAI({
    apiKey: 'sk-test-secret-key',
    baseURL,
    maxRetries: 0,
    timeout: 30_000,
    defaultHeaders: headers,
  });
}

function anthropic(headers = userHeaders) {
  return new Anthropic({
    apiKey: 'sk-ant-test-secret-key',
    baseURL,
    maxRetries: 0,
    timeout: 30_000,
    defaultHeaders: headers,
  });
}

// openaiChat reports a chat.completion.
function openaiChat(c) {
  const m = c.choices[0]?.message ?? {};
  return {
    ok: true,
    text: m.content ?? '',
    usage: c.usage ?? null,
    chunks: 0,
    toolCalls: (m.tool_calls ?? []).map((t) => ({ id: t.id, name: t.function.name, arguments: t.function.arguments })),
    model: c.model,
  };
}

// openaiStream reads a chat stream, keeping the text, the tool calls
// assembled from their deltas and the usage chunk's usage.
async function openaiStream(stream, { abortAfterFirst } = {}) {
  let text = '';
  let usage = null;
  let chunks = 0;
  let model;
  let aborted = false;
  const calls = [];
  for await (const chunk of stream) {
    chunks++;
    model = chunk.model;
    if (chunk.usage) usage = chunk.usage;
    const delta = chunk.choices[0]?.delta;
    if (delta?.content) text += delta.content;
    for (const t of delta?.tool_calls ?? []) {
      const call = (calls[t.index] ??= { id: '', name: '', arguments: '' });
      if (t.id) call.id = t.id;
      if (t.function?.name) call.name += t.function.name;
      if (t.function?.arguments) call.arguments += t.function.arguments;
    }
    if (abortAfterFirst && delta?.content && !aborted) {
      aborted = true;
      abortAfterFirst.abort();
    }
  }
  const out = { ok: true, text, usage, chunks, toolCalls: calls, model };
  if (abortAfterFirst) out.aborted = aborted;
  return out;
}

// anthropicMessage reports a Message.
function anthropicMessage(m) {
  return {
    ok: true,
    text: m.content.filter((b) => b.type === 'text').map((b) => b.text).join(''),
    usage: m.usage ?? null,
    chunks: 0,
    toolCalls: m.content.filter((b) => b.type === 'tool_use').map((b) => ({ id: b.id, name: b.name, input: b.input })),
    model: m.model,
  };
}

// anthropicStream reads a MessageStream (the SDK's accumulating helper)
// and reports its final message, with the events counted.
async function anthropicStream(stream) {
  let chunks = 0;
  for await (const _ of stream) chunks++;
  const out = anthropicMessage(await stream.finalMessage());
  out.chunks = chunks;
  return out;
}

const anthropicTool = {
  name: weatherTool.name,
  description: weatherTool.description,
  input_schema: weatherTool.parameters,
};

const scenarios = {
  'openai-chat': async () => openaiChat(await openai().chat.completions.create({ model: openaiModel, messages })),

  'openai-chat-stream': async () =>
    openaiStream(await openai().chat.completions.create({ model: openaiModel, messages, stream: true })),

  'openai-chat-stream-usage': async () =>
    openaiStream(
      await openai().chat.completions.create({
        model: openaiModel,
        messages,
        stream: true,
        stream_options: { include_usage: true },
      }),
    ),

  'openai-tool': async () =>
    openaiStream(
      await openai().chat.completions.create({
        model: 'tool',
        messages,
        tools: [{ type: 'function', function: weatherTool }],
        stream: true,
        stream_options: { include_usage: true },
      }),
    ),

  'openai-error': async () => openaiChat(await openai().chat.completions.create({ model: 'error-500', messages })),

  'openai-ratelimited': async () => openaiChat(await openai().chat.completions.create({ model: 'error-429', messages })),

  'openai-abort': async () => {
    const ac = new AbortController();
    const stream = await openai().chat.completions.create(
      { model: 'slow', messages, stream: true, stream_options: { include_usage: true } },
      { signal: ac.signal },
    );
    return openaiStream(stream, { abortAfterFirst: ac });
  },

  'openai-body-user': async () =>
    openaiChat(await openai({}).chat.completions.create({ model: openaiModel, messages, user: 'body-user' })),

  'openai-responses': async () => {
    const r = await openai().responses.create({ model: openaiModel, input: 'Say hello' });
    return { ok: true, text: r.output_text, usage: r.usage ?? null, chunks: 0, toolCalls: [], model: r.model };
  },

  'openai-responses-stream': async () => {
    const stream = await openai().responses.create({ model: openaiModel, input: 'Say hello', stream: true });
    let text = '';
    let usage = null;
    let chunks = 0;
    let model;
    for await (const e of stream) {
      chunks++;
      if (e.type === 'response.output_text.delta') text += e.delta;
      if (e.type === 'response.completed') {
        usage = e.response.usage ?? null;
        model = e.response.model;
      }
    }
    return { ok: true, text, usage, chunks, toolCalls: [], model };
  },

  'openai-embeddings': async () => {
    const r = await openai().embeddings.create({ model: 'text-embedding-3-small', input: ['Say hello'] });
    return { ok: true, text: '', usage: r.usage ?? null, chunks: 0, toolCalls: [], model: r.model, embedding: r.data[0]?.embedding };
  },

  'anthropic-message': async () =>
    anthropicMessage(await anthropic().messages.create({ model: anthropicModel, max_tokens: 64, messages })),

  'anthropic-stream': async () =>
    anthropicStream(anthropic().messages.stream({ model: anthropicModel, max_tokens: 64, messages })),

  'anthropic-tool': async () =>
    anthropicStream(anthropic().messages.stream({ model: 'tool', max_tokens: 64, messages, tools: [anthropicTool] })),

  'anthropic-error': async () =>
    anthropicMessage(await anthropic().messages.create({ model: 'error-500', max_tokens: 64, messages })),

  'anthropic-ratelimited': async () =>
    anthropicMessage(await anthropic().messages.create({ model: 'error-429', max_tokens: 64, messages })),

  'anthropic-abort': async () => {
    // The raw event stream: MessageStream turns an abort into an error,
    // the raw stream ends its iteration quietly, as an app that stops
    // reading would see it.
    const ac = new AbortController();
    const stream = await anthropic().messages.create(
      { model: 'slow', max_tokens: 64, messages, stream: true },
      { signal: ac.signal },
    );
    let text = '';
    let chunks = 0;
    let model;
    let usage = null;
    for await (const e of stream) {
      chunks++;
      if (e.type === 'message_start') {
        model = e.message.model;
        usage = e.message.usage;
      }
      if (e.type === 'content_block_delta' && e.delta.type === 'text_delta') {
        text += e.delta.text;
        ac.abort();
      }
    }
    return { ok: true, aborted: ac.signal.aborted, text, usage, chunks, toolCalls: [], model };
  },

  'anthropic-body-user': async () =>
    anthropicMessage(
      await anthropic({}).messages.create({
        model: anthropicModel,
        max_tokens: 64,
        messages,
        metadata: { user_id: 'body-user' },
      }),
    ),

  // With the SDKs' default options: one call, then two in a row (the
  // second's result is reported), of the models the tests limit (fast: a
  // short wait).
  'openai-chat-default': async () =>
    lastCall(async () => openaiChat(await openaiDefault().chat.completions.create({ model: openaiModel, messages }))),

  'openai-chat-default-twice': async () => {
    const c = openaiDefault();
    const call = async () => openaiChat(await c.chat.completions.create({ model: 'fast', messages }));
    return lastCall(call, call);
  },

  'anthropic-message-default': async () =>
    lastCall(async () =>
      anthropicMessage(await anthropicDefault().messages.create({ model: anthropicModel, max_tokens: 64, messages })),
    ),

  'anthropic-message-default-twice': async () => {
    const c = anthropicDefault();
    const call = async () => anthropicMessage(await c.messages.create({ model: 'fast', max_tokens: 64, messages }));
    return lastCall(call, call);
  },

  // Two calls in a row of the model whose answer says the key's requests
  // are spent (the fake provider's "exhausted"); the second's result is
  // reported.
  'openai-chat-default-exhausted': async () => {
    const c = openaiDefault();
    const call = async () => openaiChat(await c.chat.completions.create({ model: 'exhausted', messages }));
    return lastCall(call, call);
  },

  'anthropic-message-default-exhausted': async () => {
    const c = anthropicDefault();
    const call = async () => anthropicMessage(await c.messages.create({ model: 'exhausted', max_tokens: 64, messages }));
    return lastCall(call, call);
  },

  // One stream with the default options, made while another call of the
  // user holds the only slot of a concurrent: 1 limit: the SDK gets the
  // sidecar's 429 (retry-after-ms 1000), retries by itself, and streams
  // once the slot is back.
  'openai-concurrency-retry': async () =>
    lastCall(async () =>
      openaiStream(await openaiDefault().chat.completions.create({ model: openaiModel, messages, stream: true })),
    ),

  'anthropic-concurrency-retry': async () =>
    lastCall(async () =>
      anthropicStream(anthropicDefault().messages.stream({ model: anthropicModel, max_tokens: 64, messages })),
    ),

  'anthropic-count-tokens': async () => {
    const r = await anthropic().messages.countTokens({ model: anthropicModel, messages });
    return { ok: true, text: '', usage: r, chunks: 0, toolCalls: [] };
  },
};

if (!scenario || !baseURL || !scenarios[scenario]) {
  process.stderr.write(`usage: node run.mjs <scenario> <baseURL>\nscenarios: ${Object.keys(scenarios).join(' ')}\n`);
  process.exit(2);
}

let out;
const start = performance.now();
try {
  out = await scenarios[scenario]();
} catch (err) {
  out = {
    ok: false,
    status: typeof err?.status === 'number' ? err.status : 0,
    errorClass: err?.constructor?.name ?? typeof err,
    message: String(err?.message ?? err),
  };
  if (err?.cause) out.cause = String(err.cause?.message ?? err.cause);
}
out.elapsedMs = Math.round(performance.now() - (lastCallStart ?? start));
out.attempts = attempts;
process.stdout.write(JSON.stringify(out) + '\n');
