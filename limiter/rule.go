package limiter

import (
	"fmt"
	"time"

	"github.com/llmusage/llmusage/internal/glob"
)

// Window is a rule's limit type: the period its limit is counted over.
type Window uint8

// The limit types of the seed's llm_rate_limit_configs table.
const (
	Second Window = iota
	Minute
	Hour
	Day
	numWindows
)

// Windows lists every limit type, shortest first.
var Windows = []Window{Second, Minute, Hour, Day}

var windowNames = [numWindows]string{"second", "minute", "hour", "day"}
var windowDurations = [numWindows]time.Duration{time.Second, time.Minute, time.Hour, 24 * time.Hour}

// String returns the limit type as it is written in the limits file and the API.
func (w Window) String() string { return windowNames[w] }

// Duration returns the period a limit of this type is counted over.
func (w Window) Duration() time.Duration { return windowDurations[w] }

// ParseWindow parses a limit type name.
func ParseWindow(s string) (Window, error) {
	for w, name := range windowNames {
		if s == name {
			return Window(w), nil
		}
	}
	return 0, fmt.Errorf("unknown limit_type %q; valid: second, minute, hour, day", s)
}

// Unit is what a rule counts.
type Unit uint8

// Units a rule can count.
const (
	Requests Unit = iota
	Tokens
	numUnits
)

var unitNames = [numUnits]string{"requests", "tokens"}

// String returns the unit as the API and the seed's tables spell it.
func (u Unit) String() string { return unitNames[u] }

// Rule is one token bucket definition: Limit units per Window, optionally
// scoped to a user, a provider and a model.
type Rule struct {
	// UserID scopes the rule to one user; empty matches every user.
	UserID string
	// Provider scopes the rule to one provider; empty matches every provider.
	Provider string
	// Model scopes the rule to models matching this glob, where "*"
	// matches any run of characters ("/" included, as in
	// "meta-llama/*") and "?" any one character, ASCII case ignored;
	// empty matches every model.
	Model string
	// Window is the period the limit is counted over.
	Window Window
	// Unit is what the limit counts.
	Unit Unit
	// Limit is the bucket's capacity, refilled continuously at Limit per Window.
	Limit int64
	// Source tells where the rule came from (such as "limits.yaml:12"), for messages.
	Source string
}

// MaxLimit bounds a rule's limit so that bucket arithmetic stays exact in
// float64 and fits rate.Limiter's int burst.
const MaxLimit = 1 << 50

// Validate reports the first problem that makes r unusable.
func (r Rule) Validate() error {
	if r.Window >= numWindows {
		return fmt.Errorf("invalid limit_type %d", r.Window)
	}
	if r.Unit >= numUnits {
		return fmt.Errorf("invalid unit %d", r.Unit)
	}
	if r.Limit < 1 || r.Limit > MaxLimit {
		return fmt.Errorf("%s must be between 1 and %d, got %d", r.Unit, int64(MaxLimit), r.Limit)
	}
	return nil
}

// specificity orders rules: user scope outranks provider scope, which
// outranks model scope, so that user+provider+model > user+provider >
// user+model > user > provider+model > provider > model > unscoped.
func (r Rule) specificity() int {
	s := 0
	if r.UserID != "" {
		s += 4
	}
	if r.Provider != "" {
		s += 2
	}
	if r.Model != "" {
		s++
	}
	return s
}

// matches tells whether the rule applies to a call. The user is checked by
// the caller, which indexes user-scoped rules by user.
func (r *Rule) matches(provider, model string) bool {
	if r.Provider != "" && r.Provider != provider {
		return false
	}
	if r.Model != "" {
		return glob.Match(r.Model, model)
	}
	return true
}
