package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// What the proxy reads of a request body: the fields it checks and
// records by, and the prompt's size for the check's estimate.

// promptEstimate guesses a prompt's tokens from its body: 4 bytes a
// token, but for base64 payloads (images, documents), which are priced
// by other rules and would otherwise count as millions of tokens: each
// counts as 1,000 (about what a provider bills a large image).
func promptEstimate(body []byte) int64 {
	size, images := int64(len(body)), int64(0)
	rest := body
	for {
		i := bytes.Index(rest, []byte(";base64,"))
		if i < 0 {
			break
		}
		rest = rest[i+8:]
		end := bytes.IndexByte(rest, '"')
		if end < 0 {
			end = len(rest)
		}
		size -= int64(end)
		images++
		rest = rest[end:]
	}
	return (max(size, 0)+3)/4 + 1000*images
}

// readRequestFields reads the fields the proxy acts on by their exact
// names, as the upstream does: encoding/json matches struct fields
// ignoring case, so {"model": "a", "Model": "b"} would be checked as b
// and run as a.
func readRequestFields(body []byte) (requestFields, error) {
	var f requestFields
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return f, err
	}
	get := func(name string, dst any) error {
		raw, ok := m[name]
		if !ok || string(raw) == "null" {
			return nil
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			return fmt.Errorf("field %s: %w", name, err)
		}
		return nil
	}
	var opts map[string]json.RawMessage
	for _, g := range []struct {
		name string
		dst  any
	}{{"model", &f.Model}, {"stream", &f.Stream}, {"user", &f.User}, {"safety_identifier", &f.SafetyIdentifier},
		{"metadata", &f.Metadata}, {"max_tokens", &f.MaxTokens}, {"max_completion_tokens", &f.MaxCompletionTokens},
		{"max_output_tokens", &f.MaxOutputTokens}, {"stream_options", &opts}} {
		if err := get(g.name, g.dst); err != nil {
			return f, err
		}
	}
	if raw, ok := opts["include_usage"]; ok {
		var v bool
		if json.Unmarshal(raw, &v) == nil {
			f.StreamOptions = &struct {
				IncludeUsage bool `json:"include_usage"`
			}{v}
		}
	}
	return f, nil
}

// requestFields are what the proxy reads of a request body.
type requestFields struct {
	Model               string          `json:"model"`
	Stream              bool            `json:"stream"`
	User                string          `json:"user"`
	SafetyIdentifier    string          `json:"safety_identifier"`
	Metadata            json.RawMessage `json:"metadata"`
	MaxTokens           int64           `json:"max_tokens"`
	MaxCompletionTokens int64           `json:"max_completion_tokens"`
	MaxOutputTokens     int64           `json:"max_output_tokens"`
	StreamOptions       *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

func (f *requestFields) user() string {
	if f.User != "" {
		return f.User
	}
	if f.SafetyIdentifier != "" {
		return f.SafetyIdentifier
	}
	var m struct {
		UserID string `json:"user_id"`
	}
	if len(f.Metadata) > 0 && json.Unmarshal(f.Metadata, &m) == nil {
		return m.UserID
	}
	return ""
}

// team is the body's metadata.team_id, if it is a string.
func (f *requestFields) team() string {
	var m struct {
		TeamID any `json:"team_id"`
	}
	if len(f.Metadata) > 0 && json.Unmarshal(f.Metadata, &m) == nil {
		if s, ok := m.TeamID.(string); ok {
			return s
		}
	}
	return ""
}

func (f *requestFields) maxTokens() int64 {
	return max(f.MaxTokens, f.MaxCompletionTokens, f.MaxOutputTokens, 0)
}

func (f *requestFields) includeUsage() bool {
	return f.StreamOptions != nil && f.StreamOptions.IncludeUsage
}

// withIncludeUsage sets stream_options.include_usage, keeping every other
// field of the body as sent.
func withIncludeUsage(body []byte) ([]byte, bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil {
		return nil, false
	}
	opts := map[string]json.RawMessage{}
	if raw, ok := m["stream_options"]; ok && string(raw) != "null" {
		if json.Unmarshal(raw, &opts) != nil {
			return nil, false
		}
	}
	opts["include_usage"] = json.RawMessage("true")
	b, err := json.Marshal(opts)
	if err != nil {
		return nil, false
	}
	m["stream_options"] = b
	out, err := json.Marshal(m)
	return out, err == nil
}

func userFieldOf(k Kind) string {
	if k == Anthropic {
		return "metadata.user_id"
	}
	return "user (or safety_identifier)"
}
