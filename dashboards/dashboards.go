// Package dashboards builds llmusage's Grafana dashboards with the Grafana
// Foundation SDK. The JSON under this directory is generated from it
// (go generate ./dashboards) and committed; a test fails when it is stale.
// rules/ holds the Prometheus recording and alerting rules they go with.
package dashboards

//go:generate go run ./gen

import (
	"encoding/json"
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/bargauge"
	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/table"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// Files maps each dashboard's file name to its builder.
func Files() map[string]func() *dashboard.DashboardBuilder {
	return map[string]func() *dashboard.DashboardBuilder{
		"llm-usage-overview.json": Overview,
		"llm-user-quota.json":     UserQuota,
		"llmusage-sidecar.json":   Sidecar,
	}
}

// Render builds a dashboard and encodes it as the committed JSON.
func Render(b *dashboard.DashboardBuilder) ([]byte, error) {
	d, err := b.Build()
	if err != nil {
		return nil, fmt.Errorf("cannot build dashboard: %w", err)
	}
	// Panel ids must be unique within a dashboard; the builder leaves
	// panels without one and rows at 0.
	for i, p := range d.Panels {
		id := uint32(i + 1)
		switch {
		case p.Panel != nil:
			p.Panel.Id = &id
		case p.RowPanel != nil:
			p.RowPanel.Id = id
		}
	}
	out, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// Overview is the LLM usage overview: traffic, tokens, errors, latency
// and quota across users, providers and models.
func Overview() *dashboard.DashboardBuilder {
	return base("llm-usage-overview", "LLM usage overview", "Requests, tokens, errors, latency and quota of LLM calls recorded by llmusage sidecars.").
		WithRow(dashboard.NewRowBuilder("Traffic")).
		WithPanel(timeSeries("Requests by provider and model", "Calls per second (recording rule provider_model:llm_requests:rate5m).", "reqps",
			target(`sum by (provider, model) (provider_model:llm_requests:rate5m{`+sel+`})`, "{{provider}} {{model}}"))).
		WithPanel(timeSeries("Tokens by provider and model", "Tokens per second by kind; cached is part of prompt, reasoning part of completion.", "short",
			target(`sum by (provider, model, token_type) (provider_model_token_type:llm_tokens:rate5m{`+sel+`})`, "{{provider}} {{model}} {{token_type}}"))).
		WithPanel(barGauge("Top users by tokens", "The ten users with the most prompt and completion tokens per second.", "short",
			target(`topk(10, sum by (user) (user:llm_tokens:rate5m{`+sel+`}))`, "{{user}}").Instant())).
		WithRow(dashboard.NewRowBuilder("Errors and latency")).
		WithPanel(timeSeries("Error ratio by provider", "Share of calls with status error.", "percentunit",
			target(`max by (provider) (provider:llm_requests_errors:ratio_rate5m{`+sel+`})`, "{{provider}}"))).
		WithPanel(timeSeries("Latency percentiles by model", "From latency_ms as the application reported it.", "s",
			target(`histogram_quantile(0.5, sum by (model, le) (model_le:llm_request_duration_seconds_bucket:rate5m{`+sel+`}))`, "p50 {{model}}"),
			target(`histogram_quantile(0.95, sum by (model, le) (model_le:llm_request_duration_seconds_bucket:rate5m{`+sel+`}))`, "p95 {{model}}"),
			target(`histogram_quantile(0.99, sum by (model, le) (model_le:llm_request_duration_seconds_bucket:rate5m{`+sel+`}))`, "p99 {{model}}"))).
		WithRow(dashboard.NewRowBuilder("Quota")).
		WithPanel(timeSeries("Quota checks by decision", "Checks answered allowed (200) or limited (429), per second.", "reqps",
			target(`sum by (decision) (rate(llm_rate_limit_checks_total{`+sel+`}[$__rate_interval]))`, "{{decision}}"))).
		WithPanel(tablePanel("Users closest to their quota", "The twenty buckets of users with the highest share used, budgets (unit usd) included; 1 means no quota left. Pools are in the Pools row.",
			target(`topk(20, max by (user, team, limit_type, unit, provider, model) (user_limit_type_unit:llm_quota_used:ratio{`+sel+`}))`, "").Instant())).
		WithPanel(timeSeries("Calls in flight", "Calls the proxy has upstream now, by user, over every pod (streams count until they end); and the slots in use of each concurrent limit (limit less remaining; with Redis, fleet-wide), which checks take and records give back whether or not the calls go through the proxy. A user at the limit gets 429 with Retry-After: 1.", "short",
			target(`sum by (user) (llm_calls_in_flight{`+sel+`})`, "{{user}} through the proxy"),
			target(`max by (user, per, team, provider, model) (llm_quota_limit{`+sel+`, unit="concurrent"} - llm_quota_remaining{`+sel+`, unit="concurrent"})`, "{{user}}{{team}} slots in use (per {{per}} {{provider}} {{model}})"))).
		WithRow(dashboard.NewRowBuilder("Pools")).
		WithPanel(tablePanel("Pools", "Buckets shared by a team's users (per team, team is the team) or by every call of a rule's scope (per all; team set for a rule scoped by team_id): limit, used and remaining, one row per pool however many pods report it (with Redis the shared level; without it, the pod closest to refusing). USD pools are in Pool budgets.",
			target(`max by (per, team, limit_type, unit, provider, model) (llm_quota_limit{`+poolSel+`, unit!="usd"})`, "limit").Instant().RefId("limit"),
			target(`max by (per, team, limit_type, unit, provider, model) (llm_quota_limit{`+poolSel+`, unit!="usd"} - llm_quota_remaining{`+poolSel+`, unit!="usd"})`, "used").Instant().RefId("used"),
			target(`min by (per, team, limit_type, unit, provider, model) (llm_quota_remaining{`+poolSel+`, unit!="usd"})`, "remaining").Instant().RefId("remaining"))).
		WithPanel(tablePanel("Pool budgets", "USD budgets shared by a team's users or by every call of a rule's scope (rules with per and usd: day, week or month, reset at 00:00 UTC, on Monday, on the 1st): limit, spent this window and remaining, in dollars, one row per pool. At 0 remaining every call the pool covers is refused until the window resets.",
			target(`max by (per, team, limit_type, provider, model) (llm_quota_limit{`+poolSel+`, unit="usd"})`, "limit").Instant().RefId("limit"),
			target(`max by (per, team, limit_type, provider, model) (llm_quota_limit{`+poolSel+`, unit="usd"} - llm_quota_remaining{`+poolSel+`, unit="usd"})`, "spent").Instant().RefId("spent"),
			target(`min by (per, team, limit_type, provider, model) (llm_quota_remaining{`+poolSel+`, unit="usd"})`, "remaining").Instant().RefId("remaining")).
			Unit("currencyUSD")).
		WithPanel(barGauge("Share of each pool used", "1 - remaining / limit per pool (recording rules pool_limit_type_unit:llm_quota_used:ratio and pool_limit_type_provider_model:llm_budget_used:ratio): LLMUsagePoolNearlyExhausted and LLMUsagePoolBudgetNearlySpent fire above 90% for 5 minutes.", "percentunit",
			target(`max by (per, team, limit_type, unit, provider, model) (pool_limit_type_unit:llm_quota_used:ratio{`+sel+`, unit!="usd"})`, "{{per}} {{team}} {{limit_type}} {{unit}} {{provider}} {{model}}").Instant(),
			target(`max by (per, team, limit_type, provider, model) (pool_limit_type_provider_model:llm_budget_used:ratio{`+sel+`})`, "{{per}} {{team}} {{limit_type}} usd {{provider}} {{model}}").Instant()).
			Min(0).Max(1).Thresholds(poolThresholds())).
		WithPanel(timeSeries("Pool share used over time", "The share of each pool used or spent, against the 90% threshold of the pool alerts; a budget's drops to 0 when its window resets.", "percentunit",
			target(`max by (per, team, limit_type, unit, provider, model) (pool_limit_type_unit:llm_quota_used:ratio{`+sel+`, unit!="usd"})`, "{{per}} {{team}} {{limit_type}} {{unit}} {{provider}} {{model}}"),
			target(`max by (per, team, limit_type, provider, model) (pool_limit_type_provider_model:llm_budget_used:ratio{`+sel+`})`, "{{per}} {{team}} {{limit_type}} usd {{provider}} {{model}}")).
			Min(0).Max(1).Thresholds(poolThresholds()).
			ThresholdsStyle(common.NewGraphThresholdsStyleConfigBuilder().Mode(common.GraphThresholdsStyleModeLineAndArea))).
		WithRow(dashboard.NewRowBuilder("Provider quotas")).
		WithPanel(tablePanel("Provider limits", "The providers' own rate limits, as their latest answers through the proxy said (x-ratelimit-* of OpenAI, Groq, Mistral and xAI; anthropic-ratelimit-* of Anthropic): limit, remaining and seconds until whole again, by provider, model, resource (requests, tokens, input_tokens, output_tokens) and key (a fingerprint of the API key, never the key); the lowest remaining over the pods.",
			target(`max by (provider, model, resource, key) (llm_provider_ratelimit_limit{`+sel+`})`, "limit").Instant().RefId("limit"),
			target(`min by (provider, model, resource, key) (llm_provider_ratelimit_remaining{`+sel+`})`, "remaining").Instant().RefId("remaining"),
			target(`max by (provider, model, resource, key) (llm_provider_ratelimit_reset_seconds{`+sel+`})`, "reset (s)").Instant().RefId("reset"))).
		WithPanel(barGauge("Share of each provider limit left", "remaining / limit of each of the providers' own limits (recording rule provider_model_resource_key:llm_provider_ratelimit_remaining:ratio): LLMProviderRateLimitNearlyExhausted fires under 10% for 2 minutes.", "percentunit",
			target(`min by (provider, model, resource, key) (provider_model_resource_key:llm_provider_ratelimit_remaining:ratio{`+sel+`})`, "{{provider}} {{model}} {{resource}} {{key}}").Instant()).
			Min(0).Max(1).Thresholds(providerLimitThresholds())).
		WithPanel(timeSeries("Provider limits left over time", "The share left of each of the providers' own limits, against the 10% threshold of LLMProviderRateLimitNearlyExhausted.", "percentunit",
			target(`min by (provider, model, resource, key) (provider_model_resource_key:llm_provider_ratelimit_remaining:ratio{`+sel+`})`, "{{provider}} {{model}} {{resource}} {{key}}")).
			Min(0).Max(1).Thresholds(providerLimitThresholds()).
			ThresholdsStyle(common.NewGraphThresholdsStyleConfigBuilder().Mode(common.GraphThresholdsStyleModeLineAndArea))).
		WithPanel(timeSeries("Provider 429s", "The providers' own 429s a second, by provider and model (recording rule provider_model:llm_provider_throttled:rate5m; not the sidecar's 429s): LLMProviderThrottling fires above 0.05 a second for 10 minutes.", "reqps",
			target(`sum by (provider, model) (provider_model:llm_provider_throttled:rate5m{`+sel+`})`, "{{provider}} {{model}}"))).
		WithRow(dashboard.NewRowBuilder("Spend")).
		WithPanel(timeSeries("Spend by provider", "USD an hour, at the current rate, of the priced records (recording rule provider_model:llm_cost_usd:rate5m); records of unpriced models are not in it.", "currencyUSD",
			target(`sum by (provider) (provider_model:llm_cost_usd:rate5m{`+sel+`}) * 3600`, "{{provider}}"))).
		WithPanel(timeSeries("Spend by model", "USD an hour, at the current rate, by provider and model.", "currencyUSD",
			target(`sum by (provider, model) (provider_model:llm_cost_usd:rate5m{`+sel+`}) * 3600`, "{{provider}} {{model}}"))).
		WithPanel(barGauge("Top users by spend", "The ten users who spent the most USD in the time range.", "currencyUSD",
			target(`topk(10, sum by (user) (increase(llm_cost_usd_total{`+sel+`}[$__range])))`, "{{user}}").Instant())).
		WithPanel(statPanel("Spend in the time range", "USD spent on priced records in the time range.", "currencyUSD",
			target(`sum(increase(llm_cost_usd_total{`+sel+`}[$__range]))`, "spend").Instant())).
		WithPanel(timeSeries("Unpriced records by provider", "Records per second whose model has no price (stored with a null cost): their cost is missing from the spend and the budgets. Add a price (limits file prices:, or a row of llm_model_prices); GET /v1/prices?unpriced=1 names the models.", "short",
			target(`sum by (provider) (rate(llmusage_records_unpriced_total{`+sel+`}[$__rate_interval]))`, "{{provider}}")).
			Span(6)).
		WithRow(dashboard.NewRowBuilder("Teams")).
		WithPanel(timeSeries("Spend by team", "USD an hour, at the current rate, by the records' team_id (recording rule team:llm_cost_usd:rate5m); (no team) are the records without one, __other__ the teams past --metrics-max-teams.", "currencyUSD",
			target(noTeam(`sum by (team) (team:llm_cost_usd:rate5m{`+sel+`}) * 3600`), "{{team}}"))).
		WithPanel(timeSeries("Calls by team", "Calls per second by the records' team_id (recording rule team:llm_requests:rate5m).", "reqps",
			target(noTeam(`sum by (team) (team:llm_requests:rate5m{`+sel+`})`), "{{team}}"))).
		WithPanel(barGauge("Spend by team in the time range", "USD spent on priced records in the time range, by team, the twenty highest.", "currencyUSD",
			target(noTeam(`topk(20, sum by (team) (increase(llm_cost_usd_total{`+sel+`}[$__range])))`), "{{team}}").Instant())).
		WithPanel(barGauge("Calls by team in the time range", "Calls recorded in the time range, by team, the twenty highest.", "short",
			target(noTeam(`topk(20, sum by (team) (increase(llm_requests_total{`+sel+`}[$__range])))`), "{{team}}").Instant()))
}

// poolSel selects the pools' quota gauges: buckets and budgets shared by
// a team (per="team") or by every call of a rule's scope (per="all").
const poolSel = sel + `, per=~"team|all"`

// noTeam names the series of records without a team_id (team="", so no
// team label) "(no team)" in the legends.
func noTeam(expr string) string {
	return `label_replace(` + expr + `, "team", "(no team)", "team", "")`
}

// UserQuota is the successor of the seed's usage card: one user's quota
// against each limit, and their usage in the time range.
func UserQuota() *dashboard.DashboardBuilder {
	userSel := sel + `, user="$user"`
	quotaSel := userSel + `, unit!="usd"`
	budgetSel := userSel + `, unit="usd"`
	return base("llm-user-quota", "LLM user quota", "One user's quota and usage: the successor of the LLM API usage card.").
		Time("now/d", "now").
		WithVariable(dashboard.NewQueryVariableBuilder("user").
			Label("User").
			Query(dashboard.StringOrMap{String: cog.ToPtr(`label_values(llm_quota_limit{` + sel + `}, user)`)}).
			Datasource(datasourceRef).
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
			Sort(dashboard.VariableSortAlphabeticalAsc)).
		WithRow(dashboard.NewRowBuilder("Quota")).
		WithPanel(tablePanel("Quota by limit type", "For each limit the user's bucket: limit, used and remaining, one row per bucket however many pods report it (with Redis they report the same shared level; without it, the pod closest to refusing). team is set for a rule scoped by team_id. USD budgets are in the Budgets row; pools the user shares are on the overview (row Pools).",
			target(`max by (team, limit_type, unit, provider, model) (llm_quota_limit{`+quotaSel+`})`, "limit").Instant().RefId("limit"),
			target(`max by (team, limit_type, unit, provider, model) (llm_quota_limit{`+quotaSel+`} - llm_quota_remaining{`+quotaSel+`})`, "used").Instant().RefId("used"),
			target(`min by (team, limit_type, unit, provider, model) (llm_quota_remaining{`+quotaSel+`})`, "remaining").Instant().RefId("remaining"))).
		WithPanel(timeSeries("Share of quota used", "1 - remaining / limit for each of the user's buckets, the pod closest to refusing (with Redis every pod reports the same shared level); the warning alert fires above 0.8 for 10 minutes. USD budgets are in the Budgets row.", "percentunit",
			target(`max by (team, limit_type, unit, provider, model) (user_limit_type_unit:llm_quota_used:ratio{`+quotaSel+`})`, "{{team}} {{limit_type}} {{unit}} {{provider}} {{model}}"))).
		WithRow(dashboard.NewRowBuilder("Budgets")).
		WithPanel(tablePanel("Budgets", "The user's USD budgets (limit rules with unit usd: day, week or month, reset at 00:00 UTC, on Monday, on the 1st): limit, spent this window and remaining, in dollars, one row per budget (the pod closest to refusing, as for the quota). At 0 remaining the user's checks are refused until the window resets.",
			target(`max by (team, limit_type, provider, model) (llm_quota_limit{`+budgetSel+`})`, "limit").Instant().RefId("limit"),
			target(`max by (team, limit_type, provider, model) (llm_quota_limit{`+budgetSel+`} - llm_quota_remaining{`+budgetSel+`})`, "spent").Instant().RefId("spent"),
			target(`min by (team, limit_type, provider, model) (llm_quota_remaining{`+budgetSel+`})`, "remaining").Instant().RefId("remaining")).
			Unit("currencyUSD")).
		WithPanel(barGauge("Share of each budget spent", "1 - remaining / limit per budget (recording rule user_limit_type_provider_model:llm_budget_used:ratio): LLMUsageBudgetNearlySpent fires at 80% for 5 minutes, LLMUsageBudgetSpent at 100%.", "percentunit",
			target(`max by (team, limit_type, provider, model) (user_limit_type_provider_model:llm_budget_used:ratio{`+userSel+`})`, "{{team}} {{limit_type}} {{provider}} {{model}}").Instant()).
			Min(0).Max(1).Thresholds(budgetThresholds())).
		WithPanel(timeSeries("Budget spent over time", "The share of each budget spent, against the 80% and 100% thresholds of the budget alerts; it drops to 0 when the window resets.", "percentunit",
			target(`max by (team, limit_type, provider, model) (user_limit_type_provider_model:llm_budget_used:ratio{`+userSel+`})`, "{{team}} {{limit_type}} {{provider}} {{model}}")).
			Min(0).Max(1).Thresholds(budgetThresholds()).
			ThresholdsStyle(common.NewGraphThresholdsStyleConfigBuilder().Mode(common.GraphThresholdsStyleModeLineAndArea))).
		WithPanel(timeSeries("Spend over time", "The user's spend in USD an hour, at the current rate, by model.", "currencyUSD",
			target(`sum by (provider, model) (rate(llm_cost_usd_total{`+userSel+`}[$__rate_interval])) * 3600`, "{{provider}} {{model}}"))).
		WithRow(dashboard.NewRowBuilder("Usage in the time range (today by default)")).
		WithPanel(statPanel("Calls", "LLM calls recorded for the user in the time range.", "short",
			target(`sum(increase(llm_requests_total{`+userSel+`}[$__range]))`, "calls").Instant())).
		WithPanel(statPanel("Tokens", "Prompt and completion tokens in the time range.", "short",
			target(`sum(increase(llm_tokens_total{`+userSel+`, token_type=~"prompt|completion"}[$__range]))`, "tokens").Instant())).
		WithPanel(statPanel("Spend", "USD spent on the user's priced records in the time range.", "currencyUSD",
			target(`sum(increase(llm_cost_usd_total{`+userSel+`}[$__range]))`, "spend").Instant())).
		WithPanel(barGauge("Tokens by model", "Prompt and completion tokens in the time range, by model.", "short",
			target(`sum by (model) (increase(llm_tokens_total{`+userSel+`, token_type=~"prompt|completion"}[$__range]))`, "{{model}}").Instant())).
		WithPanel(barGauge("Calls by provider", "Calls in the time range, by provider.", "short",
			target(`sum by (provider) (increase(llm_requests_total{`+userSel+`}[$__range]))`, "{{provider}}").Instant()))
}

// Sidecar is the llmusage sidecar's own health: intake, persistence,
// spool, the shared quota store (Redis), cardinality guard and process
// resources.
func Sidecar() *dashboard.DashboardBuilder {
	return base("llmusage-sidecar", "llmusage sidecar", "Health of the llmusage sidecars: intake, persistence, spool, shared quota store, series guard, resources.").
		WithRow(dashboard.NewRowBuilder("Intake")).
		WithPanel(timeSeries("Records accepted and rejected", "Records per second; rejected records came in a request with an invalid record.", "short",
			target(`sum(rate(llmusage_records_accepted_total{`+sel+`}[$__rate_interval]))`, "accepted"),
			target(`sum(rate(llmusage_records_rejected_total{`+sel+`}[$__rate_interval]))`, "rejected"))).
		WithPanel(timeSeries("API latency (p99) by route", "Time to answer, measured by the sidecar.", "s",
			target(`histogram_quantile(0.99, sum by (handler, le) (rate(llmusage_http_request_duration_seconds_bucket{`+sel+`}[$__rate_interval])))`, "{{handler}}"))).
		WithPanel(timeSeries("Added latency (p50, p99) by path", "Time the sidecar adds to a call (llmusage_added_latency_seconds): a check or a record from its arrival to its answer, a proxied call less its wait on the provider.", "s",
			target(`histogram_quantile(0.5, sum by (path, le) (rate(llmusage_added_latency_seconds_bucket{`+sel+`}[$__rate_interval])))`, "p50 {{path}}"),
			target(`histogram_quantile(0.99, sum by (path, le) (rate(llmusage_added_latency_seconds_bucket{`+sel+`}[$__rate_interval])))`, "p99 {{path}}"))).
		WithPanel(timeSeries("API errors by route and code", "4xx and 5xx answers per second.", "reqps",
			target(`sum by (handler, code) (rate(llmusage_http_request_duration_seconds_count{`+sel+`, code=~"4..|5.."}[$__rate_interval]))`, "{{handler}} {{code}}"))).
		WithRow(dashboard.NewRowBuilder("Persistence")).
		WithPanel(timeSeries("Records waiting for the database", "Queue (spool) length; it grows while the database is down and drains when it returns.", "short",
			target(`sum by (instance) (llmusage_persist_queue_records{`+sel+`})`, "{{instance}}"))).
		WithPanel(timeSeries("Spool backlog", "Bytes in the spool that the database does not have yet; at --spool-max-bytes, records are refused.", "bytes",
			target(`sum by (instance) (llmusage_spool_bytes{`+sel+`})`, "{{instance}}"))).
		WithPanel(timeSeries("Records persisted and failed batches", "Records written per second, batches that failed (they are retried), and records the database refused (moved to the dead-letter file).", "short",
			target(`sum(rate(llmusage_persisted_records_total{`+sel+`}[$__rate_interval]))`, "persisted"),
			target(`sum(rate(llmusage_persist_errors_total{`+sel+`}[$__rate_interval]))`, "failed batches"),
			target(`sum(rate(llmusage_persist_dead_lettered_total{`+sel+`}[$__rate_interval]))`, "dead-lettered"))).
		WithPanel(timeSeries("Batch write latency (p99)", "Duration of one batch written to the database.", "s",
			target(`histogram_quantile(0.99, sum by (le) (rate(llmusage_persist_flush_duration_seconds_bucket{`+sel+`}[$__rate_interval])))`, "p99"))).
		WithPanel(statPanel("Database reachable", "1 when the last write or ping succeeded.", "bool_yes_no",
			target(`min(llmusage_store_up{`+sel+`})`, "store up").Instant())).
		WithPanel(timeSeries("Daily summary steps and retention", "Steps of llm_usage_daily_summary per second by result (ok: this fleet's step ran; skipped: another sidecar held the lock; error: alert LLMUsageSummaryStepsFailing), and rows of llm_usage_logs deleted past --retention per second.", "short",
			target(`sum by (result) (rate(llmusage_store_rollup_steps_total{`+sel+`}[$__rate_interval]))`, "steps {{result}}"),
			target(`sum(rate(llmusage_store_rows_deleted_total{`+sel+`}[$__rate_interval]))`, "rows deleted"))).
		WithRow(dashboard.NewRowBuilder("Shared quota store")).
		WithPanel(timeSeries("Quota store reachable", "1 while the sidecar reaches Redis (--redis-url), 0 while its checks are answered by --redis-fail-mode. Empty without --redis-url.", "short",
			target(`max by (instance) (llmusage_quota_backend_up{`+sel+`})`, "{{instance}}")).
			Min(0).Max(1)).
		WithPanel(timeSeries("Check latency to Redis", "One check's round trip to Redis (op take), p50 and p99; past --redis-timeout (50ms by default) the fail mode answers.", "s",
			target(`histogram_quantile(0.5, sum by (le) (rate(llmusage_quota_backend_duration_seconds_bucket{`+sel+`, op="take"}[$__rate_interval])))`, "p50"),
			target(`histogram_quantile(0.99, sum by (le) (rate(llmusage_quota_backend_duration_seconds_bucket{`+sel+`, op="take"}[$__rate_interval])))`, "p99"))).
		WithPanel(timeSeries("Quota store errors by kind", "Failed calls to Redis per second, by kind (timeout, connection, other) and operation.", "short",
			target(`sum by (kind, op) (rate(llmusage_quota_backend_errors_total{`+sel+`}[$__rate_interval]))`, "{{kind}} {{op}}"))).
		WithPanel(timeSeries("Checks answered by the fail mode", "Checks per second answered without Redis, by --redis-fail-mode: local (each pod's share of a limit), open (allowed), closed (refused with 503).", "reqps",
			target(`sum by (mode) (rate(llmusage_quota_fallback_checks_total{`+sel+`}[$__rate_interval]))`, "{{mode}}"))).
		WithPanel(timeSeries("Replicas seen", "Live replicas in the Redis registry (each pod's share of a limit in local mode is limit / this), against the sidecars scraped.", "short",
			target(`max by (namespace) (llmusage_quota_replicas{`+sel+`})`, "in the registry {{namespace}}"),
			target(`count by (namespace) (llmusage_build_info{`+sel+`})`, "scraped {{namespace}}"))).
		WithPanel(timeSeries("Rule sets in force", "Distinct digests of the rules in force (llmusage_rules_info) per job and namespace: 1 when every replica enforces the same limits; more during a rollout or a half-rolled limits ConfigMap.", "short",
			target(`count by (job, namespace) (count by (job, namespace, sha256) (llmusage_rules_info{`+sel+`}))`, "{{namespace}}/{{job}}"))).
		WithPanel(tablePanel("Rules digest by replica", "The digest of the rules each sidecar enforces: the replicas whose sha256 differs from the others' run another limits file (GET /v1/rules shows it).",
			target(`max by (namespace, instance, sha256) (llmusage_rules_info{`+sel+`})`, "").Instant())).
		WithRow(dashboard.NewRowBuilder("Series guard and resources")).
		WithPanel(timeSeries("User series", "Distinct user label values exported, and observations counted as __other__ past the cap.", "short",
			target(`sum by (instance) (llmusage_metrics_users{`+sel+`})`, "users {{instance}}"),
			target(`sum by (instance) (rate(llmusage_metrics_users_overflow_total{`+sel+`}[$__rate_interval]))`, "overflow/s {{instance}}"))).
		WithPanel(timeSeries("Provider and model series", "Distinct provider and model pairs exported, and records counted as model=\"__other__\" past the cap.", "short",
			target(`sum by (instance) (llmusage_metrics_models{`+sel+`})`, "pairs {{instance}}"),
			target(`sum by (instance) (rate(llmusage_metrics_models_overflow_total{`+sel+`}[$__rate_interval]))`, "overflow/s {{instance}}"))).
		WithPanel(timeSeries("Live limiter buckets", "Token buckets held in memory; full, idle ones are dropped.", "short",
			target(`sum by (instance) (llmusage_limiter_buckets{`+sel+`})`, "{{instance}}"))).
		WithPanel(timeSeries("Check estimates", "Allowed checks' token estimates waiting for their record, and those that expired without it per second: a steady rate means a client not sending the check's request_id back, whose calls are charged twice.", "short",
			target(`sum by (instance) (llmusage_limiter_estimates{`+sel+`})`, "pending {{instance}}"),
			target(`sum by (instance) (rate(llmusage_limiter_estimates_expired_total{`+sel+`}[$__rate_interval]))`, "expired/s {{instance}}"))).
		WithPanel(timeSeries("Memory", "Resident memory of the sidecar process.", "bytes",
			target(`process_resident_memory_bytes{`+sel+`}`, "{{instance}}"))).
		WithPanel(timeSeries("CPU", "CPU seconds per second of the sidecar process.", "short",
			target(`rate(process_cpu_seconds_total{`+sel+`}[$__rate_interval])`, "{{instance}}")))
}

// budgetThresholds colours a budget's share spent: green, orange from
// 80% (LLMUsageBudgetNearlySpent), red at 100% (LLMUsageBudgetSpent).
func budgetThresholds() *dashboard.ThresholdsConfigBuilder {
	return dashboard.NewThresholdsConfigBuilder().Mode(dashboard.ThresholdsModeAbsolute).Steps([]dashboard.Threshold{
		{Value: nil, Color: "green"},
		{Value: cog.ToPtr(0.8), Color: "orange"},
		{Value: cog.ToPtr(1.0), Color: "red"},
	})
}

// poolThresholds colours a pool's share used: green, red above 90%
// (LLMUsagePoolNearlyExhausted, LLMUsagePoolBudgetNearlySpent).
func poolThresholds() *dashboard.ThresholdsConfigBuilder {
	return dashboard.NewThresholdsConfigBuilder().Mode(dashboard.ThresholdsModeAbsolute).Steps([]dashboard.Threshold{
		{Value: nil, Color: "green"},
		{Value: cog.ToPtr(0.9), Color: "red"},
	})
}

// providerLimitThresholds colours the share left of a provider's own
// limit: red under 10% (LLMProviderRateLimitNearlyExhausted), green above.
func providerLimitThresholds() *dashboard.ThresholdsConfigBuilder {
	return dashboard.NewThresholdsConfigBuilder().Mode(dashboard.ThresholdsModeAbsolute).Steps([]dashboard.Threshold{
		{Value: nil, Color: "red"},
		{Value: cog.ToPtr(0.1), Color: "green"},
	})
}

// sel selects the sidecars chosen by the dashboard's job and namespace variables.
const sel = `job=~"$job", namespace=~"$namespace"`

var datasourceRef = common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}

// base is a dashboard with the variables every llmusage dashboard has: a
// Prometheus data source, and job and namespace.
func base(uid, title, description string) *dashboard.DashboardBuilder {
	labelVar := func(name, label, query string) *dashboard.QueryVariableBuilder {
		return dashboard.NewQueryVariableBuilder(name).
			Label(label).
			Query(dashboard.StringOrMap{String: cog.ToPtr(query)}).
			Datasource(datasourceRef).
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
			Sort(dashboard.VariableSortAlphabeticalAsc).
			Multi(true).
			IncludeAll(true).
			AllValue(".*")
	}
	return dashboard.NewDashboardBuilder(title).
		Uid(uid).
		Description(description).
		Tags([]string{"llmusage", "llm"}).
		Editable().
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		Refresh("1m").
		Time("now-6h", "now").
		Timezone(common.TimeZoneBrowser).
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").Label("Data source").Type("prometheus")).
		WithVariable(labelVar("job", "Job", `label_values(llmusage_build_info, job)`)).
		WithVariable(labelVar("namespace", "Namespace", `label_values(llmusage_build_info{job=~"$job"}, namespace)`))
}

func target(expr, legend string) *prometheus.DataqueryBuilder {
	return prometheus.NewDataqueryBuilder().Expr(expr).LegendFormat(legend).Datasource(datasourceRef)
}

func timeSeries(title, description, unit string, targets ...*prometheus.DataqueryBuilder) *timeseries.PanelBuilder {
	p := timeseries.NewPanelBuilder().Title(title).Description(description).Unit(unit).Datasource(datasourceRef).Height(8).Span(12)
	for _, t := range targets {
		p.WithTarget(t)
	}
	return p
}

func statPanel(title, description, unit string, targets ...*prometheus.DataqueryBuilder) *stat.PanelBuilder {
	p := stat.NewPanelBuilder().Title(title).Description(description).Unit(unit).Datasource(datasourceRef).Height(6).Span(6)
	for _, t := range targets {
		p.WithTarget(t)
	}
	return p
}

func barGauge(title, description, unit string, targets ...*prometheus.DataqueryBuilder) *bargauge.PanelBuilder {
	p := bargauge.NewPanelBuilder().Title(title).Description(description).Unit(unit).Datasource(datasourceRef).Height(8).Span(12).
		Orientation(common.VizOrientationHorizontal).DisplayMode(common.BarGaugeDisplayModeGradient)
	for _, t := range targets {
		p.WithTarget(t)
	}
	return p
}

func tablePanel(title, description string, targets ...*prometheus.DataqueryBuilder) *table.PanelBuilder {
	p := table.NewPanelBuilder().Title(title).Description(description).Datasource(datasourceRef).Height(8).Span(12)
	for _, t := range targets {
		p.WithTarget(t.Format(prometheus.PromQueryFormatTable))
	}
	return p
}
