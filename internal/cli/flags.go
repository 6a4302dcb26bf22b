package cli

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Flag is a command's flag: --name value, --name=value, or the first of
// its environment variables that is set.
type Flag interface {
	// Names are the flag's names, without dashes.
	Names() []string
	// GetEnvVars are the environment variables that set the flag.
	GetEnvVars() []string
	// GetUsage is the flag's description.
	GetUsage() string
	// GetCategory is the heading the help text files the flag under
	// (none if empty).
	GetCategory() string
	// GetDefaultText is the default as the help text and docs show it
	// (quoted for a string; empty for no default).
	GetDefaultText() string
	// TakesValue is false for a flag that is given alone (a bool's --name).
	TakesValue() bool
	// apply declares the flag, at its default, on a parse's flag set.
	apply(fs *flag.FlagSet)
}

// CategorizableFlag is a flag with a category, under urfave/cli's name:
// every Flag is one.
type CategorizableFlag interface {
	Flag
	// GetCategory is the flag's heading in the help text.
	GetCategory() string
}

// DocGenerationFlag is what a generator of flag docs reads of a flag,
// under urfave/cli's name: every Flag is one.
type DocGenerationFlag interface {
	Flag
	// TakesValue is false for a flag given alone.
	TakesValue() bool
	// GetUsage is the flag's description.
	GetUsage() string
	// GetDefaultText is the default as shown.
	GetDefaultText() string
	// GetEnvVars are the environment variables that set the flag.
	GetEnvVars() []string
}

// StringFlag is a string flag.
type StringFlag struct {
	// Name is the flag's name, without dashes.
	Name string
	// Value is the default.
	Value string
	// Usage is the description in the help text.
	Usage string
	// EnvVars are the environment variables that set the flag.
	EnvVars []string
	// Category is the heading the help text files the flag under.
	Category string
}

// IntFlag is an int flag.
type IntFlag struct {
	// Name is the flag's name, without dashes.
	Name string
	// Value is the default.
	Value int
	// Usage is the description in the help text.
	Usage string
	// EnvVars are the environment variables that set the flag.
	EnvVars []string
	// Category is the heading the help text files the flag under.
	Category string
}

// Float64Flag is a float64 flag.
type Float64Flag struct {
	// Name is the flag's name, without dashes.
	Name string
	// Value is the default.
	Value float64
	// Usage is the description in the help text.
	Usage string
	// EnvVars are the environment variables that set the flag.
	EnvVars []string
	// Category is the heading the help text files the flag under.
	Category string
}

// BoolFlag is a bool flag: --name, --name=true or --name=false.
type BoolFlag struct {
	// Name is the flag's name, without dashes.
	Name string
	// Value is the default.
	Value bool
	// Usage is the description in the help text.
	Usage string
	// EnvVars are the environment variables that set the flag.
	EnvVars []string
	// Category is the heading the help text files the flag under.
	Category string
}

// DurationFlag is a time.Duration flag (90s, 1h).
type DurationFlag struct {
	// Name is the flag's name, without dashes.
	Name string
	// Value is the default.
	Value time.Duration
	// Usage is the description in the help text.
	Usage string
	// EnvVars are the environment variables that set the flag.
	EnvVars []string
	// Category is the heading the help text files the flag under.
	Category string
}

// StringSliceFlag is a repeatable flag whose values may also be
// comma-separated; the first value given replaces the default.
type StringSliceFlag struct {
	// Name is the flag's name, without dashes.
	Name string
	// Value is the default (none if nil).
	Value *StringSlice
	// Usage is the description in the help text.
	Usage string
	// EnvVars are the environment variables that set the flag.
	EnvVars []string
	// Category is the heading the help text files the flag under.
	Category string
}

// GenericFlag is a flag of any flag.Value; Context.Generic returns it.
type GenericFlag struct {
	// Name is the flag's name, without dashes.
	Name string
	// Value holds the default, and a parse sets it in place.
	Value GenericValue
	// Usage is the description in the help text.
	Usage string
	// EnvVars are the environment variables that set the flag.
	EnvVars []string
	// Category is the heading the help text files the flag under.
	Category string
}

// GenericValue is the value of a GenericFlag.
type GenericValue interface {
	// Set parses the flag's text.
	Set(string) error
	// String is the value as the help text shows it.
	String() string
}

// StringSlice is the value of a StringSliceFlag.
type StringSlice struct {
	// values are the strings, in order.
	values []string
	// setByUser is true once a value was given: the next ones add to it.
	setByUser bool
}

// NewStringSlice is a StringSliceFlag's default of values.
func NewStringSlice(values ...string) *StringSlice {
	return &StringSlice{values: append([]string(nil), values...)}
}

// Set adds the comma-separated values of s, replacing the default at the
// first value given.
func (s *StringSlice) Set(v string) error {
	if !s.setByUser {
		s.values, s.setByUser = nil, true
	}
	for _, t := range strings.Split(v, ",") {
		s.values = append(s.values, strings.TrimSpace(t))
	}
	return nil
}

// String shows the values as the help text's default.
func (s *StringSlice) String() string {
	if s == nil {
		return ""
	}
	q := make([]string, len(s.values))
	for i, v := range s.values {
		q[i] = strconv.Quote(v)
	}
	return strings.Join(q, ", ")
}

// Value is the strings, in order.
func (s *StringSlice) Value() []string { return append([]string(nil), s.values...) }

func (f *StringFlag) Names() []string        { return []string{f.Name} }
func (f *StringFlag) GetEnvVars() []string   { return f.EnvVars }
func (f *IntFlag) Names() []string           { return []string{f.Name} }
func (f *IntFlag) GetEnvVars() []string      { return f.EnvVars }
func (f *Float64Flag) Names() []string       { return []string{f.Name} }
func (f *Float64Flag) GetEnvVars() []string  { return f.EnvVars }
func (f *BoolFlag) Names() []string          { return []string{f.Name} }
func (f *BoolFlag) GetEnvVars() []string     { return f.EnvVars }
func (f *DurationFlag) Names() []string      { return []string{f.Name} }
func (f *DurationFlag) GetEnvVars() []string { return f.EnvVars }
func (f *StringSliceFlag) Names() []string   { return []string{f.Name} }
func (f *StringSliceFlag) GetEnvVars() []string {
	return f.EnvVars
}
func (f *GenericFlag) Names() []string      { return []string{f.Name} }
func (f *GenericFlag) GetEnvVars() []string { return f.EnvVars }

func (f *StringFlag) GetUsage() string      { return f.Usage }
func (f *IntFlag) GetUsage() string         { return f.Usage }
func (f *Float64Flag) GetUsage() string     { return f.Usage }
func (f *BoolFlag) GetUsage() string        { return f.Usage }
func (f *DurationFlag) GetUsage() string    { return f.Usage }
func (f *StringSliceFlag) GetUsage() string { return f.Usage }
func (f *GenericFlag) GetUsage() string     { return f.Usage }

func (f *StringFlag) apply(fs *flag.FlagSet) {
	v := stringValue(f.Value)
	fs.Var(&v, f.Name, f.Usage)
}

func (f *IntFlag) apply(fs *flag.FlagSet) {
	v := intValue(f.Value)
	fs.Var(&v, f.Name, f.Usage)
}

func (f *Float64Flag) apply(fs *flag.FlagSet) {
	v := float64Value(f.Value)
	fs.Var(&v, f.Name, f.Usage)
}

func (f *BoolFlag) apply(fs *flag.FlagSet) {
	v := boolValue(f.Value)
	fs.Var(&v, f.Name, f.Usage)
}

func (f *DurationFlag) apply(fs *flag.FlagSet) {
	v := durationValue(f.Value)
	fs.Var(&v, f.Name, f.Usage)
}

func (f *StringSliceFlag) apply(fs *flag.FlagSet) {
	v := &StringSlice{}
	if f.Value != nil {
		v.values = append([]string(nil), f.Value.values...)
	}
	fs.Var(v, f.Name, f.Usage)
}

func (f *GenericFlag) apply(fs *flag.FlagSet) {
	fs.Var(&genericValue{v: f.Value}, f.Name, f.Usage)
}

func (f *StringFlag) GetCategory() string      { return f.Category }
func (f *IntFlag) GetCategory() string         { return f.Category }
func (f *Float64Flag) GetCategory() string     { return f.Category }
func (f *BoolFlag) GetCategory() string        { return f.Category }
func (f *DurationFlag) GetCategory() string    { return f.Category }
func (f *StringSliceFlag) GetCategory() string { return f.Category }
func (f *GenericFlag) GetCategory() string     { return f.Category }

func (f *StringFlag) TakesValue() bool      { return true }
func (f *IntFlag) TakesValue() bool         { return true }
func (f *Float64Flag) TakesValue() bool     { return true }
func (f *BoolFlag) TakesValue() bool        { return false }
func (f *DurationFlag) TakesValue() bool    { return true }
func (f *StringSliceFlag) TakesValue() bool { return true }
func (f *GenericFlag) TakesValue() bool     { return true }

// The default texts are urfave/cli's, which docs/flags.md was generated
// with: a string quoted, an empty string or slice none.

func (f *StringFlag) GetDefaultText() string {
	if f.Value == "" {
		return ""
	}
	return strconv.Quote(f.Value)
}

func (f *IntFlag) GetDefaultText() string { return strconv.Itoa(f.Value) }

func (f *Float64Flag) GetDefaultText() string {
	return strconv.FormatFloat(f.Value, 'g', -1, 64)
}

func (f *BoolFlag) GetDefaultText() string     { return strconv.FormatBool(f.Value) }
func (f *DurationFlag) GetDefaultText() string { return f.Value.String() }

func (f *StringSliceFlag) GetDefaultText() string {
	if f.Value == nil {
		return ""
	}
	var q []string
	for _, v := range f.Value.values {
		if v != "" {
			q = append(q, strconv.Quote(v))
		}
	}
	return strings.Join(q, ", ")
}

func (f *GenericFlag) GetDefaultText() string {
	if f.Value == nil {
		return ""
	}
	return f.Value.String()
}

// The values a parse sets; each parse has its own, at the flag's default.
type (
	stringValue   string
	intValue      int
	float64Value  float64
	boolValue     bool
	durationValue time.Duration
)

// genericValue is a GenericFlag's value during a parse.
type genericValue struct {
	// v is the value that Set parses into.
	v GenericValue
}

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }
func (v *stringValue) String() string     { return string(*v) }
func (v *stringValue) get() string        { return string(*v) }

func (v *intValue) Set(s string) error {
	n, err := strconv.ParseInt(s, 0, strconv.IntSize)
	if err != nil {
		return fmt.Errorf("want an integer")
	}
	*v = intValue(n)
	return nil
}
func (v *intValue) String() string { return strconv.Itoa(int(*v)) }
func (v *intValue) get() int       { return int(*v) }

func (v *float64Value) Set(s string) error {
	n, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("want a number")
	}
	*v = float64Value(n)
	return nil
}
func (v *float64Value) String() string { return strconv.FormatFloat(float64(*v), 'g', -1, 64) }
func (v *float64Value) get() float64   { return float64(*v) }

func (v *boolValue) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("want true or false")
	}
	*v = boolValue(b)
	return nil
}
func (v *boolValue) String() string { return strconv.FormatBool(bool(*v)) }
func (v *boolValue) get() bool      { return bool(*v) }

// IsBoolFlag lets --name stand for --name=true.
func (v *boolValue) IsBoolFlag() bool { return true }

func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration such as 90s or 1h")
	}
	*v = durationValue(d)
	return nil
}
func (v *durationValue) String() string     { return time.Duration(*v).String() }
func (v *durationValue) get() time.Duration { return time.Duration(*v) }

func (v *genericValue) Set(s string) error { return v.v.Set(s) }
func (v *genericValue) String() string {
	if v == nil || v.v == nil {
		return ""
	}
	return v.v.String()
}
