// Package otlp takes OpenTelemetry traces (OTLP over HTTP, protobuf or
// JSON, and over gRPC) and turns each span with GenAI usage into a call
// record, which it hands to the collector: the records are validated,
// priced, spooled, charged and counted as those of POST /v1/calls are.
//
// Unlike /v1/calls, a batch is not all or nothing: OTLP's partial success
// lets the valid spans of a request be taken while the invalid ones are
// refused, counted and named in the answer.
package otlp

import (
	"errors"
	"fmt"
	"golang.org/x/sync/semaphore"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/record"
)

// DefaultMaxBodyBytes bounds an OTLP request (HTTP body or gRPC message),
// before and after decompression, when Options.MaxBodyBytes is zero.
// Batches are larger than /v1/calls': 512 spans by default in the SDKs,
// often with prompts in their attributes.
const DefaultMaxBodyBytes = 16 << 20

// InFlightRequests is how many requests of the largest size are decoded
// at once; more bytes than that wait for a retry (503, UNAVAILABLE).
const InFlightRequests = 4

// errBusy is why an export was not taken at once: InFlightRequests
// requests' worth of bytes are being decoded.
var errBusy = errors.New("cannot take this export now: other OTLP exports fill the memory set aside for them (4 x --otlp-max-body-bytes); nothing was taken, retry later")

// Observer counts spans by outcome, for metrics.
type Observer interface {
	// ObserveOTLPSpans counts n spans of one request whose outcome is one
	// of accepted, invalid, no_user, ignored or unavailable.
	ObserveOTLPSpans(outcome string, n int)
}

// Options configure a Receiver.
type Options struct {
	// Collector takes the records; required.
	Collector *collector.Collector
	// UserAttributes are looked up, in order, on a span and then on its
	// resource for the record's user; DefaultUserAttributes when empty.
	UserAttributes []string
	// TeamAttribute is looked up on a span and then on its resource for
	// the record's team_id; DefaultTeamAttribute when empty.
	TeamAttribute string
	// DefaultUser is the user of spans that name none; empty skips them
	// (counted, and named in the partial success).
	DefaultUser string
	// MaxBodyBytes bounds a request, compressed and decompressed;
	// DefaultMaxBodyBytes when zero.
	MaxBodyBytes int64
	// Token, when set, is required of gRPC calls as "authorization:
	// Bearer <token>" metadata. (HTTP routes are wrapped by the caller,
	// as every route of the API is.)
	Token string
	// Observer counts spans; optional.
	Observer Observer
	// Logger logs refused spans at debug level; slog.Default() when nil.
	Logger *slog.Logger
}

// Receiver serves OTLP trace exports.
type Receiver struct {
	// collector takes the records.
	collector *collector.Collector
	// mapper turns spans into records.
	mapper mapper
	// maxBodyBytes bounds a request.
	maxBodyBytes int64
	// inflight bounds the bytes of the requests decoded at once (their
	// decoded size: the spans in memory take some ten times that), so
	// that many large exports at once answer 503 rather than exhaust the
	// pod's memory.
	inflight *semaphore.Weighted
	// token guards gRPC; empty for none.
	token string
	// observer counts spans.
	observer Observer
	// logger logs refused spans.
	logger *slog.Logger
}

// New returns a Receiver.
func New(opts Options) *Receiver {
	r := &Receiver{
		collector:    opts.Collector,
		mapper:       mapper{userAttrs: opts.UserAttributes, defaultUser: opts.DefaultUser, teamAttr: opts.TeamAttribute},
		maxBodyBytes: opts.MaxBodyBytes,
		token:        opts.Token,
		observer:     opts.Observer,
		logger:       opts.Logger,
	}
	if len(r.mapper.userAttrs) == 0 {
		r.mapper.userAttrs = DefaultUserAttributes
	}
	if r.mapper.teamAttr == "" {
		r.mapper.teamAttr = DefaultTeamAttribute
	}
	if r.maxBodyBytes <= 0 {
		r.maxBodyBytes = DefaultMaxBodyBytes
	}
	r.inflight = semaphore.NewWeighted(InFlightRequests * r.maxBodyBytes)
	if r.observer == nil {
		r.observer = nopObserver{}
	}
	if r.logger == nil {
		r.logger = slog.Default()
	}
	return r
}

// Routes lists the OTLP/HTTP endpoint, to serve on the API listener.
func (r *Receiver) Routes() []collector.Route {
	return []collector.Route{{Pattern: "/v1/traces", Name: "otlp_traces", Handler: http.HandlerFunc(r.serveHTTP)}}
}

// ErrUnavailable is why an export was not taken: the spool (or memory
// queue) is full. OTLP senders retry it, after Retry-After (HTTP) or the
// RetryInfo (gRPC).
var ErrUnavailable = errors.New("cannot take the spans now: the spool is full")

// Export takes one batch of traces: the spans with GenAI usage become
// records, the others are ignored. The answer's partial success counts
// and names the refused spans; it is empty when none was. The error is
// ErrUnavailable (wrapped) when the records could not be queued, and then
// nothing was taken.
func (r *Receiver) Export(td ptrace.Traces) (ptraceotlp.ExportResponse, error) {
	var counts [len(outcomeNames)]int
	var recs []record.Record
	var reasons []string
	rss := td.ResourceSpans()
	for i := 0; i < rss.Len(); i++ {
		rs := rss.At(i)
		resource := rs.Resource().Attributes()
		var service string
		if v, ok := resource.Get("service.name"); ok {
			service = v.AsString()
		}
		sss := rs.ScopeSpans()
		for j := 0; j < sss.Len(); j++ {
			spans := sss.At(j).Spans()
			for k := 0; k < spans.Len(); k++ {
				rec, o, reason := r.mapper.spanRecord(spans.At(k), resource, service)
				counts[o]++
				switch o {
				case accepted:
					recs = append(recs, rec)
				case invalid:
					reasons = append(reasons, spanName(rec)+": "+reason)
				}
			}
		}
	}
	if len(recs) > 0 {
		n, details, err := r.collector.Submit(recs)
		bad := countIndexes(details)
		counts[invalid] += bad
		counts[accepted] = n
		if err != nil {
			// Nothing valid was taken: the sender retries the batch.
			counts[unavailable] += len(recs) - bad
			r.observe(counts)
			var ce *collector.Error
			if errors.As(err, &ce) && ce.Status == http.StatusServiceUnavailable {
				err = fmt.Errorf("%w (%s)", ErrUnavailable, err)
			}
			return ptraceotlp.NewExportResponse(), err
		}
		for _, d := range details {
			reasons = append(reasons, spanName(recs[d.Index])+": "+fieldName(d.Field, r.mapper.userAttrs, r.mapper.teamAttr)+" "+d.Message)
		}
	}
	r.observe(counts)
	resp := ptraceotlp.NewExportResponse()
	if rejected := counts[invalid] + counts[noUser]; rejected > 0 {
		ps := resp.PartialSuccess()
		ps.SetRejectedSpans(int64(rejected))
		ps.SetErrorMessage(strings.ToValidUTF8(r.message(reasons, counts[invalid], counts[noUser]), "\uFFFD"))
		r.logger.Debug("refused OTLP spans", "rejected", rejected, "reason", ps.ErrorMessage())
	}
	return resp, nil
}

// maxReasons bounds the spans an answer names: the count says the rest.
const maxReasons = 10

// message is the partial success's error_message: why spans were refused.
// reasons has one entry a problem (a span may have several).
func (r *Receiver) message(reasons []string, invalids, noUsers int) string {
	var b strings.Builder
	if invalids > 0 {
		b.WriteString("cannot take " + strconv.Itoa(invalids) + " invalid spans: ")
		for i, s := range reasons[:min(len(reasons), maxReasons)] {
			if i > 0 {
				b.WriteString("; ")
			}
			b.WriteString(s)
		}
		if len(reasons) > maxReasons {
			b.WriteString("; and " + strconv.Itoa(len(reasons)-maxReasons) + " more problems")
		}
	}
	if noUsers > 0 {
		if b.Len() > 0 {
			b.WriteString(". ")
		}
		b.WriteString("cannot take " + strconv.Itoa(noUsers) + " spans with GenAI usage but no user: set one of " +
			strings.Join(r.mapper.userAttrs, ", ") + " on the span or its resource, or run the sidecar with --otlp-default-user")
	}
	return b.String()
}

func (r *Receiver) observe(counts [len(outcomeNames)]int) {
	for o, n := range counts {
		if n > 0 {
			r.observer.ObserveOTLPSpans(outcome(o).String(), n)
		}
	}
}

// spanName names a span in messages by its ids, as its record's request_id.
func spanName(rec record.Record) string {
	if rec.RequestID == "" {
		return "span"
	}
	return "span " + rec.RequestID
}

// fieldName is a record field as the span spells it.
func fieldName(field string, userAttrs []string, teamAttr string) string {
	switch field {
	case "user_id":
		return "the user (" + strings.Join(userAttrs, ", ") + ")"
	case "team_id":
		return "the team (" + teamAttr + ")"
	case "model":
		return "the model (" + strings.Join(modelAttrs, ", ") + ")"
	case "provider":
		return "the provider (" + strings.Join(providerAttrs, ", ") + ")"
	case "prompt_tokens":
		return inputAttrs[0]
	case "completion_tokens":
		return outputAttrs[0]
	case "cached_tokens":
		return cacheReadAttrs[0]
	case "cache_write_tokens":
		return cacheWriteAttrs[0]
	case "reasoning_tokens":
		return reasoningAttrs[0]
	case "tokens_used":
		return totalAttrs[0]
	case "latency_ms":
		return "the span's duration"
	case "timestamp":
		return "the span's end"
	case "error_type":
		return "error.type"
	}
	return field
}

// countIndexes counts the records that details name.
func countIndexes(details []collector.Detail) int {
	seen := map[int]bool{}
	for _, d := range details {
		seen[d.Index] = true
	}
	return len(seen)
}

type nopObserver struct{}

func (nopObserver) ObserveOTLPSpans(string, int) {}
