package cli

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// size is a GenericValue, as llmusage's byte sizes are.
type size int64

func (s *size) Set(v string) error {
	_, err := fmt.Sscanf(v, "%dKiB", (*int64)(s))
	*s *= 1024
	return err
}
func (s *size) String() string { return fmt.Sprintf("%dKiB", *s/1024) }

// parsed is what one run of the test app read from its flags.
type parsed struct {
	// str, n, f, b, d, list and bytes are the flags' values.
	str   string
	n     int
	f     float64
	b     bool
	d     time.Duration
	list  []string
	bytes int64
}

func run(t *testing.T, args ...string) (parsed, string, error) {
	t.Helper()
	var p parsed
	def := size(2048)
	var out bytes.Buffer
	app := &App{Name: "prog", Usage: "a test", Writer: &out, ErrWriter: &out,
		OnUsageError: func(_ *Context, err error, _ bool) error { return fmt.Errorf("cannot parse the command line: %w", err) },
		Commands: []*Command{{
			Name: "go", Usage: "reads its flags",
			Flags: []Flag{
				&StringFlag{Name: "str", Value: "x", Usage: "a string", EnvVars: []string{"T_STR"}},
				&IntFlag{Name: "n", Value: 3, Usage: "an int", EnvVars: []string{"T_N"}},
				&Float64Flag{Name: "f", Usage: "a float"},
				&BoolFlag{Name: "b", Value: true, Usage: "a bool", EnvVars: []string{"T_B"}},
				&DurationFlag{Name: "d", Value: time.Second, Usage: "a duration"},
				&StringSliceFlag{Name: "list", Value: NewStringSlice("a", "b"), Usage: "a list", EnvVars: []string{"T_LIST"}},
				&GenericFlag{Name: "size", Value: &def, Usage: "a size"},
			},
			Action: func(c *Context) error {
				p = parsed{c.String("str"), c.Int("n"), c.Float64("f"), c.Bool("b"), c.Duration("d"), c.StringSlice("list"),
					int64(*c.Generic("size").(*size))}
				return nil
			},
		}},
	}
	err := app.Run(append([]string{"prog"}, args...))
	return p, out.String(), err
}

func TestDefaults(t *testing.T) {
	p, _, err := run(t, "go")
	if err != nil {
		t.Fatal(err)
	}
	want := parsed{"x", 3, 0, true, time.Second, []string{"a", "b"}, 2048}
	if fmt.Sprint(p) != fmt.Sprint(want) {
		t.Fatalf("got %+v, want %+v", p, want)
	}
}

func TestCommandLine(t *testing.T) {
	p, _, err := run(t, "go", "--str=y", "-n", "7", "--f=1.5", "--b=false", "--d", "2m", "--list", "c, d", "--list=e", "--size=4KiB")
	if err != nil {
		t.Fatal(err)
	}
	want := parsed{"y", 7, 1.5, false, 2 * time.Minute, []string{"c", "d", "e"}, 4096}
	if fmt.Sprint(p) != fmt.Sprint(want) {
		t.Fatalf("got %+v, want %+v", p, want)
	}
}

// The environment sets a flag; the command line wins over it, and a list
// on the command line replaces the environment's.
func TestEnvironment(t *testing.T) {
	t.Setenv("T_STR", "env")
	t.Setenv("T_N", "9")
	t.Setenv("T_B", "false")
	t.Setenv("T_LIST", "p,q")
	p, _, err := run(t, "go", "--n=10")
	if err != nil {
		t.Fatal(err)
	}
	if p.str != "env" || p.n != 10 || p.b || strings.Join(p.list, ",") != "p,q" {
		t.Fatalf("got %+v", p)
	}
	p, _, err = run(t, "go", "--list=r")
	if err != nil || strings.Join(p.list, ",") != "r" {
		t.Fatalf("got %+v, %v", p, err)
	}
	t.Setenv("T_N", "nine")
	if _, _, err := run(t, "go"); err == nil || !strings.Contains(err.Error(), `cannot use T_N="nine" for --n: want an integer`) {
		t.Fatalf("bad environment value: %v", err)
	}
}

func TestUsageErrors(t *testing.T) {
	for args, want := range map[string]string{
		"go --nope":    "cannot parse the command line: flag provided but not defined: -nope",
		"go --n=x":     `cannot parse the command line: invalid value "x" for flag -n: want an integer`,
		"go --d=3":     `cannot parse the command line: invalid value "3" for flag -d: want a duration`,
		"go extra":     `cannot parse the command line: unexpected argument "extra"`,
		"stop":         `cannot parse the command line: no command "stop"`,
		"--verbose go": "cannot parse the command line: flag provided but not defined: -verbose",
	} {
		if _, _, err := run(t, strings.Fields(args)...); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%s: got %v, want %s", args, err, want)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{nil, {"--help"}, {"help"}} {
		_, out, err := run(t, args...)
		if err != nil || !regexp.MustCompile(`\n +go +reads its flags\n`).MatchString(out) {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	for _, args := range [][]string{{"go", "--help"}, {"go", "-h"}, {"help", "go"}} {
		_, out, err := run(t, args...)
		if err != nil || !strings.Contains(out, `--str value`) || !strings.Contains(out, `a string (default: "x") [$T_STR]`) ||
			!strings.Contains(out, "(default: 2KiB)") || !strings.Contains(out, `(default: "a", "b") [$T_LIST]`) {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
}

// categorized is an app whose command files its flags under categories,
// with the environment's rule said once on top.
func categorized(out *bytes.Buffer) *App {
	return &App{Name: "prog", Usage: "a test", Writer: out, ErrWriter: out,
		OptionsNote: "Every flag has a variable.\nSee the docs.", HideEnvVars: true,
		Commands: []*Command{{
			Name: "go", Usage: "reads its flags",
			Flags: []Flag{
				&StringFlag{Name: "zeta", Value: "z", Usage: "last of B", EnvVars: []string{"T_ZETA"}, Category: "B"},
				&BoolFlag{Name: "alpha", Usage: "first of B", Category: "B"},
				&IntFlag{Name: "n", Value: 3, Usage: "in A", Category: "A"},
				&DurationFlag{Name: "none", Usage: "in no category"},
				&StringSliceFlag{Name: "very-long-flag-name-past-the-column", Usage: "wider", Category: "A"},
			},
		}},
	}
}

// TestHelpCategories: a command's help files its flags under their
// categories, sorted, and the flags by name within each; flags of no
// category come first, under no heading.
func TestHelpCategories(t *testing.T) {
	var out bytes.Buffer
	if err := categorized(&out).Run([]string{"prog", "go", "--help"}); err != nil {
		t.Fatal(err)
	}
	want := `NAME:
   prog go - reads its flags

USAGE:
   prog go [command options]

OPTIONS:
   Every flag has a variable.
   See the docs.

   --none value                                in no category (default: 0s)

   A:
   --n value                                   in A (default: 3)
   --very-long-flag-name-past-the-column value wider

   B:
   --alpha                                     first of B (default: false)
   --zeta value                                last of B (default: "z")

   --help, -h                                  show help
`
	if out.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", out.String(), want)
	}
}

// TestHelpColumn: without categories, the flags keep their order, and
// descriptions start at one column for every command.
func TestHelpColumn(t *testing.T) {
	_, out, err := run(t, "go", "--help")
	if err != nil {
		t.Fatal(err)
	}
	want := "   --str value                         a string (default: \"x\") [$T_STR]\n"
	if !strings.Contains(out, want) || strings.Index(out, "--str") > strings.Index(out, "--size") {
		t.Fatalf("got:\n%s\nwant a line %q, --str before --size", out, want)
	}
}

// TestDocGeneration: what a docs generator reads of each kind of flag.
func TestDocGeneration(t *testing.T) {
	def := size(1024)
	for _, tc := range []struct {
		flag       Flag
		def        string
		takesValue bool
	}{
		{&StringFlag{Name: "s", Value: "v"}, `"v"`, true},
		{&StringFlag{Name: "s"}, "", true},
		{&IntFlag{Name: "i", Value: 7}, "7", true},
		{&Float64Flag{Name: "f", Value: 0.5}, "0.5", true},
		{&BoolFlag{Name: "b"}, "false", false},
		{&DurationFlag{Name: "d", Value: 90 * time.Second}, "1m30s", true},
		{&StringSliceFlag{Name: "l", Value: NewStringSlice("a", "", "b")}, `"a", "b"`, true},
		{&StringSliceFlag{Name: "l"}, "", true},
		{&GenericFlag{Name: "g", Value: &def}, "1KiB", true},
	} {
		df, ok := tc.flag.(DocGenerationFlag)
		if !ok {
			t.Fatalf("%T is not a DocGenerationFlag", tc.flag)
		}
		if got := df.GetDefaultText(); got != tc.def || df.TakesValue() != tc.takesValue {
			t.Errorf("%T %s: default %q, takes a value %v; want %q, %v", tc.flag, tc.flag.Names()[0], got, df.TakesValue(), tc.def, tc.takesValue)
		}
		if _, ok := tc.flag.(CategorizableFlag); !ok {
			t.Errorf("%T is not a CategorizableFlag", tc.flag)
		}
	}
}

// TestOnUsageError: the hook gets every command-line error with the
// context it happened in (the command, whose flags it can suggest from),
// and a command's own hook wins over the app's.
func TestOnUsageError(t *testing.T) {
	var out bytes.Buffer
	type call struct {
		// command is the context's command's name ("" for none).
		command string
		// sub is the hook's isSubcommand.
		sub bool
		// err is the error the hook was given.
		err string
	}
	var calls []call
	hook := func(c *Context, err error, sub bool) error {
		name := ""
		if c.Command != nil {
			name = c.Command.Name
		}
		calls = append(calls, call{name, sub, err.Error()})
		return fmt.Errorf("hooked: %w", err)
	}
	app := categorized(&out)
	app.OnUsageError = hook
	app.Commands = append(app.Commands, &Command{Name: "own", Flags: []Flag{&IntFlag{Name: "k"}},
		OnUsageError: func(_ *Context, err error, _ bool) error { return fmt.Errorf("own: %w", err) }})
	for _, tc := range []struct {
		args string
		want string
		call call
	}{
		{"go --zeat=1", "hooked: flag provided but not defined: -zeat", call{"go", true, "flag provided but not defined: -zeat"}},
		{"go --n=x", `hooked: invalid value "x" for flag -n: want an integer`, call{"go", true, `invalid value "x" for flag -n: want an integer`}},
		{"--zeta go", "hooked: flag provided but not defined: -zeta", call{"", false, "flag provided but not defined: -zeta"}},
		{"stop", `hooked: no command "stop"`, call{"", false, `no command "stop"`}},
		{"own --j=1", "own: flag provided but not defined: -j", call{}},
	} {
		calls = nil
		err := app.Run(append([]string{"prog"}, strings.Fields(tc.args)...))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: got %v, want %s", tc.args, err, tc.want)
		}
		if tc.call == (call{}) {
			if len(calls) != 0 {
				t.Errorf("%s: the app's hook ran: %v", tc.args, calls)
			}
		} else if len(calls) != 1 || calls[0] != tc.call {
			t.Errorf("%s: hook calls %v, want %v", tc.args, calls, tc.call)
		}
	}
}
