// Package proxy stands in the path of an application's calls to an LLM
// API: point the official SDK at the sidecar (OPENAI_BASE_URL=
// http://127.0.0.1:9470/openai/v1) and every call is checked before it is
// forwarded and recorded after, streaming included, through the same
// checks and spool as the intake API. Only the configured upstreams are
// reachable: the client chooses a route, never a host.
package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
)

// Kind is an upstream's wire format.
type Kind uint8

// The wire formats the proxy meters.
const (
	// OpenAI is the Chat Completions, Responses and Embeddings APIs, which
	// Groq, Mistral, DeepSeek, xAI, vLLM and others speak too.
	OpenAI Kind = iota
	// Anthropic is the Messages API.
	Anthropic
)

// Upstream is one route of the proxy: /Name/... is forwarded to URL with
// the path after /Name appended.
type Upstream struct {
	// Name is the route's first path segment.
	Name string
	// URL is where calls go: scheme, host and an optional base path.
	URL *url.URL
	// Kind is the wire format.
	Kind Kind
	// Provider names the records' provider (OpenTelemetry GenAI names).
	Provider string
	// Key, when set, replaces the client's API key (--upstream-key-file),
	// so that the application never holds it.
	Key string
}

// Defaults are the built-in routes; --upstream adds to or overrides them.
func Defaults() []Upstream {
	must := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			panic(err)
		}
		return u
	}
	return []Upstream{
		{Name: "openai", URL: must("https://api.openai.com"), Kind: OpenAI, Provider: "openai"},
		{Name: "anthropic", URL: must("https://api.anthropic.com"), Kind: Anthropic, Provider: "anthropic"},
		{Name: "groq", URL: must("https://api.groq.com"), Kind: OpenAI, Provider: "groq"},
		{Name: "mistral", URL: must("https://api.mistral.ai"), Kind: OpenAI, Provider: "mistral_ai"},
		{Name: "deepseek", URL: must("https://api.deepseek.com"), Kind: OpenAI, Provider: "deepseek"},
		{Name: "xai", URL: must("https://api.x.ai"), Kind: OpenAI, Provider: "x_ai"},
	}
}

// ParseUpstream reads NAME=URL. A known name keeps its wire format and
// provider; a new one speaks OpenAI's format, and names its provider.
func ParseUpstream(s string) (Upstream, error) {
	name, raw, ok := strings.Cut(strings.TrimSpace(s), "=")
	if !ok || name == "" || raw == "" {
		return Upstream{}, fmt.Errorf("cannot use upstream %q: want NAME=URL, such as openai=http://127.0.0.1:8080", s)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return Upstream{}, fmt.Errorf("cannot use upstream %s: the name must be letters, digits, - and _", name)
		}
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return Upstream{}, fmt.Errorf("cannot use upstream %s: want an http:// or https:// URL without query", name)
	}
	up := Upstream{Name: name, URL: u, Kind: OpenAI, Provider: name}
	for _, d := range Defaults() {
		if d.Name == name {
			up.Kind, up.Provider = d.Kind, d.Provider
		}
	}
	return up, nil
}

// Merge lays overrides over base by name.
func Merge(base, overrides []Upstream) []Upstream {
	out := append([]Upstream(nil), base...)
	for _, o := range overrides {
		replaced := false
		for i := range out {
			if out[i].Name == o.Name {
				o.Key = out[i].Key
				out[i], replaced = o, true
			}
		}
		if !replaced {
			out = append(out, o)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// LoadKey reads NAME=/path, the key file of an upstream.
func LoadKey(s string) (name, key string, err error) {
	name, path, ok := strings.Cut(strings.TrimSpace(s), "=")
	if !ok || name == "" || path == "" {
		return "", "", fmt.Errorf("cannot use upstream key file %q: want NAME=/path", s)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", fmt.Errorf("cannot read the key of upstream %s: %w", name, err)
	}
	key = strings.TrimSpace(string(b))
	if key == "" || strings.ContainsAny(key, "\r\n") {
		return "", "", fmt.Errorf("cannot use the key of upstream %s in %s: want one line", name, path)
	}
	return name, key, nil
}

// Options configure a Proxy.
type Options struct {
	// Upstreams are the routes; Defaults() when nil.
	Upstreams []Upstream
	// Collector checks and records the calls; required.
	Collector *collector.Collector
	// UserHeader names the header that says who calls (X-LLMUsage-User
	// when empty); it is not forwarded.
	UserHeader string
	// TeamHeader names the header that says which team the call is for
	// (X-LLMUsage-Team when empty), else the body's metadata.team_id; it
	// is not forwarded.
	TeamHeader string
	// DefaultUser is the user of calls that name none; empty refuses them.
	DefaultUser string
	// MaxBodyBytes bounds a request body (32 MiB when zero): images and
	// documents travel in it, base64-encoded.
	MaxBodyBytes int64
	// ConnectTimeout, FirstByteTimeout and IdleTimeout bound the dial, the
	// wait for the response's headers and the silence between two reads
	// of its body (5 s, 120 s and 120 s when zero).
	ConnectTimeout, FirstByteTimeout, IdleTimeout time.Duration
	// ClientRetryMax is the longest wait the sidecar's own 429 leaves the
	// SDK to retry after (Retry-After); a longer one also says
	// x-should-retry: false, so that the official SDKs raise at once
	// rather than sleep through it or retry in vain. 5 s when zero;
	// negative: every refusal says not to retry.
	ClientRetryMax time.Duration
	// Transport sends the calls; one built from the timeouts when nil.
	Transport http.RoundTripper
	// Logger logs upstream failures (never keys); slog.Default() when nil.
	Logger *slog.Logger
	// RateLimits is told the provider's quota headers and 429s of every
	// upstream answer; optional. When it is also a HeadroomObserver, it
	// counts the refusals of Headroom.
	RateLimits RateLimitObserver
	// Headroom, when HeadroomRespect, refuses at once the calls the
	// provider's latest answer for the same key and model says it would
	// refuse (--provider-headroom).
	Headroom Headroom
	// Clock tells the time of Headroom's resets; the wall clock when nil.
	Clock clock.Clock
}

// Proxy serves the routes.
type Proxy struct {
	opts      Options
	upstreams map[string]*Upstream
	transport http.RoundTripper
	logger    *slog.Logger
	clock     clock.Clock
	// headroom is nil unless Options.Headroom is HeadroomRespect.
	headroom         *headroom
	headroomObserver HeadroomObserver
	// inFlight counts the calls upstream, when RateLimits is an
	// InFlightObserver.
	inFlight InFlightObserver
	// added is told the time each call spent in the proxy, when
	// RateLimits is an AddedLatencyObserver.
	added AddedLatencyObserver
}

// AddedLatencyObserver is told the time the proxy added to each call.
type AddedLatencyObserver interface {
	// ObserveProxyAddedLatency counts the time one call spent in the
	// proxy: its total less its wait on the upstream.
	ObserveProxyAddedLatency(d time.Duration)
}

// InFlightObserver counts the calls the proxy has upstream.
type InFlightObserver interface {
	// CallStarted counts a call of user in flight until end is called.
	CallStarted(user string) (end func())
}

// New returns a Proxy.
func New(opts Options) (*Proxy, error) {
	if opts.Collector == nil {
		return nil, errors.New("cannot make a proxy without a collector")
	}
	if opts.Upstreams == nil {
		opts.Upstreams = Defaults()
	}
	if opts.UserHeader == "" {
		opts.UserHeader = "X-LLMUsage-User"
	}
	if opts.TeamHeader == "" {
		opts.TeamHeader = "X-LLMUsage-Team"
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 32 << 20
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 5 * time.Second
	}
	if opts.FirstByteTimeout <= 0 {
		opts.FirstByteTimeout = 120 * time.Second
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 120 * time.Second
	}
	if opts.ClientRetryMax == 0 {
		opts.ClientRetryMax = DefaultClientRetryMax
	}
	p := &Proxy{opts: opts, upstreams: map[string]*Upstream{}, transport: opts.Transport, logger: opts.Logger, clock: opts.Clock}
	if p.logger == nil {
		p.logger = slog.Default()
	}
	if p.clock == nil {
		p.clock = clock.System{}
	}
	p.inFlight, _ = opts.RateLimits.(InFlightObserver)
	p.added, _ = opts.RateLimits.(AddedLatencyObserver)
	if opts.Headroom == HeadroomRespect {
		p.headroom = newHeadroom()
		p.headroomObserver, _ = opts.RateLimits.(HeadroomObserver)
	}
	for i := range opts.Upstreams {
		u := &opts.Upstreams[i]
		p.upstreams[u.Name] = u
		if p.headroomObserver != nil {
			p.headroomObserver.ObserveHeadroomRefusals(u.Provider, 0)
		}
	}
	if p.transport == nil {
		p.transport = &http.Transport{
			Proxy:                 nil, // never a proxy of the environment's: keys would travel through it
			DialContext:           (&net.Dialer{Timeout: opts.ConnectTimeout, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   opts.ConnectTimeout,
			ResponseHeaderTimeout: opts.FirstByteTimeout,
		}
	}
	return p, nil
}

// Routes are the proxy's endpoints, one per upstream.
func (p *Proxy) Routes() []collector.Route {
	names := make([]string, 0, len(p.upstreams))
	for name := range p.upstreams {
		names = append(names, name)
	}
	sort.Strings(names)
	routes := make([]collector.Route, 0, len(names))
	for _, name := range names {
		up := p.upstreams[name]
		routes = append(routes, collector.Route{Pattern: "/" + name + "/", Name: "proxy_" + name, Handler: p.handler(up)})
	}
	return routes
}

// handler serves one upstream's route.
func (p *Proxy) handler(up *Upstream) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		waited := &upstreamWait{}
		p.serve(w, r, up, waited)
		if p.added != nil {
			p.added.ObserveProxyAddedLatency(time.Since(start) - waited.d)
		}
	})
}

// serve answers one request to up's route, adding the time it waits on
// the upstream to waited.
func (p *Proxy) serve(w http.ResponseWriter, r *http.Request, up *Upstream, waited *upstreamWait) {
	rest := strings.TrimPrefix(r.URL.Path, "/"+up.Name)
	if !strings.HasPrefix(rest, "/") || strings.Contains(rest, "/../") || strings.HasSuffix(rest, "/..") {
		writeError(w, up.Kind, http.StatusNotFound, "not_found_error", "cannot find "+r.URL.Path)
		return
	}
	endpoint := meteredEndpoint(up.Kind, r.Method, rest)
	if endpoint == "" {
		// With the sidecar's own key, only reads and count_tokens go
		// through unmetered: anything else would spend the key with
		// no user, no check and no record.
		if up.Key != "" && r.Method != http.MethodGet && !strings.HasSuffix(strings.TrimSuffix(rest, "/"), "/count_tokens") {
			writeError(w, up.Kind, http.StatusForbidden, "permission_error",
				fmt.Sprintf("llmusage: %s %s is not metered, and upstream %s is called with the sidecar's key: refused", r.Method, rest, up.Name))
			return
		}
		p.forward(w, r, up, rest, nil, nil, waited)
		return
	}
	p.metered(w, r, up, rest, endpoint, waited)
}

// meteredEndpoint names the call a request makes, or "" for one passed
// through unmetered (model lists, count_tokens, files, ...).
func meteredEndpoint(k Kind, method, rest string) string {
	if method != http.MethodPost {
		return ""
	}
	rest = strings.TrimRight(rest, "/")
	switch k {
	case Anthropic:
		if strings.HasSuffix(rest, "/messages") {
			return "messages"
		}
	default:
		for _, e := range []string{"/chat/completions", "/responses", "/embeddings", "/completions"} {
			if strings.HasSuffix(rest, e) {
				return strings.TrimPrefix(e, "/")
			}
		}
	}
	return ""
}

// call is one metered request on its way.
type call struct {
	up       *Upstream
	endpoint string
	user     string
	// team is the call's team_id; empty for none.
	team   string
	model  string
	stream bool
	// injected tells that the proxy asked for stream usage itself, and
	// must hide the usage chunk from a client that did not.
	injected bool
	// promptEstimate is the prompt's tokens estimated from its size.
	promptEstimate int64
	requestID      string
	start          time.Time
	// key is the fingerprint of the API key the call goes out with; set
	// only for Headroom, as it costs a hash.
	key string
	// ended ends the call's count in flight; nil when not counted.
	ended func()
}

// metered checks, forwards and records one call.
func (p *Proxy) metered(w http.ResponseWriter, r *http.Request, up *Upstream, rest, endpoint string, waited *upstreamWait) {
	start := time.Now()
	body, err := io.ReadAll(io.LimitReader(r.Body, p.opts.MaxBodyBytes+1))
	if err != nil {
		writeError(w, up.Kind, http.StatusBadRequest, "invalid_request_error", "cannot read the request body: "+err.Error())
		return
	}
	if int64(len(body)) > p.opts.MaxBodyBytes {
		writeError(w, up.Kind, http.StatusRequestEntityTooLarge, "invalid_request_error",
			fmt.Sprintf("cannot forward a request body over %d bytes (--max-body-bytes)", p.opts.MaxBodyBytes))
		return
	}
	req, err := readRequestFields(body)
	if err != nil {
		writeError(w, up.Kind, http.StatusBadRequest, "invalid_request_error", "cannot parse the request body as JSON: "+err.Error())
		return
	}
	c := &call{up: up, endpoint: endpoint, model: req.Model, stream: req.Stream, start: start,
		promptEstimate: promptEstimate(body)}
	c.user = r.Header.Get(p.opts.UserHeader)
	if c.user == "" {
		c.user = req.user()
	}
	if c.user == "" {
		c.user = p.opts.DefaultUser
	}
	if c.user == "" {
		writeError(w, up.Kind, http.StatusBadRequest, "invalid_request_error",
			fmt.Sprintf("cannot tell who calls: send the header %s, or the body's %s (or run the sidecar with --proxy-default-user)", p.opts.UserHeader, userFieldOf(up.Kind)))
		return
	}
	c.team = r.Header.Get(p.opts.TeamHeader)
	if c.team == "" {
		c.team = req.team()
	}
	if c.model == "" {
		writeError(w, up.Kind, http.StatusBadRequest, "invalid_request_error", "cannot check a call without a model")
		return
	}
	if mt := req.maxTokens(); mt > collector.MaxTokens {
		writeError(w, up.Kind, http.StatusBadRequest, "invalid_request_error",
			fmt.Sprintf("cannot check a call of max_tokens %d: at most %d", mt, int64(collector.MaxTokens)))
		return
	}
	// The provider's refusal is known before the user's check, which
	// would charge the user's limits for a call never made: nothing to
	// give back. A bad team then waits for the provider too.
	if p.headroom != nil {
		c.key = outgoingKey(up, r.Header)
		hk := headroomKey{provider: up.Provider, key: c.key, model: c.model}
		if wait, why := p.headroom.wait(hk, need{prompt: c.promptEstimate, maxTokens: req.maxTokens()}, p.clock.Now()); wait > 0 {
			p.refuseForProvider(w, up, c, wait, why)
			return
		}
	}
	d, requestID, err := p.opts.Collector.Check(collector.Call{UserID: c.user, TeamID: c.team, Provider: up.Provider, Model: c.model,
		PromptTokens: c.promptEstimate, MaxTokens: req.maxTokens()})
	if err != nil {
		status, msg := http.StatusServiceUnavailable, err.Error()
		var ce *collector.Error
		var tooLarge *limiter.EstimateTooLargeError
		var unpriced *limiter.UnpricedError
		switch {
		case errors.As(err, &ce):
			status = ce.Status
		case errors.As(err, &tooLarge), errors.As(err, &unpriced):
			status = http.StatusBadRequest
		default:
			w.Header().Set("Retry-After", "1")
		}
		writeError(w, up.Kind, status, errorTypeOf(up.Kind, status), "cannot check the call with llmusage: "+msg)
		return
	}
	if !d.Allowed {
		p.refuse(w, up, c.user, d)
		return
	}
	c.requestID = requestID
	if p.inFlight != nil {
		c.ended = p.inFlight.CallStarted(c.user)
	}
	if c.stream && up.Kind == OpenAI && endpoint == "chat/completions" && !req.includeUsage() {
		if b, ok := withIncludeUsage(body); ok {
			body, c.injected = b, true
		}
	}
	p.forward(w, r, up, rest, body, c, waited)
}

// forward sends the request upstream and relays the answer, metering it
// when c is set. body replaces the request's when set. The time spent
// waiting on the upstream is added to waited.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, up *Upstream, rest string, body []byte, c *call, waited *upstreamWait) {
	rp := &httputil.ReverseProxy{
		Transport:     &timedTransport{next: p.transport, wait: waited},
		FlushInterval: -1, // every chunk as it comes: no buffering of streams
		ErrorLog:      slog.NewLogLogger(p.logger.Handler(), slog.LevelWarn),
		Rewrite: func(pr *httputil.ProxyRequest) {
			target := *up.URL
			target.Path = strings.TrimSuffix(up.URL.Path, "/") + rest
			target.RawPath = ""
			target.RawQuery = r.URL.RawQuery
			pr.Out.URL = &target
			pr.Out.Host = target.Host
			pr.Out.Header.Del(p.opts.UserHeader)
			pr.Out.Header.Del(p.opts.TeamHeader)
			pr.Out.Header.Del(collector.TokenHeader)
			if up.Key != "" {
				// The sidecar's key, in place of whatever the client sent
				// (the Anthropic SDK may send its key as a bearer token).
				pr.Out.Header.Del("Authorization")
				pr.Out.Header.Del("X-Api-Key")
				if up.Kind == Anthropic {
					pr.Out.Header.Set("X-Api-Key", up.Key)
				} else {
					pr.Out.Header.Set("Authorization", "Bearer "+up.Key)
				}
			}
			if c != nil {
				// The transport then asks for gzip itself and hands the
				// answer over decompressed: usage is read from plain JSON,
				// and the client gets it plain.
				pr.Out.Header.Del("Accept-Encoding")
			}
			if body != nil {
				pr.Out.Body = io.NopCloser(bytes.NewReader(body))
				pr.Out.ContentLength = int64(len(body))
				pr.Out.Header.Set("Content-Length", strconv.Itoa(len(body)))
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			p.observeRateLimits(up, c, resp)
			if p.headroom != nil && c != nil {
				p.headroom.observe(headroomKey{provider: up.Provider, key: c.key, model: c.model}, up.Kind, resp.StatusCode, resp.Header, p.clock.Now())
			}
			if c != nil {
				resp.Body = p.meter(r.Context(), resp, c)
				if c.injected {
					resp.Header.Del("Content-Length")
				}
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, req *http.Request, err error) {
			p.logger.Warn("upstream call failed", "upstream", up.Name, "path", rest, "error", redact(err))
			status, kind := http.StatusBadGateway, "upstream_unreachable"
			switch {
			case req.Context().Err() != nil: // the client went away first
				status, kind = 499, "client_closed"
			case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
				status, kind = http.StatusGatewayTimeout, "upstream_timeout"
			}
			if c != nil {
				p.record(c, status, kind, usage{}, false, 0)
			}
			if req.Context().Err() == nil {
				writeError(w, up.Kind, status, errorTypeOf(up.Kind, status), "llmusage cannot reach the upstream "+up.Name+": "+redact(err))
			}
		},
	}
	if body != nil && r.Body != nil {
		_ = r.Body.Close()
	}
	rp.ServeHTTP(w, r)
}

// isTimeout tells a transport timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// redact keeps URLs with credentials out of messages.
func redact(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil {
			u.User = nil
			return ue.Op + " " + u.Redacted() + ": " + ue.Err.Error()
		}
	}
	return err.Error()
}

// record makes the call's record and hands it to the collector.
func (p *Proxy) record(c *call, status int, errorType string, u usage, exact bool, contentChars int64) {
	if c.ended != nil {
		defer c.ended()
	}
	rec := record.Record{
		RequestID: c.requestID, UserID: c.user, TeamID: c.team, Provider: c.up.Provider, Model: c.model,
		Latency: time.Since(c.start), HasLatency: true, Status: record.StatusSuccess,
	}
	if u.model != "" {
		rec.Model = u.model
	}
	if status >= 400 || errorType != "" {
		rec.Status, rec.ErrorType = record.StatusError, errorType
		if rec.ErrorType == "" {
			rec.ErrorType = "http_" + strconv.Itoa(status)
		}
	}
	meta := map[string]any{"proxy": c.up.Name, "endpoint": c.endpoint}
	if exact {
		rec.PromptTokens, rec.CompletionTokens = u.prompt, u.completion
		rec.CachedTokens, rec.CacheWriteTokens, rec.ReasoningTokens = u.cached, u.cacheWrite, u.reasoning
	} else if status < 400 || contentChars > 0 {
		// No usage from the upstream (a stream cut short): counted from
		// what was sent and relayed, and said so.
		rec.PromptTokens, rec.CompletionTokens = c.promptEstimate, (contentChars+3)/4
		meta["usage_estimated"] = true
	}
	rec.TotalTokens = rec.PromptTokens + rec.CompletionTokens
	rec.Metadata, _ = json.Marshal(meta)
	if err := p.opts.Collector.Accept([]record.Record{rec}); err != nil {
		p.logger.Error("cannot record a proxied call", "upstream", c.up.Name, "user", c.user, "error", err)
	}
}
