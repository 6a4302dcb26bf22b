package collector

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/store"
)

// TestDeadLetterIsIntake: the record of a dead-letter line, posted again
// as docs/database.md says, is accepted as the record that was refused. The
// dead letter writes the intake format and the parser reads it; this
// holds the two to one contract.
func TestDeadLetterIsIntake(t *testing.T) {
	l, err := limiter.New(nil, limiter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := New(Options{Limiter: l})
	dl := &store.DeadLetterFile{Path: filepath.Join(t.TempDir(), "dead-letter.ndjson")}
	f := func(r record.Record) {
		t.Helper()
		if err := dl.Put(r, errors.New("refused")); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(dl.Path)
		if err != nil {
			t.Fatal(err)
		}
		lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
		var line struct {
			Record json.RawMessage `json:"record"`
		}
		if err := json.Unmarshal(lines[len(lines)-1], &line); err != nil {
			t.Fatal(err)
		}
		got, _, details := c.parseRecord(line.Record, 0, testNow)
		if len(details) > 0 {
			t.Fatalf("%s is refused: %+v", line.Record, details)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("%s is read as\n%+v, want\n%+v", line.Record, got, r)
		}
	}
	f(record.Record{RequestID: "r1", UserID: "u", Provider: "openai", Model: "gpt-4o", Status: record.StatusSuccess,
		Timestamp: testNow.Add(-time.Minute), HasCost: true})
	// A model without a price stays unpriced; a cost is kept exactly.
	f(record.Record{RequestID: "r0", UserID: "u", Provider: "unknown", Model: "custom", Status: record.StatusSuccess,
		Timestamp: testNow.Add(-time.Minute)})
	f(record.Record{RequestID: "r3", UserID: "u", Provider: "anthropic", Model: "claude-3-opus", PromptTokens: 100, CachedTokens: 20,
		CacheWriteTokens: 30, CompletionTokens: 10, TotalTokens: 110, Status: record.StatusSuccess, Timestamp: testNow, Cost: 123456789, HasCost: true})
	f(record.Record{RequestID: "r2", UserID: "u", Provider: "groq", Model: "llama-3.1-70b", PromptTokens: 10, CompletionTokens: 5,
		TotalTokens: 20, CachedTokens: 4, ReasoningTokens: 2, Latency: 1500 * time.Microsecond, HasLatency: true,
		Status: record.StatusError, ErrorType: "timeout", Timestamp: testNow.Add(-time.Hour), Metadata: json.RawMessage(`{"k":[1,"\u0001"]}`)})
}
