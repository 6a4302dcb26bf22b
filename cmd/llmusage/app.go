package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/llmusage/llmusage/internal/cli"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func newApp() *cli.App {
	return &cli.App{
		Name:  "llmusage",
		Usage: "LLM usage meter and quota sidecar",
		Commands: []*cli.Command{
			serveCommand(),
			migrateCommand(),
			loadgenCommand(),
			injectCommand(),
			{
				Name:  "version",
				Usage: "print the version, commit and Go version",
				Action: func(c *cli.Context) error {
					fmt.Fprintf(c.App.Writer, "llmusage %s (commit %s, %s)\n", version, revision(), runtime.Version())
					return nil
				},
			},
		},
		// One clear line instead of the usage text, for a bad flag.
		OnUsageError: usageError,
		// Every flag has its variable by the same rule: said once, on top
		// of each command's one line per flag.
		OptionsNote: "Every flag can also be set by the environment: --flag-name by LLMUSAGE_FLAG_NAME.\nDetails and defaults: docs/flags.md.",
		HideEnvVars: true,
	}
}

// envVars names the environment variable that sets a flag:
// --listen-address is LLMUSAGE_LISTEN_ADDRESS.
func envVars(flag string) []string {
	return []string{"LLMUSAGE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))}
}

// revision returns the VCS commit the binary was built from.
func revision() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "unknown", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}

// The flag helpers give every flag its LLMUSAGE_ environment variable.
func stringFlag(name, value, usage string) *cli.StringFlag {
	return &cli.StringFlag{Name: name, Value: value, Usage: usage, EnvVars: envVars(name)}
}

func durationFlag(name string, value time.Duration, usage string) *cli.DurationFlag {
	return &cli.DurationFlag{Name: name, Value: value, Usage: usage, EnvVars: envVars(name)}
}

func intFlag(name string, value int, usage string) *cli.IntFlag {
	return &cli.IntFlag{Name: name, Value: value, Usage: usage, EnvVars: envVars(name)}
}

func boolFlag(name string, value bool, usage string) *cli.BoolFlag {
	return &cli.BoolFlag{Name: name, Value: value, Usage: usage, EnvVars: envVars(name)}
}
