package limiter

import (
	"fmt"
	"hash/maphash"
	"math"
	"sort"
)

// ruleSet indexes the rules for matching. It is immutable once built.
type ruleSet struct {
	all []rule
	// slots holds, per (level, window, unit), the candidate rules, most
	// specific first.
	slots [numPers][numWindows][numUnits]slotRules
	// active lists the slots that hold a rule, in slot order (a user's
	// own buckets first, then the team's pools, then the shared pools): a
	// call visits these only (two of fifty-four with the default rules).
	active []*slotRules
	// owners finds the rule a user's bucket belongs to.
	owners map[ownerKey]*rule
}

// rule is a Rule with the scope its buckets are keyed by.
type rule struct {
	Rule
	scope *Scope
	// tag tells apart the scopes of a concurrency limit's level, as an
	// estimate remembers the slots it holds (see holds): a reload that
	// changes the rule's scope makes new buckets, which hold none.
	tag uint16
}

// scopeSeed hashes rules' scopes into tags, alike across reloads.
var scopeSeed = maphash.MakeSeed()

type ownerKey struct {
	user  string
	scope Scope
}

type slotRules struct {
	// byUser holds user-scoped rules; they outrank every other rule.
	byUser map[string][]*rule
	// general holds the rules that apply to every user.
	general []*rule
}

func newRuleSet(rules []Rule) (*ruleSet, error) {
	rs := &ruleSet{all: make([]rule, len(rules)), owners: make(map[ownerKey]*rule)}
	for i := range rules {
		r := &rs.all[i]
		r.Rule = rules[i]
		r.scope = &Scope{Provider: r.Provider, Model: r.Model, TeamID: r.TeamID, Per: r.Per, Window: r.Window, Unit: r.Unit}
		r.tag = uint16(maphash.String(scopeSeed, r.Provider+"\x00"+r.Model+"\x00"+r.TeamID))
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", r.Source, err)
		}
		k := ownerKey{r.UserID, *r.scope}
		if prev, dup := rs.owners[k]; dup {
			return nil, fmt.Errorf("%s: a %s %s rule with the same scope is already defined at %s", r.Source, r.Window, r.Unit, prev.Source)
		}
		rs.owners[k] = r
		slot := &rs.slots[r.Per][r.Window][r.Unit]
		if r.UserID != "" {
			if slot.byUser == nil {
				slot.byUser = make(map[string][]*rule)
			}
			slot.byUser[r.UserID] = append(slot.byUser[r.UserID], r)
		} else {
			slot.general = append(slot.general, r)
		}
	}
	bySpecificity := func(rules []*rule) {
		// Stable, so that among equally specific rules (two model globs
		// that both match) the one written first wins.
		sort.SliceStable(rules, func(i, j int) bool { return rules[i].specificity() > rules[j].specificity() })
	}
	for p := range rs.slots {
		for w := range rs.slots[p] {
			for u := range rs.slots[p][w] {
				slot := &rs.slots[p][w][u]
				for _, rules := range slot.byUser {
					bySpecificity(rules)
				}
				bySpecificity(slot.general)
				if len(slot.general) > 0 || len(slot.byUser) > 0 {
					rs.active = append(rs.active, slot)
				}
			}
		}
	}
	return rs, nil
}

// applicable appends the most specific matching rule of every (level,
// window, unit) to dst: a user's own rules first, then the team's pools,
// then the shared pools.
func (rs *ruleSet) applicable(user, team, provider, model string, dst []*rule) []*rule {
	for _, slot := range rs.active {
		if r := slot.match(user, team, provider, model); r != nil {
			dst = append(dst, r)
		}
	}
	return dst
}

func (s *slotRules) match(user, team, provider, model string) *rule {
	for _, r := range s.byUser[user] {
		if r.matches(team, provider, model) {
			return r
		}
	}
	for _, r := range s.general {
		if r.matches(team, provider, model) {
			return r
		}
	}
	return nil
}

// budgetSpend sums the groups of spend whose calls the budget of owner
// and scope sc counts: those for which its rule is the most specific of
// its level and limit type, as Check and Record choose it. Sums saturate
// rather than wrap.
func (rs *ruleSet) budgetSpend(owner string, sc *Scope, groups []Spend) int64 {
	r := rs.owner(owner, sc)
	var sum int64
	for _, g := range groups {
		if rs.budgetCounts(owner, sc, r, g) {
			sum = addSaturating(sum, g.NanoUSD)
		}
	}
	return sum
}

// budgetCounts tells whether the budget of owner and scope sc, whose rule
// is r, counts spend g.
func (rs *ruleSet) budgetCounts(owner string, sc *Scope, r *rule, g Spend) bool {
	if r == nil {
		return true
	}
	per, id := ParseOwner(owner)
	user := ""
	if per == PerUser {
		user = id
	}
	return rs.slots[sc.Per][sc.Window][sc.Unit].match(user, g.TeamID, g.Provider, g.Model) == r
}

// addSaturating adds without wrapping past the int64 range.
func addSaturating(a, b int64) int64 {
	s := a + b
	switch {
	case a > 0 && b > 0 && s < 0:
		return math.MaxInt64
	case a < 0 && b < 0 && s >= 0:
		return math.MinInt64
	}
	return s
}

// owner returns the rule that the bucket of scope sc of a user (or of a
// pool's owner) belongs to, or nil if the rules changed and none does
// any more. The user may or may not be part of the rule's scope.
func (rs *ruleSet) owner(user string, sc *Scope) *rule {
	if r := rs.owners[ownerKey{user, *sc}]; r != nil {
		return r
	}
	return rs.owners[ownerKey{"", *sc}]
}
