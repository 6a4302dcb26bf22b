// Command llmusage is the LLM usage meter and quota sidecar.
package main

import (
	"fmt"
	"os"
	"strings"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		// One line, whatever the error: drivers such as pgx nest theirs over several.
		msg := strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
		fmt.Fprintln(os.Stderr, "llmusage:", msg)
		os.Exit(1)
	}
}
