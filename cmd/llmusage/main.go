// Command llmusage is the LLM usage meter and quota sidecar.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "llmusage:", err)
		os.Exit(1)
	}
}
