package usage

import (
	"encoding/base64"
	"errors"
	"strings"
	"time"
)

// ErrBadCursor is returned for a cursor that no page handed out.
var ErrBadCursor = errors.New("cannot use the cursor: it was not returned by /api/llm/usage/logs")

// EncodeCursor returns the NextCursor of a page whose last row is at and
// id: every store pages by (created_at, id), newest first.
func EncodeCursor(at time.Time, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(at.UTC().Format(time.RFC3339Nano) + "|" + id))
}

// DecodeCursor returns the page boundary EncodeCursor put in c, or
// ErrBadCursor.
func DecodeCursor(c string) (at time.Time, id string, err error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return time.Time{}, "", ErrBadCursor
	}
	ts, id, ok := strings.Cut(string(b), "|")
	at, err = time.Parse(time.RFC3339Nano, ts)
	if !ok || err != nil || id == "" {
		return time.Time{}, "", ErrBadCursor
	}
	return at, id, nil
}
