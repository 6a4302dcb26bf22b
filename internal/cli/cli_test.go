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
