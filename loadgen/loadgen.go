// Package loadgen drives a running llmusage sidecar over loopback, or a
// unix socket, and measures throughput and latency. It also serves the
// bare net/http baseline that the sidecar's figures are compared with.
package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Options describe a run.
type Options struct {
	// Target is the API's base URL (http://127.0.0.1:9470) or unix:/path.
	Target string
	// Mode is "record" (one record per request), "batch" (NDJSON of
	// BatchSize records) or "check".
	Mode string
	// Connections is the number of concurrent clients.
	Connections int
	// Duration is how long to drive load.
	Duration time.Duration
	// BatchSize is the records per request in batch mode.
	BatchSize int
	// Users is the number of distinct users, Zipf-distributed (a few are
	// busy, most are not), as real traffic is.
	Users int
	// Rate, when positive, paces requests to this many per second in all
	// (an open loop: latency counts from the scheduled send time, so a
	// slow answer cannot hide the requests that should have gone out
	// meanwhile); zero sends as fast as answers come back.
	Rate float64
	// Token is sent as a bearer token when set.
	Token string
}

// Result is what a run measured.
type Result struct {
	Mode        string  `json:"mode"`
	Connections int     `json:"connections"`
	DurationS   float64 `json:"duration_seconds"`
	Requests    int64   `json:"requests"`
	Records     int64   `json:"records"`
	Errors      int64   `json:"errors"`
	// Limited counts checks answered 429: an answer, not an error.
	Limited          int64   `json:"limited"`
	RequestsPerSec   float64 `json:"requests_per_second"`
	RecordsPerSec    float64 `json:"records_per_second"`
	LatencyP50Ms     float64 `json:"latency_p50_ms"`
	LatencyP90Ms     float64 `json:"latency_p90_ms"`
	LatencyP99Ms     float64 `json:"latency_p99_ms"`
	LatencyMaxMs     float64 `json:"latency_max_ms"`
	TargetRatePerSec float64 `json:"target_rate_per_second,omitempty"`
	// FirstError is an example of what failed, if anything did.
	FirstError string `json:"first_error,omitempty"`
}

// Text renders r for a terminal.
func (r Result) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "mode %s, %d connections, %.1fs", r.Mode, r.Connections, r.DurationS)
	if r.TargetRatePerSec > 0 {
		fmt.Fprintf(&b, ", paced at %.0f requests/s", r.TargetRatePerSec)
	}
	fmt.Fprintf(&b, "\nrequests  %d (%.0f/s)\nrecords   %d (%.0f/s)\nerrors    %d\n", r.Requests, r.RequestsPerSec, r.Records, r.RecordsPerSec, r.Errors)
	if r.Mode == "check" {
		fmt.Fprintf(&b, "limited   %d (429 answers)\n", r.Limited)
	}
	fmt.Fprintf(&b, "latency   p50 %.3fms  p90 %.3fms  p99 %.3fms  max %.3fms\n", r.LatencyP50Ms, r.LatencyP90Ms, r.LatencyP99Ms, r.LatencyMaxMs)
	if r.FirstError != "" {
		fmt.Fprintf(&b, "first error: %s\n", r.FirstError)
	}
	return b.String()
}

// JSON renders r as one JSON object.
func (r Result) JSON() string {
	b, _ := json.Marshal(r)
	return string(b)
}

// Run drives load until the duration is up or ctx ends.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.Connections <= 0 || o.Duration <= 0 || o.Users <= 0 {
		return Result{}, fmt.Errorf("cannot run: --connections, --duration and --users must be positive")
	}
	if o.Mode != "record" && o.Mode != "batch" && o.Mode != "check" {
		return Result{}, fmt.Errorf("cannot run mode %q: want record, batch or check", o.Mode)
	}
	if o.Mode == "batch" && o.BatchSize <= 0 {
		return Result{}, fmt.Errorf("cannot run batch mode with --batch-size %d", o.BatchSize)
	}
	ep, err := parseTarget(o.Target)
	if err != nil {
		return Result{}, err
	}
	path, contentType := "/v1/calls", "application/json"
	switch o.Mode {
	case "batch":
		contentType = "application/x-ndjson"
	case "check":
		path = "/v1/check"
	}

	ctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	start := time.Now()
	// Paced, every send is a ticket carrying its scheduled time, taken by
	// whichever connection is free: a slow answer on one connection does
	// not hold back the sends scheduled after it.
	var tickets chan time.Time
	if o.Rate > 0 {
		interval := max(time.Duration(float64(time.Second)/o.Rate), time.Microsecond)
		m, mStart, err := newMetronome(ctx, interval)
		if err != nil {
			return Result{}, err
		}
		tickets = make(chan time.Time)
		go pace(ctx, m, mStart, interval, tickets)
	}
	workers := make([]*worker, o.Connections)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{opts: o, conn: conn{ep: ep}, rng: rand.New(rand.NewPCG(uint64(i)+1, uint64(start.UnixNano())))}
		w.zipf = newZipf(w.rng, o.Users)
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer w.conn.close()
			w.run(ctx, path, contentType, tickets)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()

	r := Result{Mode: o.Mode, Connections: o.Connections, DurationS: elapsed, TargetRatePerSec: o.Rate}
	var lat []time.Duration
	for _, w := range workers {
		r.Requests += w.requests
		r.Records += w.records
		r.Errors += w.errors
		r.Limited += w.limited
		lat = append(lat, w.latencies...)
		if r.FirstError == "" {
			r.FirstError = w.firstError
		}
	}
	r.RequestsPerSec = float64(r.Requests) / elapsed
	r.RecordsPerSec = float64(r.Records) / elapsed
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	r.LatencyP50Ms, r.LatencyP90Ms, r.LatencyP99Ms = quantile(lat, 0.5), quantile(lat, 0.9), quantile(lat, 0.99)
	if len(lat) > 0 {
		r.LatencyMaxMs = ms(lat[len(lat)-1])
	}
	return r, nil
}

type worker struct {
	opts Options
	// conn is the worker's connection: one per worker, as --connections says.
	conn conn
	rng  *rand.Rand
	zipf *zipf
	buf  bytes.Buffer

	requests, records, errors, limited int64
	latencies                          []time.Duration
	firstError                         string
}

var models = []struct{ provider, model string }{
	{"openai", "gpt-4o"}, {"openai", "gpt-4o-mini"}, {"anthropic", "claude-3-5-sonnet"},
	{"groq", "llama-3.1-70b-versatile"}, {"gcp.gemini", "gemini-1.5-pro"},
}

// run sends requests until ctx ends: one after the other, or one per
// ticket when paced, its latency counted from the ticket's scheduled time.
func (w *worker) run(ctx context.Context, path, contentType string, tickets <-chan time.Time) {
	for ctx.Err() == nil {
		n := w.body()
		sent := time.Now()
		if tickets != nil {
			var ok bool
			if sent, ok = <-tickets; !ok {
				return
			}
		}
		status, body, err := w.conn.do(ctx, path, contentType, w.opts.Token, w.buf.Bytes())
		if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
			return // the run ended mid-request: neither success nor error
		}
		w.requests++
		if err != nil {
			w.fail(err.Error())
			continue
		}
		w.latencies = append(w.latencies, time.Since(sent))
		switch {
		case status/100 == 2:
			w.records += int64(n)
		case status == http.StatusTooManyRequests && w.opts.Mode == "check":
			w.limited++
		default:
			w.fail(fmt.Sprintf("%d %s", status, bytes.TrimSpace(body)))
		}
	}
}

func (w *worker) fail(msg string) {
	w.errors++
	if w.firstError == "" {
		w.firstError = msg
	}
}

// pace sends the scheduled time of every request to tickets, one each
// tick of m (started at start, ticking every interval), until ctx ends,
// then closes m and tickets. The ticks come from a metronome rather than
// from Go's timers: those wake up to a millisecond late on Linux when the
// process is otherwise idle (the runtime sleeps in epoll_wait, whose
// timeout is in milliseconds; 1.08 ms for any sleep under 1 ms on the
// project's machine), and that lag would count as the server's latency.
func pace(ctx context.Context, m *metronome, start time.Time, interval time.Duration, tickets chan<- time.Time) {
	defer close(tickets)
	defer m.close()
	deadline, bounded := ctx.Deadline()
	for i := 1; ; {
		n, err := m.wait()
		if err != nil {
			return
		}
		for ; n > 0; n-- {
			due := start.Add(time.Duration(i) * interval)
			// A late wake-up reports several expirations at once; those
			// due after the run ends would be sends the run has no time
			// for, and select would pick them at random over ctx.Done.
			if ctx.Err() != nil || bounded && due.After(deadline) {
				return
			}
			// Blocks while every connection is busy: the sends queue, and
			// their latency still counts from when they were due.
			select {
			case tickets <- due:
				i++
			case <-ctx.Done():
				return
			}
		}
	}
}

// body writes the next request body into w.buf and returns its records.
func (w *worker) body() int {
	w.buf.Reset()
	n := 1
	if w.opts.Mode == "batch" {
		n = w.opts.BatchSize
	}
	for i := 0; i < n; i++ {
		m := models[w.rng.IntN(len(models))]
		user := w.zipf.next()
		if w.opts.Mode == "check" {
			fmt.Fprintf(&w.buf, `{"user_id":"user-%d","model":%q,"provider":%q,"tokens":%d}`, user, m.model, m.provider, 200+w.rng.IntN(800))
			continue
		}
		prompt := 50 + w.rng.IntN(2000)
		completion := 10 + w.rng.IntN(500)
		w.buf.WriteString(`{"user_id":"user-`)
		w.buf.WriteString(strconv.Itoa(user))
		fmt.Fprintf(&w.buf, `","model":%q,"provider":%q,"prompt_tokens":%d,"completion_tokens":%d,"latency_ms":%d,"metadata":{"route":"/chat"}}`,
			m.model, m.provider, prompt, completion, 100+w.rng.IntN(4000))
		w.buf.WriteByte('\n')
	}
	return n
}

// zipf draws user numbers with P(k) proportional to 1/(k+1)^1.1.
type zipf struct{ z *rand.Zipf }

func newZipf(r *rand.Rand, n int) *zipf {
	if n == 1 {
		return &zipf{}
	}
	return &zipf{z: rand.NewZipf(r, 1.1, 1, uint64(n-1))}
}

func (z *zipf) next() int {
	if z.z == nil {
		return 0
	}
	return int(z.z.Uint64())
}

func quantile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return ms(sorted[max(i, 0)])
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BaselineHandler is the ceiling the sidecar is measured against: a bare
// net/http handler that reads the body and answers 202, with the same
// server timeouts as the sidecar's.
func BaselineHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write([]byte(`{"accepted":1}` + "\n"))
	})
}
