package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// usage is what a call used, as the proxy read it from the upstream.
type usage struct {
	prompt, completion, cached, cacheWrite, reasoning int64
	// model is the model the upstream answered with, when it says.
	model string
}

// meter wraps an upstream response's body: it relays it unchanged (but
// for the usage chunk of a stream whose usage only the proxy asked for),
// reads the usage from it, and records the call when the body ends,
// fails or is closed, whichever comes first.
func (p *Proxy) meter(ctx context.Context, resp *http.Response, c *call) io.ReadCloser {
	m := &meteredBody{p: p, c: c, ctx: ctx, src: resp.Body, status: resp.StatusCode,
		sse: strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")}
	m.idle = time.AfterFunc(p.opts.IdleTimeout, func() {
		m.timedOut.Store(true)
		_ = m.src.Close()
	})
	m.idle.Stop() // runs only while a read waits on the upstream
	return m
}

// meteredBody is a response body on its way to the client.
type meteredBody struct {
	p      *Proxy
	c      *call
	ctx    context.Context
	src    io.ReadCloser
	status int
	sse    bool
	// idle closes src when the upstream says nothing for IdleTimeout.
	idle     *time.Timer
	timedOut atomic.Bool

	// body keeps a JSON answer (bounded) to read its usage at the end.
	body bytes.Buffer
	// pending is a stream's bytes past its last complete event; out the
	// events ready for the client.
	pending, out []byte
	// buf is what src is read into.
	buf     []byte
	eof     bool
	readErr error

	u      usage
	exact  bool
	chars  int64
	errTyp string
	// anthropic holds the Messages stream's counts, each kept as last
	// reported: message_delta's are cumulative.
	anthropic struct{ input, cacheRead, cacheWrite, output *int64 }

	once sync.Once
}

// maxKeptBody bounds the JSON answer kept to read usage from.
const maxKeptBody = 16 << 20

func (m *meteredBody) Read(b []byte) (int, error) {
	if !m.sse {
		m.idle.Reset(m.p.opts.IdleTimeout) // only while waiting on the upstream, not on a slow client
		n, err := m.src.Read(b)
		m.idle.Stop()
		if m.body.Len() < maxKeptBody {
			m.body.Write(b[:n])
		}
		if err != nil {
			m.finish(err)
		}
		return n, err
	}
	if m.buf == nil {
		m.buf = make([]byte, 8<<10) // once a body: a buffer per Read escaped, 32 KiB a chunk
	}
	for len(m.out) == 0 {
		if m.eof || m.readErr != nil {
			err := m.readErr
			if err == nil {
				err = io.EOF
			}
			m.finish(err)
			return 0, err
		}
		m.idle.Reset(m.p.opts.IdleTimeout)
		n, err := m.src.Read(m.buf)
		m.idle.Stop()
		m.pending = append(m.pending, m.buf[:n]...)
		m.events()
		if err != nil {
			if errors.Is(err, io.EOF) {
				m.eof = true
			} else {
				m.readErr = err
			}
			// A last event without its blank line is read too; what is
			// left of an event cut short still goes to the client.
			if len(bytes.TrimSpace(m.pending)) > 0 && !m.readEvent(m.pending) {
				m.out = append(m.out, m.pending...)
			}
			m.pending = m.pending[:0]
		}
	}
	n := copy(b, m.out)
	m.out = m.out[n:]
	if len(m.out) == 0 {
		m.out = nil
	}
	return n, nil
}

func (m *meteredBody) Close() error {
	err := m.src.Close()
	m.finish(nil)
	return err
}

// events moves the complete events of pending to out, reading each.
func (m *meteredBody) events() {
	for {
		i := bytes.Index(m.pending, []byte("\n\n"))
		sep := 2
		if j := bytes.Index(m.pending, []byte("\r\n\r\n")); j >= 0 && (i < 0 || j < i) {
			i, sep = j, 4
		}
		if i < 0 {
			return
		}
		ev := m.pending[:i+sep]
		if !m.readEvent(ev) {
			m.out = append(m.out, ev...)
		}
		m.pending = m.pending[i+sep:]
	}
}

// readEvent reads one server-sent event's data and tells whether to keep
// it from the client (the usage chunk the proxy asked for itself).
func (m *meteredBody) readEvent(ev []byte) (drop bool) {
	var data []byte
	for _, line := range bytes.Split(ev, []byte("\n")) {
		line = bytes.TrimRight(line, "\r")
		if d, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			data = append(data, bytes.TrimPrefix(d, []byte(" "))...)
		}
	}
	if len(data) == 0 || string(data) == "[DONE]" {
		return false
	}
	switch m.c.up.Kind {
	case Anthropic:
		m.anthropicEvent(data)
	default:
		return m.openAIEvent(data)
	}
	return false
}

// openAIEvent reads a Chat Completions chunk or a Responses event.
func (m *meteredBody) openAIEvent(data []byte) (drop bool) {
	var ev struct {
		Type    string `json:"type"`
		Model   string `json:"model"`
		Choices []struct {
			Delta struct {
				Content   string `json:"content"`
				ToolCalls []struct {
					Function struct {
						Arguments string `json:"arguments"`
					} `json:"function"`
				} `json:"tool_calls"`
			} `json:"delta"`
		} `json:"choices"`
		Usage *usageJSON `json:"usage"`
		XGroq *struct {
			Usage *usageJSON `json:"usage"`
		} `json:"x_groq"`
		Delta    string `json:"delta"`
		Response *struct {
			Model string     `json:"model"`
			Usage *usageJSON `json:"usage"`
		} `json:"response"`
		Error *struct {
			Type string `json:"type"`
			Code any    `json:"code"`
		} `json:"error"`
	}
	if json.Unmarshal(data, &ev) != nil {
		return false
	}
	for _, ch := range ev.Choices {
		m.chars += int64(len(ch.Delta.Content))
		for _, tc := range ch.Delta.ToolCalls {
			m.chars += int64(len(tc.Function.Arguments))
		}
	}
	if ev.Model != "" {
		m.u.model = ev.Model
	}
	switch {
	case ev.Usage != nil:
		m.setOpenAI(ev.Usage)
		// The usage-only chunk the client did not ask for stays hidden.
		return m.c.injected && len(ev.Choices) == 0
	case ev.XGroq != nil && ev.XGroq.Usage != nil:
		m.setOpenAI(ev.XGroq.Usage)
	case ev.Type == "response.output_text.delta" || ev.Type == "response.function_call_arguments.delta":
		m.chars += int64(len(ev.Delta))
	case strings.HasPrefix(ev.Type, "response.") && ev.Response != nil && ev.Response.Usage != nil:
		// completed, and also incomplete (max_output_tokens reached) and failed.
		m.setOpenAI(ev.Response.Usage)
		if ev.Response.Model != "" {
			m.u.model = ev.Response.Model
		}
		if ev.Type == "response.failed" {
			m.errTyp = "response_failed"
		}
	case ev.Error != nil && ev.Error.Type != "":
		m.errTyp = ev.Error.Type
	}
	return false
}

// anthropicEvent reads a Messages stream event.
func (m *meteredBody) anthropicEvent(data []byte) {
	var ev struct {
		Type    string `json:"type"`
		Message *struct {
			Model string     `json:"model"`
			Usage *usageJSON `json:"usage"`
		} `json:"message"`
		Usage *usageJSON `json:"usage"`
		Delta struct {
			Text        string `json:"text"`
			PartialJSON string `json:"partial_json"`
			Thinking    string `json:"thinking"`
		} `json:"delta"`
		Error *struct {
			Type string `json:"type"`
		} `json:"error"`
	}
	if json.Unmarshal(data, &ev) != nil {
		return
	}
	switch ev.Type {
	case "message_start":
		if ev.Message != nil {
			m.u.model = ev.Message.Model
			m.setAnthropic(ev.Message.Usage)
		}
	case "message_delta":
		m.setAnthropic(ev.Usage)
	case "content_block_delta":
		m.chars += int64(len(ev.Delta.Text) + len(ev.Delta.PartialJSON) + len(ev.Delta.Thinking))
	case "error":
		if ev.Error != nil {
			m.errTyp = ev.Error.Type
		}
	}
}

// usageJSON is a usage object of either format.
type usageJSON struct {
	PromptTokens        *int64 `json:"prompt_tokens"`
	CompletionTokens    *int64 `json:"completion_tokens"`
	PromptTokensDetails *struct {
		CachedTokens int64 `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
	CompletionTokensDetails *struct {
		ReasoningTokens int64 `json:"reasoning_tokens"`
	} `json:"completion_tokens_details"`
	InputTokens        *int64 `json:"input_tokens"`
	OutputTokens       *int64 `json:"output_tokens"`
	InputTokensDetails *struct {
		CachedTokens int64 `json:"cached_tokens"`
	} `json:"input_tokens_details"`
	OutputTokensDetails *struct {
		ReasoningTokens int64 `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
	CacheReadInputTokens     *int64 `json:"cache_read_input_tokens"`
	CacheCreationInputTokens *int64 `json:"cache_creation_input_tokens"`
}

// setOpenAI takes a Chat Completions, Embeddings or Responses usage.
func (m *meteredBody) setOpenAI(u *usageJSON) {
	model := m.u.model
	m.u = usage{model: model}
	switch {
	case u.PromptTokens != nil || u.CompletionTokens != nil:
		m.u.prompt, m.u.completion = deref(u.PromptTokens), deref(u.CompletionTokens)
		if u.PromptTokensDetails != nil {
			m.u.cached = u.PromptTokensDetails.CachedTokens
		}
		if u.CompletionTokensDetails != nil {
			m.u.reasoning = u.CompletionTokensDetails.ReasoningTokens
		}
	default: // the Responses API's names
		m.u.prompt, m.u.completion = deref(u.InputTokens), deref(u.OutputTokens)
		if u.InputTokensDetails != nil {
			m.u.cached = u.InputTokensDetails.CachedTokens
		}
		if u.OutputTokensDetails != nil {
			m.u.reasoning = u.OutputTokensDetails.ReasoningTokens
		}
	}
	m.exact = true
}

// setAnthropic takes a Messages usage: each count replaces the last one
// reported (message_delta's are cumulative: never summed). input_tokens
// excludes cache reads and writes, which prompt_tokens include.
func (m *meteredBody) setAnthropic(u *usageJSON) {
	if u == nil {
		return
	}
	a := &m.anthropic
	for _, f := range []struct {
		dst **int64
		src *int64
	}{
		{&a.input, u.InputTokens}, {&a.cacheRead, u.CacheReadInputTokens}, {&a.cacheWrite, u.CacheCreationInputTokens}, {&a.output, u.OutputTokens},
	} {
		if f.src != nil {
			v := *f.src
			*f.dst = &v
		}
	}
	read, write := deref(a.cacheRead), deref(a.cacheWrite)
	m.u.prompt, m.u.cached, m.u.cacheWrite = deref(a.input)+read+write, read, write
	m.u.completion = deref(a.output)
	m.exact = a.input != nil || a.output != nil
}

func deref(p *int64) int64 {
	if p == nil {
		return 0
	}
	return max(*p, 0)
}

// finish records the call once: at the end of the body, at a failure,
// or when the body is closed before its end (the client went away).
func (m *meteredBody) finish(readErr error) {
	m.once.Do(func() {
		m.idle.Stop()
		if !m.sse {
			m.readJSON()
		}
		errType := m.errTyp
		switch {
		case m.timedOut.Load():
			errType = "upstream_idle_timeout"
		case m.ctx.Err() != nil && !m.eof:
			errType = "client_closed"
		case readErr != nil && !errors.Is(readErr, io.EOF):
			errType = "upstream_cut"
		case readErr == nil && !m.eof && m.sse:
			errType = "client_closed"
		}
		if m.status >= 400 && errType == "" {
			errType = "http_error"
		}
		m.p.record(m.c, m.status, errType, m.u, m.exact, m.chars)
	})
}

// readJSON reads the usage, or the error type, of a JSON answer.
func (m *meteredBody) readJSON() {
	var ans struct {
		Model string     `json:"model"`
		Usage *usageJSON `json:"usage"`
		Error *struct {
			Type string `json:"type"`
		} `json:"error"`
	}
	if json.Unmarshal(m.body.Bytes(), &ans) != nil {
		if m.status < 400 {
			m.errTyp = "upstream_bad_response"
		}
		return
	}
	m.u.model = ans.Model
	if ans.Usage != nil {
		if m.c.up.Kind == Anthropic {
			m.setAnthropic(ans.Usage)
		} else {
			m.setOpenAI(ans.Usage)
		}
	}
	if ans.Error != nil && ans.Error.Type != "" {
		m.errTyp = ans.Error.Type
	} else if m.status < 400 && ans.Usage == nil {
		m.errTyp = "" // an answer without usage: counted from its size below
		m.chars = int64(m.body.Len())
	}
}
