// Package sdktest runs the official OpenAI and Anthropic SDKs (npm
// packages pinned in test/sdk/package.json) from Go tests: Run starts
// `node test/sdk/run.mjs <scenario> <baseURL>` and decodes the one JSON
// line it prints; RunOTel likewise runs test/sdk/otel.mjs, the
// OpenTelemetry JS SDK's OTLP trace exporters. The packages are installed
// by `npm ci --prefix test/sdk`, which make test runs (scripts/test-deps.sh).
package sdktest

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/sidecartest"
)

// Result is what one scenario printed.
type Result struct {
	// OK tells whether the SDK call succeeded (an aborted stream counts as
	// success).
	OK bool `json:"ok"`
	// Text is the answer's text, streamed or not.
	Text string `json:"text"`
	// Usage is the usage object as the SDK returned it (wire field names,
	// numbers as float64), nil where the SDK got none.
	Usage map[string]any `json:"usage"`
	// Chunks is the number of stream events the SDK yielded, 0 without a
	// stream.
	Chunks int `json:"chunks"`
	// ToolCalls are the tool calls: {id, name, arguments} for OpenAI
	// (arguments a JSON text), {id, name, input} for Anthropic.
	ToolCalls []any `json:"toolCalls"`
	// Model is the model the answer named.
	Model string `json:"model"`
	// Aborted tells that an *-abort scenario aborted its stream.
	Aborted bool `json:"aborted"`
	// Status is the HTTP status of a failed call, 0 without one (a
	// connection error).
	Status int `json:"status"`
	// ErrorClass is the SDK's error class, e.g. RateLimitError,
	// InternalServerError, APIConnectionError.
	ErrorClass string `json:"errorClass"`
	// Message is the error's message.
	Message string `json:"message"`
	// ElapsedMs is the scenario's time in milliseconds; the last call's
	// for the *-twice scenarios.
	ElapsedMs int `json:"elapsedMs"`
	// Attempts is the number of HTTP requests the SDK sent for the
	// (last) call, its retries included: counted by the *-default
	// scenarios only, 0 elsewhere.
	Attempts int `json:"attempts"`
	// Exports are otel.mjs's exports, in order.
	Exports []Export `json:"exports"`
	// Line is the JSON line as printed.
	Line string `json:"-"`
}

// Export is one export of an OpenTelemetry exporter in otel.mjs.
type Export struct {
	// Exporter names it: http-json, http-proto, http-proto-resent.
	Exporter string `json:"exporter"`
	// Code is the SDK's ExportResultCode: 0 SUCCESS, 1 FAILED.
	Code int `json:"code"`
	// Message is the failure's, if any.
	Message string `json:"message"`
}

// UsageInt returns the usage number at path (e.g. "prompt_tokens_details",
// "cached_tokens"), -1 when there is none.
func (r Result) UsageInt(path ...string) int {
	var v any = r.Usage
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return -1
		}
		v = m[k]
	}
	f, ok := v.(float64)
	if !ok {
		return -1
	}
	return int(f)
}

// Timeout bounds one scenario's run.
const Timeout = 60 * time.Second

// Dir returns the directory of package.json and run.mjs, test/sdk in the
// repository.
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "test", "sdk")
}

// Run runs scenario against baseURL (for OpenAI scenarios the SDK's
// baseURL as is, e.g. http://127.0.0.1:9470/openai/v1; for Anthropic the
// URL the SDK appends /v1/messages to, e.g. http://127.0.0.1:9470/anthropic)
// and returns what it printed. Without node the test is skipped (or fails
// under make test, see sidecartest.RequireTool); without the npm packages
// it fails, telling how to install them.
func Run(t testing.TB, scenario, baseURL string) Result {
	t.Helper()
	return run(t, "run.mjs", []string{"openai", filepath.Join("@anthropic-ai", "sdk")}, scenario, baseURL)
}

// RunOTel runs scenario of otel.mjs, the OpenTelemetry JS SDK's OTLP
// trace exporters, against the sidecar at baseURL (http://host:port: the
// exporters post to baseURL/v1/traces).
func RunOTel(t testing.TB, scenario, baseURL string) Result {
	t.Helper()
	return run(t, "otel.mjs", []string{filepath.Join("@opentelemetry", "sdk-trace-base"),
		filepath.Join("@opentelemetry", "exporter-trace-otlp-http"), filepath.Join("@opentelemetry", "exporter-trace-otlp-proto")}, scenario, baseURL)
}

// run runs script (in Dir) with scenario and baseURL, once pkgs are there.
func run(t testing.TB, script string, pkgs []string, scenario, baseURL string) Result {
	t.Helper()
	node := sidecartest.RequireTool(t, "node")
	dir := Dir()
	for _, pkg := range pkgs {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", pkg, "package.json")); err != nil {
			t.Fatalf("cannot run the SDK scenario %s: the npm packages are not installed (%s): run `npm ci --prefix test/sdk` (make test does)", scenario, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, filepath.Join(dir, script), scenario, baseURL)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("SDK scenario %s against %s: cannot finish within %s; stdout %q, stderr %q", scenario, baseURL, Timeout, stdout.String(), stderr.String())
	}
	if err != nil {
		t.Fatalf("SDK scenario %s against %s: cannot run node: %s; stdout %q, stderr %q", scenario, baseURL, err, stdout.String(), stderr.String())
	}
	line := strings.TrimSpace(stdout.String())
	if i := strings.LastIndexByte(line, '\n'); i >= 0 {
		line = line[i+1:] // the SDKs may log warnings before it
	}
	var r Result
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatalf("SDK scenario %s against %s: cannot decode its output: %s; stdout %q, stderr %q", scenario, baseURL, err, stdout.String(), stderr.String())
	}
	r.Line = line
	return r
}
