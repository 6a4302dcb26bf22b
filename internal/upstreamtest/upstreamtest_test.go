package upstreamtest

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

// sse is one server-sent event read back.
type sse struct {
	name, data string
}

// post sends body to path and returns the answer.
func post(t *testing.T, ctx context.Context, s *Server, path, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer sk-test")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %s", path, err)
	}
	return resp
}

// readEvents reads resp's body as server-sent events until its end or an
// error, which it returns with the events read so far.
func readEvents(resp *http.Response) ([]sse, error) {
	defer resp.Body.Close()
	var out []sse
	var cur sse
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			out = append(out, cur)
			cur = sse{}
		case strings.HasPrefix(line, "event: "):
			cur.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			cur.data = strings.TrimPrefix(line, "data: ")
		}
	}
	return out, sc.Err()
}

// stream posts body to path and returns its events, failing on a read
// error or a status other than 200 or a content type other than SSE.
func stream(t *testing.T, s *Server, path, body string) []sse {
	t.Helper()
	resp := post(t, context.Background(), s, path, body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("content type %q", ct)
	}
	events, err := readEvents(resp)
	if err != nil {
		t.Fatalf("reading the stream: %s", err)
	}
	return events
}

// decode answers the JSON of resp with its status.
func decode(t *testing.T, resp *http.Response) (int, map[string]any) {
	t.Helper()
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("answer %d is not JSON: %s", resp.StatusCode, err)
	}
	return resp.StatusCode, m
}

// obj decodes an event's data.
func obj(t *testing.T, e sse) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(e.data), &m); err != nil {
		t.Fatalf("event %q: data is not JSON: %s: %s", e.name, err, e.data)
	}
	return m
}

// at follows a path of keys and indexes into v.
func at(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[k]
		case int:
			l, _ := v.([]any)
			if k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

// num is at as an int, -1 when not a number.
func num(v any, path ...any) int {
	f, ok := at(v, path...).(float64)
	if !ok {
		return -1
	}
	return int(f)
}

// wantUsage checks the integer fields of a usage object.
func wantUsage(t *testing.T, where string, usage any, want map[string]int) {
	t.Helper()
	if usage == nil {
		t.Fatalf("%s: no usage", where)
	}
	for path, n := range want {
		var keys []any
		for _, k := range strings.Split(path, ".") {
			keys = append(keys, k)
		}
		if got := num(usage, keys...); got != n {
			t.Errorf("%s: usage.%s = %d, want %d (usage %v)", where, path, got, n, usage)
		}
	}
}

var chatWant = map[string]int{
	"prompt_tokens":                              11,
	"completion_tokens":                          7,
	"total_tokens":                               18,
	"prompt_tokens_details.cached_tokens":        3,
	"completion_tokens_details.reasoning_tokens": 2,
}

var groqWant = map[string]int{"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}

func TestChatJSON(t *testing.T) {
	s := Start(t)
	for _, path := range []string{"/v1/chat/completions", "/openai/v1/chat/completions"} {
		status, m := decode(t, post(t, context.Background(), s, path, `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`))
		if status != 200 || at(m, "object") != "chat.completion" || at(m, "model") != "gpt-4o" {
			t.Fatalf("%s: %d %v", path, status, m)
		}
		if got := at(m, "choices", 0, "message", "content"); got != Text {
			t.Errorf("%s: content %v", path, got)
		}
		if got := at(m, "choices", 0, "finish_reason"); got != "stop" {
			t.Errorf("%s: finish_reason %v", path, got)
		}
		want := chatWant
		if strings.HasPrefix(path, "/openai/") {
			want = groqWant
			if at(m, "usage", "queue_time") != GroqTimes[0] {
				t.Errorf("groq usage without queue_time: %v", at(m, "usage"))
			}
		}
		wantUsage(t, path, at(m, "usage"), want)
	}
}

// chatText concatenates the content deltas of chat chunks.
func chatText(t *testing.T, events []sse) string {
	var b strings.Builder
	for _, e := range events {
		if e.data == "[DONE]" {
			continue
		}
		if c, ok := at(obj(t, e), "choices", 0, "delta", "content").(string); ok {
			b.WriteString(c)
		}
	}
	return b.String()
}

func TestChatStream(t *testing.T) {
	s := Start(t)
	events := stream(t, s, "/v1/chat/completions", `{"model":"gpt-4o","stream":true}`)
	// role, Hello, world, finish, [DONE]
	if len(events) != 5 || events[4].data != "[DONE]" {
		t.Fatalf("events %v", events)
	}
	if got := chatText(t, events); got != Text {
		t.Errorf("text %q", got)
	}
	for i, e := range events[:4] {
		m := obj(t, e)
		if _, has := m["usage"]; has {
			t.Errorf("chunk %d has usage without include_usage: %s", i, e.data)
		}
		if e.name != "" {
			t.Errorf("chunk %d has an event name %q", i, e.name)
		}
		if at(m, "object") != "chat.completion.chunk" {
			t.Errorf("chunk %d: %s", i, e.data)
		}
	}
	if got := at(obj(t, events[3]), "choices", 0, "finish_reason"); got != "stop" {
		t.Errorf("finish_reason %v", got)
	}
}

func TestChatStreamIncludeUsage(t *testing.T) {
	s := Start(t)
	events := stream(t, s, "/v1/chat/completions", `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}`)
	// role, Hello, world, finish, usage, [DONE]
	if len(events) != 6 || events[5].data != "[DONE]" {
		t.Fatalf("events %v", events)
	}
	for i, e := range events[:4] {
		m := obj(t, e)
		if u, has := m["usage"]; !has || u != nil {
			t.Errorf("chunk %d: usage should be null: %s", i, e.data)
		}
	}
	last := obj(t, events[4])
	if c, ok := last["choices"].([]any); !ok || len(c) != 0 {
		t.Errorf("usage chunk's choices should be []: %s", events[4].data)
	}
	wantUsage(t, "usage chunk", last["usage"], chatWant)
}

func TestGroqStream(t *testing.T) {
	s := Start(t)
	t.Run("without include_usage", func(t *testing.T) {
		events := stream(t, s, "/openai/v1/chat/completions", `{"model":"llama-3.1-70b-versatile","stream":true}`)
		if len(events) != 5 || events[4].data != "[DONE]" {
			t.Fatalf("events %v", events)
		}
		if got := chatText(t, events); got != Text {
			t.Errorf("text %q", got)
		}
		for i, e := range events[:3] {
			if u := at(obj(t, e), "x_groq", "usage"); u != nil {
				t.Errorf("chunk %d has x_groq.usage: %s", i, e.data)
			}
		}
		last := obj(t, events[3])
		if at(last, "choices", 0, "finish_reason") != "stop" {
			t.Errorf("last chunk %s", events[3].data)
		}
		if _, has := last["usage"]; has {
			t.Errorf("usage outside x_groq without include_usage: %s", events[3].data)
		}
		wantUsage(t, "x_groq", at(last, "x_groq", "usage"), groqWant)
		if at(last, "x_groq", "usage", "total_time") != GroqTimes[3] {
			t.Errorf("x_groq.usage.total_time: %s", events[3].data)
		}
	})
	t.Run("with include_usage", func(t *testing.T) {
		events := stream(t, s, "/openai/v1/chat/completions", `{"model":"llama-3.1-70b-versatile","stream":true,"stream_options":{"include_usage":true}}`)
		if len(events) != 6 {
			t.Fatalf("events %v", events)
		}
		wantUsage(t, "finish chunk x_groq", at(obj(t, events[3]), "x_groq", "usage"), groqWant)
		wantUsage(t, "finish chunk", at(obj(t, events[3]), "usage"), groqWant)
		wantUsage(t, "usage chunk", at(obj(t, events[4]), "usage"), groqWant)
		if c := at(obj(t, events[4]), "choices").([]any); len(c) != 0 {
			t.Errorf("usage chunk %s", events[4].data)
		}
	})
}

func TestChatTool(t *testing.T) {
	s := Start(t)
	status, m := decode(t, post(t, context.Background(), s, "/v1/chat/completions", `{"model":"tool"}`))
	if status != 200 || at(m, "choices", 0, "finish_reason") != "tool_calls" ||
		at(m, "choices", 0, "message", "tool_calls", 0, "function", "name") != ToolName ||
		at(m, "choices", 0, "message", "tool_calls", 0, "function", "arguments") != ToolArguments {
		t.Fatalf("%d %v", status, m)
	}
	events := stream(t, s, "/v1/chat/completions", `{"model":"tool","stream":true,"stream_options":{"include_usage":true}}`)
	var args strings.Builder
	for _, e := range events[:len(events)-1] {
		if a, ok := at(obj(t, e), "choices", 0, "delta", "tool_calls", 0, "function", "arguments").(string); ok {
			args.WriteString(a)
		}
	}
	if args.String() != ToolArguments {
		t.Errorf("arguments %q", args.String())
	}
	first := obj(t, events[0])
	if at(first, "choices", 0, "delta", "tool_calls", 0, "function", "name") != ToolName ||
		at(first, "choices", 0, "delta", "tool_calls", 0, "id") != "call_fake1" {
		t.Errorf("first chunk %s", events[0].data)
	}
	if at(obj(t, events[len(events)-3]), "choices", 0, "finish_reason") != "tool_calls" {
		t.Errorf("finish chunk %s", events[len(events)-3].data)
	}
	wantUsage(t, "usage chunk", at(obj(t, events[len(events)-2]), "usage"), chatWant)
}

var responsesWant = map[string]int{
	"input_tokens":                           11,
	"input_tokens_details.cached_tokens":     3,
	"output_tokens":                          7,
	"output_tokens_details.reasoning_tokens": 2,
	"total_tokens":                           18,
}

func TestResponses(t *testing.T) {
	s := Start(t)
	status, m := decode(t, post(t, context.Background(), s, "/v1/responses", `{"model":"gpt-4o","input":"hi"}`))
	if status != 200 || at(m, "object") != "response" || at(m, "status") != "completed" ||
		at(m, "output", 0, "content", 0, "text") != Text {
		t.Fatalf("%d %v", status, m)
	}
	wantUsage(t, "responses", at(m, "usage"), responsesWant)

	events := stream(t, s, "/v1/responses", `{"model":"gpt-4o","input":"hi","stream":true}`)
	var text strings.Builder
	for i, e := range events {
		m := obj(t, e)
		if at(m, "type") != e.name || num(m, "sequence_number") != i {
			t.Errorf("event %d %q: %s", i, e.name, e.data)
		}
		if e.name == "response.output_text.delta" {
			text.WriteString(at(m, "delta").(string))
		}
		if e.name != "response.completed" && at(m, "response", "usage") != nil {
			t.Errorf("event %d %q has usage", i, e.name)
		}
	}
	if text.String() != Text {
		t.Errorf("text %q", text.String())
	}
	last := events[len(events)-1]
	if last.name != "response.completed" {
		t.Fatalf("last event %q", last.name)
	}
	wantUsage(t, "response.completed", at(obj(t, last), "response", "usage"), responsesWant)
	if events[0].name != "response.created" {
		t.Errorf("first event %q", events[0].name)
	}

	events = stream(t, s, "/v1/responses", `{"model":"tool","input":"hi","stream":true}`)
	var args strings.Builder
	for _, e := range events {
		if e.name == "response.function_call_arguments.delta" {
			args.WriteString(at(obj(t, e), "delta").(string))
		}
	}
	if args.String() != ToolArguments || at(obj(t, events[len(events)-1]), "response", "output", 0, "name") != ToolName {
		t.Errorf("tool stream: arguments %q, %v", args.String(), events[len(events)-1])
	}
}

func TestEmbeddings(t *testing.T) {
	s := Start(t)
	status, m := decode(t, post(t, context.Background(), s, "/v1/embeddings", `{"model":"text-embedding-3-small","input":["a","b"]}`))
	if status != 200 || len(at(m, "data").([]any)) != 2 || !reflect.DeepEqual(at(m, "data", 1, "embedding"), []any{0.25, -0.5, 0.125}) {
		t.Fatalf("%d %v", status, m)
	}
	wantUsage(t, "embeddings", at(m, "usage"), map[string]int{"prompt_tokens": 5, "total_tokens": 5})

	_, m = decode(t, post(t, context.Background(), s, "/v1/embeddings", `{"model":"text-embedding-3-small","input":"a","encoding_format":"base64"}`))
	b, err := base64.StdEncoding.DecodeString(at(m, "data", 0, "embedding").(string))
	if err != nil || len(b) != 12 {
		t.Fatalf("base64 embedding %v: %v", at(m, "data", 0, "embedding"), err)
	}
	for i, want := range Embedding {
		if got := math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])); got != want {
			t.Errorf("element %d = %v, want %v", i, got, want)
		}
	}
}

var anthropicWant = map[string]int{
	"input_tokens":                10,
	"cache_read_input_tokens":     4,
	"cache_creation_input_tokens": 2,
	"output_tokens":               9,
}

func TestMessagesJSON(t *testing.T) {
	s := Start(t)
	status, m := decode(t, post(t, context.Background(), s, "/v1/messages", `{"model":"claude-3-opus","max_tokens":10,"messages":[]}`))
	if status != 200 || at(m, "type") != "message" || at(m, "content", 0, "text") != Text || at(m, "stop_reason") != "end_turn" {
		t.Fatalf("%d %v", status, m)
	}
	wantUsage(t, "messages", at(m, "usage"), anthropicWant)

	status, m = decode(t, post(t, context.Background(), s, "/v1/messages", `{"model":"tool","max_tokens":10,"messages":[]}`))
	if status != 200 || at(m, "content", 0, "type") != "tool_use" || at(m, "content", 0, "name") != ToolName ||
		at(m, "content", 0, "input", "city") != "Paris" || at(m, "stop_reason") != "tool_use" {
		t.Fatalf("tool: %d %v", status, m)
	}

	status, m = decode(t, post(t, context.Background(), s, "/v1/messages/count_tokens", `{"model":"claude-3-opus","messages":[]}`))
	if status != 200 || num(m, "input_tokens") != 10 {
		t.Fatalf("count_tokens: %d %v", status, m)
	}
}

func TestMessagesStream(t *testing.T) {
	s := Start(t)
	for _, model := range []string{"claude-3-opus", "tool"} {
		events := stream(t, s, "/v1/messages", `{"model":"`+model+`","max_tokens":10,"stream":true}`)
		var names []string
		var text strings.Builder
		var outputs []int
		for _, e := range events {
			names = append(names, e.name)
			m := obj(t, e)
			if at(m, "type") != e.name {
				t.Errorf("%s: event %q has type %v", model, e.name, at(m, "type"))
			}
			switch e.name {
			case "message_start":
				u := at(m, "message", "usage")
				wantUsage(t, "message_start", u, map[string]int{"input_tokens": 10, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 2})
				outputs = append(outputs, num(u, "output_tokens"))
			case "content_block_delta":
				if model == "tool" {
					text.WriteString(at(m, "delta", "partial_json").(string))
				} else {
					text.WriteString(at(m, "delta", "text").(string))
				}
			case "message_delta":
				outputs = append(outputs, num(m, "usage", "output_tokens"))
			}
		}
		wantNames := []string{"message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
			"content_block_stop", "message_delta", "message_delta", "message_stop"}
		if !reflect.DeepEqual(names, wantNames) {
			t.Errorf("%s: events %v", model, names)
		}
		if !reflect.DeepEqual(outputs, AnthropicOutputSteps) {
			t.Errorf("%s: output_tokens %v, want %v", model, outputs, AnthropicOutputSteps)
		}
		final := obj(t, events[7])
		wantUsage(t, "last message_delta", at(final, "usage"), anthropicWant)
		want, wantStop := Text, "end_turn"
		if model == "tool" {
			want, wantStop = ToolArguments, "tool_use"
			if at(obj(t, events[1]), "content_block", "type") != "tool_use" {
				t.Errorf("tool block %s", events[1].data)
			}
		}
		if text.String() != want {
			t.Errorf("%s: streamed %q", model, text.String())
		}
		if at(final, "delta", "stop_reason") != wantStop || at(obj(t, events[6]), "delta", "stop_reason") != nil {
			t.Errorf("%s: stop reasons %s / %s", model, events[6].data, events[7].data)
		}
	}
}

func TestErrors(t *testing.T) {
	s := Start(t)
	for _, tc := range []struct {
		path, model string
		status      int
		typ         string
	}{
		{"/v1/chat/completions", "error-400", 400, "invalid_request_error"},
		{"/v1/chat/completions", "error-429", 429, "requests"},
		{"/v1/chat/completions", "error-500", 500, "server_error"},
		{"/openai/v1/chat/completions", "error-429", 429, "requests"},
		{"/v1/responses", "error-500", 500, "server_error"},
		{"/v1/embeddings", "error-400", 400, "invalid_request_error"},
		{"/v1/messages", "error-400", 400, "invalid_request_error"},
		{"/v1/messages", "error-429", 429, "rate_limit_error"},
		{"/v1/messages", "error-500", 500, "api_error"},
		{"/v1/messages/count_tokens", "error-429", 429, "rate_limit_error"},
	} {
		for _, streamed := range []bool{false, true} {
			body := `{"model":"` + tc.model + `","stream":` + map[bool]string{false: "false", true: "true"}[streamed] + `}`
			resp := post(t, context.Background(), s, tc.path, body)
			retry := resp.Header.Get("Retry-After")
			status, m := decode(t, resp)
			if status != tc.status {
				t.Errorf("%s %s: status %d", tc.path, body, status)
			}
			if tc.status == 429 && retry == "" {
				t.Errorf("%s %s: 429 without retry-after", tc.path, body)
			}
			if strings.HasPrefix(tc.path, "/v1/messages") {
				if at(m, "type") != "error" || at(m, "error", "type") != tc.typ || at(m, "error", "message") == nil {
					t.Errorf("%s %s: %v", tc.path, body, m)
				}
			} else if at(m, "error", "type") != tc.typ || at(m, "error", "message") == nil {
				t.Errorf("%s %s: %v", tc.path, body, m)
			}
		}
	}
	status, m := decode(t, post(t, context.Background(), s, "/v1/nothing", `{}`))
	if status != 404 || at(m, "error", "type") != "invalid_request_error" || at(m, "error", "message") != "Invalid URL (POST /v1/nothing)" {
		t.Errorf("unknown route: %d %v", status, m)
	}
	status, _ = decode(t, post(t, context.Background(), s, "/v1/chat/completions", `not json`))
	if status != 400 {
		t.Errorf("bad JSON: %d", status)
	}
}

func TestCut(t *testing.T) {
	s := Start(t)
	// message_start's input counts are all a cut Anthropic stream has.
	for _, tc := range []struct{ path, body string }{
		{"/v1/chat/completions", `{"model":"cut","stream":true,"stream_options":{"include_usage":true}}`},
		{"/openai/v1/chat/completions", `{"model":"cut","stream":true}`},
		{"/v1/responses", `{"model":"cut","stream":true}`},
		{"/v1/messages", `{"model":"cut","stream":true}`},
	} {
		resp := post(t, context.Background(), s, tc.path, tc.body)
		events, err := readEvents(resp)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("%s: read error %v, want an unexpected EOF", tc.path, err)
		}
		var content int
		for _, e := range events {
			if e.data == "[DONE]" || e.name == "message_stop" || e.name == "response.completed" || e.name == "message_delta" ||
				(e.name != "message_start" && strings.Contains(e.data, `"usage":{`)) || strings.Contains(e.data, `"finish_reason":"stop"`) {
				t.Errorf("%s: the cut stream has its end: %s %s", tc.path, e.name, e.data)
			}
			if strings.Contains(e.data, `"Hello"`) || strings.Contains(e.data, `" world"`) {
				content++
			}
		}
		if content != 2 {
			t.Errorf("%s: %d content chunks before the cut, want 2: %v", tc.path, content, events)
		}
	}
	// A JSON request gets no answer at all.
	req, _ := http.NewRequest(http.MethodPost, s.URL+"/v1/messages", strings.NewReader(`{"model":"cut"}`))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Errorf("JSON cut: got an answer %d", resp.StatusCode)
	}
}

func TestStall(t *testing.T) {
	s := Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp := post(t, ctx, s, "/v1/messages", `{"model":"stall","stream":true}`)
	defer resp.Body.Close()
	// The first content chunk arrives (flushed) while the server stalls.
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var got []string
	timeout := time.After(10 * time.Second)
	for len(got) == 0 || !strings.Contains(got[len(got)-1], "Hello") {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("stream ended: %v", got)
			}
			got = append(got, l)
		case <-timeout:
			t.Fatalf("no content chunk: %v", got)
		}
	}
	select {
	case l, ok := <-lines:
		if ok && l != "" {
			t.Fatalf("more after the first chunk: %q", l)
		}
	case <-time.After(200 * time.Millisecond):
	}
	select {
	case l, ok := <-lines:
		if ok {
			t.Fatalf("more after the first chunk: %q", l)
		}
	case <-time.After(200 * time.Millisecond):
	}
	cancel() // the handler returns when the client goes; Cleanup would hang otherwise
}

func TestSlow(t *testing.T) {
	s := Start(t)
	resp := post(t, context.Background(), s, "/v1/chat/completions", `{"model":"slow","stream":true}`)
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var times []time.Time
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: ") {
			times = append(times, time.Now())
		}
	}
	if len(times) != 5 {
		t.Fatalf("%d chunks", len(times))
	}
	for i := 1; i < len(times); i++ {
		if d := times[i].Sub(times[i-1]); d < 40*time.Millisecond {
			t.Errorf("chunk %d came %s after the previous one", i, d)
		}
	}
}

func TestRequests(t *testing.T) {
	s := Start(t)
	decode(t, post(t, context.Background(), s, "/v1/chat/completions", `{"model":"gpt-4o","user":"u1"}`))
	req, _ := http.NewRequest(http.MethodPost, s.URL+"/v1/messages?beta=true", strings.NewReader(`{"model":"claude"}`))
	req.Header.Set("X-Api-Key", "sk-ant-test")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	decode(t, resp)
	got := s.Requests()
	if len(got) != 2 {
		t.Fatalf("%d requests", len(got))
	}
	if got[0].Method != "POST" || got[0].Path != "/v1/chat/completions" || got[0].Header.Get("Authorization") != "Bearer sk-test" ||
		got[0].JSON()["user"] != "u1" {
		t.Errorf("first request %+v", got[0])
	}
	if got[1].Path != "/v1/messages" || got[1].Query != "beta=true" || got[1].Header.Get("X-Api-Key") != "sk-ant-test" ||
		string(got[1].Body) != `{"model":"claude"}` {
		t.Errorf("second request %+v", got[1])
	}
}

// firstContent reads resp's body up to the line holding "Hello" (the
// first content chunk) and returns a reader of the rest.
func firstContent(t *testing.T, resp *http.Response) *bufio.Reader {
	t.Helper()
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("no content chunk before %v", err)
		}
		if strings.Contains(line, "Hello") {
			return br
		}
	}
}

// TestSlowStream: "slow-stream" answers the normal stream, counted in
// flight until its last event, and a JSON answer too.
func TestSlowStream(t *testing.T) {
	s := Start(t)
	resp := post(t, context.Background(), s, "/v1/chat/completions", `{"model":"slow-stream","stream":true}`)
	rest := firstContent(t, resp)
	if n := s.InFlight(); n != 1 {
		t.Fatalf("InFlight = %d during the stream, want 1", n)
	}
	b, err := io.ReadAll(rest)
	resp.Body.Close()
	if err != nil || !strings.Contains(string(b), `" world"`) || !strings.HasSuffix(string(b), "data: [DONE]\n\n") {
		t.Fatalf("the rest of the stream: %v %q", err, b)
	}
	if n := s.InFlight(); n != 0 {
		t.Fatalf("InFlight = %d after the stream, want 0", n)
	}
	code, got := decode(t, post(t, context.Background(), s, "/v1/chat/completions", `{"model":"slow-stream"}`))
	if code != http.StatusOK || got["model"] != "slow-stream" {
		t.Fatalf("JSON answer %v", got)
	}
	if n := s.InFlightMax(); n != 1 {
		t.Fatalf("InFlightMax = %d after calls one at a time, want 1", n)
	}
}

// TestHeld: "held" streams stop after their first content chunk until
// Release, counted in flight meanwhile; a request after Release waits for
// the next; a JSON request waits too.
func TestHeld(t *testing.T) {
	s := Start(t)
	var rests []*bufio.Reader
	for range 2 {
		resp := post(t, context.Background(), s, "/v1/messages", `{"model":"held","stream":true}`)
		defer resp.Body.Close()
		rests = append(rests, firstContent(t, resp))
	}
	if n := s.InFlight(); n != 2 {
		t.Fatalf("InFlight = %d with two streams held, want 2", n)
	}
	jsonDone := make(chan map[string]any, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, s.URL+"/v1/chat/completions", strings.NewReader(`{"model":"held"}`))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			jsonDone <- nil
			return
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		jsonDone <- m
	}()
	waitInFlight(t, s, 3)
	s.Release()
	for i, rest := range rests {
		b, err := io.ReadAll(rest)
		if err != nil || !strings.Contains(string(b), "message_stop") {
			t.Fatalf("stream %d after Release: %v %q", i, err, b)
		}
	}
	if m := <-jsonDone; m == nil || m["model"] != "held" {
		t.Fatalf("JSON answer after Release: %v", m)
	}
	// A request after the Release is held until the next.
	resp := post(t, context.Background(), s, "/v1/chat/completions", `{"model":"held","stream":true}`)
	defer resp.Body.Close()
	rest := firstContent(t, resp)
	ended := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(rest)
		ended <- string(b)
	}()
	select {
	case b := <-ended:
		t.Fatalf("a request after Release was not held: %q", b)
	case <-time.After(200 * time.Millisecond):
	}
	s.Release()
	if b := <-ended; !strings.HasSuffix(b, "data: [DONE]\n\n") {
		t.Fatalf("the second held stream after the second Release: %q", b)
	}
	waitInFlight(t, s, 0)
	if most := s.InFlightMax(); most != 3 {
		t.Fatalf("InFlightMax %d after all ended, want 3", most)
	}
}

// waitInFlight waits until s answers n requests at once.
func waitInFlight(t *testing.T, s *Server, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.InFlight() != n {
		if time.Now().After(deadline) {
			t.Fatalf("InFlight = %d, want %d", s.InFlight(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
