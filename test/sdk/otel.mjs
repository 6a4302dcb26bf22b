// Sends GenAI spans, in the current and the older attribute names, and
// spans that are not GenAI usage, through the OpenTelemetry JS SDK's two
// OTLP/HTTP trace exporters (JSON, and protobuf) to a sidecar, as an
// application instrumented with OpenTelemetry would, and prints ONE JSON
// line to stdout:
//
//   {"ok":true,"exports":[{"exporter":"http-json","code":0},...]}
//   {"ok":false,"exports":[...,{"exporter":"...","code":1,"message":"..."}]}
//
// code is the SDK's ExportResultCode of each export (0 SUCCESS, 1 FAILED).
// The protobuf batch is exported a second time, as an exporter that
// retries one whose answer it lost would: the sidecar must store nothing
// twice.
//
// Usage: node test/sdk/otel.mjs genai <sidecarURL>   (e.g. http://127.0.0.1:9470)
import { BasicTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { OTLPTraceExporter as JSONExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { OTLPTraceExporter as ProtoExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { SpanStatusCode } from '@opentelemetry/api';

const [scenario, baseURL] = process.argv.slice(2);
if (scenario !== 'genai' || !baseURL) {
  console.error('usage: node otel.mjs genai <sidecarURL>');
  process.exit(2);
}

const exports = [];

// recording wraps an exporter, keeping each export's result and the spans
// it sent (to send them again).
function recording(name, exporter) {
  const sent = [];
  return {
    sent,
    inner: exporter,
    export(spans, done) {
      sent.push(...spans);
      exporter.export(spans, (r) => {
        exports.push({ exporter: name, code: r.code, message: r.error?.message });
        done(r);
      });
    },
    shutdown: () => exporter.shutdown(),
    forceFlush: () => exporter.forceFlush(),
  };
}

// provider builds a tracer provider exporting each span as it ends.
function provider(resource, exporter) {
  return new BasicTracerProvider({
    resource: resourceFromAttributes(resource),
    spanProcessors: [new SimpleSpanProcessor(exporter)],
  });
}

function span(tracer, name, attributes, { error } = {}) {
  const s = tracer.startSpan(name, { attributes });
  if (error) {
    s.setStatus({ code: SpanStatusCode.ERROR, message: error });
  }
  s.end();
}

const url = `${baseURL}/v1/traces`;

// JSON: the current names, the older ones, an error, and an HTTP span.
const jsonExp = recording('http-json', new JSONExporter({ url }));
const p1 = provider({ 'service.name': 'otel-e2e-json' }, jsonExp);
const t1 = p1.getTracer('llmusage-e2e');
span(t1, 'chat gpt-4o', {
  'gen_ai.operation.name': 'chat',
  'gen_ai.provider.name': 'openai',
  'gen_ai.request.model': 'gpt-4o',
  'gen_ai.response.model': 'gpt-4o-2024-08-06',
  'gen_ai.usage.input_tokens': 1000,
  'gen_ai.usage.output_tokens': 200,
  'gen_ai.usage.cache_read.input_tokens': 300,
  'gen_ai.usage.reasoning.output_tokens': 50,
  'user.id': 'otel-user',
});
span(t1, 'anthropic.chat', {
  'gen_ai.system': 'anthropic',
  'gen_ai.request.model': 'claude-3-5-sonnet-20241022',
  'gen_ai.usage.prompt_tokens': 500,
  'gen_ai.usage.completion_tokens': 100,
  'gen_ai.usage.cache_creation_input_tokens': 200,
  'enduser.id': 'otel-user',
});
span(t1, 'chat gpt-4o-mini', {
  'gen_ai.provider.name': 'openai',
  'gen_ai.request.model': 'gpt-4o-mini',
  'gen_ai.usage.input_tokens': 10,
  'gen_ai.usage.output_tokens': 0,
  'error.type': 'rate_limit_exceeded',
  'user.id': 'otel-user',
}, { error: 'Too Many Requests' });
span(t1, 'GET /health', { 'http.request.method': 'GET', 'user.id': 'otel-user' });
await p1.forceFlush();
await p1.shutdown();

// Protobuf: the user on the resource, an old provider name, a database
// span, a span without a user and one with an absurd count.
const protoExp = recording('http-proto', new ProtoExporter({ url }));
const p2 = provider({ 'service.name': 'otel-e2e-proto', 'user.id': 'otel-proto-user' }, protoExp);
const t2 = p2.getTracer('llmusage-e2e');
span(t2, 'chat claude', {
  'gen_ai.provider.name': 'aws.bedrock',
  'gen_ai.request.model': 'anthropic.claude-3-haiku-20240307-v1:0',
  'gen_ai.usage.input_tokens': 40,
  'gen_ai.usage.output_tokens': 4,
});
span(t2, 'chat azure', {
  'gen_ai.system': 'az.ai.openai',
  'gen_ai.request.model': 'gpt-4o',
  'gen_ai.usage.prompt_tokens': 70,
  'gen_ai.usage.completion_tokens': 7,
  'llm.usage.total_tokens': 77,
});
span(t2, 'SELECT users', { 'db.system.name': 'postgresql' });
await p2.forceFlush();

// Sent apart, these must not be attributed to the resource's user: a
// provider of their own, without user.id.
const p3 = provider({ 'service.name': 'otel-e2e-proto' }, protoExp);
const t3 = p3.getTracer('llmusage-e2e');
span(t3, 'chat nouser', { 'gen_ai.request.model': 'gpt-4o', 'gen_ai.usage.input_tokens': 1, 'gen_ai.usage.output_tokens': 1 });
span(t3, 'chat absurd', {
  'gen_ai.request.model': 'gpt-4o',
  'gen_ai.usage.input_tokens': 1e13,
  'gen_ai.usage.output_tokens': 1,
  'user.id': 'otel-proto-user',
});
await p3.forceFlush();

// The protobuf spans once more, as a retry would send them.
const again = [...protoExp.sent];
await new Promise((resolve) => protoExp.inner.export(again, (r) => {
  exports.push({ exporter: 'http-proto-resent', code: r.code, message: r.error?.message });
  resolve();
}));
await p2.shutdown();
await p3.shutdown();

console.log(JSON.stringify({ ok: exports.length > 0 && exports.every((e) => e.code === 0), exports }));
