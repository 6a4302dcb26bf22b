// Package record defines a call record: what one LLM API call used.
//
// It is the one type that intake, limits, metrics and persistence share, so
// it lives apart from all of them.
package record

import (
	"encoding/json"
	"time"

	"github.com/llmusage/llmusage/usd"
)

// Status values of a call.
const (
	StatusSuccess = "success"
	StatusError   = "error"
)

// UnknownProvider is the provider of a record whose provider was neither
// given nor inferable from the model name.
const UnknownProvider = "unknown"

// Record is one LLM API call, validated and normalised by the collector.
type Record struct {
	// RequestID identifies the call; it links the record to an earlier
	// quota check and makes persistence idempotent. Never empty.
	RequestID string
	// UserID is the user the call is billed to. Never empty.
	UserID string
	// TeamID is the team the call was for; empty when the client gave none.
	TeamID string
	// Provider is the lower-case provider name (OpenTelemetry GenAI
	// naming where one exists), or UnknownProvider.
	Provider string
	// Model is the model name as the application reported it.
	Model string

	// PromptTokens counts input tokens, cached ones included.
	PromptTokens int64
	// CompletionTokens counts output tokens, reasoning ones included.
	CompletionTokens int64
	// TotalTokens is the call's total; at least PromptTokens+CompletionTokens.
	TotalTokens int64
	// CachedTokens is the part of PromptTokens served from a prompt cache.
	CachedTokens int64
	// ReasoningTokens is the part of CompletionTokens spent on reasoning.
	ReasoningTokens int64
	// CacheWriteTokens is the part of PromptTokens written to a prompt
	// cache (Anthropic's cache_creation_input_tokens), priced apart.
	CacheWriteTokens int64

	// Cost is what the call cost; meaningful only when HasCost. It is the
	// record's own cost_usd when the client sent one, else priced at intake.
	Cost usd.Amount
	// HasCost is false for a call whose model has no price: its cost is
	// unknown, which is not zero.
	HasCost bool

	// Latency is the call's duration; meaningful only when HasLatency.
	Latency time.Duration
	// HasLatency tells whether the application reported a latency.
	HasLatency bool

	// Status is StatusSuccess or StatusError.
	Status string
	// ErrorType classifies a failed call (free text, may be empty).
	ErrorType string
	// Timestamp is when the call happened.
	Timestamp time.Time
	// Metadata is the application's JSON object, kept byte for byte; nil
	// when absent.
	Metadata json.RawMessage
}
