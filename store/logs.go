package store

import "github.com/llmusage/llmusage/usage"

// logColumns lists what a page of llm_usage_logs selects, in the order
// scanLogPage reads; text casts id and user_id to text where the database
// needs it (an adopted legacy table may key them by uuid), and cost is the
// record's cost in nano-dollars, NULL when unpriced.
func logColumns(text, cost string) string {
	return `id` + text + `, coalesce(request_id, ''), user_id` + text + `, provider, model, tokens_used, prompt_tokens, completion_tokens,
		cached_tokens, reasoning_tokens, latency_ms, status, coalesce(error_type, ''), metadata, created_at, ` + cost + `,
		cache_write_tokens, coalesce(team_id, '')`
}

// logFilters returns the conditions of q's user, team, model and provider
// filters; arg adds a value and returns its placeholder, and text casts
// user_id (a legacy user_id may be a uuid).
func logFilters(q usage.LogQuery, text string, arg func(v any) string) []string {
	var conds []string
	for _, f := range []struct{ col, val string }{{"user_id" + text, q.UserID}, {"team_id", q.TeamID}, {"model", q.Model}, {"provider", q.Provider}} {
		if f.val != "" {
			conds = append(conds, f.col+" = "+arg(f.val))
		}
	}
	return conds
}

// scanLogPage reads rows of logColumns, fetched with limit+1 rows, into a
// page. ID, At and Meta are what the driver scans id, created_at and
// metadata into; convert sets the entry's from them.
func scanLogPage[ID, At, Meta any](rows rowScanner, limit int, convert func(e *usage.LogEntry, id ID, at At, metadata Meta)) (usage.LogPage, error) {
	page := usage.LogPage{Logs: []usage.LogEntry{}}
	for rows.Next() {
		var e usage.LogEntry
		var id ID
		var at At
		var metadata Meta
		if err := rows.Scan(&id, &e.RequestID, &e.UserID, &e.Provider, &e.Model, &e.TokensUsed, &e.PromptTokens, &e.CompletionTokens,
			&e.CachedTokens, &e.ReasoningTokens, &e.LatencyMs, &e.Status, &e.ErrorType, &metadata, &at, &e.CostUSD,
			&e.CacheWriteTokens, &e.TeamID); err != nil {
			return usage.LogPage{}, err
		}
		convert(&e, id, at, metadata)
		page.Logs = append(page.Logs, e)
	}
	if err := rows.Err(); err != nil {
		return usage.LogPage{}, err
	}
	return trimPage(page, limit), nil
}

// trimPage cuts a page fetched with one row too many and sets NextCursor
// when that extra row shows there is more.
func trimPage(p usage.LogPage, limit int) usage.LogPage {
	if len(p.Logs) > limit {
		p.Logs = p.Logs[:limit]
		last := p.Logs[limit-1]
		p.NextCursor = usage.EncodeCursor(last.CreatedAt, last.ID)
	}
	return p
}
