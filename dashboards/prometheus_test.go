package dashboards

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"

	"github.com/llmusage/llmusage/internal/redistest"
	"github.com/llmusage/llmusage/internal/sidecartest"
)

// TestAgainstPrometheus starts three sidecars and a real Prometheus that
// scrapes them and evaluates the rules: two replicas sharing their
// buckets through a real Redis, and a third whose Redis is out of reach
// (its checks answered by --redis-fail-mode) and whose limits file differs.
// It drives traffic through all of them, and checks that every dashboard
// query returns data, that every metric the dashboards and rules name
// exists (in a real scrape, or as a recording rule), that the quota alert
// fires once for a user over 80% whom both replicas served, that the pool
// alert fires once for a pool past 90% that both replicas report, that
// teams have usage series and pools of their own, and that the shared
// quota store's alerts fire for the third sidecar.
func TestAgainstPrometheus(t *testing.T) {
	promBin := sidecartest.RequireTool(t, "prometheus")
	dir := t.TempDir()
	shared, lost := startSidecars(t)
	sides := append(append([]*sidecartest.Sidecar{}, shared...), lost)
	var targets []string
	for _, s := range sides {
		targets = append(targets, s.MetricsAddr())
	}
	prom := startPrometheus(t, promBin, dir, targets)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		traffic(t, sides, stop)
	}()
	defer func() { close(stop); wg.Wait() }()
	// "streamer" has a call in flight through each replica until the end:
	// 2 of its 3 concurrent slots in use.
	for _, s := range shared {
		go holdCall(t, s, "streamer")
	}
	// "light" uses 5 of its 20 requests an hour, "heavy" 17: 85% of the
	// quota. Both go round-robin over the two replicas that share Redis,
	// so that both report their buckets.
	for i := 0; i < 5; i++ {
		post(t, shared[i%2], "/v1/check", `{"user_id":"light","model":"gpt-4o"}`, http.StatusOK)
	}
	for i := 0; i < 17; i++ {
		side := shared[i%2]
		post(t, side, "/v1/check", `{"user_id":"heavy","model":"gpt-4o","request_id":"heavy-`+fmt.Sprint(i)+`"}`, http.StatusOK)
		post(t, side, "/v1/calls", `{"user_id":"heavy","model":"gpt-4o","prompt_tokens":120,"completion_tokens":30,"latency_ms":900,"request_id":"heavy-`+fmt.Sprint(i)+`"}`, http.StatusAccepted)
	}

	// "pooler" empties the hourly pool of pool-model, shared by all calls
	// (per: all, 20 requests an hour), through both replicas: the pool is
	// reported by both, and alerted once.
	for i := 0; i < 20; i++ {
		post(t, shared[i%2], "/v1/check", `{"user_id":"pooler","model":"pool-model"}`, http.StatusOK)
	}

	// exposed are the series names of a scrape of every sidecar now.
	exposed := func(t *testing.T) map[string]bool {
		names := map[string]bool{}
		for _, s := range sides {
			for name := range scrapedNames(t, s.Scrape(t)) {
				names[name] = true
			}
		}
		return names
	}

	t.Run("every panel query returns data", func(t *testing.T) {
		for _, q := range panelQueries(t) {
			expr := substitute(q.expr)
			sidecartest.WaitFor(t, 90*time.Second, func() bool { return len(prom.query(t, expr)) > 0 },
				"%s / %s: no data for %s", q.dashboard, q.panel, expr)
		}
	})

	t.Run("every metric named exists", func(t *testing.T) {
		exposed := exposed(t)
		recorded, alertExprs := ruleExprs(t)
		var exprs []string
		for _, q := range panelQueries(t) {
			exprs = append(exprs, substitute(q.expr))
		}
		for name := range recorded {
			exprs = append(exprs, recorded[name])
		}
		exprs = append(exprs, alertExprs...)
		for _, e := range exprs {
			for _, name := range metricNames(t, e) {
				switch {
				case strings.Contains(name, ":"):
					if _, ok := recorded[name]; !ok {
						t.Errorf("%s names %s, which no recording rule defines", e, name)
					}
				case name == "up":
					// Prometheus' own series for every target.
				case !exposed[name]:
					t.Errorf("%s names %s, which the sidecar does not expose", e, name)
				}
			}
		}
	})

	t.Run("the quota alert fires once for the user over 80%", func(t *testing.T) {
		heavy := func(a alert) bool {
			return a.Labels["alertname"] == "LLMUsageQuotaNearlyExhausted" && a.Labels["user"] == "heavy" && a.Labels["limit_type"] == "hour"
		}
		sidecartest.WaitFor(t, 90*time.Second, func() bool {
			for _, a := range prom.alerts(t) {
				if heavy(a) && a.State == "firing" {
					return true
				}
			}
			return false
		}, "LLMUsageQuotaNearlyExhausted is not firing for user heavy")
		// Both replicas report heavy's shared bucket, at the same level (a
		// refill between their scrapes may part them for a scrape)...
		sidecartest.WaitFor(t, 30*time.Second, func() bool {
			levels := prom.query(t, `count_values("remaining", llm_quota_remaining{user="heavy", limit_type="hour"})`)
			return len(prom.query(t, `llm_quota_remaining{user="heavy", limit_type="hour"}`)) == 2 &&
				len(levels) == 1 && bytes.Contains(levels[0], []byte(`"2"]`))
		}, "heavy's hourly bucket is not reported by both replicas at one level: %s",
			prom.query(t, `llm_quota_remaining{user="heavy", limit_type="hour"}`))
		// ... and the rule and the alert have one series, without the pod.
		if got := prom.query(t, `user_limit_type_unit:llm_quota_used:ratio{user="heavy", limit_type="hour"}`); len(got) != 1 || bytes.Contains(got[0], []byte(`"instance"`)) {
			t.Errorf("user_limit_type_unit:llm_quota_used:ratio for heavy's hourly bucket: %s, want one series without instance", got)
		}
		var alerts []alert
		for _, a := range prom.alerts(t) {
			if heavy(a) {
				alerts = append(alerts, a)
			}
		}
		if len(alerts) != 1 || alerts[0].Labels["instance"] != "" {
			t.Errorf("LLMUsageQuotaNearlyExhausted for heavy's hourly bucket: %+v, want one alert without instance", alerts)
		}
		// "light" has used 25% of the same hourly limit: quota series, no alert.
		if len(prom.query(t, `user_limit_type_unit:llm_quota_used:ratio{user="light", limit_type="hour"}`)) == 0 {
			t.Fatal("no quota series for light")
		}
		for _, a := range prom.alerts(t) {
			if a.Labels["alertname"] == "LLMUsageQuotaNearlyExhausted" && a.Labels["user"] == "light" {
				t.Errorf("quota alert for light, at 25%% of the limit: %+v", a)
			}
		}
	})

	t.Run("the budget alert fires for the user past 80% of a budget, and the quota alerts do not", func(t *testing.T) {
		// spender's records cost $0.009 of a $0.01 month budget, on both replicas.
		post(t, shared[0], "/v1/calls", `{"user_id":"spender","model":"gpt-4o","cost_usd":0.005}`, http.StatusAccepted)
		post(t, shared[1], "/v1/calls", `{"user_id":"spender","model":"gpt-4o","cost_usd":0.004}`, http.StatusAccepted)
		spender := func(a alert) bool { return a.Labels["user"] == "spender" && a.Labels["limit_type"] == "month" }
		sidecartest.WaitFor(t, 90*time.Second, func() bool {
			for _, a := range prom.alerts(t) {
				if a.Labels["alertname"] == "LLMUsageBudgetNearlySpent" && spender(a) && a.State == "firing" {
					return true
				}
			}
			return false
		}, "LLMUsageBudgetNearlySpent is not firing for user spender")
		// A scrape while Redis was slow (the quota gauges of a replica that
		// cannot read Redis are left out) may be the latest: wait for one
		// that has both.
		budgetLeft := func() bool {
			got := prom.query(t, `llm_quota_remaining{user="spender", unit="usd"}`)
			return len(got) == 2 && bytes.Contains(got[0], []byte(`"0.001"]`)) && bytes.Contains(got[1], []byte(`"0.001"]`))
		}
		if !sidecartest.Eventually(30*time.Second, budgetLeft) {
			t.Errorf("spender's budget: %s, want $0.001 left on both replicas", prom.query(t, `llm_quota_remaining{user="spender", unit="usd"}`))
		}
		for _, a := range prom.alerts(t) {
			switch name := a.Labels["alertname"]; {
			case spender(a) && name != "LLMUsageBudgetNearlySpent":
				t.Errorf("%s for spender at 90%% of a budget: %+v", name, a)
			}
		}
	})

	t.Run("the pool alert fires once for the pool past 90%, and the users' quota alerts do not", func(t *testing.T) {
		pool := func(a alert) bool {
			return a.Labels["alertname"] == "LLMUsagePoolNearlyExhausted" && a.Labels["per"] == "all" && a.Labels["model"] == "pool-model"
		}
		sidecartest.WaitFor(t, 90*time.Second, func() bool {
			for _, a := range prom.alerts(t) {
				if pool(a) && a.State == "firing" {
					return true
				}
			}
			return false
		}, "LLMUsagePoolNearlyExhausted is not firing for the pool of pool-model")
		// Both replicas report the pool, with an empty user...
		sidecartest.WaitFor(t, 30*time.Second, func() bool {
			return len(prom.query(t, `llm_quota_remaining{per="all", model="pool-model", user=""}`)) == 2
		}, "the pool of pool-model is not reported by both replicas: %s", prom.query(t, `llm_quota_remaining{model="pool-model"}`))
		// ... and the rule and the alert have one series, without the pod.
		if got := prom.query(t, `pool_limit_type_unit:llm_quota_used:ratio{per="all", model="pool-model"}`); len(got) != 1 || bytes.Contains(got[0], []byte(`"instance"`)) {
			t.Errorf("pool_limit_type_unit:llm_quota_used:ratio for the pool of pool-model: %s, want one series without instance", got)
		}
		var alerts []alert
		for _, a := range prom.alerts(t) {
			if pool(a) {
				alerts = append(alerts, a)
			}
			switch n := a.Labels["alertname"]; n {
			case "LLMUsageQuotaNearlyExhausted", "LLMUsageQuotaExhausted", "LLMUsageBudgetNearlySpent", "LLMUsageBudgetSpent":
				if a.Labels["user"] == "" {
					t.Errorf("%s without a user (a pool in the users' alerts): %+v", n, a)
				}
			}
		}
		if len(alerts) != 1 || alerts[0].Labels["instance"] != "" {
			t.Errorf("LLMUsagePoolNearlyExhausted for the pool of pool-model: %+v, want one alert without instance", alerts)
		}
		// The pool is not a user's: the users' rules leave it out.
		if got := prom.query(t, `user_limit_type_unit:llm_quota_used:ratio{model="pool-model"}`); len(got) != 0 {
			t.Errorf("user_limit_type_unit:llm_quota_used:ratio has the pool of pool-model: %s", got)
		}
	})

	// team_id on records and checks, and the team label of the usage
	// counters, come with the team attribution of issue #22.
	t.Run("teams have usage series and pools", func(t *testing.T) {
		exprs := []string{
			`sum by (team) (llm_requests_total{team="search"})`,
			`sum by (team) (llm_cost_usd_total{team="search"})`,
			`team:llm_cost_usd:rate5m{team="search"}`,
			`team:llm_requests:rate5m{team="ads"}`,
			`max by (team) (llm_quota_limit{per="team", team="search", unit="requests"})`,
			`max by (team) (llm_quota_limit{per="team", team="search", unit="usd"})`,
			`pool_limit_type_unit:llm_quota_used:ratio{per="team", team="search"}`,
			`pool_limit_type_provider_model:llm_budget_used:ratio{per="team", team="search"}`,
		}
		missing := func() (out []string) {
			for _, expr := range exprs {
				if len(prom.query(t, expr)) == 0 {
					out = append(out, expr)
				}
			}
			return out
		}
		if !sidecartest.Eventually(60*time.Second, func() bool { return len(missing()) == 0 }) {
			for _, expr := range missing() {
				t.Errorf("no data for %s", expr)
			}
		}
		// A team pool's series have an empty user: not in the users' rules.
		if got := prom.query(t, `user_limit_type_unit:llm_quota_used:ratio{user=""}`); len(got) != 0 {
			t.Errorf("user_limit_type_unit:llm_quota_used:ratio has series without a user: %s", got)
		}
	})

	t.Run("the provider quota alerts fire once, from the proxy's upstream answers", func(t *testing.T) {
		checkProviderAlerts(t, prom)
	})

	t.Run("the shared quota store alerts fire for the sidecar without Redis", func(t *testing.T) {
		want := map[string]func(a alert) bool{
			"LLMUsageQuotaBackendDown":   func(a alert) bool { return a.Labels["instance"] == lost.MetricsAddr() },
			"LLMUsageQuotaFallbackInUse": func(a alert) bool { return a.Labels["instance"] == lost.MetricsAddr() && a.Labels["mode"] == "local" },
			// lost enforces a rule more than the replicas: two digests.
			"LLMUsageRulesDiverge": func(a alert) bool { return a.Labels["job"] == "llmusage" && a.Labels["instance"] == "" },
		}
		for name, match := range want {
			sidecartest.WaitFor(t, 90*time.Second, func() bool {
				for _, a := range prom.alerts(t) {
					if a.Labels["alertname"] == name && a.State == "firing" && match(a) {
						return true
					}
				}
				return false
			}, "%s is not firing", name)
		}
		for _, a := range prom.alerts(t) {
			switch a.Labels["alertname"] {
			case "LLMUsageQuotaBackendDown", "LLMUsageQuotaFallbackInUse":
				if a.Labels["instance"] != lost.MetricsAddr() {
					t.Errorf("%s for a replica that reaches Redis: %+v", a.Labels["alertname"], a)
				}
			}
		}
		if got := prom.query(t, `llmusage_quota_replicas`); len(got) != 3 {
			t.Errorf("llmusage_quota_replicas: %s, want a series per sidecar", got)
		}
	})
}

// substitute fills in the dashboards' variables as Grafana would: all
// jobs and namespaces, the heavy user, and Grafana's interval macros.
func substitute(expr string) string {
	return strings.NewReplacer(
		"$job", "llmusage",
		"$namespace", ".*",
		"$user", "heavy",
		"$__rate_interval", "1m",
		"$__range", "1h",
	).Replace(expr)
}

type panelQuery struct{ dashboard, panel, expr string }

// panelQueries reads every target of every committed dashboard.
func panelQueries(t *testing.T) []panelQuery {
	t.Helper()
	var out []panelQuery
	names := make([]string, 0, len(Files()))
	for name := range Files() {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		raw, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			Panels []struct {
				Title   string `json:"title"`
				Targets []struct {
					Expr string `json:"expr"`
				} `json:"targets"`
			} `json:"panels"`
		}
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatal(err)
		}
		for _, p := range d.Panels {
			for _, tg := range p.Targets {
				out = append(out, panelQuery{name, p.Title, tg.Expr})
			}
		}
	}
	if len(out) < 20 {
		t.Fatalf("only %d panel queries found", len(out))
	}
	return out
}

// ruleExprs returns the recording rules (name to expression) and the
// alert expressions of the rules file.
func ruleExprs(t *testing.T) (map[string]string, []string) {
	t.Helper()
	raw, err := os.ReadFile("rules/llmusage.rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Record string `yaml:"record"`
				Alert  string `yaml:"alert"`
				Expr   string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	recorded := map[string]string{}
	var alerts []string
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				recorded[r.Record] = r.Expr
			} else {
				alerts = append(alerts, r.Expr)
			}
		}
	}
	return recorded, alerts
}

// metricNames parses expr with the Prometheus parser and returns the
// metric names of its selectors.
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		t.Fatalf("%s does not parse: %s", expr, err)
	}
	var names []string
	parser.Inspect(e, func(node parser.Node, _ []parser.Node) error {
		if vs, ok := node.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names
}

// scrapedNames returns the series names of a real scrape, histograms
// and summaries expanded to their _bucket, _sum and _count series.
func scrapedNames(t *testing.T, metrics string) map[string]bool {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(metrics))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for name, mf := range families {
		names[name] = true
		switch mf.GetType().String() {
		case "HISTOGRAM":
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		case "SUMMARY":
			names[name+"_sum"], names[name+"_count"] = true, true
		}
	}
	return names
}

func TestMain(m *testing.M) { os.Exit(sidecartest.Main(m)) }

// limits are the sidecars' rules: per-user hourly limits for "heavy" and
// "light", budgets, and pools: shared by all calls of a model (per: all),
// and one per team (per: team).
const limits = `
limits:
  - user_id: heavy
    limit_type: hour
    requests: 20
  - user_id: heavy
    limit_type: day
    usd: 1
  - user_id: spender
    limit_type: month
    usd: 0.01
  - user_id: light
    limit_type: hour
    requests: 20
  - provider: openai
    limit_type: minute
    tokens: 1000000
  - model: pool-model
    per: all
    limit_type: hour
    requests: 20
  - model: gpt-4o
    per: all
    limit_type: day
    usd: 1000
  - per: team
    limit_type: hour
    requests: 100000
  - per: team
    limit_type: month
    usd: 1000
  - user_id: streamer
    concurrent: 3
`

// startSidecars starts two replicas sharing a real Redis, and a third
// sidecar whose Redis does not answer (nothing listens on its address),
// with a rule more than the replicas, so that its rules digest differs.
func startSidecars(t *testing.T) (shared []*sidecartest.Sidecar, lost *sidecartest.Sidecar) {
	t.Helper()
	srv := redistest.Start(t)
	// The proxy's openai route goes to a fake upstream sending rate-limit
	// headers and 429s (the provider quota panels).
	upstream := "openai=" + startRateLimitedUpstream(t)
	// The replicas' Redis answers: a check must never wait out the
	// timeout, which the default 50 ms is not on a machine busy with other
	// tests (the fallback alerts would then fire for them too).
	shared = sidecartest.StartN(t, 2, sidecartest.Options{
		Limits: limits,
		Flags:  []string{"--flush-interval", "100ms", "--redis-url", srv.URL(), "--redis-timeout", "2s", "--upstream", upstream},
	})
	lost = sidecartest.Start(t, sidecartest.Options{
		Limits: limits + `
  - user_id: someone-else
    limit_type: day
    requests: 5
`,
		Flags: []string{"--flush-interval", "100ms", "--redis-url", "redis://" + sidecartest.FreeAddr(t) + "/0", "--upstream", upstream},
	})
	return shared, lost
}

// post posts a JSON body to the sidecar's API and checks the status
// (unless want is 0) with t.Errorf, not t.Fatal: traffic posts from a
// goroutine of its own.
func post(t *testing.T, s *sidecartest.Sidecar, path, body string, want int) {
	t.Helper()
	resp, err := s.Client.Post(s.APIURL()+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Error(err)
		return
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want != 0 && resp.StatusCode != want {
		t.Errorf("POST %s %s: %d %s, want %d", path, body, resp.StatusCode, b, want)
	}
}

// traffic keeps every kind of series moving on every sidecar until stop:
// records of several users, providers and models (some failed), checks
// (some refused), and invalid requests.
func traffic(t *testing.T, sides []*sidecartest.Sidecar, stop chan struct{}) {
	// house-model has no price: its records count as unpriced.
	models := []struct{ provider, model string }{{"openai", "gpt-4o"}, {"anthropic", "claude-3-5-sonnet"}, {"groq", "llama-3.1-8b-instant"}, {"vllm", "house-model"}}
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-time.After(100 * time.Millisecond):
		}
		m := models[i%len(models)]
		status := "success"
		if i%4 == 0 {
			status = "error"
		}
		// Records of teams search and ads, and of no team (every third).
		team := ""
		if teams := []string{"search", "ads", ""}; teams[i%3] != "" {
			team = fmt.Sprintf(`,"team_id":%q`, teams[i%3])
		}
		for _, s := range sides {
			post(t, s, "/v1/calls", fmt.Sprintf(`{"user_id":"user-%d","provider":%q,"model":%q,"prompt_tokens":%d,"completion_tokens":20,"cached_tokens":5,"reasoning_tokens":3,"latency_ms":%d,"status":%q%s}`,
				i%5, m.provider, m.model, 100+i%50, 200+(i%10)*150, status, team), http.StatusAccepted)
			// "burst" checks more than its 30 a minute: some are refused.
			post(t, s, "/v1/check", `{"user_id":"burst","model":"gpt-4o"}`, 0)
			// A check for team search takes from its pools (per: team).
			post(t, s, "/v1/check", `{"user_id":"user-1","team_id":"search","model":"gpt-4o"}`, http.StatusOK)
			post(t, s, "/v1/calls", `{"user_id":"x","model":"m","prompt_token":1}`, http.StatusBadRequest)
			// A call through the proxy: the provider's own quota.
			if i%2 == 0 {
				proxyCall(t, s, "proxied")
			}
		}
	}
}

func quoted(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}

type promProc struct {
	addr   string
	client *http.Client
}

// startPrometheus runs Prometheus with the rules file as shipped, except
// that every for: and the recording interval are cut to seconds, so that
// alerts fire within the test. It scrapes the targets as the pods of one
// deployment: job llmusage, namespace default.
func startPrometheus(t *testing.T, bin, dir string, targets []string) *promProc {
	t.Helper()
	rules, err := os.ReadFile("rules/llmusage.rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rules = regexp.MustCompile(`(?m)^(\s+for:) \S+$`).ReplaceAll(rules, []byte("$1 2s"))
	rules = regexp.MustCompile(`(?m)^(\s+interval:) \S+$`).ReplaceAll(rules, []byte("$1 1s"))
	os.WriteFile(filepath.Join(dir, "rules.yaml"), rules, 0o644)
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [rules.yaml]
scrape_configs:
  - job_name: llmusage
    static_configs:
      - targets: [%s]
        labels: {namespace: default}
`, strings.Join(quoted(targets), ", "))
	os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o644)
	p := &promProc{addr: sidecartest.FreeAddr(t), client: &http.Client{Timeout: 10 * time.Second}}
	log, _ := os.Create(filepath.Join(dir, "prometheus.log"))
	cmd := exec.Command(bin, "--config.file", filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path", filepath.Join(dir, "tsdb"),
		"--web.listen-address", p.addr)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			if len(b) > 6000 {
				b = b[len(b)-6000:]
			}
			t.Logf("prometheus log (tail):\n%s", b)
		}
	})
	sidecartest.WaitFor(t, 60*time.Second, func() bool {
		resp, err := p.client.Get("http://" + p.addr + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "prometheus not ready")
	return p
}

// query runs an instant query and returns its result (vector or scalar).
func (p *promProc) query(t *testing.T, expr string) []json.RawMessage {
	t.Helper()
	resp, err := p.client.Get("http://" + p.addr + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if out.Status != "success" {
		t.Fatalf("query %s: %s", expr, out.Error)
	}
	var vector []json.RawMessage
	if out.Data.ResultType == "vector" {
		_ = json.Unmarshal(out.Data.Result, &vector)
		// A series whose value is NaN (a quantile of no observations) is no data.
		var kept []json.RawMessage
		for _, v := range vector {
			if !bytes.Contains(v, []byte(`"NaN"`)) {
				kept = append(kept, v)
			}
		}
		return kept
	}
	return []json.RawMessage{out.Data.Result}
}

type alert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
}

func (p *promProc) alerts(t *testing.T) []alert {
	t.Helper()
	resp, err := p.client.Get("http://" + p.addr + "/api/v1/alerts")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Data struct {
			Alerts []alert `json:"alerts"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out.Data.Alerts
}
