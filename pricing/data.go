package pricing

import (
	"bytes"
	"cmp"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/llmusage/llmusage/usd"
)

// A string, not a []byte: the linker puts it with the read-only data,
// whose pages an idle sidecar drops once start-up has parsed it
// (releaseStartupMemory in cmd/llmusage), rather than with the writable.
//
//go:embed data/genai-prices.json
var embeddedJSON string

// snapshotData is a parsed snapshot, shared by every table made from it.
type snapshotData struct {
	// snapshot describes it.
	snapshot Snapshot
	// byName maps llmusage provider names to their tables.
	byName map[string]*provTable
	// byID maps genai-prices provider ids to their tables, fallbacks included.
	byID map[string]*provTable
	// date is the snapshot's date: Table.Models lists the prices in
	// effect then.
	date time.Time
	// names are the keys of byName, sorted: Table.Models' order.
	names []string
}

// listing is the listing of Table.Models without overrides. It is built
// on each call rather than kept: only the models API asks for it, and it
// is a fifth of the parsed snapshot's memory in every idle sidecar.
func (d *snapshotData) listing() []ModelInfo {
	var models []ModelInfo
	for _, name := range d.names {
		for _, m := range d.byName[name].models {
			c := m.priceAt(d.date, true)
			if c.empty {
				continue
			}
			models = append(models, ModelInfo{
				Provider: name, ModelID: m.id, Name: m.name, Price: c.price,
				Deprecated: m.deprecated, ContextWindow: m.contextWindow, Source: d.snapshot.Source,
			})
		}
	}
	return models
}

// provTable is a genai-prices provider.
type provTable struct {
	// id is the genai-prices provider id.
	id string
	// models are tried in order: the first match wins.
	models []*model
	// fallbacks are tried after models, one level deep.
	fallbacks []*provTable
	// exact holds the answer of find for every name that an equals rule
	// names, so that the common lookup is one map access.
	exact map[string]found
}

// found is a model and the provider whose list it is on.
type found struct {
	// m is the model.
	m *model
	// owner is the provider listing it.
	owner *provTable
}

// model is a genai-prices model.
type model struct {
	// id is the genai-prices model id.
	id string
	// name is the display name, if any.
	name string
	// match tells whether a lower-cased model name is this model.
	match rule
	// deprecated is the source's flag.
	deprecated bool
	// contextWindow is in tokens, 0 if unknown.
	contextWindow int64
	// prices are the conditional prices in source order; an
	// unconditional price is one entry without a constraint.
	prices []condPrice
}

// Constraint kinds of a condPrice.
const (
	always = iota
	startDate
	timeOfDay
)

// condPrice is a price with its constraint.
type condPrice struct {
	// kind is always, startDate or timeOfDay.
	kind uint8
	// from is the start of a startDate constraint (UTC midnight).
	from time.Time
	// todStart and todEnd bound a timeOfDay window, in nanoseconds of
	// the UTC day; the window wraps midnight when todEnd < todStart.
	todStart, todEnd int64
	// price is the price under the constraint.
	price Price
	// empty tells whether the source gave none of the prices pricing
	// reads (a price of pages or audio hours only): such a call is unpriced.
	empty bool
}

// Rule operators.
const (
	opEquals = iota
	opStartsWith
	opEndsWith
	opContains
	opRegex
	opOr
	opAnd
)

// rule is a compiled genai-prices match rule.
type rule struct {
	// op is the operator.
	op uint8
	// s is the lower-cased operand of equals, starts_with, ends_with, contains.
	s string
	// re must match for a regex rule (nil: no positive part).
	re *regexp.Regexp
	// not must not match for a regex rule that began with a negative
	// lookahead (nil: none).
	not *regexp.Regexp
	// subs are the operands of or and and.
	subs []rule
}

func (r *rule) matches(name string) bool {
	switch r.op {
	case opEquals:
		return name == r.s
	case opStartsWith:
		return strings.HasPrefix(name, r.s)
	case opEndsWith:
		return strings.HasSuffix(name, r.s)
	case opContains:
		return strings.Contains(name, r.s)
	case opRegex:
		return (r.not == nil || !r.not.MatchString(name)) && (r.re == nil || r.re.MatchString(name))
	case opOr:
		for i := range r.subs {
			if r.subs[i].matches(name) {
				return true
			}
		}
		return false
	case opAnd:
		for i := range r.subs {
			if !r.subs[i].matches(name) {
				return false
			}
		}
		return true
	}
	return false
}

// equalsNames appends the operands of every equals rule in r.
func (r *rule) equalsNames(names []string) []string {
	if r.op == opEquals {
		names = append(names, r.s)
	}
	for i := range r.subs {
		names = r.subs[i].equalsNames(names)
	}
	return names
}

// find looks a model name up as the source does: lower-cased and trimmed,
// then its own models and its fallbacks', then the same with compact
// dates expanded.
func (p *provTable) find(modelName string) (*model, *provTable) {
	name := strings.ToLower(strings.TrimSpace(modelName))
	if f, ok := p.exact[name]; ok {
		return f.m, f.owner
	}
	f := p.resolve(name)
	return f.m, f.owner
}

func (p *provTable) resolve(name string) found {
	if f := p.scan(name, true); f.m != nil {
		return f
	}
	if dated := expandDates(name); dated != name {
		return p.scan(dated, true)
	}
	return found{}
}

func (p *provTable) scan(name string, withFallbacks bool) found {
	for _, m := range p.models {
		if m.match.matches(name) {
			return found{m, p}
		}
	}
	if withFallbacks {
		for _, f := range p.fallbacks {
			if r := f.scan(name, false); r.m != nil {
				return r
			}
		}
	}
	return found{}
}

// priceAt chooses the price for a call at time at: the last conditional
// price whose constraint holds, else the first. With skipTimeOfDay,
// time-of-day windows never hold.
func (m *model) priceAt(at time.Time, skipTimeOfDay bool) *condPrice {
	for i := len(m.prices) - 1; i >= 0; i-- {
		c := &m.prices[i]
		switch c.kind {
		case always:
			return c
		case startDate:
			if !at.Before(c.from) {
				return c
			}
		case timeOfDay:
			if skipTimeOfDay {
				continue
			}
			n := nanoOfDay(at)
			if c.todEnd < c.todStart {
				if n >= c.todStart || n < c.todEnd {
					return c
				}
			} else if n >= c.todStart && n < c.todEnd {
				return c
			}
		}
	}
	return &m.prices[0]
}

// nanoOfDay is the time of the UTC day at millisecond precision, as a
// JavaScript Date has it.
func nanoOfDay(t time.Time) int64 {
	t = t.UTC()
	h, m, s := t.Clock()
	return int64(h*3600+m*60+s)*int64(time.Second) + int64(t.Nanosecond()/1e6)*int64(time.Millisecond)
}

// expandDates rewrites compact date suffixes as the source does:
// "-20240229" followed by "-", ":" or the end becomes "-2024-02-29" when
// it is a real date of 20xx.
func expandDates(s string) string {
	var b strings.Builder
	changed := false
	for i := 0; i < len(s); {
		if s[i] == '-' && i+9 <= len(s) && compactDate(s[i+1:i+9]) && (i+9 == len(s) || s[i+9] == '-' || s[i+9] == ':') {
			d := s[i+1 : i+9]
			y, _ := strconv.Atoi(d[:4])
			mo, _ := strconv.Atoi(d[4:6])
			day, _ := strconv.Atoi(d[6:])
			if t := time.Date(y, time.Month(mo), day, 0, 0, 0, 0, time.UTC); t.Day() == day && int(t.Month()) == mo {
				b.WriteString("-" + d[:4] + "-" + d[4:6] + "-" + d[6:])
				changed = true
			} else {
				b.WriteString(s[i : i+9])
			}
			i += 9
			continue
		}
		b.WriteByte(s[i])
		i++
	}
	if !changed {
		return s
	}
	return b.String()
}

// compactDate tells whether d matches 20\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01]).
func compactDate(d string) bool {
	for i := 0; i < 8; i++ {
		if d[i] < '0' || d[i] > '9' {
			return false
		}
	}
	if d[0] != '2' || d[1] != '0' {
		return false
	}
	month, day := d[4:6], d[6:8]
	return (month[0] == '0' && month[1] != '0' || month == "10" || month == "11" || month == "12") &&
		(day[0] == '0' && day[1] != '0' || day[0] == '1' || day[0] == '2' || day == "30" || day == "31")
}

// The JSON of data/genai-prices.json, as refresh/dump.mjs writes it.
type (
	fileJSON struct {
		Version   string         `json:"version"`   // the npm package version
		Date      string         `json:"date"`      // its publish date, YYYY-MM-DD
		Providers []providerJSON `json:"providers"` // the dumped providers
	}
	providerJSON struct {
		ID        string      `json:"id"`                       // genai-prices provider id
		Fallbacks []string    `json:"fallback_model_providers"` // ids tried after Models
		Models    []modelJSON `json:"models"`                   // in match order
	}
	modelJSON struct {
		ID            string          `json:"id"`             // genai-prices model id
		Name          string          `json:"name"`           // display name, if any
		Match         matchJSON       `json:"match"`          // the match rule
		Deprecated    bool            `json:"deprecated"`     // the source's flag
		ContextWindow int64           `json:"context_window"` // tokens, 0 if unknown
		Prices        json.RawMessage `json:"prices"`         // a ModelPrice or a list of condJSON
	}
	matchJSON struct {
		Equals     *string     `json:"equals"`      // whole name, case ignored
		StartsWith *string     `json:"starts_with"` // prefix, case ignored
		EndsWith   *string     `json:"ends_with"`   // suffix, case ignored
		Contains   *string     `json:"contains"`    // substring, case ignored
		Regex      *string     `json:"regex"`       // JavaScript regex on the lower-cased name
		Or         []matchJSON `json:"or"`          // any of
		And        []matchJSON `json:"and"`         // all of
	}
	condJSON struct {
		Constraint *struct {
			Type      string `json:"type"`       // start_date or time_of_date
			StartDate string `json:"start_date"` // YYYY-MM-DD, UTC
			StartTime string `json:"start_time"` // HH:MM:SS with a zone
			EndTime   string `json:"end_time"`   // HH:MM:SS with a zone, exclusive
		} `json:"constraint"` // nil: always
		Prices map[string]json.RawMessage `json:"prices"` // the ModelPrice
	}
	tieredJSON struct {
		Base  json.Number `json:"base"` // price up to the first tier
		Tiers []struct {
			Start json.Number `json:"start"` // input tokens the call must exceed
			Price json.Number `json:"price"` // price of the whole call past Start
		} `json:"tiers"` // long-context tiers
	}
)

func parseSnapshot(b string) (*snapshotData, error) {
	var f fileJSON
	dec := json.NewDecoder(strings.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("cannot parse the genai-prices snapshot: %w", err)
	}
	d := &snapshotData{
		snapshot: Snapshot{Source: fmt.Sprintf("genai-prices %s (%s)", f.Version, f.Date), Version: f.Version, Date: f.Date},
		byName:   make(map[string]*provTable),
	}
	date, err := time.Parse(time.DateOnly, f.Date)
	if err != nil {
		return nil, fmt.Errorf("cannot parse the genai-prices snapshot date %q: %w", f.Date, err)
	}
	byID := make(map[string]*provTable)
	d.byID = byID
	for _, pj := range f.Providers {
		p := &provTable{id: pj.ID}
		for _, mj := range pj.Models {
			m, err := parseModel(mj)
			if err != nil {
				return nil, fmt.Errorf("cannot parse genai-prices model %s/%s: %w", pj.ID, mj.ID, err)
			}
			p.models = append(p.models, m)
		}
		byID[p.id] = p
	}
	for _, pj := range f.Providers {
		p := byID[pj.ID]
		for _, id := range pj.Fallbacks {
			if fb := byID[id]; fb != nil {
				p.fallbacks = append(p.fallbacks, fb)
			} else {
				return nil, fmt.Errorf("cannot find fallback provider %s of genai-prices provider %s", id, pj.ID)
			}
		}
	}
	for _, p := range byID {
		p.exact = make(map[string]found)
		var names []string
		for _, q := range append([]*provTable{p}, p.fallbacks...) {
			for _, m := range q.models {
				names = m.match.equalsNames(names)
			}
		}
		for _, n := range names {
			if f := p.resolve(n); f.m != nil {
				p.exact[n] = f
			}
		}
	}
	names := make([]string, 0, len(genaiProviders))
	for name, id := range genaiProviders {
		p := byID[id]
		if p == nil {
			return nil, fmt.Errorf("cannot find genai-prices provider %s for %s in the snapshot", id, name)
		}
		d.byName[name] = p
		names = append(names, name)
	}
	sort.Strings(names)
	d.names, d.date = names, date
	return d, nil
}

func parseModel(mj modelJSON) (*model, error) {
	r, err := compileRule(mj.Match)
	if err != nil {
		return nil, err
	}
	m := &model{id: mj.ID, name: mj.Name, match: r, deprecated: mj.Deprecated, contextWindow: mj.ContextWindow}
	raw := bytes.TrimSpace(mj.Prices)
	if len(raw) > 0 && raw[0] == '[' {
		var conds []condJSON
		if err := unmarshal(raw, &conds); err != nil {
			return nil, err
		}
		if len(conds) == 0 {
			return nil, errors.New("cannot use an empty list of prices")
		}
		for _, c := range conds {
			cp, err := parseCond(c)
			if err != nil {
				return nil, err
			}
			m.prices = append(m.prices, cp)
		}
		return m, nil
	}
	var keys map[string]json.RawMessage
	if err := unmarshal(raw, &keys); err != nil {
		return nil, err
	}
	p, empty, err := parsePrice(keys)
	if err != nil {
		return nil, err
	}
	m.prices = []condPrice{{kind: always, price: p, empty: empty}}
	return m, nil
}

func parseCond(c condJSON) (condPrice, error) {
	p, empty, err := parsePrice(c.Prices)
	if err != nil {
		return condPrice{}, err
	}
	cp := condPrice{price: p, empty: empty}
	switch {
	case c.Constraint == nil:
		cp.kind = always
	case c.Constraint.Type == "start_date":
		cp.kind = startDate
		if cp.from, err = time.Parse(time.DateOnly, c.Constraint.StartDate); err != nil {
			return condPrice{}, fmt.Errorf("cannot parse start_date: %w", err)
		}
	case c.Constraint.Type == "time_of_date":
		cp.kind = timeOfDay
		if cp.todStart, err = parseTimeOfDay(c.Constraint.StartTime); err != nil {
			return condPrice{}, err
		}
		if cp.todEnd, err = parseTimeOfDay(c.Constraint.EndTime); err != nil {
			return condPrice{}, err
		}
	default:
		return condPrice{}, fmt.Errorf("cannot use price constraint type %q", c.Constraint.Type)
	}
	return cp, nil
}

var timeOfDayRE = regexp.MustCompile(`^(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|([+-])(\d{2}):(\d{2}))$`)

// parseTimeOfDay reads "16:30:00Z" or "00:30:00.5+08:00" as nanoseconds
// of the UTC day.
func parseTimeOfDay(s string) (int64, error) {
	g := timeOfDayRE.FindStringSubmatch(s)
	if g == nil {
		return 0, fmt.Errorf("cannot parse time of day %q", s)
	}
	h, _ := strconv.Atoi(g[1])
	m, _ := strconv.Atoi(g[2])
	sec, _ := strconv.Atoi(g[3])
	oh, _ := strconv.Atoi(g[7])
	om, _ := strconv.Atoi(g[8])
	if h > 23 || m > 59 || sec > 59 || oh > 23 || om > 59 {
		return 0, fmt.Errorf("cannot parse time of day %q", s)
	}
	frac := (g[4] + "000000000")[:9]
	ns, _ := strconv.ParseInt(frac, 10, 64)
	offset := int64(oh*3600+om*60) * int64(time.Second)
	if g[6] == "-" {
		offset = -offset
	}
	const day = 24 * int64(time.Hour)
	return ((int64(h*3600+m*60+sec)*int64(time.Second)+ns-offset)%day + day) % day, nil
}

// tokenKeys are the per-million price keys, in the order of the tier prices.
var tokenKeys = [...]string{"input_mtok", "cache_read_mtok", "cache_write_mtok", "output_mtok"}

// parsePrice reads a genai-prices ModelPrice; keys it does not know are
// not read (the dump keeps only these). empty tells whether it had none
// of the keys pricing reads.
func parsePrice(keys map[string]json.RawMessage) (p Price, empty bool, err error) {
	type tier struct {
		start int64
		price usd.Amount
	}
	var base [len(tokenKeys)]usd.Amount
	var tiers [len(tokenKeys)][]tier
	var has [len(tokenKeys)]bool
	var starts []int64
	for k, key := range tokenKeys {
		raw, ok := keys[key]
		if !ok {
			continue
		}
		has[k] = true
		raw = bytes.TrimSpace(raw)
		if len(raw) > 0 && raw[0] == '{' {
			var t tieredJSON
			if err := unmarshal(raw, &t); err != nil {
				return Price{}, false, fmt.Errorf("cannot parse %s: %w", key, err)
			}
			var err error
			if base[k], err = usd.Parse(t.Base.String()); err != nil {
				return Price{}, false, fmt.Errorf("cannot parse %s: %w", key, err)
			}
			for _, tj := range t.Tiers {
				start, err := strconv.ParseInt(tj.Start.String(), 10, 64)
				if err != nil || start < 0 {
					return Price{}, false, fmt.Errorf("cannot parse tier start %q of %s", tj.Start, key)
				}
				price, err := usd.Parse(tj.Price.String())
				if err != nil {
					return Price{}, false, fmt.Errorf("cannot parse %s: %w", key, err)
				}
				tiers[k] = append(tiers[k], tier{start, price})
				starts = append(starts, start)
			}
			slices.SortStableFunc(tiers[k], func(a, b tier) int { return cmp.Compare(a.start, b.start) })
			continue
		}
		var n json.Number
		if err := unmarshal(raw, &n); err != nil {
			return Price{}, false, fmt.Errorf("cannot parse %s: %w", key, err)
		}
		if base[k], err = usd.Parse(n.String()); err != nil {
			return Price{}, false, fmt.Errorf("cannot parse %s: %w", key, err)
		}
	}
	p = Price{Input: base[0], CacheRead: base[1], CacheWrite: base[2], Output: base[3], HasCacheRead: has[1], HasCacheWrite: has[2]}
	raw, perCall := keys["requests_kcount"]
	if perCall {
		var n json.Number
		if err := unmarshal(raw, &n); err != nil {
			return Price{}, false, fmt.Errorf("cannot parse requests_kcount: %w", err)
		}
		if p.PerThousandCalls, err = usd.Parse(n.String()); err != nil {
			return Price{}, false, fmt.Errorf("cannot parse requests_kcount: %w", err)
		}
	}
	// Each key may be tiered on its own starts; merge them into tiers at
	// every start, a key's price there being its last tier at or below it.
	slices.Sort(starts)
	starts = slices.Compact(starts)
	for _, s := range starts {
		var at [len(tokenKeys)]usd.Amount
		for k := range tokenKeys {
			at[k] = base[k]
			for _, t := range tiers[k] {
				if t.start <= s {
					at[k] = t.price
				}
			}
		}
		p.Tiers = append(p.Tiers, Tier{Above: s, Input: at[0], CacheRead: at[1], CacheWrite: at[2], Output: at[3]})
	}
	return p, !has[0] && !has[1] && !has[2] && !has[3] && !perCall, nil
}

func compileRule(mj matchJSON) (rule, error) {
	var rules []rule
	add := func(op uint8, s *string) {
		if s != nil {
			rules = append(rules, rule{op: op, s: strings.ToLower(*s)})
		}
	}
	add(opEquals, mj.Equals)
	add(opStartsWith, mj.StartsWith)
	add(opEndsWith, mj.EndsWith)
	add(opContains, mj.Contains)
	if mj.Regex != nil {
		r, err := compileRegex(*mj.Regex)
		if err != nil {
			return rule{}, err
		}
		rules = append(rules, r)
	}
	for _, op := range []struct {
		op   uint8
		subs []matchJSON
	}{{opOr, mj.Or}, {opAnd, mj.And}} {
		if op.subs == nil {
			continue
		}
		r := rule{op: op.op}
		for _, sj := range op.subs {
			s, err := compileRule(sj)
			if err != nil {
				return rule{}, err
			}
			r.subs = append(r.subs, s)
		}
		rules = append(rules, r)
	}
	if len(rules) != 1 {
		return rule{}, fmt.Errorf("cannot use a match rule with %d operators", len(rules))
	}
	return rules[0], nil
}

// compileRegex compiles a source regex for RE2. A leading negative
// lookahead, "^(?!X)REST" with no "|" in REST, which RE2 lacks, becomes
// "must not match ^(?:X), must match ^(?:REST)"; any other construct RE2
// lacks is an error, caught by the tests at refresh.
func compileRegex(src string) (rule, error) {
	r := rule{op: opRegex}
	pos := src
	if strings.HasPrefix(src, "^(?!") {
		end := closingParen(src, 1)
		if end < 0 || strings.Contains(src[end+1:], "|") {
			return rule{}, fmt.Errorf("cannot translate regex %q for RE2", src)
		}
		var err error
		if r.not, err = regexp.Compile("^(?:" + src[4:end] + ")"); err != nil {
			return rule{}, fmt.Errorf("cannot compile regex %q: %w", src, err)
		}
		pos = src[end+1:]
		if pos == "" {
			return r, nil
		}
		pos = "^(?:" + pos + ")"
	}
	var err error
	if r.re, err = regexp.Compile(pos); err != nil {
		return rule{}, fmt.Errorf("cannot compile regex %q: %w", src, err)
	}
	return r, nil
}

// closingParen returns the index of the parenthesis closing the one at
// open, skipping escapes and character classes, or -1.
func closingParen(s string, open int) int {
	depth, inClass := 0, false
	for i := open; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			i++
		case inClass:
			inClass = c != ']'
		case c == '[':
			inClass = true
		case c == '(':
			depth++
		case c == ')':
			depth--
			if depth == 0 {
				return i
			}
		}
	}
	return -1
}

func unmarshal(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return dec.Decode(v)
}
