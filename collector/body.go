package collector

import (
	"bytes"
	"encoding/json"
	"mime"
	"net/http"
	"strings"
)

// bodyFormat is how a request body is framed.
type bodyFormat int

const (
	formatJSON bodyFormat = iota
	formatNDJSON
)

// parseContentType accepts JSON and NDJSON. A missing Content-Type is
// taken as JSON, which is what a bare client library usually sends.
func parseContentType(r *http.Request) (bodyFormat, error) {
	// A compressed body would otherwise fail as JSON with a puzzling
	// "invalid character"; on loopback compression buys nothing.
	if ce := r.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		return 0, errorf(http.StatusUnsupportedMediaType, "cannot accept Content-Encoding %q: send the body uncompressed", ce)
	}
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return formatJSON, nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return 0, errorf(http.StatusUnsupportedMediaType, "cannot parse Content-Type %q: %s", ct, err)
	}
	switch mt {
	case "application/json":
		return formatJSON, nil
	case "application/x-ndjson", "application/jsonl", "application/jsonlines", "application/x-jsonlines":
		return formatNDJSON, nil
	}
	return 0, errorf(http.StatusUnsupportedMediaType, "cannot accept Content-Type %q: use application/json or application/x-ndjson", mt)
}

// splitRecords cuts a body into one raw JSON value per record.
func splitRecords(body []byte, format bodyFormat) ([]json.RawMessage, error) {
	if format == formatNDJSON {
		var raws []json.RawMessage
		for line := range bytes.Lines(body) {
			if line = bytes.TrimSpace(line); len(line) > 0 {
				raws = append(raws, line)
			}
		}
		if len(raws) == 0 {
			return nil, errorf(http.StatusBadRequest, "cannot find any record in an empty NDJSON body")
		}
		return raws, nil
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, errorf(http.StatusBadRequest, "cannot find any record in an empty body")
	}
	if trimmed[0] == '[' {
		var raws []json.RawMessage
		if err := json.Unmarshal(trimmed, &raws); err != nil {
			return nil, errorf(http.StatusBadRequest, "cannot parse the JSON array: %s", err)
		}
		return raws, nil
	}
	if !json.Valid(trimmed) {
		var v any
		err := json.Unmarshal(trimmed, &v)
		hint := ""
		if strings.Contains(err.Error(), "after top-level value") {
			hint = " (several records need a JSON array or Content-Type: application/x-ndjson)"
		}
		return nil, errorf(http.StatusBadRequest, "cannot parse the JSON body: %s%s", err, hint)
	}
	return []json.RawMessage{trimmed}, nil
}
