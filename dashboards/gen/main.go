// Command gen writes the dashboards' JSON next to their Go source:
// go generate ./dashboards.
package main

import (
	"fmt"
	"os"

	"github.com/llmusage/llmusage/dashboards"
)

func main() {
	for name, build := range dashboards.Files() {
		out, err := dashboards.Render(build())
		if err == nil {
			err = os.WriteFile(name, out, 0o644)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "cannot write %s: %s\n", name, err)
			os.Exit(1)
		}
	}
}
