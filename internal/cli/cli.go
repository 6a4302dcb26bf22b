// Package cli is the command-line framework of llmusage: an app of
// commands, each with flags that an environment variable can also set,
// and a help text. It keeps the shape of the subset of urfave/cli v2 that
// llmusage used, on the standard flag package: urfave/cli renders its help
// with text/template, and a reachable template execution makes the Go
// linker keep every exported method of every type in the binary, which
// made the sidecar's binary a third larger (docs/benchmarks.md, Footprint).
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// App is a program of commands: llmusage COMMAND [flags].
type App struct {
	// Name is the program's name in the help text.
	Name string
	// Usage is the one-line description in the help text.
	Usage string
	// Commands are the subcommands; "help" is added.
	Commands []*Command
	// Writer receives the help text and the commands' output (os.Stdout if nil).
	Writer io.Writer
	// ErrWriter receives the commands' diagnostics (os.Stderr if nil).
	ErrWriter io.Writer
	// OnUsageError turns a command-line error into the error Run returns
	// (the error itself if nil).
	OnUsageError UsageErrorFunc
	// OptionsNote is said under OPTIONS: in the help of each command that
	// has flags, one indented line per line: what every flag has in common.
	OptionsNote string
	// HideEnvVars leaves the flags' environment variables out of the help
	// text's lines, for an app whose variables follow one rule that
	// OptionsNote states.
	HideEnvVars bool
}

// UsageErrorFunc turns a command-line error into the error to return;
// isSubcommand is true when the error is in a command's flags.
type UsageErrorFunc func(c *Context, err error, isSubcommand bool) error

// Command is a subcommand and its flags.
type Command struct {
	// Name is the word that selects the command.
	Name string
	// Usage is the one-line description in the help text.
	Usage string
	// Flags are the command's flags.
	Flags []Flag
	// Action runs the command once its flags are parsed.
	Action func(*Context) error
	// OnUsageError turns an error in the command's flags into the error to
	// return (the app's if nil).
	OnUsageError UsageErrorFunc
}

// Context is a command's parsed flags, read by name.
type Context struct {
	// Context is the context Run was given.
	Context context.Context
	// App is the running app.
	App *App
	// Command is the running command (nil before one is chosen).
	Command *Command
	// set holds the parsed values.
	set *flag.FlagSet
}

// Run runs the command args[1] names, with context.Background().
func (a *App) Run(args []string) error {
	return a.RunContext(context.Background(), args)
}

// RunContext runs the command args[1] names; args[0] is the program.
func (a *App) RunContext(ctx context.Context, args []string) error {
	if a.Writer == nil {
		a.Writer = os.Stdout
	}
	if a.ErrWriter == nil {
		a.ErrWriter = os.Stderr
	}
	c := &Context{Context: ctx, App: a}
	if len(args) < 2 {
		a.printHelp()
		return nil
	}
	name, rest := args[1], args[2:]
	switch name {
	case "help", "h", "-h", "-help", "--help":
		if (name == "help" || name == "h") && len(rest) > 0 {
			cmd := a.command(rest[0])
			if cmd == nil {
				return a.usageError(c, fmt.Errorf("no command %q", rest[0]), false)
			}
			a.printCommandHelp(cmd)
			return nil
		}
		a.printHelp()
		return nil
	}
	if strings.HasPrefix(name, "-") {
		// Worded as the flag package words a command's unknown flag.
		return a.usageError(c, fmt.Errorf("flag provided but not defined: -%s", strings.TrimLeft(name, "-")), false)
	}
	cmd := a.command(name)
	if cmd == nil {
		return a.usageError(c, fmt.Errorf("no command %q", name), false)
	}
	c.Command = cmd
	fs := flag.NewFlagSet(a.Name+" "+cmd.Name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	for _, f := range cmd.Flags {
		f.apply(fs)
	}
	c.set = fs
	// The environment first, so that the command line wins.
	for _, f := range cmd.Flags {
		for _, env := range f.GetEnvVars() {
			v, ok := os.LookupEnv(env)
			if !ok {
				continue
			}
			if err := fs.Set(f.Names()[0], v); err != nil {
				return fmt.Errorf("cannot use %s=%q for --%s: %w", env, v, f.Names()[0], err)
			}
			break
		}
	}
	// A slice set from the environment is replaced, not extended, by the command line.
	fs.VisitAll(func(fl *flag.Flag) {
		if s, ok := fl.Value.(*StringSlice); ok {
			s.setByUser = false
		}
	})
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.printCommandHelp(cmd)
			return nil
		}
		return a.commandUsageError(c, err)
	}
	if fs.NArg() > 0 {
		return a.commandUsageError(c, fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	if cmd.Action == nil {
		return nil
	}
	return cmd.Action(c)
}

// String is the value of a string flag.
func (c *Context) String(name string) string { return c.value(name).(*stringValue).get() }

// Int is the value of an int flag.
func (c *Context) Int(name string) int { return c.value(name).(*intValue).get() }

// Float64 is the value of a float64 flag.
func (c *Context) Float64(name string) float64 { return c.value(name).(*float64Value).get() }

// Bool is the value of a bool flag.
func (c *Context) Bool(name string) bool { return c.value(name).(*boolValue).get() }

// Duration is the value of a duration flag.
func (c *Context) Duration(name string) time.Duration {
	return c.value(name).(*durationValue).get()
}

// StringSlice is the values of a string slice flag.
func (c *Context) StringSlice(name string) []string {
	return append([]string(nil), c.value(name).(*StringSlice).values...)
}

// Generic is the value of a generic flag: its Value, as set.
func (c *Context) Generic(name string) any { return c.value(name).(*genericValue).v }

func (c *Context) value(name string) flag.Value {
	if c.set == nil {
		panic("cli: no flags parsed")
	}
	f := c.set.Lookup(name)
	if f == nil {
		// A programming error: the command reads a flag it did not declare.
		panic("cli: no flag --" + name)
	}
	return f.Value
}

func (a *App) command(name string) *Command {
	for _, c := range a.Commands {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func (a *App) usageError(c *Context, err error, sub bool) error {
	if a.OnUsageError != nil {
		return a.OnUsageError(c, err, sub)
	}
	return err
}

func (a *App) commandUsageError(c *Context, err error) error {
	if c.Command.OnUsageError != nil {
		return c.Command.OnUsageError(c, err, true)
	}
	return a.usageError(c, err, true)
}

func (a *App) printHelp() {
	w := tabwriter.NewWriter(a.Writer, 1, 8, 2, ' ', 0)
	fmt.Fprintf(w, "NAME:\n   %s - %s\n\nUSAGE:\n   %s COMMAND [options]\n\nCOMMANDS:\n", a.Name, a.Usage, a.Name)
	for _, c := range a.Commands {
		fmt.Fprintf(w, "   %s\t%s\n", c.Name, c.Usage)
	}
	fmt.Fprintf(w, "   help\tshow the commands, or one command's options (help COMMAND, or COMMAND --help)\n")
	_ = w.Flush()
}

// printCommandHelp shows a command's flags, one line each: filed under
// their categories (sorted, the flags sorted by name within each, as
// urfave/cli did) if any flag has one, else in their order.
func (a *App) printCommandHelp(c *Command) {
	var b strings.Builder
	fmt.Fprintf(&b, "NAME:\n   %s %s - %s\n\nUSAGE:\n   %s %s [command options]\n\nOPTIONS:\n", a.Name, c.Name, c.Usage, a.Name, c.Name)
	if a.OptionsNote != "" && len(c.Flags) > 0 {
		for _, l := range strings.Split(strings.TrimRight(a.OptionsNote, "\n"), "\n") {
			b.WriteString("   " + l + "\n")
		}
		b.WriteString("\n")
	}
	width := helpColumn
	for _, f := range c.Flags {
		width = max(width, len(flagHelpName(f))+1)
	}
	groups := map[string][]Flag{}
	for _, f := range c.Flags {
		groups[f.GetCategory()] = append(groups[f.GetCategory()], f)
	}
	if _, ok := groups[""]; len(groups) > 1 || (len(groups) == 1 && !ok) {
		cats := make([]string, 0, len(groups))
		for cat := range groups {
			cats = append(cats, cat)
		}
		sort.Strings(cats)
		for i, cat := range cats {
			if i > 0 {
				b.WriteString("\n")
			}
			if cat != "" {
				b.WriteString("   " + cat + ":\n")
			}
			flags := groups[cat]
			sort.SliceStable(flags, func(i, j int) bool { return flags[i].Names()[0] < flags[j].Names()[0] })
			for _, f := range flags {
				a.writeFlagLine(&b, f, width)
			}
		}
		b.WriteString("\n")
	} else {
		for _, f := range c.Flags {
			a.writeFlagLine(&b, f, width)
		}
	}
	fmt.Fprintf(&b, "   %-*sshow help\n", width, "--help, -h")
	_, _ = io.WriteString(a.Writer, b.String())
}

// helpColumn is where the help text's descriptions start at least: one
// column for every command, as wide as serve's longest flag needs.
const helpColumn = 36

// writeFlagLine is a flag's line of help: its name, usage, default and,
// unless hidden, variables.
func (a *App) writeFlagLine(b *strings.Builder, f Flag, width int) {
	usage := f.GetUsage()
	if d := f.GetDefaultText(); d != "" {
		usage += " (default: " + d + ")"
	}
	if !a.HideEnvVars {
		for _, e := range f.GetEnvVars() {
			usage += " [$" + e + "]"
		}
	}
	fmt.Fprintf(b, "   %-*s%s\n", width, flagHelpName(f), usage)
}

// flagHelpName is the flag as the help text shows it.
func flagHelpName(f Flag) string {
	if f.TakesValue() {
		return "--" + f.Names()[0] + " value"
	}
	return "--" + f.Names()[0]
}
