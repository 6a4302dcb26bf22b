package main

//go:generate go test -run ^TestFlagsDoc$ -update-flags-doc .

import (
	"fmt"
	"sort"
	"strings"

	"github.com/llmusage/llmusage/internal/cli"
)

// flagsMarkdown renders docs/flags.md from the commands' flags: one table
// per command and category, with the details --help leaves out, so that
// the reference cannot drift from the binary.
func flagsMarkdown(app *cli.App) string {
	details := flagDetails()
	var b strings.Builder
	b.WriteString("<!-- Generated from cmd/llmusage's flags by `go generate ./cmd/llmusage`: do not edit. -->\n\n")
	b.WriteString("# Flags\n\n")
	b.WriteString("Every flag can also be set by an environment variable, `LLMUSAGE_` and the flag's name in capitals with `_` for `-`:\n")
	b.WriteString("`--listen-address` is `LLMUSAGE_LISTEN_ADDRESS`. A flag given on the command line wins over its variable.\n")
	b.WriteString("A repeatable flag takes a comma-separated list in its variable. Sizes are bytes or take `KiB`, `MiB`, `GiB`\n")
	b.WriteString("(`KB`, `MB`, `GB`: powers of 1000); durations are Go's (`90s`, `5m`, `1h30m`).\n")
	b.WriteString("`llmusage COMMAND --help` shows the same flags, one line each. A bad flag, a busy port or a bad limits file ends `serve` with one line\nand exit code 1. `llmusage version` prints the version.\n")
	for _, cmd := range app.Commands {
		if len(cmd.Flags) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n## llmusage %s\n\n%s.\n", cmd.Name, upperFirst(cmd.Usage))
		groups := map[string][]cli.Flag{}
		for _, f := range cmd.Flags {
			cat := ""
			if cf, ok := f.(cli.CategorizableFlag); ok {
				cat = cf.GetCategory()
			}
			groups[cat] = append(groups[cat], f)
		}
		cats := make([]string, 0, len(groups))
		for c := range groups {
			cats = append(cats, c)
		}
		sort.Strings(cats)
		for _, cat := range cats {
			if cat != "" {
				fmt.Fprintf(&b, "\n### %s\n", cat)
			}
			b.WriteString("\n| flag | default | environment | |\n|---|---|---|---|\n")
			for _, f := range groups[cat] {
				df := f.(cli.DocGenerationFlag)
				name := f.Names()[0]
				text := mdCell(df.GetUsage())
				if d := details[cmd.Name][name]; d != "" {
					text += ". " + d
				}
				def := "none"
				if v := strings.Trim(df.GetDefaultText(), `"`); v != "" {
					def = "`" + v + "`"
				}
				env := ""
				if e := df.GetEnvVars(); len(e) > 0 {
					env = "`" + strings.Join(e, "`, `") + "`"
				}
				fmt.Fprintf(&b, "| `--%s` | %s | %s | %s |\n", name, mdCell(def), env, text)
			}
		}
	}
	return b.String()
}

// mdCell keeps a table cell in one piece.
func mdCell(s string) string {
	return strings.ReplaceAll(s, "|", `\|`)
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
