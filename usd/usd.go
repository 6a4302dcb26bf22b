// Package usd is money as llmusage counts it: whole nano-dollars in an
// int64, so that sums are exact (the issue asks for 1e-9 USD, the scale of
// the cost_usd column) and reach ±9.2 billion dollars.
package usd

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Amount is a sum of money in nano-USD (1e-9 dollars).
type Amount int64

// Dollar is one US dollar.
const Dollar Amount = 1_000_000_000

// Max is the largest amount accepted from input: a billion dollars, far
// beyond any call or budget, and far from overflowing a sum.
const Max = 1_000_000_000 * Dollar

// Scale is the number of decimal places an Amount keeps.
const Scale = 9

// Parse reads a non-negative decimal number of dollars such as "0.0012",
// "50" or "1.5e-3". More than nine decimal places are rounded half up.
func Parse(s string) (Amount, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("cannot parse an empty amount of USD")
	}
	mant, exp := s, 0
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		e, err := strconv.Atoi(s[i+1:])
		if err != nil || e < -40 || e > 40 {
			return 0, fmt.Errorf("cannot parse %q as USD: bad exponent", s)
		}
		mant, exp = s[:i], e
	}
	if strings.HasPrefix(mant, "-") {
		return 0, fmt.Errorf("cannot use %q as USD: must not be negative", s)
	}
	mant = strings.TrimPrefix(mant, "+")
	intPart, frac, _ := strings.Cut(mant, ".")
	if intPart == "" && frac == "" || !digits(intPart) || !digits(frac) {
		return 0, fmt.Errorf("cannot parse %q as USD: not a decimal number", s)
	}
	all := strings.TrimLeft(intPart+frac, "0")
	// The value is all * 10^(exp - len(frac)); in nano-USD, shift by Scale.
	shift := exp - len(frac) + Scale
	if all == "" {
		return 0, nil
	}
	if len(all)+shift > 19 {
		return 0, fmt.Errorf("cannot use %q as USD: more than %d", s, int64(Max/Dollar))
	}
	var roundUp bool
	if shift < 0 {
		if -shift > len(all) {
			roundUp = -shift == len(all) && all[0] >= '5'
			all = "0"
		} else {
			cut := len(all) + shift
			roundUp = all[cut] >= '5'
			all = all[:cut]
		}
		shift = 0
	}
	if all == "" {
		all = "0"
	}
	n, err := strconv.ParseInt(all+strings.Repeat("0", shift), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("cannot use %q as USD: more than %d", s, int64(Max/Dollar))
	}
	if roundUp {
		n++
	}
	if Amount(n) > Max {
		return 0, fmt.Errorf("cannot use %q as USD: more than %d", s, int64(Max/Dollar))
	}
	return Amount(n), nil
}

// String writes the amount in dollars with the trailing zeros of its nine
// decimal places dropped: "0.00123", "50", "-0.1".
func (a Amount) String() string {
	sign := ""
	u := uint64(a)
	if a < 0 {
		sign, u = "-", uint64(-a)
	}
	whole, frac := u/uint64(Dollar), u%uint64(Dollar)
	if frac == 0 {
		return fmt.Sprintf("%s%d", sign, whole)
	}
	return strings.TrimRight(fmt.Sprintf("%s%d.%09d", sign, whole, frac), "0")
}

// Float returns the amount in dollars, for metrics.
func (a Amount) Float() float64 { return float64(a) / float64(Dollar) }

// MarshalJSON writes the amount as a JSON number of dollars, exactly.
func (a Amount) MarshalJSON() ([]byte, error) { return []byte(a.String()), nil }

// UnmarshalJSON reads a JSON number of dollars.
func (a *Amount) UnmarshalJSON(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
