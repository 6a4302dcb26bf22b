package otlp

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// encoding is an OTLP/HTTP body's encoding; answers use the request's.
type encoding int

const (
	encProto encoding = iota
	encJSON
)

// contentTypes are the answers' Content-Type by encoding.
var contentTypes = [...]string{encProto: "application/x-protobuf", encJSON: "application/json"}

// serveHTTP answers as the OTLP/HTTP specification says: 200 with an
// ExportTraceServiceResponse (its partial success naming refused spans),
// 400 with a google.rpc.Status for a body that does not decode, 413 past
// the size bound, 415 for another content type or encoding, 503 with
// Retry-After while the spool is full (which the exporters retry).
func (r *Receiver) serveHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeStatus(w, encJSON, http.StatusMethodNotAllowed, codes.Unimplemented, fmt.Sprintf("cannot %s /v1/traces: use POST", req.Method))
		return
	}
	enc, err := requestEncoding(req)
	if err != nil {
		// enc is the body's type when known, so that the answer is in it.
		writeStatus(w, enc, http.StatusUnsupportedMediaType, codes.InvalidArgument, err.Error())
		return
	}
	body, status, err := r.readBody(req)
	if err != nil {
		writeStatus(w, enc, status, codes.InvalidArgument, err.Error())
		return
	}
	if !r.inflight.TryAcquire(int64(len(body))) {
		w.Header().Set("Retry-After", "1")
		writeStatus(w, enc, http.StatusServiceUnavailable, codes.Unavailable, errBusy.Error())
		return
	}
	defer r.inflight.Release(int64(len(body)))
	er, err := decode(body, enc)
	if err != nil {
		writeStatus(w, enc, http.StatusBadRequest, codes.InvalidArgument, err.Error())
		return
	}
	resp, err := r.Export(er.Traces())
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			w.Header().Set("Retry-After", "1")
			writeStatus(w, enc, http.StatusServiceUnavailable, codes.Unavailable, err.Error())
			return
		}
		writeStatus(w, enc, http.StatusInternalServerError, codes.Internal, err.Error())
		return
	}
	var out []byte
	if enc == encJSON {
		out, err = resp.MarshalJSON()
	} else {
		out, err = resp.MarshalProto()
	}
	if err != nil {
		writeStatus(w, enc, http.StatusInternalServerError, codes.Internal, "cannot encode the answer: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", contentTypes[enc])
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out)
}

// requestEncoding is the body's encoding by its Content-Type, which OTLP
// requires, and checks its Content-Encoding (gzip or none). On error, the
// encoding is still the body's when its type is known (JSON otherwise),
// for the answer.
func requestEncoding(req *http.Request) (encoding, error) {
	ct := req.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return encJSON, fmt.Errorf("cannot accept Content-Type %q: use application/x-protobuf or application/json", ct)
	}
	var enc encoding
	switch mt {
	case "application/x-protobuf", "application/protobuf":
		enc = encProto
	case "application/json":
		enc = encJSON
	default:
		return encJSON, fmt.Errorf("cannot accept Content-Type %q: use application/x-protobuf or application/json", mt)
	}
	if ce := req.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "gzip") && !strings.EqualFold(ce, "identity") {
		return enc, fmt.Errorf("cannot accept Content-Encoding %q: send gzip or no encoding", ce)
	}
	return enc, nil
}

// readBody reads the body, gunzipped if it came so, within maxBodyBytes
// both before and after: a small gzip body can inflate a thousandfold.
// On error, status is the HTTP status to answer.
func (r *Receiver) readBody(req *http.Request) (body []byte, status int, err error) {
	tooLarge := func(what string) error {
		return fmt.Errorf("cannot accept a body over %d bytes%s (--otlp-max-body-bytes): send smaller batches", r.maxBodyBytes, what)
	}
	if req.ContentLength > r.maxBodyBytes {
		return nil, http.StatusRequestEntityTooLarge, tooLarge("")
	}
	body, err = io.ReadAll(io.LimitReader(req.Body, r.maxBodyBytes+1))
	if err != nil {
		return nil, http.StatusBadRequest, fmt.Errorf("cannot read the request body: %w", err)
	}
	if int64(len(body)) > r.maxBodyBytes {
		return nil, http.StatusRequestEntityTooLarge, tooLarge("")
	}
	if !strings.EqualFold(req.Header.Get("Content-Encoding"), "gzip") {
		return body, 0, nil
	}
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		return nil, http.StatusBadRequest, fmt.Errorf("cannot gunzip the request body: %w", err)
	}
	plain, err := io.ReadAll(io.LimitReader(zr, r.maxBodyBytes+1))
	if err != nil {
		return nil, http.StatusBadRequest, fmt.Errorf("cannot gunzip the request body: %w", err)
	}
	if int64(len(plain)) > r.maxBodyBytes {
		return nil, http.StatusRequestEntityTooLarge, tooLarge(" once gunzipped")
	}
	return plain, 0, nil
}

// decode decodes an ExportTraceServiceRequest. A panic of the decoder on
// a hostile body (none is known; the fuzz test looks for one) costs the
// request a 400, not the sidecar its other requests' answers.
func decode(body []byte, enc encoding) (er ptraceotlp.ExportRequest, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("cannot decode the body: %v", p)
		}
	}()
	er = ptraceotlp.NewExportRequest()
	if enc == encJSON {
		err = er.UnmarshalJSON(body)
	} else {
		err = er.UnmarshalProto(body)
	}
	if err != nil {
		return er, fmt.Errorf("cannot decode the body as an OTLP ExportTraceServiceRequest (%s): %w", contentTypes[enc], err)
	}
	return er, nil
}

// writeStatus answers an error with a google.rpc.Status in enc, as the
// OTLP/HTTP specification asks.
func writeStatus(w http.ResponseWriter, enc encoding, httpStatus int, code codes.Code, msg string) {
	// A decoder's error may quote the body's bytes, and protobuf strings
	// must be UTF-8: without this, such an answer had no body at all.
	st := status.New(code, strings.ToValidUTF8(msg, "\uFFFD")).Proto()
	var out []byte
	if enc == encJSON {
		out, _ = protojson.Marshal(st)
	} else {
		out, _ = proto.Marshal(st)
	}
	w.Header().Set("Content-Type", contentTypes[enc])
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(httpStatus)
	_, _ = w.Write(out)
}
