package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/redistest"
	"github.com/llmusage/llmusage/internal/sdktest"
	"github.com/llmusage/llmusage/internal/sidecartest"
	"github.com/llmusage/llmusage/internal/upstreamtest"
)

// concurrencySidecars starts n sidecars sharing one real Redis, with the
// limits file limits, proxying OpenAI to up.
func concurrencySidecars(t *testing.T, n int, limits string, up *upstreamtest.Server) []*sidecartest.Sidecar {
	t.Helper()
	return replicas(t, n, limits, "--redis-url", redistest.Start(t).URL(), "--upstream", "openai="+up.URL, "--flush-interval", "50ms")
}

// streamBody is a streaming chat completion of model.
func streamBody(model string) string {
	return fmt.Sprintf(`{"model":%q,"stream":true,"messages":[{"role":"user","content":"Say hello"}]}`, model)
}

// openStream posts a streaming chat completion of model for user through
// s's proxy. A 200's body is left to the caller; any other answer is read
// and closed, its body returned.
func openStream(ctx context.Context, s *sidecartest.Sidecar, user, model string) (*http.Response, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.APIURL()+"/openai/v1/chat/completions", strings.NewReader(streamBody(model)))
	if err != nil {
		return nil, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer sk-test-secret-key")
	req.Header.Set("X-LLMUsage-User", user)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, "", err
	}
	if resp.StatusCode == http.StatusOK {
		return resp, "", nil
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

// completeStream tells what is wrong with a chat completion stream as the
// client got it, "" if it is whole: the fake provider's text, then [DONE].
func completeStream(body string) string {
	var text strings.Builder
	for line := range strings.Lines(body) {
		data, ok := strings.CutPrefix(strings.TrimSpace(line), "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var chunk struct {
			Choices []struct {
				Delta struct{ Content string } `json:"delta"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			return fmt.Sprintf("a chunk is not JSON (%s): %q", err, data)
		}
		for _, c := range chunk.Choices {
			text.WriteString(c.Delta.Content)
		}
	}
	if text.String() != upstreamtest.Text || !strings.HasSuffix(body, "data: [DONE]\n\n") {
		return fmt.Sprintf("text %q, want %q, then data: [DONE]: %q", text.String(), upstreamtest.Text, body)
	}
	return ""
}

// checkConcurrencyRefusal tells what is wrong with a refusal of the
// concurrent limit by the proxy, "" if nothing: 429, Retry-After 1 and
// retry-after-ms 1000 (limiter.ConcurrencyRetry), and OpenAI's error
// format naming the limit.
func checkConcurrencyRefusal(resp *http.Response, body string) string {
	if resp.StatusCode != http.StatusTooManyRequests {
		return fmt.Sprintf("status %d, want 429: %s", resp.StatusCode, body)
	}
	h := resp.Header
	if h.Get("Retry-After") != "1" || h.Get("Retry-After-Ms") != "1000" || h.Get("X-Should-Retry") != "" {
		return fmt.Sprintf("Retry-After %q, retry-after-ms %q, x-should-retry %q, want 1, 1000 and none",
			h.Get("Retry-After"), h.Get("Retry-After-Ms"), h.Get("X-Should-Retry"))
	}
	var e struct {
		Error struct{ Message, Type string } `json:"error"`
	}
	if json.Unmarshal([]byte(body), &e) != nil || e.Error.Type == "" || !strings.Contains(e.Error.Message, "concurrent") {
		return fmt.Sprintf("body %q is not OpenAI's error naming the concurrent limit", body)
	}
	return ""
}

// streamResult is what one retrying call saw.
type streamResult struct {
	// attempts counts the requests sent, refusals the 429s among them.
	attempts, refusals int
	// problem is "" when the call ended with a whole stream.
	problem string
}

// streamWithRetries makes a streaming chat completion of model for user
// through s's proxy and reads it to its end. A 429 is retried after its
// Retry-After (and a little jitter, as the SDKs add), up to attempts
// requests in all.
func streamWithRetries(s *sidecartest.Sidecar, user, model string, attempts int) streamResult {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var r streamResult
	for r.attempts < attempts {
		r.attempts++
		resp, body, err := openStream(ctx, s, user, model)
		if err != nil {
			r.problem = fmt.Sprintf("attempt %d: %s", r.attempts, err)
			return r
		}
		if resp.StatusCode == http.StatusTooManyRequests {
			r.refusals++
			if p := checkConcurrencyRefusal(resp, body); p != "" {
				r.problem = fmt.Sprintf("attempt %d: %s", r.attempts, p)
				return r
			}
			secs, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
			time.Sleep(time.Duration(secs)*time.Second + rand.N(250*time.Millisecond))
			continue
		}
		if resp.StatusCode != http.StatusOK {
			r.problem = fmt.Sprintf("attempt %d: status %d: %s", r.attempts, resp.StatusCode, body)
			return r
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			r.problem = fmt.Sprintf("attempt %d: reading the stream: %s", r.attempts, err)
			return r
		}
		r.problem = completeStream(string(b))
		return r
	}
	r.problem = fmt.Sprintf("still refused after %d attempts", attempts)
	return r
}

// concurrentLimit returns the concurrent limit in s's /v1/limits answer
// for user, nil if it has none.
func concurrentLimit(t *testing.T, s *sidecartest.Sidecar, user string) map[string]any {
	t.Helper()
	code, body := s.Get(t, "/v1/limits?user_id="+user)
	if code != http.StatusOK {
		t.Fatalf("/v1/limits: %d %v", code, body)
	}
	limits, _ := body["limits"].([]any)
	for _, l := range limits {
		if l, ok := l.(map[string]any); ok && l["unit"] == "concurrent" {
			return l
		}
	}
	return nil
}

// waitRemaining waits until every sidecar reports want slots of user's
// concurrent limit of 5 free, for at most timeout.
func waitRemaining(t *testing.T, sidecars []*sidecartest.Sidecar, user string, want float64, timeout time.Duration) {
	t.Helper()
	waitSlots(t, sidecars, user, 5, want, timeout)
}

// waitSlots waits until every sidecar reports want slots of user's
// concurrent limit of limit free, for at most timeout.
func waitSlots(t *testing.T, sidecars []*sidecartest.Sidecar, user string, limit, want float64, timeout time.Duration) {
	t.Helper()
	for i, s := range sidecars {
		var last map[string]any
		if !sidecartest.Eventually(timeout, func() bool {
			last = concurrentLimit(t, s, user)
			return last != nil && last["limit_type"] == "concurrent" && last["limit"] == limit && last["remaining"] == want
		}) {
			t.Fatalf("sidecar %d: the concurrent limit of %s is %v, want limit %v with %v remaining (waited %s)", i, user, last, limit, want, timeout)
		}
	}
}

// TestConcurrencyAcrossSidecarsThroughProxy: three sidecars on one Redis
// proxy OpenAI under concurrent: 5 per user. Twenty streams of one user
// started at once, round-robin over the sidecars, each retrying its 429s
// after Retry-After, all end whole, and the fake provider never has more
// than 5 of them in flight. Three rounds, the same user: each round
// starts from the slots the previous one gave back.
func TestConcurrencyAcrossSidecarsThroughProxy(t *testing.T) {
	const user, calls, limit = "conc-user", 20, 5
	up := upstreamtest.Start(t)
	sidecars := concurrencySidecars(t, 3, fmt.Sprintf("limits:\n  - concurrent: %d\n", limit), up)
	for round := 1; round <= 3; round++ {
		t.Run(fmt.Sprintf("round%d", round), func(t *testing.T) {
			requestsBefore := len(up.Requests())
			results := make([]streamResult, calls)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range calls {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					results[i] = streamWithRetries(sidecars[i%len(sidecars)], user, "slow-stream", 60)
				}()
			}
			close(start)
			wg.Wait()

			// The oracle first: the provider never had more than the limit
			// of streams in flight.
			if most := up.InFlightMax(); most > limit {
				t.Fatalf("the fake provider had %d streams of %s in flight at once, over concurrent: %d", most, user, limit)
			}
			refusals, attempts := 0, 0
			for i, r := range results {
				if r.problem != "" {
					t.Errorf("call %d (sidecar %d): %s", i, i%len(sidecars), r.problem)
				}
				refusals += r.refusals
				attempts += r.attempts
			}
			if t.Failed() {
				t.FailNow()
			}
			if refusals == 0 {
				t.Fatalf("%d streams of 2 s started at once under concurrent: %d, and not one 429", calls, limit)
			}
			// Only the admitted calls reached the provider: one each.
			if n := len(up.Requests()) - requestsBefore; n != calls {
				t.Fatalf("the fake provider got %d calls, want %d (the 429s never reach it)", n, calls)
			}
			assertNoFallback(t, sidecars)
			t.Logf("round %d: %d calls in %d attempts, %d refused; at most %d in flight at the provider", round, calls, attempts, refusals, up.InFlightMax())
			// Every call's record gave its slot back, on every sidecar.
			waitRemaining(t, sidecars, user, limit, 10*time.Second)
		})
	}
}

// readToFirstChunk reads a stream's body up to its first content chunk
// ("Hello") and returns a reader of the rest.
func readToFirstChunk(resp *http.Response) (*bufio.Reader, error) {
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return nil, fmt.Errorf("no content chunk: %w", err)
		}
		if strings.Contains(line, upstreamtest.Chunks[0]) {
			return br, nil
		}
	}
}

// heldStream is a stream open through the proxy, held by the fake
// provider after its first chunk.
type heldStream struct {
	resp *http.Response
	rest *bufio.Reader
}

// openHeld opens a stream of the model "held" for user through s and
// reads it to its first chunk; it is closed when t ends.
func openHeld(t *testing.T, s *sidecartest.Sidecar, user string) (heldStream, error) {
	resp, body, err := openStream(context.Background(), s, user, "held")
	if err != nil {
		return heldStream{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return heldStream{}, fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	t.Cleanup(func() { resp.Body.Close() })
	rest, err := readToFirstChunk(resp)
	return heldStream{resp, rest}, err
}

// finish reads the rest of a released stream and tells what is wrong
// with it, "" if nothing.
func (h heldStream) finish() string {
	b, err := io.ReadAll(h.rest)
	h.resp.Body.Close()
	if err != nil {
		return "reading the rest: " + err.Error()
	}
	if !strings.HasSuffix(string(b), "data: [DONE]\n\n") {
		return fmt.Sprintf("the rest of the stream does not end with [DONE]: %q", b)
	}
	return ""
}

// TestSDKsRetryTheConcurrencyRefusal runs the official openai and
// @anthropic-ai/sdk npm packages with their default options (2 retries)
// through the sidecar under concurrent: 1 per user, while a call of the
// same user holds the slot: the SDK's stream is refused with the
// sidecar's 429 (Retry-After 1, retry-after-ms 1000), which the test
// sees on the sidecar's metrics and answers by letting the held call
// end; the SDK retries by itself after the wait, and its stream goes
// through. Nothing depends on timing: the slot comes back only once the
// refusal happened, and the SDK's retry comes a second after it.
func TestSDKsRetryTheConcurrencyRefusal(t *testing.T) {
	const user = "sdk-user" // run.mjs's X-LLMUsage-User
	up := upstreamtest.Start(t)
	s := sidecartest.Start(t, sidecartest.Options{
		Limits: "limits:\n  - concurrent: 1\n",
		Flags: []string{"--redis-url", redistest.Start(t).URL(), "--redis-timeout", "2s",
			"--upstream", "openai=" + up.URL, "--upstream", "anthropic=" + up.URL, "--flush-interval", "50ms"},
	})
	limited := `llm_rate_limit_checks_total{decision="limited",user="` + user + `"}`
	refusals := func() float64 { return max(0, s.Gauge(limited)) }
	for _, tc := range []struct{ scenario, base, model string }{
		{"openai-concurrency-retry", s.APIURL() + "/openai/v1", "gpt-4"},
		{"anthropic-concurrency-retry", s.APIURL() + "/anthropic", "claude-3-opus"},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			held, err := openHeld(t, s, user)
			if err != nil {
				t.Fatalf("the call holding the slot: %s", err)
			}
			// A plain client's call meanwhile: the sidecar's 429, in
			// OpenAI's format, with the waits the SDKs read.
			resp, body, err := openStream(context.Background(), s, user, tc.model)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode == http.StatusOK {
				resp.Body.Close()
				t.Fatal("a second call in flight admitted under concurrent: 1")
			}
			if p := checkConcurrencyRefusal(resp, body); p != "" {
				t.Fatalf("a second call in flight: %s", p)
			}
			before := refusals()
			upstreamBefore := callsOf(up, tc.model)

			// Let the held call end once the SDK has been refused.
			released := make(chan string, 1)
			stop := make(chan struct{})
			stopWaiting := sync.OnceFunc(func() { close(stop) })
			defer stopWaiting() // if the SDK's run fails the test
			go func() {
				for refusals() <= before {
					select {
					case <-stop:
						released <- "the SDK's call was never refused"
						return
					case <-time.After(20 * time.Millisecond):
					}
				}
				up.Release()
				released <- held.finish()
			}()
			r := sdktest.Run(t, tc.scenario, tc.base)
			stopWaiting()
			if p := <-released; p != "" {
				t.Fatalf("%s: %s (the SDK's result: %s)", tc.scenario, p, r.Line)
			}
			if !r.OK || r.Text != upstreamtest.Text {
				t.Fatalf("%s: %s, want the provider's answer after the SDK's own retry", tc.scenario, r.Line)
			}
			refused := refusals() - before
			if refused < 1 || r.Attempts != int(refused)+1 {
				t.Fatalf("%s: the SDK sent %d requests and the sidecar refused %v of them, want at least 2 requests, all refused but the last: %s",
					tc.scenario, r.Attempts, refused, r.Line)
			}
			// The refused attempts never reached the provider.
			if n := callsOf(up, tc.model) - upstreamBefore; n != 1 {
				t.Fatalf("%s: the provider got %d calls of %s, want 1", tc.scenario, n, tc.model)
			}
			t.Logf("%s: the SDK's call succeeded at attempt %d after %d refusals, in %d ms", tc.scenario, r.Attempts, int(refused), r.ElapsedMs)
			waitSlots(t, []*sidecartest.Sidecar{s}, user, 1, 1, 10*time.Second)
		})
	}
}

// callsOf counts the fake provider's calls of model.
func callsOf(up *upstreamtest.Server, model string) int {
	n := 0
	for _, req := range up.Requests() {
		if m := req.JSON(); m != nil && m["model"] == model {
			n++
		}
	}
	return n
}

// TestConcurrencySlotsOfAKilledSidecar: three sidecars on one Redis under
// concurrent: 5 per user; sidecar A holds 3 streams of the user when it
// is killed -9. Its slots come back once it leaves the replica registry
// (its 10 s lapse and a sweep), not after --concurrency-timeout (10 min):
// then B and C admit 5 streams at once, and refuse a 6th.
func TestConcurrencySlotsOfAKilledSidecar(t *testing.T) {
	const user = "killed-user"
	up := upstreamtest.Start(t)
	sidecars := concurrencySidecars(t, 3, "limits:\n  - concurrent: 5\n", up)
	a, others := sidecars[0], sidecars[1:]
	for i := range 3 {
		if _, err := openHeld(t, a, user); err != nil {
			t.Fatalf("stream %d through sidecar A: %s", i, err)
		}
	}
	if n := up.InFlight(); n != 3 {
		t.Fatalf("the fake provider has %d streams in flight, want 3", n)
	}
	waitRemaining(t, sidecars, user, 2, 10*time.Second)

	a.Kill9(t)
	killed := time.Now()
	// The provider sees A's connections go; nothing gives A's slots back
	// before A leaves the registry.
	waitRemaining(t, others, user, 2, 0)
	waitRemaining(t, others, user, 5, 30*time.Second)
	t.Logf("the slots of the killed sidecar came back after %s", time.Since(killed).Round(100*time.Millisecond))
	if n := up.InFlight(); n != 0 {
		t.Fatalf("the fake provider still has %d streams in flight after sidecar A died", n)
	}

	// Five streams at once through B and C: all admitted.
	streams := make([]heldStream, 5)
	errs := make([]error, 5)
	var wg sync.WaitGroup
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			streams[i], errs[i] = openHeld(t, others[i%2], user)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("stream %d of 5 through sidecar %c after A's slots came back: %s", i, 'B'+i%2, err)
		}
	}
	// A sixth is refused, on either.
	for i, s := range others {
		resp, body, err := openStream(context.Background(), s, user, "held")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == http.StatusOK {
			resp.Body.Close()
			t.Fatalf("sidecar %c admitted a 6th stream under concurrent: 5", 'B'+i)
		}
		if p := checkConcurrencyRefusal(resp, body); p != "" {
			t.Fatalf("the 6th stream through sidecar %c: %s", 'B'+i, p)
		}
	}
	if most := up.InFlight(); most != 5 {
		t.Fatalf("the fake provider has %d streams in flight, want 5", most)
	}
	up.Release()
	for i, s := range streams {
		if p := s.finish(); p != "" {
			t.Fatalf("stream %d: %s", i, p)
		}
	}
	waitRemaining(t, others, user, 5, 10*time.Second)
	assertNoFallback(t, others)
}
