package collector

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"

	"github.com/llmusage/llmusage/limiter"
)

// Error is an error with the HTTP status it should be answered with and,
// for invalid records, one Detail per invalid field.
type Error struct {
	// Status is the HTTP status code of the answer.
	Status int
	// Message says what went wrong, starting with "cannot ...".
	Message string
	// Details names every invalid record and field; empty for errors that
	// concern the request as a whole.
	Details []Detail
}

// Detail locates one problem inside a request body.
type Detail struct {
	// Index is the record's position in the body (0-based; NDJSON counts
	// non-blank lines).
	Index int `json:"index"`
	// Field is the JSON field at fault; empty when the record as a whole is.
	Field string `json:"field"`
	// Message says what is wrong with it.
	Message string `json:"message"`
}

func (e *Error) Error() string {
	if len(e.Details) == 0 {
		return e.Message
	}
	d := e.Details[0]
	return fmt.Sprintf("%s: record %d: %s: %s (and %d more)", e.Message, d.Index, d.Field, d.Message, len(e.Details)-1)
}

func errorf(status int, format string, args ...any) *Error {
	return &Error{Status: status, Message: fmt.Sprintf(format, args...)}
}

// writeError answers with err's status and a JSON body. A quota store
// out of reach (--redis-fail-mode=closed) is a 503 that a client may
// retry in a second; any other error becomes a 500.
func writeError(w http.ResponseWriter, err error) {
	e, ok := err.(*Error)
	switch {
	case ok:
	case errors.Is(err, limiter.ErrStoreUnavailable):
		w.Header().Set("Retry-After", "1")
		e = &Error{Status: http.StatusServiceUnavailable, Message: err.Error()}
	default:
		e = &Error{Status: http.StatusInternalServerError, Message: err.Error()}
	}
	body := struct {
		Error   string   `json:"error"`
		Details []Detail `json:"details,omitempty"`
	}{e.Message, e.Details}
	writeJSON(w, e.Status, body)
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func sortDetails(ds []Detail) {
	sort.SliceStable(ds, func(i, j int) bool {
		if ds[i].Index != ds[j].Index {
			return ds[i].Index < ds[j].Index
		}
		return ds[i].Field < ds[j].Field
	})
}
