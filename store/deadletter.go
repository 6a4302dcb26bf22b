package store

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/llmusage/llmusage/internal/fsutil"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/usd"
)

// DeadLetter keeps the records the store rejects, so that one record the
// database refuses neither blocks those behind it nor is lost.
type DeadLetter interface {
	// Put keeps rec, refused with err, durably: the Writer drops it from
	// the queue once Put returns nil.
	Put(rec record.Record, err error) error
}

// DeadLetterFile appends rejected records to an NDJSON file, one
// {"error": ..., "record": {...}} per line, fsynced. Each "record" is in
// the intake format, so that once the cause is mended the records can be
// posted again (docs/database.md: the command). A crash between Put and the
// queue's commit can write a record twice; the store skips a request_id
// it already has.
type DeadLetterFile struct {
	// Path is the file, created with its directory on the first Put.
	Path string

	// mu keeps concurrent Puts' lines whole.
	mu sync.Mutex
}

// Put appends rec and err as one line and syncs the file.
func (d *DeadLetterFile) Put(rec record.Record, err error) error {
	line, merr := json.Marshal(deadLetterLine{Error: err.Error(), Record: intakeRecord(rec)})
	if merr != nil {
		return fmt.Errorf("cannot encode a rejected record: %w", merr)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(d.Path), 0o700); err != nil {
		return fmt.Errorf("cannot create the dead-letter directory: %w", err)
	}
	f, ferr := os.OpenFile(d.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if ferr != nil {
		return fmt.Errorf("cannot open the dead-letter file: %w", ferr)
	}
	_, werr := f.Write(append(line, '\n'))
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		// The file may be new: its directory entry must be durable too.
		// Put is rare (a record the database refused), so always.
		werr = fsutil.SyncDir(filepath.Dir(d.Path))
	}
	if werr != nil {
		return fmt.Errorf("cannot write the dead-letter file %s: %w", d.Path, werr)
	}
	return nil
}

// deadLetterLine is one line of the dead-letter file.
type deadLetterLine struct {
	// Error is why the database refused the record.
	Error string `json:"error"`
	// Record is the refused record, ready to be posted again.
	Record intakeFields `json:"record"`
}

// intakeFields is a record as POST /v1/calls takes it (collector's
// TestDeadLetterIsIntake holds it to the parser). It is not
// usage.LogEntry, which has nearly the same fields: that is the logs
// API's answer, in the seed's shape, with an id and created_at that the
// intake refuses as unknown fields, and zero counts and a null latency
// written out; the two contracts change for different reasons.
type intakeFields struct {
	// RequestID keeps the record's identity, so that posting it again
	// after a crash wrote it twice stores it once.
	RequestID string `json:"request_id"`
	// UserID, Provider and Model identify the call.
	UserID string `json:"user_id"`
	// TeamID is the call's team, if any.
	TeamID   string `json:"team_id,omitempty"`
	Provider string `json:"provider"`
	Model    string `json:"model"`
	// TokensUsed to ReasoningTokens are the call's token counts.
	TokensUsed       int64 `json:"tokens_used"`
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	CachedTokens     int64 `json:"cached_tokens,omitempty"`
	ReasoningTokens  int64 `json:"reasoning_tokens,omitempty"`
	CacheWriteTokens int64 `json:"cache_write_tokens,omitempty"`
	// CostUSD is the cost priced at intake, nil when unpriced: posted
	// again, the record keeps it (a client's cost_usd wins over prices).
	CostUSD *usd.Amount `json:"cost_usd,omitempty"`
	// LatencyMs is nil when the record had no latency.
	LatencyMs *float64 `json:"latency_ms,omitempty"`
	// Status and ErrorType are the call's outcome.
	Status    string `json:"status"`
	ErrorType string `json:"error_type,omitempty"`
	// Timestamp is the call's time, RFC 3339 in UTC.
	Timestamp string `json:"timestamp"`
	// Metadata is the record's metadata object, byte for byte.
	Metadata json.RawMessage `json:"metadata,omitempty"`
}

func intakeRecord(r record.Record) intakeFields {
	f := intakeFields{
		RequestID: r.RequestID, UserID: r.UserID, TeamID: r.TeamID, Provider: r.Provider, Model: r.Model,
		TokensUsed: r.TotalTokens, PromptTokens: r.PromptTokens, CompletionTokens: r.CompletionTokens,
		CachedTokens: r.CachedTokens, ReasoningTokens: r.ReasoningTokens, CacheWriteTokens: r.CacheWriteTokens,
		Status: r.Status, ErrorType: r.ErrorType, Timestamp: r.Timestamp.UTC().Format(time.RFC3339Nano),
		Metadata: r.Metadata,
	}
	if r.HasLatency {
		ms := float64(r.Latency) / float64(time.Millisecond)
		f.LatencyMs = &ms
	}
	if r.HasCost {
		f.CostUSD = &r.Cost
	}
	return f
}
