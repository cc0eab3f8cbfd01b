package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/home"
)

func init() {
	Register(Command{Name: "home", Summary: "home profile: engines, router and scheduler on this machine, no Nomad or Consul", Run: runHome})
}

const homeUsage = `usage: llorch home [--config home.yaml | --model FILE [flags]]

Runs the home profile: starts each pool's engine, supervises it, and serves
the OpenAI-compatible and /v2 APIs on 127.0.0.1:8080. Ctrl-C stops the
engines and exits. The API token is in <state-dir>/api.token (created on
first start); send it as "Authorization: Bearer <token>".

`

func runHome(args []string) int {
	fs := flag.NewFlagSet("home", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), homeUsage); fs.PrintDefaults() }
	var f home.Flags
	f.Bind(fs, engine.Names())
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "llorch home: unexpected argument %q (flags only; see llorch home -h)\n", fs.Arg(0))
		return 2
	}
	cfg, err := f.Resolve()
	if err != nil {
		fmt.Fprintln(os.Stderr, "llorch home:", err)
		return 2
	}
	level := hclog.LevelFromString(f.LogLevel)
	if level == hclog.NoLevel {
		fmt.Fprintf(os.Stderr, "llorch home: --log-level: %q is not one of trace, debug, info, warn, error\n", f.LogLevel)
		return 2
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "llorch-home", Level: level, JSONFormat: f.LogJSON, Output: os.Stderr})
	h, err := home.New(cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "llorch home:", err)
		return 2
	}
	// SIGINT (Ctrl-C) and SIGTERM: stop every engine, wait, exit 0.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := h.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "llorch home:", err)
		return 1
	}
	return 0
}
