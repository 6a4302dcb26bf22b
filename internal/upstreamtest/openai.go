package upstreamtest

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
)

// chatUsage is the usage object of Chat Completions.
func chatUsage() map[string]any {
	u := OpenAIUsage
	return map[string]any{
		"prompt_tokens":     u.Prompt,
		"completion_tokens": u.Completion,
		"total_tokens":      u.Prompt + u.Completion,
		"prompt_tokens_details": map[string]any{
			"cached_tokens": u.Cached,
			"audio_tokens":  0,
		},
		"completion_tokens_details": map[string]any{
			"reasoning_tokens":           u.Reasoning,
			"audio_tokens":               0,
			"accepted_prediction_tokens": 0,
			"rejected_prediction_tokens": 0,
		},
	}
}

// groqUsage is the usage object of Groq: OpenAI's counts and timings.
func groqUsage() map[string]any {
	u, t := GroqUsage, GroqTimes
	return map[string]any{
		"queue_time":        t[0],
		"prompt_tokens":     u.Prompt,
		"prompt_time":       t[1],
		"completion_tokens": u.Completion,
		"completion_time":   t[2],
		"total_tokens":      u.Prompt + u.Completion,
		"total_time":        t[3],
	}
}

// toolCall is the "tool" model's call, whole.
func toolCall() map[string]any {
	return map[string]any{
		"id":       "call_fake1",
		"type":     "function",
		"function": map[string]any{"name": ToolName, "arguments": ToolArguments},
	}
}

func (x *exchange) chat()     { x.chatCompletions(false) }
func (x *exchange) groqChat() { x.chatCompletions(true) }

// chatCompletions answers POST /v1/chat/completions, or Groq's
// /openai/v1/chat/completions when groq.
func (x *exchange) chatCompletions(groq bool) {
	const id = "chatcmpl-fake1"
	tool := x.req.Model == "tool"
	usage := chatUsage()
	if groq {
		usage = groqUsage()
	}
	if !x.req.Stream {
		message := map[string]any{"role": "assistant", "content": Text, "refusal": nil}
		finish := "stop"
		if tool {
			message["content"] = nil
			message["tool_calls"] = []any{toolCall()}
			finish = "tool_calls"
		}
		answer := map[string]any{
			"id":      id,
			"object":  "chat.completion",
			"created": created,
			"model":   x.req.Model,
			"choices": []any{map[string]any{
				"index":         0,
				"message":       message,
				"logprobs":      nil,
				"finish_reason": finish,
			}},
			"usage":              usage,
			"system_fingerprint": "fp_fake",
		}
		if groq {
			answer["x_groq"] = map[string]any{"id": "req_fake"}
		} else {
			answer["service_tier"] = "default"
		}
		x.answerJSON(answer)
		return
	}

	includeUsage := x.req.StreamOptions.IncludeUsage
	chunk := func(delta map[string]any, finish any) map[string]any {
		c := map[string]any{
			"id":                 id,
			"object":             "chat.completion.chunk",
			"created":            created,
			"model":              x.req.Model,
			"system_fingerprint": "fp_fake",
			"choices": []any{map[string]any{
				"index":         0,
				"delta":         delta,
				"logprobs":      nil,
				"finish_reason": finish,
			}},
		}
		if includeUsage {
			// With include_usage every chunk but the last has usage null.
			c["usage"] = nil
		}
		return c
	}
	var events []event
	add := func(c map[string]any, content bool) {
		events = append(events, event{data: mustJSON(c), content: content})
	}

	first := chunk(map[string]any{"role": "assistant", "content": ""}, nil)
	if groq {
		first["x_groq"] = map[string]any{"id": "req_fake"}
	}
	finish := "stop"
	if tool {
		finish = "tool_calls"
		first["choices"].([]any)[0].(map[string]any)["delta"] = map[string]any{
			"role":    "assistant",
			"content": nil,
			"tool_calls": []any{map[string]any{
				"index":    0,
				"id":       "call_fake1",
				"type":     "function",
				"function": map[string]any{"name": ToolName, "arguments": ""},
			}},
		}
		add(first, false)
		for _, a := range ToolArgumentChunks {
			add(chunk(map[string]any{"tool_calls": []any{map[string]any{
				"index":    0,
				"function": map[string]any{"arguments": a},
			}}}, nil), true)
		}
	} else {
		add(first, false)
		for _, c := range Chunks {
			add(chunk(map[string]any{"content": c}, nil), true)
		}
	}
	last := chunk(map[string]any{}, finish)
	if groq {
		// Groq's finish chunk carries x_groq.usage whatever the request
		// asked, and usage too under include_usage.
		last["x_groq"] = map[string]any{"id": "req_fake", "usage": usage}
		if includeUsage {
			last["usage"] = usage
		}
	}
	add(last, false)
	if includeUsage {
		u := map[string]any{
			"id":                 id,
			"object":             "chat.completion.chunk",
			"created":            created,
			"model":              x.req.Model,
			"system_fingerprint": "fp_fake",
			"choices":            []any{},
			"usage":              usage,
		}
		add(u, false)
	}
	events = append(events, event{data: []byte("[DONE]")})
	x.stream(events)
}

// responsesUsage is the usage object of the Responses API.
func responsesUsage() map[string]any {
	u := OpenAIUsage
	return map[string]any{
		"input_tokens":          u.Prompt,
		"input_tokens_details":  map[string]any{"cached_tokens": u.Cached},
		"output_tokens":         u.Completion,
		"output_tokens_details": map[string]any{"reasoning_tokens": u.Reasoning},
		"total_tokens":          u.Prompt + u.Completion,
	}
}

// responses answers POST /v1/responses.
func (x *exchange) responses() {
	const respID, itemID = "resp_fake1", "msg_fake1"
	tool := x.req.Model == "tool"
	response := func(status string, output []any, usage any) map[string]any {
		return map[string]any{
			"id":                   respID,
			"object":               "response",
			"created_at":           created,
			"status":               status,
			"error":                nil,
			"incomplete_details":   nil,
			"instructions":         nil,
			"max_output_tokens":    nil,
			"model":                x.req.Model,
			"output":               output,
			"parallel_tool_calls":  true,
			"previous_response_id": nil,
			"temperature":          1.0,
			"tool_choice":          "auto",
			"tools":                []any{},
			"top_p":                1.0,
			"metadata":             map[string]any{},
			"usage":                usage,
		}
	}
	textPart := func(text string) map[string]any {
		return map[string]any{"type": "output_text", "text": text, "annotations": []any{}}
	}
	message := func(status string, content []any) map[string]any {
		return map[string]any{"type": "message", "id": itemID, "status": status, "role": "assistant", "content": content}
	}
	call := func(status, arguments string) map[string]any {
		return map[string]any{"type": "function_call", "id": "fc_fake1", "call_id": "call_fake1", "name": ToolName, "arguments": arguments, "status": status}
	}
	var done map[string]any
	if tool {
		done = call("completed", ToolArguments)
	} else {
		done = message("completed", []any{textPart(Text)})
	}
	if !x.req.Stream {
		x.answerJSON(response("completed", []any{done}, responsesUsage()))
		return
	}

	var events []event
	seq := 0
	add := func(name string, fields map[string]any, content bool) {
		fields["type"] = name
		fields["sequence_number"] = seq
		seq++
		events = append(events, event{name: name, data: mustJSON(fields), content: content})
	}
	add("response.created", map[string]any{"response": response("in_progress", []any{}, nil)}, false)
	add("response.in_progress", map[string]any{"response": response("in_progress", []any{}, nil)}, false)
	if tool {
		add("response.output_item.added", map[string]any{"output_index": 0, "item": call("in_progress", "")}, false)
		for _, a := range ToolArgumentChunks {
			add("response.function_call_arguments.delta", map[string]any{"item_id": "fc_fake1", "output_index": 0, "delta": a}, true)
		}
		add("response.function_call_arguments.done", map[string]any{"item_id": "fc_fake1", "output_index": 0, "arguments": ToolArguments}, false)
	} else {
		add("response.output_item.added", map[string]any{"output_index": 0, "item": message("in_progress", []any{})}, false)
		add("response.content_part.added", map[string]any{"item_id": itemID, "output_index": 0, "content_index": 0, "part": textPart("")}, false)
		for _, c := range Chunks {
			add("response.output_text.delta", map[string]any{"item_id": itemID, "output_index": 0, "content_index": 0, "delta": c, "logprobs": []any{}}, true)
		}
		add("response.output_text.done", map[string]any{"item_id": itemID, "output_index": 0, "content_index": 0, "text": Text, "logprobs": []any{}}, false)
		add("response.content_part.done", map[string]any{"item_id": itemID, "output_index": 0, "content_index": 0, "part": textPart(Text)}, false)
	}
	add("response.output_item.done", map[string]any{"output_index": 0, "item": done}, false)
	add("response.completed", map[string]any{"response": response("completed", []any{done}, responsesUsage())}, false)
	x.stream(events)
}

// embeddings answers POST /v1/embeddings, one Embedding per input, as
// floats or, under encoding_format "base64" (what the openai SDK asks by
// default), as base64 of little-endian float32s.
func (x *exchange) embeddings() {
	var in struct {
		Input any `json:"input"`
	}
	_ = json.Unmarshal(x.body, &in) // decoded once already: valid JSON
	n := 1
	if list, ok := in.Input.([]any); ok && len(list) > 0 {
		n = len(list)
	}
	var vector any = Embedding
	if x.req.EncodingFormat == "base64" {
		b := make([]byte, 4*len(Embedding))
		for i, f := range Embedding {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
		}
		vector = base64.StdEncoding.EncodeToString(b)
	}
	data := make([]any, n)
	for i := range data {
		data[i] = map[string]any{"object": "embedding", "index": i, "embedding": vector}
	}
	x.answerJSON(map[string]any{
		"object": "list",
		"data":   data,
		"model":  x.req.Model,
		"usage":  map[string]any{"prompt_tokens": EmbeddingsUsage.Prompt, "total_tokens": EmbeddingsUsage.Prompt},
	})
}
