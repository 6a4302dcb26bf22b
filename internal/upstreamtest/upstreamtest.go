// Package upstreamtest is a fake provider API for tests: an httptest
// server on 127.0.0.1 that speaks the wire formats of OpenAI (Chat
// Completions, Responses, Embeddings), Groq (OpenAI's chat with x_groq)
// and Anthropic (Messages, count_tokens), JSON and server-sent events,
// reports fixed token usage so that a test can assert exact records, and
// remembers every request it received, headers included.
//
// The request's model chooses the behaviour:
//
//   - any model not listed below: a normal answer, "Hello" then " world";
//   - "tool": a tool call (OpenAI tool_calls deltas, a Responses
//     function_call, an Anthropic tool_use block with input_json_delta);
//   - "error-400", "error-429", "error-500": that status with the
//     provider's error JSON (and retry-after on 429);
//   - "cut": a stream that sends two content chunks, then the connection
//     is closed without the end (no usage, no [DONE], no message_stop); a
//     JSON request gets its connection closed before any answer;
//   - "stall": the headers and one content chunk, then nothing until the
//     client goes away; a JSON request gets nothing at all;
//   - "slow": the normal answer, each chunk 50 ms after the previous one
//     (a JSON answer 50 ms late);
//   - "exhausted": the normal answer, its rate-limit headers saying the
//     key's last request: limit 1, none remaining, reset in
//     ExhaustedReset (a provider's daily limit, spent);
//   - "slow-stream": the normal answer spread over SlowStreamDuration (a
//     stream's events evenly, a JSON answer that late), a call that
//     stays in flight long enough for others to overlap it;
//   - "held": a stream's headers and first content chunk, then nothing
//     until Release (a JSON request: nothing until Release), then the
//     rest of the normal answer; a call in flight for as long as the test
//     wants. The client going away or the test's end ends it too.
//
// The server counts the requests it is answering (InFlight) and the most
// it answered at once (InFlightMax), an oracle for a limit of calls in
// flight in front of it.
//
// Formats, from the providers' API references (see also
// docs: /work/shared/reference.md section 1):
//   - OpenAI Chat Completions: usage.prompt_tokens, completion_tokens,
//     total_tokens, prompt_tokens_details.cached_tokens,
//     completion_tokens_details.reasoning_tokens; a stream carries usage
//     only when stream_options.include_usage is true, in an extra last
//     chunk whose choices is [] (every earlier chunk then has "usage":
//     null), before "data: [DONE]".
//   - Groq (/openai/v1/chat/completions): the chunk with finish_reason
//     carries x_groq.usage (with queue_time, prompt_time, completion_time,
//     total_time), always; with include_usage that chunk also has usage
//     and the extra choices: [] chunk follows, as recorded from
//     api.groq.com (charmbracelet/fantasy providertests testdata).
//   - OpenAI Responses: usage.input_tokens, input_tokens_details
//     .cached_tokens, output_tokens, output_tokens_details
//     .reasoning_tokens, total_tokens; a stream is named events ending
//     with response.completed (no [DONE]).
//   - Anthropic Messages: usage.input_tokens (excluding cache reads and
//     writes), cache_creation_input_tokens, cache_read_input_tokens,
//     output_tokens; a stream is message_start (input counts, output 1),
//     content_block_start, ping, content_block_delta..., content_block_stop,
//     message_delta (CUMULATIVE usage: this server sends two, output 5
//     then 9), message_stop.
package upstreamtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// Usage is a token count the server reports. The OpenAI fields and the
// Anthropic fields are separate because the two count differently:
// OpenAI's cached tokens are part of the prompt and reasoning tokens part
// of the completion, while Anthropic's input excludes cache reads and
// writes.
type Usage struct {
	// Prompt is OpenAI's prompt_tokens (Responses: input_tokens),
	// cached tokens included.
	Prompt int
	// Completion is OpenAI's completion_tokens (Responses:
	// output_tokens), reasoning tokens included.
	Completion int
	// Cached is OpenAI's prompt_tokens_details.cached_tokens (Responses:
	// input_tokens_details.cached_tokens).
	Cached int
	// Reasoning is OpenAI's completion_tokens_details.reasoning_tokens
	// (Responses: output_tokens_details.reasoning_tokens).
	Reasoning int
	// Input is Anthropic's input_tokens, cache reads and writes excluded.
	Input int
	// CacheRead is Anthropic's cache_read_input_tokens.
	CacheRead int
	// CacheWrite is Anthropic's cache_creation_input_tokens.
	CacheWrite int
	// Output is Anthropic's output_tokens, final value.
	Output int
}

// The fixed usage every answer reports.
var (
	// OpenAIUsage is what Chat Completions (JSON and the include_usage
	// chunk) and the Responses API report: total_tokens 18.
	OpenAIUsage = Usage{Prompt: 11, Completion: 7, Cached: 3, Reasoning: 2}
	// GroqUsage is what the Groq-flavoured chat reports, in x_groq.usage
	// of a stream and in usage of a JSON answer: total_tokens 18, no
	// details, plus GroqTimes.
	GroqUsage = Usage{Prompt: 11, Completion: 7}
	// GroqTimes are Groq's queue_time, prompt_time, completion_time and
	// total_time, in seconds, next to GroqUsage.
	GroqTimes = [4]float64{0.012, 0.003, 0.021, 0.024}
	// EmbeddingsUsage is what /v1/embeddings reports: prompt_tokens and
	// total_tokens 5.
	EmbeddingsUsage = Usage{Prompt: 5}
	// AnthropicUsage is what the Messages API reports; a stream's
	// message_start carries the input counts with output_tokens
	// AnthropicOutputSteps[0], and its message_delta events carry the
	// following steps, the last being Output. count_tokens answers
	// input_tokens = Input.
	AnthropicUsage = Usage{Input: 10, CacheRead: 4, CacheWrite: 2, Output: 9}
	// AnthropicOutputSteps are the cumulative output_tokens of a stream:
	// in message_start, then in each message_delta.
	AnthropicOutputSteps = []int{1, 5, 9}
)

// ExhaustedReset is when the model "exhausted"'s requests come back.
const ExhaustedReset = 30 * time.Second

// Chunks is the text of a normal answer, one content chunk each; Text is
// their concatenation.
var Chunks = []string{"Hello", " world"}

// Text is a normal answer's whole text.
const Text = "Hello world"

// Tool is the tool call the model "tool" makes: ToolName called with
// ToolArguments (JSON), streamed in the pieces ToolArgumentChunks.
const (
	// ToolName is the function (or Anthropic tool) called.
	ToolName = "get_weather"
	// ToolArguments is the arguments as one JSON text.
	ToolArguments = `{"city":"Paris"}`
)

// ToolArgumentChunks are ToolArguments as streamed.
var ToolArgumentChunks = []string{`{"city":`, `"Paris"}`}

// Embedding is the vector /v1/embeddings answers for each input.
var Embedding = []float32{0.25, -0.5, 0.125}

// Request is one request the server received.
type Request struct {
	// Method is the HTTP method.
	Method string
	// Path is the URL path, e.g. /v1/chat/completions.
	Path string
	// Query is the raw query, without '?'.
	Query string
	// Header is the request's header, as received (Authorization,
	// X-Api-Key and every other).
	Header http.Header
	// Body is the request body.
	Body []byte
}

// JSON decodes the body as a JSON object, nil if it is not one.
func (r Request) JSON() map[string]any {
	var m map[string]any
	if json.Unmarshal(r.Body, &m) != nil {
		return nil
	}
	return m
}

// Server is a running fake provider.
type Server struct {
	// URL is http://127.0.0.1:port, without a trailing slash.
	URL string
	// srv is the httptest server.
	srv *httptest.Server
	// done is closed when the test ends, to release stalled handlers.
	done chan struct{}
	// mu guards requests, inFlight, inFlightMax and held.
	mu sync.Mutex
	// requests are the received requests, in order.
	requests []Request
	// inFlight counts the requests being answered, inFlightMax the most
	// at once.
	inFlight, inFlightMax int
	// held is closed by Release, which ends the holds of the "held"
	// requests received before it, and replaced by a new channel.
	held chan struct{}
}

// Start starts a server on 127.0.0.1, closed at t.Cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{done: make(chan struct{}), held: make(chan struct{})}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	t.Cleanup(func() {
		close(s.done)
		s.srv.CloseClientConnections()
		s.srv.Close()
	})
	return s
}

// Requests returns a copy of the requests received so far, in order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// InFlight returns the number of requests being answered now: received,
// and their handler not done (a stream's last event written).
func (s *Server) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFlight
}

// InFlightMax returns the most requests answered at once since Start.
func (s *Server) InFlightMax() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFlightMax
}

// Release lets the requests of the model "held" received so far finish
// their answers; those received later wait for the next Release.
func (s *Server) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.held)
	s.held = make(chan struct{})
}

// slowPause is the pause between the chunks of the model "slow".
const slowPause = 50 * time.Millisecond

// SlowStreamDuration is how long the model "slow-stream" takes to answer.
const SlowStreamDuration = 2 * time.Second

// request is what the handlers read from a request body.
type request struct {
	// Model chooses the behaviour.
	Model string `json:"model"`
	// Stream asks for server-sent events.
	Stream bool `json:"stream"`
	// StreamOptions is OpenAI's stream_options.
	StreamOptions struct {
		// IncludeUsage asks for the usage chunk.
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	// EncodingFormat is the embeddings' encoding_format: "float" (the
	// default) or "base64".
	EncodingFormat string `json:"encoding_format"`
}

// api tells the error shape and headers of an endpoint.
type api int

const (
	openAI api = iota
	anthropic
)

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeError(w, openAI, http.StatusBadRequest, "cannot read the request body: "+err.Error())
		return
	}
	s.mu.Lock()
	s.requests = append(s.requests, Request{
		Method: r.Method,
		Path:   r.URL.Path,
		Query:  r.URL.RawQuery,
		Header: r.Header.Clone(),
		Body:   body,
	})
	s.inFlight++
	s.inFlightMax = max(s.inFlightMax, s.inFlight)
	held := s.held
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}()

	var handle func(*exchange)
	which := openAI
	switch r.URL.Path {
	case "/v1/chat/completions":
		handle = (*exchange).chat
	case "/openai/v1/chat/completions":
		handle = (*exchange).groqChat
	case "/v1/responses":
		handle = (*exchange).responses
	case "/v1/embeddings":
		handle = (*exchange).embeddings
	case "/v1/messages":
		handle, which = (*exchange).messages, anthropic
	case "/v1/messages/count_tokens":
		handle, which = (*exchange).countTokens, anthropic
	}
	if handle == nil || r.Method != http.MethodPost {
		// OpenAI's answer to an unknown route.
		writeError(w, openAI, http.StatusNotFound, fmt.Sprintf("Invalid URL (%s %s)", r.Method, r.URL.Path))
		return
	}
	var req request
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, which, http.StatusBadRequest, "cannot parse the request body as JSON: "+err.Error())
		return
	}
	x := &exchange{s: s, w: w, r: r, body: body, req: req, api: which, held: held}
	x.setHeaders()
	switch req.Model {
	case "error-400":
		writeError(w, which, http.StatusBadRequest, "the fake provider refuses model error-400")
		return
	case "error-429":
		w.Header().Set("Retry-After", "1")
		writeError(w, which, http.StatusTooManyRequests, "Rate limit reached for model error-429 (fake provider)")
		return
	case "error-500":
		writeError(w, which, http.StatusInternalServerError, "The fake provider had an error while processing your request")
		return
	}
	handle(x)
}

// errorTypes are the providers' error types by status.
var errorTypes = map[api]map[int]string{
	openAI: {
		http.StatusBadRequest:          "invalid_request_error",
		http.StatusNotFound:            "invalid_request_error",
		http.StatusTooManyRequests:     "requests",
		http.StatusInternalServerError: "server_error",
	},
	anthropic: {
		http.StatusBadRequest:          "invalid_request_error",
		http.StatusNotFound:            "not_found_error",
		http.StatusTooManyRequests:     "rate_limit_error",
		http.StatusInternalServerError: "api_error",
	},
}

// writeError answers status with the provider's error JSON: OpenAI's
// {"error":{"message","type","param","code"}}, Anthropic's
// {"type":"error","error":{"type","message"}}.
func writeError(w http.ResponseWriter, which api, status int, message string) {
	typ := errorTypes[which][status]
	var v any
	if which == anthropic {
		v = map[string]any{
			"type":       "error",
			"error":      map[string]any{"type": typ, "message": message},
			"request_id": "req_fake",
		}
	} else {
		var code any
		switch status {
		case http.StatusTooManyRequests:
			code = "rate_limit_exceeded"
		case http.StatusNotFound:
			code = "unknown_url"
		}
		v = map[string]any{"error": map[string]any{"message": message, "type": typ, "param": nil, "code": code}}
	}
	writeJSON(w, status, v)
}

// writeJSON answers status with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic("upstreamtest: cannot marshal an answer: " + err.Error())
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

// exchange is one request being answered.
type exchange struct {
	// s is the server.
	s *Server
	// w and r are the request's.
	w http.ResponseWriter
	r *http.Request
	// body is the request body.
	body []byte
	// req is the decoded body.
	req request
	// api tells the headers and error shape.
	api api
	// held is closed when a "held" request may finish.
	held <-chan struct{}
}

// setHeaders sets the provider's usual response headers: a request id and
// rate-limit state.
func (x *exchange) setHeaders() {
	h := x.w.Header()
	if x.api == anthropic {
		h.Set("Request-Id", "req_fake")
		h.Set("Anthropic-Ratelimit-Requests-Limit", "50")
		h.Set("Anthropic-Ratelimit-Requests-Remaining", "49")
		h.Set("Anthropic-Ratelimit-Requests-Reset", "2026-12-01T00:00:01Z")
		h.Set("Anthropic-Ratelimit-Tokens-Limit", "50000")
		h.Set("Anthropic-Ratelimit-Tokens-Remaining", "49000")
		h.Set("Anthropic-Ratelimit-Tokens-Reset", "2026-12-01T00:00:01Z")
		if x.req.Model == "exhausted" {
			h.Set("Anthropic-Ratelimit-Requests-Limit", "1")
			h.Set("Anthropic-Ratelimit-Requests-Remaining", "0")
			h.Set("Anthropic-Ratelimit-Requests-Reset", time.Now().Add(ExhaustedReset).UTC().Format(time.RFC3339))
		}
		return
	}
	h.Set("X-Request-Id", "req_fake")
	h.Set("X-Ratelimit-Limit-Requests", "14400")
	h.Set("X-Ratelimit-Remaining-Requests", "14399")
	h.Set("X-Ratelimit-Reset-Requests", "6s")
	h.Set("X-Ratelimit-Limit-Tokens", "6000")
	h.Set("X-Ratelimit-Remaining-Tokens", "5982")
	h.Set("X-Ratelimit-Reset-Tokens", "180ms")
	if x.req.Model == "exhausted" {
		h.Set("X-Ratelimit-Limit-Requests", "1")
		h.Set("X-Ratelimit-Remaining-Requests", "0")
		h.Set("X-Ratelimit-Reset-Requests", ExhaustedReset.String())
	}
}

// answerJSON answers a non-streaming request with v, after the model's
// behaviour: cut closes the connection, stall waits for the client to go,
// slow waits 50 ms.
func (x *exchange) answerJSON(v any) {
	switch x.req.Model {
	case "cut":
		x.hangUp()
		return
	case "stall":
		x.stall()
		return
	case "slow":
		if !x.pause(slowPause) {
			return
		}
	case "slow-stream":
		if !x.pause(SlowStreamDuration) {
			return
		}
	case "held":
		if !x.hold() {
			return
		}
	}
	writeJSON(x.w, http.StatusOK, v)
}

// pause waits d and tells whether the answer goes on: false if the client
// went away or the test ended meanwhile.
func (x *exchange) pause(d time.Duration) bool {
	select {
	case <-time.After(d):
		return true
	case <-x.r.Context().Done():
	case <-x.s.done:
	}
	return false
}

// hold waits for Release and tells whether the answer goes on, as pause.
func (x *exchange) hold() bool {
	select {
	case <-x.held:
		return true
	case <-x.r.Context().Done():
	case <-x.s.done:
	}
	return false
}

// stall blocks until the client goes away or the test ends.
func (x *exchange) stall() {
	select {
	case <-x.r.Context().Done():
	case <-x.s.done:
	}
}

// hangUp closes the connection under the answer, whatever was written:
// the client sees a body (or an answer) cut short.
func (x *exchange) hangUp() {
	conn, _, err := http.NewResponseController(x.w).Hijack()
	if err != nil {
		// No hijacking (HTTP/2): abort the stream instead.
		panic(http.ErrAbortHandler)
	}
	conn.Close()
}

// event is one server-sent event.
type event struct {
	// name is the event: line, empty for none (OpenAI chat).
	name string
	// data is the data: line, JSON or [DONE].
	data []byte
	// content marks a chunk carrying part of the answer (text or tool
	// arguments), which "cut" and "stall" count.
	content bool
}

// stream writes events as server-sent events, flushing each, after the
// model's behaviour: cut hangs up after the second content event, stall
// stops after the first until the client goes away, slow pauses 50 ms
// before each event but the first, slow-stream spreads the events over
// SlowStreamDuration, held waits for Release after the first content
// event.
func (x *exchange) stream(events []event) {
	h := x.w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("Connection", "keep-alive")
	x.w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(x.w)
	if rc.Flush() != nil {
		panic("upstreamtest: cannot flush an event stream")
	}
	contents := 0
	var buf bytes.Buffer
	for i, e := range events {
		if i > 0 {
			switch x.req.Model {
			case "slow":
				if !x.pause(slowPause) {
					return
				}
			case "slow-stream":
				if !x.pause(SlowStreamDuration / time.Duration(len(events)-1)) {
					return
				}
			}
		}
		buf.Reset()
		if e.name != "" {
			fmt.Fprintf(&buf, "event: %s\n", e.name)
		}
		fmt.Fprintf(&buf, "data: %s\n\n", e.data)
		if _, err := x.w.Write(buf.Bytes()); err != nil {
			return // the client went away
		}
		if rc.Flush() != nil {
			return
		}
		if e.content {
			contents++
		}
		switch {
		case x.req.Model == "cut" && contents == 2:
			x.hangUp()
			return
		case x.req.Model == "stall" && contents == 1:
			x.stall()
			return
		case x.req.Model == "held" && contents == 1 && e.content:
			if !x.hold() {
				return
			}
		}
	}
}

// mustJSON marshals v.
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("upstreamtest: cannot marshal an event: " + err.Error())
	}
	return b
}

// created is the fixed creation time of every answer, in Unix seconds.
const created = 1764547200
