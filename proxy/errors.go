package proxy

import (
	"encoding/json"
	"net/http"
)

// writeError answers in the provider's own error format, so that its SDK
// raises the matching error (RateLimitError for 429, and so on).
func writeError(w http.ResponseWriter, k Kind, status int, errType, message string) {
	var body any
	if k == Anthropic {
		body = map[string]any{"type": "error", "error": map[string]any{"type": errType, "message": message}}
	} else {
		body = map[string]any{"error": map[string]any{"message": message, "type": errType, "param": nil, "code": errType}}
	}
	b, _ := json.Marshal(body)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// errorTypeOf is the provider's error type for a status.
func errorTypeOf(k Kind, status int) string {
	switch status {
	case http.StatusBadRequest:
		return "invalid_request_error"
	case http.StatusNotFound:
		return "not_found_error"
	case http.StatusRequestEntityTooLarge:
		return "request_too_large"
	case http.StatusTooManyRequests:
		if k == Anthropic {
			return "rate_limit_error"
		}
		return "rate_limit_exceeded"
	}
	if k == Anthropic {
		return "api_error"
	}
	return "server_error"
}
