package otlp

import (
	"bytes"
	"compress/gzip"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

func protoBody(t testing.TB, td ptrace.Traces) []byte {
	t.Helper()
	b, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalProto()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func jsonBody(t testing.TB, td ptrace.Traces) []byte {
	t.Helper()
	b, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func gzipped(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(b)
	_ = zw.Close()
	return buf.Bytes()
}

// post sends a body to /v1/traces.
func (h *harness) post(method, contentType, encoding string, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, "/v1/traces", bytes.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if encoding != "" {
		req.Header.Set("Content-Encoding", encoding)
	}
	rec := httptest.NewRecorder()
	h.r.Routes()[0].Handler.ServeHTTP(rec, req)
	return rec
}

// rpcStatus decodes an error answer's google.rpc.Status.
func rpcStatus(t *testing.T, rec *httptest.ResponseRecorder) *spb.Status {
	t.Helper()
	st := &spb.Status{}
	var err error
	if rec.Header().Get("Content-Type") == "application/json" {
		err = protojson.Unmarshal(rec.Body.Bytes(), st)
	} else {
		err = proto.Unmarshal(rec.Body.Bytes(), st)
	}
	if err != nil || st.Message == "" {
		t.Fatalf("the answer is not a google.rpc.Status with a message: %v; %q", err, rec.Body)
	}
	return st
}

func TestHTTP(t *testing.T) {
	h := newHarness(t, Options{MaxBodyBytes: 64 << 10})
	td := traces(testSpan{attrs: current()}, testSpan{attrs: with(current(), "user.id", nil)})
	f := func(contentType, encoding string, body []byte, wantStatus int, want string) {
		t.Helper()
		rec := h.post(http.MethodPost, contentType, encoding, body)
		if rec.Code != wantStatus {
			t.Fatalf("%s %s: status %d, want %d; %q", contentType, encoding, rec.Code, wantStatus, rec.Body)
		}
		var msg string
		if wantStatus == http.StatusOK {
			resp := ptraceotlp.NewExportResponse()
			var err error
			switch rec.Header().Get("Content-Type") {
			case "application/json":
				err = resp.UnmarshalJSON(rec.Body.Bytes())
			case "application/x-protobuf":
				err = resp.UnmarshalProto(rec.Body.Bytes())
			default:
				t.Fatalf("Content-Type %q", rec.Header().Get("Content-Type"))
			}
			if err != nil {
				t.Fatalf("cannot decode the answer: %s", err)
			}
			msg = resp.PartialSuccess().ErrorMessage()
		} else {
			msg = rpcStatus(t, rec).Message
		}
		if !strings.Contains(msg, want) {
			t.Fatalf("%s %s: message %q, want it to hold %q", contentType, encoding, msg, want)
		}
	}
	const pb, js = "application/x-protobuf", "application/json"
	f(pb, "", protoBody(t, td), http.StatusOK, "1 spans with GenAI usage but no user")
	f(js, "", jsonBody(t, td), http.StatusOK, "1 spans with GenAI usage but no user")
	f(pb+"; charset=binary", "gzip", gzipped(protoBody(t, td)), http.StatusOK, "no user")
	f(js, "gzip", gzipped(jsonBody(t, td)), http.StatusOK, "no user")
	// One span, sent four times, as four records of one request_id, which
	// the store keeps once.
	if recs := h.sink.records(); len(recs) != 4 || recs[0].RequestID != recs[3].RequestID {
		t.Fatalf("records %+v", recs)
	}
	f(pb, "", nil, http.StatusOK, "") // an empty request is a valid, empty export

	// Bodies that do not decode: a Status in the request's encoding.
	f(pb, "", []byte("\xff\xff\xff\xff"), http.StatusBadRequest, "cannot decode the body as an OTLP ExportTraceServiceRequest")
	f(js, "", []byte(`{"resourceSpans": 5}`), http.StatusBadRequest, "cannot decode the body")
	f(js, "", []byte(`not json`), http.StatusBadRequest, "cannot decode the body")
	f(pb, "gzip", []byte("not gzip"), http.StatusBadRequest, "cannot gunzip")
	f(pb, "gzip", gzipped(protoBody(t, td))[:20], http.StatusBadRequest, "cannot gunzip")

	// Types and encodings it does not speak.
	f("text/plain", "", protoBody(t, td), http.StatusUnsupportedMediaType, "cannot accept Content-Type \"text/plain\"")
	f("", "", protoBody(t, td), http.StatusUnsupportedMediaType, "cannot accept Content-Type")
	f(pb, "br", protoBody(t, td), http.StatusUnsupportedMediaType, "cannot accept Content-Encoding \"br\"")
	// The answer is in the request's encoding whenever its type is known,
	// as the specification asks of every answer.
	for _, ct := range []string{pb, js} {
		if rec := h.post(http.MethodPost, ct, "br", nil); rec.Code != http.StatusUnsupportedMediaType || rec.Header().Get("Content-Type") != ct {
			t.Fatalf("%s with Content-Encoding br: %d, Content-Type %q", ct, rec.Code, rec.Header().Get("Content-Type"))
		}
	}

	// Too large, and a gzip bomb: small on the wire, huge once inflated.
	f(pb, "", make([]byte, 65<<10), http.StatusRequestEntityTooLarge, "over 65536 bytes")
	bomb := gzipped(make([]byte, 10<<20))
	if len(bomb) > 64<<10 {
		t.Fatalf("the bomb is %d bytes on the wire", len(bomb))
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f(pb, "gzip", bomb, http.StatusRequestEntityTooLarge, "over 65536 bytes once gunzipped")
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 4<<20 {
		t.Fatalf("the bomb cost %d bytes of memory: it was inflated past the bound", n)
	}

	// A wrong method.
	if rec := h.post(http.MethodGet, pb, "", nil); rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != "POST" {
		t.Fatalf("GET: %d %v", rec.Code, rec.Header())
	}

	// A full spool: 503 with Retry-After, which the exporters honour.
	h.sink.full = true
	rec := h.post(http.MethodPost, pb, "", protoBody(t, traces(testSpan{attrs: current(), id: 9})))
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != "1" {
		t.Fatalf("a full spool: %d %v", rec.Code, rec.Header())
	}
	if st := rpcStatus(t, rec); codes.Code(st.Code) != codes.Unavailable || !strings.Contains(st.Message, "spool is full") {
		t.Fatalf("a full spool: %v", st)
	}
}

// TestHostileSpans: huge attribute values and absurd counts are refused
// span by span with a reason, never stored, never a panic.
func TestHostileSpans(t *testing.T) {
	h := newHarness(t, Options{MaxBodyBytes: 16 << 20})
	huge := strings.Repeat("x", 4<<20)
	td := traces(
		testSpan{attrs: with(current(), "gen_ai.response.model", huge)},
		testSpan{attrs: with(current(), "user.id", huge)},
		testSpan{attrs: with(current(), "gen_ai.provider.name", huge[:1000])},
		testSpan{attrs: with(current(), "gen_ai.usage.output_tokens", int64(1)<<62)},
		testSpan{attrs: with(current(), "gen_ai.usage.input_tokens", int64(-1)<<63)},
		testSpan{attrs: with(current(), "gen_ai.usage.reasoning.output_tokens", 1e19)},
		testSpan{attrs: with(current(), "user.id", "bad\x00user")},
		testSpan{attrs: with(current(), "user.id", "bad\xffutf8")},
		testSpan{attrs: with(current(), "gen_ai.request.model", "a\nb", "gen_ai.response.model", nil)},
		testSpan{attrs: with(current(), "error.type", "nul\x00")},
		testSpan{attrs: current(), end: testNow.Add(time.Hour)},
	)
	rec := h.post(http.MethodPost, "application/x-protobuf", "", protoBody(t, td))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %q", rec.Code, rec.Body.String()[:min(rec.Body.Len(), 300)])
	}
	resp := ptraceotlp.NewExportResponse()
	if err := resp.UnmarshalProto(rec.Body.Bytes()); err != nil {
		t.Fatal(err)
	}
	if n := resp.PartialSuccess().RejectedSpans(); n != 11 || len(h.sink.records()) != 0 {
		t.Fatalf("rejected %d of 11, stored %d: %s", n, len(h.sink.records()), resp.PartialSuccess().ErrorMessage())
	}
	if msg := resp.PartialSuccess().ErrorMessage(); len(msg) > 8<<10 || !strings.Contains(msg, "must be at most 256 bytes, got 4194304") {
		t.Fatalf("the message is %d bytes: the huge values must not be echoed", len(msg))
	}
}

// FuzzHTTP: whatever the body, the handler answers 200 or 400 (or 413),
// never panics, and an answer of 200 decodes.
func FuzzHTTP(f *testing.F) {
	td := traces(testSpan{attrs: current()}, testSpan{attrs: with(current(), "user.id", nil)},
		testSpan{attrs: map[string]any{"x": []any{"a", int64(1), map[string]any{"b": 1.5}}}},
		testSpan{attrs: with(current(), "gen_ai.usage.input_tokens", "12", "gen_ai.usage.output_tokens", 3.0)})
	f.Add(protoBody(f, td), false)
	f.Add(jsonBody(f, td), true)
	f.Add([]byte{}, false)
	f.Add([]byte(`{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"00"}]}]}]}`), true)
	h := newHarness(f, Options{MaxBodyBytes: 1 << 20})
	f.Fuzz(func(t *testing.T, body []byte, isJSON bool) {
		ct := "application/x-protobuf"
		if isJSON {
			ct = "application/json"
		}
		rec := h.post(http.MethodPost, ct, "", body)
		switch rec.Code {
		case http.StatusOK:
			resp := ptraceotlp.NewExportResponse()
			if err := resp.UnmarshalProto(rec.Body.Bytes()); !isJSON && err != nil {
				t.Fatalf("a 200 that does not decode: %s", err)
			}
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			rpcStatus(t, rec)
		default:
			t.Fatalf("status %d: %q", rec.Code, rec.Body)
		}
	})
}

// grpcClient serves r's trace service on a loopback port and returns a
// client of it; both stop when t ends.
func grpcClient(t *testing.T, r *Receiver) ptraceotlp.GRPCClient {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := r.GRPCServer()
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return ptraceotlp.NewGRPCClient(conn)
}

// TestGRPC: the trace service over a real gRPC connection, gzip
// included; a full spool is UNAVAILABLE with a RetryInfo; the token is
// required when set.
func TestGRPC(t *testing.T) {
	h := newHarness(t, Options{Token: "s3cret"})
	client := grpcClient(t, h.r)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer s3cret")
	req := ptraceotlp.NewExportRequestFromTraces(traces(testSpan{attrs: current()}, testSpan{attrs: with(current(), "gen_ai.usage.input_tokens", int64(-5))}))

	if _, err := client.Export(ctx, req); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("without the token: %v", err)
	}
	if _, err := client.Export(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer wrong"), req); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("with a wrong token: %v", err)
	}
	resp, err := client.Export(authed, req, grpc.UseCompressor("gzip"))
	if err != nil {
		t.Fatal(err)
	}
	if ps := resp.PartialSuccess(); ps.RejectedSpans() != 1 || !strings.Contains(ps.ErrorMessage(), "gen_ai.usage.input_tokens must be between 0") {
		t.Fatalf("partial success %d %q", ps.RejectedSpans(), ps.ErrorMessage())
	}
	if recs := h.sink.records(); len(recs) != 1 || recs[0].UserID != "alice" || recs[0].PromptTokens != 1000 {
		t.Fatalf("records %+v", recs)
	}

	h.sink.full = true
	_, err = client.Export(authed, req)
	st := status.Convert(err)
	if st.Code() != codes.Unavailable || len(st.Details()) != 1 {
		t.Fatalf("a full spool: %v", err)
	}
	if ri, ok := st.Details()[0].(*errdetails.RetryInfo); !ok || ri.RetryDelay.AsDuration() != time.Second {
		t.Fatalf("a full spool's details: %v", st.Details())
	}

	// Past the bound: RESOURCE_EXHAUSTED from gRPC itself.
	small := newHarness(t, Options{MaxBodyBytes: 1024})
	client2 := grpcClient(t, small.r)
	big := ptraceotlp.NewExportRequestFromTraces(traces(testSpan{attrs: with(current(), "x", strings.Repeat("y", 4096))}))
	if _, err := client2.Export(ctx, big); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a message over the bound: %v", err)
	}
}

// TestInFlightBudget: while other exports fill the memory set aside for
// decoding, one more is answered 503 with Retry-After (UNAVAILABLE with a
// RetryInfo over gRPC), and is taken once they are done.
func TestInFlightBudget(t *testing.T) {
	h := newHarness(t, Options{MaxBodyBytes: 64 << 10})
	body := protoBody(t, traces(testSpan{attrs: current()}))
	budget := InFlightRequests * int64(64<<10)
	if !h.r.inflight.TryAcquire(budget - int64(len(body)) + 1) {
		t.Fatal("cannot take the budget")
	}
	rec := h.post(http.MethodPost, "application/x-protobuf", "", body)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != "1" || !strings.Contains(rpcStatus(t, rec).Message, "retry later") {
		t.Fatalf("over the budget: %d %q %q", rec.Code, rec.Header().Get("Retry-After"), rec.Body)
	}
	req := ptraceotlp.NewExportRequestFromTraces(traces(testSpan{attrs: current()}))
	if _, err := grpcClient(t, h.r).Export(context.Background(), req); status.Code(err) != codes.Unavailable || len(status.Convert(err).Details()) != 1 {
		t.Fatalf("gRPC over the budget: %v", err)
	}
	if len(h.sink.records()) != 0 {
		t.Fatal("an export over the budget was taken")
	}
	h.r.inflight.Release(budget - int64(len(body)) + 1)
	if rec := h.post(http.MethodPost, "application/x-protobuf", "", body); rec.Code != http.StatusOK || len(h.sink.records()) != 1 {
		t.Fatalf("once free: %d, %d records", rec.Code, len(h.sink.records()))
	}
}
