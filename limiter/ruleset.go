package limiter

import (
	"fmt"
	"sort"
)

// ruleSet indexes the rules for matching. It is immutable once built.
type ruleSet struct {
	all []Rule
	// slots holds, per (window, unit), the candidate rules, most specific first.
	slots [numWindows][numUnits]slotRules
	// scopes finds the rule a bucket key belongs to.
	scopes map[bucketKey]*Rule
}

type slotRules struct {
	// byUser holds user-scoped rules; they outrank every other rule.
	byUser map[string][]*Rule
	// general holds the rules that apply to every user.
	general []*Rule
}

func newRuleSet(rules []Rule) (*ruleSet, error) {
	rs := &ruleSet{all: append([]Rule(nil), rules...), scopes: make(map[bucketKey]*Rule)}
	for i := range rs.all {
		r := &rs.all[i]
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", r.Source, err)
		}
		k := keyFor(r.UserID, r)
		if prev, dup := rs.scopes[k]; dup {
			return nil, fmt.Errorf("%s: a %s %s rule with the same scope is already defined at %s", r.Source, r.Window, r.Unit, prev.Source)
		}
		rs.scopes[k] = r
		slot := &rs.slots[r.Window][r.Unit]
		if r.UserID != "" {
			if slot.byUser == nil {
				slot.byUser = make(map[string][]*Rule)
			}
			slot.byUser[r.UserID] = append(slot.byUser[r.UserID], r)
		} else {
			slot.general = append(slot.general, r)
		}
	}
	bySpecificity := func(rules []*Rule) {
		// Stable, so that among equally specific rules (two model globs
		// that both match) the one written first wins.
		sort.SliceStable(rules, func(i, j int) bool { return rules[i].specificity() > rules[j].specificity() })
	}
	for w := range rs.slots {
		for u := range rs.slots[w] {
			slot := &rs.slots[w][u]
			for _, rules := range slot.byUser {
				bySpecificity(rules)
			}
			bySpecificity(slot.general)
		}
	}
	return rs, nil
}

// applicable appends the most specific matching rule of every (window,
// unit) to dst.
func (rs *ruleSet) applicable(user, provider, model string, dst []*Rule) []*Rule {
	for w := range rs.slots {
		for u := range rs.slots[w] {
			if r := rs.slots[w][u].match(user, provider, model); r != nil {
				dst = append(dst, r)
			}
		}
	}
	return dst
}

func (s *slotRules) match(user, provider, model string) *Rule {
	for _, r := range s.byUser[user] {
		if r.matches(provider, model) {
			return r
		}
	}
	for _, r := range s.general {
		if r.matches(provider, model) {
			return r
		}
	}
	return nil
}

// byScope returns the rule that a bucket key belongs to, or nil if the
// rules changed and none does any more. A key carries the rule's scope
// values and the user, and the user may or may not be part of the scope.
func (rs *ruleSet) byScope(k bucketKey) *Rule {
	if r := rs.scopes[k]; r != nil {
		return r
	}
	k.user = ""
	return rs.scopes[k]
}
