// Package collector takes in call records and quota checks over HTTP: it
// decodes and validates them, then routes records to the limiter and the
// metrics, and checks to the limiter.
package collector

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/rules"
)

// Observer is told what the collector accepted and decided, for metrics.
type Observer interface {
	// ObserveRecords is called with the records of every accepted request.
	ObserveRecords(recs []record.Record)
	// ObserveRejected is called with the number of records in a request
	// refused as invalid.
	ObserveRejected(n int)
	// ObserveCheck is called with every decided quota check.
	ObserveCheck(userID string, allowed bool)
}

// Sink takes accepted records for persistence. It must take all of a
// request's records or none, so that a refused request changed nothing.
type Sink interface {
	Enqueue(recs []record.Record) error
}

// Options configure a Collector.
type Options struct {
	// Limiter enforces the rules; required.
	Limiter *limiter.Limiter
	// Sink persists accepted records; optional (records then only count
	// in the limiter and the metrics).
	Sink Sink
	// Usage answers the usage API (/api/llm/usage/summary, stats, logs);
	// optional, those routes are absent without it.
	Usage UsageReader
	// Observer receives what was accepted and decided; optional.
	Observer Observer
	// Rules returns the rules in force, for /v1/rules and the provider
	// table that infers providers from model names; nil means no rules
	// beyond the limiter's and the built-in table.
	Rules func() *rules.Set
	// MaxBodyBytes bounds a request body (1 MiB when zero).
	MaxBodyBytes int64
	// Clock stamps records without a timestamp; the wall clock when nil.
	Clock clock.Clock
	// Logger logs rejected requests at debug level; slog.Default() when nil.
	Logger *slog.Logger
}

// Collector serves the intake API.
type Collector struct {
	limiter  *limiter.Limiter
	sink     Sink
	usage    UsageReader
	observer Observer
	// providerLimits is the Observer when it takes the provider's own
	// quota (the exporter), else nil.
	providerLimits ProviderRateLimitObserver
	maxBodyBytes   int64
	clock          clock.Clock
	logger         *slog.Logger
	// rules returns the rules in force, swapped whole on every reload.
	rules     func() *rules.Set
	parsers   parsers
	scratches scratches
	// unpriced remembers the models seen without a price.
	unpriced unpricedModels
	// usages recycles the usage slices of requests of several records.
	usages sync.Pool
}

// Route is one endpoint of the API.
type Route struct {
	// Pattern is a net/http ServeMux pattern, without method.
	Pattern string
	// Name labels the route in metrics and logs.
	Name string
	// Handler serves it.
	Handler http.Handler
}

// New returns a Collector.
func New(opts Options) *Collector {
	c := &Collector{
		limiter:      opts.Limiter,
		sink:         opts.Sink,
		usage:        opts.Usage,
		observer:     opts.Observer,
		maxBodyBytes: opts.MaxBodyBytes,
		clock:        opts.Clock,
		logger:       opts.Logger,
	}
	if c.observer == nil {
		c.observer = nopObserver{}
	}
	c.providerLimits, _ = c.observer.(ProviderRateLimitObserver)
	c.usages.New = func() any { return new([]limiter.Usage) }
	if c.maxBodyBytes <= 0 {
		c.maxBodyBytes = 1 << 20
	}
	if c.clock == nil {
		c.clock = clock.System{}
	}
	if c.logger == nil {
		c.logger = slog.Default()
	}
	c.rules = opts.Rules
	if c.rules == nil {
		none := rules.Merge(nil, nil)
		c.rules = func() *rules.Set { return none }
	}
	return c
}

// Routes lists the API endpoints. Each checks its own method so that a
// wrong one gets a JSON 405 rather than ServeMux's plain-text answer.
func (c *Collector) Routes() []Route {
	routes := []Route{
		{"/v1/calls", "calls", allow(http.MethodPost, c.serveCalls)},
		{"/v1/check", "check", allow(http.MethodPost, c.serveCheck)},
		{"/v1/limits", "limits", allow(http.MethodGet, c.serveLimits)},
		{"/v1/rules", "rules", allow(http.MethodGet, c.serveRules)},
		{"/v1/prices", "prices", allow(http.MethodGet, c.servePrices)},
		{"/api/llm/usage/rate-limits", "seed_rate_limits", allow(http.MethodGet, c.serveSeedRateLimits)},
		{"/api/llm/usage/rate-limit/{type}", "seed_rate_limit", allow(http.MethodGet, c.serveSeedRateLimit)},
	}
	if c.usage != nil {
		routes = append(routes,
			Route{"/api/llm/usage/summary", "usage_summary", allow(http.MethodGet, c.serveSummary)},
			Route{"/api/llm/usage/stats", "usage_stats", allow(http.MethodGet, c.serveStats)},
			Route{"/api/llm/usage/logs", "usage_logs", allow(http.MethodGet, c.serveLogs)},
		)
	}
	return routes
}

// NotFound answers every path that no route serves, in JSON.
func NotFound(w http.ResponseWriter, r *http.Request) {
	writeError(w, errorf(http.StatusNotFound, "cannot find %s: no such endpoint", r.URL.Path))
}

// ingest validates and applies the records of one request body. Nothing
// is applied unless every record is valid.
func (c *Collector) ingest(body []byte, format bodyFormat) (int, error) {
	raws, err := splitRecords(body, format)
	if err != nil {
		return 0, err
	}
	now := c.clock.Now().UTC()
	recs := make([]record.Record, 0, len(raws))
	var details []Detail
	// figs[i] is record i's provider_ratelimit; nil until one has any.
	var figs []*providerFigures
	for i, raw := range raws {
		r, fig, ds := c.parseRecord(raw, i, now)
		details = append(details, ds...)
		recs = append(recs, r)
		if fig != nil {
			if figs == nil {
				figs = make([]*providerFigures, len(raws))
			}
			figs[i] = fig
		}
	}
	if len(recs) > 1 {
		details = append(details, repeatedRequestIDs(recs)...)
	}
	if len(details) > 0 {
		sortDetails(details)
		c.observer.ObserveRejected(len(raws))
		return 0, &Error{Status: http.StatusBadRequest, Message: invalidMessage(details, len(raws)), Details: details}
	}
	for i := range recs {
		if recs[i].RequestID == "" {
			recs[i].RequestID = newRequestID(now)
		}
	}
	if err := c.apply(recs, now); err != nil {
		return 0, err
	}
	c.observeProviderFigures(recs, figs)
	return len(recs), nil
}

// observeProviderFigures passes on the provider_ratelimit of accepted
// records, under their provider and model as they were resolved.
func (c *Collector) observeProviderFigures(recs []record.Record, figs []*providerFigures) {
	if c.providerLimits == nil {
		return
	}
	for i, f := range figs {
		if f == nil {
			continue
		}
		r := &recs[i]
		for _, rl := range f.limits {
			c.providerLimits.ObserveProviderRateLimit(r.Provider, r.Model, f.key, rl.Resource, rl.Limit, rl.Remaining, rl.Reset)
		}
		if !f.retryAfter.IsZero() {
			c.providerLimits.ObserveProviderRetryAfter(r.Provider, r.Model, f.key, f.retryAfter)
		}
	}
}

// apply persists valid records, charges them and counts them.
func (c *Collector) apply(recs []record.Record, now time.Time) error {
	us := c.usages.Get().(*[]limiter.Usage)
	defer func() {
		clear(*us) // no strings kept alive in the pool
		c.usages.Put(us)
	}()
	*us = (*us)[:0]
	for i := range recs {
		*us = append(*us, usageOfRecord(&recs[i]))
	}
	// The records are stored whatever happens to their charges: a quota
	// store out of reach costs the charge, which the store counts, not
	// the record.
	enqueue := func() error { return nil }
	if c.sink != nil {
		enqueue = func() error { return c.sink.Enqueue(recs) }
	}
	if err := c.limiter.Accept(enqueue, *us); err != nil {
		return &Error{Status: http.StatusServiceUnavailable, Message: err.Error() + "; nothing was applied, retry later"}
	}
	c.unpriced.observe(recs, now, c.logger)
	c.observer.ObserveRecords(recs)
	return nil
}

// usageOfRecord is what the limiter charges for r.
func usageOfRecord(r *record.Record) limiter.Usage {
	return limiter.Usage{UserID: r.UserID, TeamID: r.TeamID, Provider: r.Provider, Model: r.Model, Tokens: r.TotalTokens, RequestID: r.RequestID,
		Cost: int64(r.Cost), HasCost: r.HasCost, Timestamp: r.Timestamp}
}

// repeatedRequestIDs names the records of one request that reuse an
// earlier one's request_id. The store keeps one row per request_id, so
// the later record would be answered as accepted and never stored. Only
// the clients' ids are compared: the others are not generated yet.
func repeatedRequestIDs(recs []record.Record) []Detail {
	var details []Detail
	var first map[string]int
	for i := range recs {
		id := recs[i].RequestID
		if id == "" {
			continue
		}
		if first == nil {
			first = make(map[string]int)
		}
		if j, seen := first[id]; seen {
			details = append(details, Detail{Index: i, Field: "request_id",
				Message: fmt.Sprintf("repeats record %d's %q: a request_id names one call, and only one record of it is stored", j, id)})
			continue
		}
		first[id] = i
	}
	return details
}

func (c *Collector) serveCalls(w http.ResponseWriter, r *http.Request) {
	format, err := parseContentType(r)
	if err != nil {
		writeError(w, err)
		return
	}
	s := c.scratches.get()
	defer c.scratches.put(s)
	s.body, err = c.readBody(r, s.body)
	if err != nil {
		writeError(w, err)
		return
	}
	n, err := c.ingest(s.body, format)
	if err != nil {
		c.logger.Debug("rejected records", "error", err)
		if e, ok := err.(*Error); ok && e.Status == http.StatusServiceUnavailable {
			w.Header()["Retry-After"] = retryAfterOne
		}
		writeError(w, err)
		return
	}
	s.out = appendAccepted(s.out, n)
	writeAnswer(w, http.StatusAccepted, s.out)
}

// limitJSON is one bucket in API answers.
type limitJSON struct {
	LimitType string         `json:"limit_type"`
	Unit      string         `json:"unit"`
	Limit     json.Marshaler `json:"limit"`
	Remaining json.Marshaler `json:"remaining"`
	ResetAt   string         `json:"reset_at"`
	Provider  string         `json:"provider,omitempty"`
	Model     string         `json:"model,omitempty"`
	// TeamID is the rule's team scope.
	TeamID string `json:"team_id,omitempty"`
	// Per and Pool name a pool: per team or all, and the pool's key
	// ("team:search", "all"); a user's own bucket has neither.
	Per  string `json:"per,omitempty"`
	Pool string `json:"pool,omitempty"`
}

func (c *Collector) serveCheck(w http.ResponseWriter, r *http.Request) {
	if _, err := parseContentType(r); err != nil {
		writeError(w, err)
		return
	}
	s := c.scratches.get()
	defer c.scratches.put(s)
	var err error
	s.body, err = c.readBody(r, s.body)
	if err != nil {
		writeError(w, err)
		return
	}
	req, details := c.parseCheck(s.body)
	if len(details) > 0 {
		sortDetails(details)
		writeError(w, &Error{Status: http.StatusBadRequest, Message: "cannot check: invalid request", Details: details})
		return
	}
	lr := limiter.Request{UserID: req.UserID, TeamID: req.TeamID, Provider: req.Provider, Model: req.Model, Tokens: req.Tokens, RequestID: req.RequestID}
	cost, priced := checkCost(c.rules().Prices, &req, c.clock.Now())
	lr.Cost, lr.Unpriced = int64(cost), !priced
	d, err := c.limiter.CheckInto(lr, s.limits)
	s.limits = d.Limits
	if err != nil {
		c.checkFailed(w, err)
		return
	}
	c.observer.ObserveCheck(req.UserID, d.Allowed)
	status, retryAfter := http.StatusOK, int64(0)
	if !d.Allowed {
		status = http.StatusTooManyRequests
		retryAfter = max(ceilSeconds(d.RetryAfter), 1)
		w.Header()["Retry-After"] = retryAfterValue(retryAfter)
	}
	c.SetRateLimit(w.Header(), d)
	s.out = appendCheckAnswer(s.out, d, req.RequestID, req.Provider, retryAfter)
	writeAnswer(w, status, s.out)
}

// checkFailed answers a check the limiter could not decide. The error
// targets are only made here: taken by address, they escape, and would
// cost every check an allocation.
func (c *Collector) checkFailed(w http.ResponseWriter, err error) {
	var tooLarge *limiter.EstimateTooLargeError
	var unpriced *limiter.UnpricedError
	switch {
	case errors.As(err, &tooLarge):
		writeError(w, &Error{Status: http.StatusBadRequest, Message: "cannot check: " + err.Error(), Details: []Detail{{Field: "tokens", Message: tooLarge.Error()}}})
	case errors.As(err, &unpriced):
		writeError(w, &Error{Status: http.StatusBadRequest, Message: "cannot check: " + err.Error() +
			"; price it (prices: in the limits file, or a row of llm_model_prices) or run the sidecar with --budget-unpriced=allow",
			Details: []Detail{{Field: "model", Message: "has no price, and a usd budget applies"}}})
	default:
		writeError(w, err)
	}
}

// retryAfterValues are the Retry-After header values up to two minutes,
// the usual waits, made once.
var retryAfterValues = func() [][]string {
	vs := make([][]string, 121)
	for i := range vs {
		vs[i] = []string{strconv.Itoa(i)}
	}
	return vs
}()

func retryAfterValue(seconds int64) []string {
	if seconds >= 0 && seconds < int64(len(retryAfterValues)) {
		return retryAfterValues[seconds]
	}
	return []string{strconv.FormatInt(seconds, 10)}
}

func (c *Collector) serveLimits(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	user, err := requiredUser(r)
	if err != nil {
		writeError(w, err)
		return
	}
	prov, model, err := c.queryScope(q)
	if err != nil {
		writeError(w, err)
		return
	}
	team, err := optionalTeam(r)
	if err != nil {
		writeError(w, err)
		return
	}
	statuses, err := c.limiter.Limits(user, team, prov, model)
	if err != nil {
		writeError(w, err)
		return
	}
	out := map[string]any{"user_id": user, "limits": limitsJSON(statuses)}
	if team != "" {
		out["team_id"] = team
	}
	writeJSON(w, http.StatusOK, out)
}

// readBody reads the request body into buf[:0], growing it as needed,
// and refuses one over --max-body-bytes.
func (c *Collector) readBody(r *http.Request, buf []byte) ([]byte, error) {
	tooLarge := func() error {
		return errorf(http.StatusRequestEntityTooLarge, "cannot accept a body over %d bytes (--max-body-bytes): split the batch", c.maxBodyBytes)
	}
	if r.ContentLength > c.maxBodyBytes {
		return buf, tooLarge()
	}
	// One byte more than announced, so that the read that finds the end
	// does not have to grow the buffer.
	buf = slices.Grow(buf[:0], int(max(r.ContentLength, 511))+1)
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, len(buf))
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > c.maxBodyBytes {
			return buf, tooLarge()
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, errorf(http.StatusBadRequest, "cannot read the request body: %s", err)
		}
	}
}

func requiredUser(r *http.Request) (string, error) {
	user := r.URL.Query().Get("user_id")
	if user == "" {
		return "", &Error{Status: http.StatusBadRequest, Message: "cannot answer without the user_id query parameter", Details: []Detail{{Field: "user_id", Message: "is required"}}}
	}
	// The same bounds as intake: no record could carry such a user.
	problem := lengthOrControl(user, MaxIDLength, true)
	if !utf8.ValidString(user) {
		problem = "must be valid UTF-8"
	}
	if problem != "" {
		return "", &Error{Status: http.StatusBadRequest, Message: "cannot answer for this user_id: it " + problem, Details: []Detail{{Field: "user_id", Message: problem}}}
	}
	return user, nil
}

// optionalTeam reads the team_id query parameter, which may be absent.
func optionalTeam(r *http.Request) (string, error) {
	team := r.URL.Query().Get("team_id")
	if team == "" {
		return "", nil
	}
	problem := lengthOrControl(team, MaxIDLength, true)
	if !utf8.ValidString(team) {
		problem = "must be valid UTF-8"
	}
	if problem != "" {
		return "", &Error{Status: http.StatusBadRequest, Message: "cannot answer for this team_id: it " + problem, Details: []Detail{{Field: "team_id", Message: problem}}}
	}
	return team, nil
}

func limitsJSON(statuses []limiter.Status) []limitJSON {
	out := make([]limitJSON, len(statuses))
	for i, s := range statuses {
		out[i] = limitJSON{
			LimitType: s.Window.String(), Unit: s.Unit.String(), Limit: limitValue(s.Unit, s.Limit), Remaining: limitValue(s.Unit, s.Remaining),
			ResetAt: formatResetAt(s.ResetAt), Provider: s.Provider, Model: s.Model, TeamID: s.TeamID, Pool: s.Pool,
		}
		if s.Per != limiter.PerUser {
			out[i].Per = s.Per.String()
		}
	}
	return out
}

// formatResetAt rounds up to the second, so that a client waiting until
// reset_at never comes back a fraction too early.
func formatResetAt(t time.Time) string {
	return roundUpToSecond(t).Format(time.RFC3339)
}

func roundUpToSecond(t time.Time) time.Time {
	if t.Nanosecond() != 0 {
		t = t.Truncate(time.Second).Add(time.Second)
	}
	return t.UTC()
}

// ceilSeconds rounds up to whole seconds, ignoring the last microsecond:
// bucket arithmetic in float64 can overshoot an exact 5 s by a nanosecond,
// which must not become 6 s.
func ceilSeconds(d time.Duration) int64 {
	return int64(math.Ceil((d - time.Microsecond).Seconds()))
}

func invalidMessage(details []Detail, records int) string {
	bad := map[int]bool{}
	for _, d := range details {
		bad[d.Index] = true
	}
	return "cannot accept the request: " + strconv.Itoa(len(bad)) + " of " + strconv.Itoa(records) + " records are invalid; nothing was applied"
}

func allow(method string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method {
			w.Header().Set("Allow", method)
			writeError(w, errorf(http.StatusMethodNotAllowed, "cannot %s %s: use %s", r.Method, r.URL.Path, method))
			return
		}
		h(w, r)
	})
}

type nopObserver struct{}

func (nopObserver) ObserveRecords([]record.Record) {}
func (nopObserver) ObserveRejected(int)            {}
func (nopObserver) ObserveCheck(string, bool)      {}
