package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/llmusage/llmusage/internal/sdktest"
	"github.com/llmusage/llmusage/internal/sidecartest"
)

// TestOTLPWithTheSDK, as a new user tries it: the OpenTelemetry JS SDK's
// OTLP/HTTP trace exporters (JSON and protobuf, npm packages) pointed at
// the sidecar. Its gen_ai spans, in the current and the older attribute
// names, become records with their token counts, providers and users; its
// other spans none; a batch sent twice is stored once; /metrics counts
// the spans by outcome.
func TestOTLPWithTheSDK(t *testing.T) {
	grpcAddr := sidecartest.FreeAddr(t)
	s := sidecartest.Start(t, sidecartest.Options{Flags: []string{"--flush-interval", "50ms", "--otlp-grpc-address", grpcAddr}})
	r := sdktest.RunOTel(t, "genai", s.APIURL())
	if !r.OK || len(r.Exports) < 4 {
		t.Fatalf("the exporters failed: %s", r.Line)
	}

	byModel := func(recs []map[string]any) map[string]map[string]any {
		m := map[string]map[string]any{}
		for _, rec := range recs {
			m[rec["model"].(string)] = rec
		}
		return m
	}
	f := func(rec map[string]any, provider, wantTokens, status string) {
		t.Helper()
		if rec == nil {
			t.Fatalf("no record")
		}
		if rec["provider"] != provider || tokens(rec) != wantTokens || rec["status"] != status {
			t.Fatalf("record %v: want %s, %s, %s", rec, provider, wantTokens, status)
		}
		if id, _ := rec["request_id"].(string); len(id) != 32+1+16 || id[32] != '-' {
			t.Fatalf("request_id %q is not trace id-span id", id)
		}
	}
	jsonRecs := byModel(logsOf(t, s, "otel-user", 3))
	if len(jsonRecs) != 3 {
		t.Fatalf("otel-user's records %v", jsonRecs)
	}
	f(jsonRecs["gpt-4o-2024-08-06"], "openai", "prompt 1000 completion 200 cached 300 reasoning 50", "success")
	f(jsonRecs["claude-3-5-sonnet-20241022"], "anthropic", "prompt 500 completion 100 cached 0 reasoning 0", "success")
	f(jsonRecs["gpt-4o-mini"], "openai", "prompt 10 completion 0 cached 0 reasoning 0", "error")
	if rec := jsonRecs["gpt-4o-mini"]; rec["error_type"] != "rate_limit_exceeded" {
		t.Fatalf("error_type of %v", rec)
	}
	// 300 uncached input tokens at $3 a million, 200 written to the cache
	// at $3.75, 100 output at $15: the cache writes were read.
	if rec := jsonRecs["claude-3-5-sonnet-20241022"]; rec["cost_usd"] != 0.00315 {
		t.Fatalf("cost of %v, want 0.00315", rec)
	}
	meta, _ := jsonRecs["gpt-4o-2024-08-06"]["metadata"].(map[string]any)
	if meta["service"] != "otel-e2e-json" || meta["operation"] != "chat" || meta["source"] != "otlp" {
		t.Fatalf("metadata %v", meta)
	}

	// The protobuf batch, sent twice, is stored once.
	protoRecs := logsOf(t, s, "otel-proto-user", 2)
	time.Sleep(300 * time.Millisecond) // a duplicate would have been flushed by now
	protoRecs = logsOf(t, s, "otel-proto-user", 2)
	if len(protoRecs) != 2 {
		t.Fatalf("otel-proto-user's records (the batch was sent twice): %v", protoRecs)
	}
	pm := byModel(protoRecs)
	f(pm["anthropic.claude-3-haiku-20240307-v1:0"], "aws.bedrock", "prompt 40 completion 4 cached 0 reasoning 0", "success")
	f(pm["gpt-4o"], "azure.ai.openai", "prompt 70 completion 7 cached 0 reasoning 0", "success")

	// Nothing else was stored: neither the HTTP and database spans, nor
	// the span without a user, nor the absurd one.
	_, all := s.Get(t, "/api/llm/usage/logs?limit=100")
	if logs, _ := all["logs"].([]any); len(logs) != 5 {
		t.Fatalf("%d records in all, want 5: %v", len(logs), all)
	}

	// Two sends of the protobuf spans: 2+2 accepted there, 3 from JSON.
	for series, want := range map[string]float64{
		`llmusage_otlp_spans_total{outcome="accepted"}`:                                                              7,
		`llmusage_otlp_spans_total{outcome="ignored"}`:                                                               3,
		`llmusage_otlp_spans_total{outcome="no_user"}`:                                                               2,
		`llmusage_otlp_spans_total{outcome="invalid"}`:                                                               2,
		`llmusage_persist_duplicates_total`:                                                                          2,
		`llm_requests_total{model="gpt-4o-2024-08-06",provider="openai",status="success",team="",user="otel-user"}`:  1,
		`llm_requests_total{model="gpt-4o-mini",provider="openai",status="error",team="",user="otel-user"}`:          1,
		`llm_tokens_total{model="gpt-4o-2024-08-06",provider="openai",team="",token_type="cached",user="otel-user"}`: 300,
	} {
		sidecartest.WaitFor(t, 5*time.Second, func() bool { return s.Gauge(series) == want }, "%s = %v, want %v", series, s.Gauge(series), want)
	}

	// OTLP/gRPC on --otlp-grpc-address.
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	td := ptrace.NewTraces()
	sp := td.ResourceSpans().AppendEmpty().ScopeSpans().AppendEmpty().Spans().AppendEmpty()
	_ = sp.Attributes().FromRaw(map[string]any{"gen_ai.provider.name": "groq", "gen_ai.request.model": "llama-3.1-8b-instant",
		"gen_ai.usage.input_tokens": int64(12), "gen_ai.usage.output_tokens": int64(3), "user.id": "grpc-user"})
	sp.SetTraceID(pcommon.TraceID{1, 15: 1})
	sp.SetSpanID(pcommon.SpanID{2, 7: 2})
	now := time.Now()
	sp.SetStartTimestamp(pcommon.NewTimestampFromTime(now.Add(-time.Second)))
	sp.SetEndTimestamp(pcommon.NewTimestampFromTime(now))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := ptraceotlp.NewGRPCClient(conn).Export(ctx, ptraceotlp.NewExportRequestFromTraces(td))
	if err != nil || resp.PartialSuccess().RejectedSpans() != 0 {
		t.Fatalf("OTLP/gRPC export: %v, %v", err, resp.PartialSuccess().ErrorMessage())
	}
	if rec := logsOf(t, s, "grpc-user", 1)[0]; rec["provider"] != "groq" || rec["latency_ms"] != float64(1000) ||
		!strings.HasPrefix(rec["request_id"].(string), "01000000000000000000000000000001-") {
		t.Fatalf("the gRPC span's record %v", rec)
	}
}
