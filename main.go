// Command llorch is one binary with several jobs: the Nomad task driver
// plugin (when a Nomad agent starts it), the router, the home profile and
// operator tools. See `llorch help`.
package main

import (
	"fmt"
	"os"

	"github.com/llorch/llorch/cli"
)

func main() {
	// A Nomad agent starts plugins with its magic cookie in the environment
	// and no subcommand; that is the only way into plugin mode.
	if cli.PluginMode() {
		os.Exit(cli.ServePlugin())
	}
	if len(os.Args) < 2 {
		cli.Usage(os.Stderr)
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "help" || name == "-h" || name == "--help" {
		cli.Usage(os.Stdout)
		return
	}
	c, ok := cli.Lookup(name)
	if !ok {
		fmt.Fprintf(os.Stderr, "llorch: unknown command %q\n\n", name)
		cli.Usage(os.Stderr)
		os.Exit(2)
	}
	os.Exit(c.Run(os.Args[2:]))
}
