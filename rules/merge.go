package rules

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/pricing"
	"github.com/llmusage/llmusage/provider"
)

// Set is what the rules say at one moment: the rules in force, the ones a
// rule of the same scope shadows, and the provider table.
type Set struct {
	// InForce are the rules the limiter enforces: the file's in file
	// order (among equally specific rules the first wins), then the
	// database's in row order.
	InForce []limiter.Rule
	// Shadowed are the rules a rule of the same scope overrides.
	Shadowed []Shadowed
	// Skipped are the database rows that are not valid rules.
	Skipped []error
	// Providers infers providers from model names: the built-in prefixes
	// extended by the limits file's.
	Providers *provider.Table
	// Prices prices calls: the embedded table under the overrides of the
	// limits file and, set by the Manager, of llm_model_prices (see Prices).
	Prices *pricing.Table
}

// Digest is the SHA-256 of the rules in force and the provider table, in
// hex: two replicas enforce the same limits if and only if their digests
// match. Where a rule came from (its Source) does not count, so that a
// comment added to the limits file changes nothing.
func (s *Set) Digest() string {
	h := sha256.New()
	for _, r := range s.InForce {
		fmt.Fprintf(h, "rule %q %q %q %s %s %d", r.UserID, r.Provider, r.Model, r.Window, r.Unit, r.Limit)
		if r.TeamID != "" || r.Per != limiter.PerUser { // so that the digests of earlier rules stay
			fmt.Fprintf(h, " team %q per %s", r.TeamID, r.Per)
		}
		fmt.Fprintln(h)
	}
	for _, p := range s.Providers.Prefixes() {
		fmt.Fprintf(h, "provider %q %q\n", p.Prefix, p.Provider)
	}
	if s.Prices != nil {
		fmt.Fprintf(h, "prices %q\n", s.Prices.Snapshot().Source)
		for _, m := range s.Prices.Overrides() {
			fmt.Fprintf(h, "price %q %q %d %d %t %d %t %d %d\n", m.Provider, m.Model, m.Input, m.CacheRead, m.HasCacheRead, m.CacheWrite, m.HasCacheWrite, m.Output, m.From.UnixNano())
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Shadowed is a rule that is not in force because another wins its scope.
type Shadowed struct {
	// Rule is the rule that lost; its Source says where it came from.
	Rule limiter.Rule
	// By is where the winner came from: a rule's Source, or the limits
	// file for seeded defaults that yield to it.
	By string
}

// Merge decides which rules are in force, by their origin:
//
//  1. a row an operator inserted or changed beats the limits file rule of
//     the same scope (among rows of one scope, the highest id);
//  2. a limits file rule beats the seeded default rows;
//  3. the seeded default rows, as long as nobody changed them, apply only
//     when the limits file has no limits at all: defaults nobody set never
//     override what an operator wrote.
//
// file may be nil (no limits file).
func Merge(file *File, rows []Row) *Set {
	set := &Set{}
	if file == nil {
		file = &File{}
	}
	set.Providers = provider.NewTable(file.Providers)
	if base, err := pricing.Embedded(); err == nil { // tested in pricing: it parses
		set.Prices, _ = Prices(base, file, nil)
	}

	// The database's winner of each scope.
	type dbRule struct {
		rule   limiter.Rule
		seeded bool
	}
	var db []dbRule
	byScope := map[scope]int{}
	// losers are the rows a later row of their scope beat, named by the
	// scope's final winner once every row is read.
	var losers []limiter.Rule
	for _, row := range rows {
		r, err := row.Rule()
		if err != nil {
			set.Skipped = append(set.Skipped, err)
			continue
		}
		k := scopeOf(r)
		i, dup := byScope[k]
		if !dup {
			byScope[k] = len(db)
			db = append(db, dbRule{r, row.Seeded})
			continue
		}
		winner, loser := db[i], dbRule{r, row.Seeded}
		if !row.Seeded || winner.seeded { // a later row wins, unless a seeded one over an operator's
			winner, loser = loser, winner
		}
		db[i] = winner
		losers = append(losers, loser.rule)
	}
	for _, r := range losers {
		set.Shadowed = append(set.Shadowed, Shadowed{Rule: r, By: db[byScope[scopeOf(r)]].rule.Source})
	}

	fileHasLimits := len(file.Rules) > 0
	kept := db[:0:0]
	for _, d := range db {
		if d.seeded && fileHasLimits {
			set.Shadowed = append(set.Shadowed, Shadowed{Rule: d.rule, By: "the limits file " + file.Name})
			delete(byScope, scopeOf(d.rule))
			continue
		}
		kept = append(kept, d)
	}
	for _, r := range file.Rules {
		if i, overridden := byScope[scopeOf(r)]; overridden {
			set.Shadowed = append(set.Shadowed, Shadowed{Rule: r, By: db[i].rule.Source})
			continue
		}
		set.InForce = append(set.InForce, r)
	}
	for _, d := range kept {
		set.InForce = append(set.InForce, d.rule)
	}
	return set
}

// scope is what makes two rules compete: one of them is in force.
type scope struct {
	user, team, provider, model string
	per                         limiter.Per
	window                      limiter.Window
	unit                        limiter.Unit
}

func scopeOf(r limiter.Rule) scope {
	return scope{r.UserID, r.TeamID, r.Provider, r.Model, r.Per, r.Window, r.Unit}
}
