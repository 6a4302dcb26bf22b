package upstreamtest

// anthropicUsage is the usage object of the Messages API with output
// tokens output.
func anthropicUsage(output int) map[string]any {
	u := AnthropicUsage
	return map[string]any{
		"input_tokens":                u.Input,
		"cache_creation_input_tokens": u.CacheWrite,
		"cache_read_input_tokens":     u.CacheRead,
		"output_tokens":               output,
		"service_tier":                "standard",
	}
}

// messages answers POST /v1/messages.
func (x *exchange) messages() {
	const id = "msg_fake1"
	tool := x.req.Model == "tool"
	message := func(content []any, stop any, usage map[string]any) map[string]any {
		return map[string]any{
			"id":            id,
			"type":          "message",
			"role":          "assistant",
			"model":         x.req.Model,
			"content":       content,
			"stop_reason":   stop,
			"stop_sequence": nil,
			"usage":         usage,
		}
	}
	stop := "end_turn"
	var block map[string]any
	if tool {
		stop = "tool_use"
		block = map[string]any{"type": "tool_use", "id": "toolu_fake1", "name": ToolName, "input": map[string]any{"city": "Paris"}}
	} else {
		block = map[string]any{"type": "text", "text": Text}
	}
	if !x.req.Stream {
		x.answerJSON(message([]any{block}, stop, anthropicUsage(AnthropicUsage.Output)))
		return
	}

	var events []event
	add := func(name string, fields map[string]any, content bool) {
		fields["type"] = name
		events = append(events, event{name: name, data: mustJSON(fields), content: content})
	}
	steps := AnthropicOutputSteps
	add("message_start", map[string]any{"message": message([]any{}, nil, anthropicUsage(steps[0]))}, false)
	if tool {
		add("content_block_start", map[string]any{"index": 0, "content_block": map[string]any{
			"type": "tool_use", "id": "toolu_fake1", "name": ToolName, "input": map[string]any{},
		}}, false)
		add("ping", map[string]any{}, false)
		for _, a := range ToolArgumentChunks {
			add("content_block_delta", map[string]any{"index": 0, "delta": map[string]any{"type": "input_json_delta", "partial_json": a}}, true)
		}
	} else {
		add("content_block_start", map[string]any{"index": 0, "content_block": map[string]any{"type": "text", "text": ""}}, false)
		add("ping", map[string]any{}, false)
		for _, c := range Chunks {
			add("content_block_delta", map[string]any{"index": 0, "delta": map[string]any{"type": "text_delta", "text": c}}, true)
		}
	}
	add("content_block_stop", map[string]any{"index": 0}, false)
	// message_delta's usage is cumulative: each carries the output so far
	// (and, as the API does now, the input counts again); the last one
	// has the stop reason.
	for i, out := range steps[1:] {
		delta := map[string]any{"stop_reason": nil, "stop_sequence": nil}
		if i == len(steps)-2 {
			delta["stop_reason"] = stop
		}
		u := anthropicUsage(out)
		delete(u, "service_tier")
		add("message_delta", map[string]any{"delta": delta, "usage": u}, false)
	}
	add("message_stop", map[string]any{}, false)
	x.stream(events)
}

// countTokens answers POST /v1/messages/count_tokens.
func (x *exchange) countTokens() {
	x.answerJSON(map[string]any{"input_tokens": AnthropicUsage.Input})
}
