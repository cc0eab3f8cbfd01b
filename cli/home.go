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
	configFile := fs.String("config", "", "home config file (YAML: addr, state_dir, api_token_file, pools)")
	var cfg home.Config
	var p home.Pool
	fs.StringVar(&cfg.Addr, "addr", "", "router address (default 127.0.0.1:8080)")
	fs.StringVar(&cfg.StateDir, "state-dir", "", "state directory (default "+home.DefaultStateDir()+")")
	fs.StringVar(&p.Model, "model", "", "model file to serve (one pool, without --config)")
	fs.StringVar(&p.Name, "name", "", "pool name (default: the model name)")
	fs.StringVar(&p.ModelName, "model-name", "", "name clients send as \"model\" (default: the file's base name)")
	fs.StringVar(&p.Engine, "engine", "llamacpp", "engine: "+fmt.Sprint(engineNames()))
	fs.StringVar(&p.Binary, "engine-bin", "", "engine program (default: $LLORCH_CACHE/bin, then PATH)")
	fs.IntVar(&p.Ctx, "ctx", 0, "context per slot (default: the engine's)")
	fs.IntVar(&p.Slots, "slots", 1, "parallel slots")
	fs.IntVar(&p.Threads, "threads", 0, "CPU threads (default: the engine's)")
	logJSON := fs.Bool("log-json", os.Getenv("LLORCH_LOG_FORMAT") == "json", "log JSON lines")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *configFile != "" {
		fileCfg, err := home.LoadConfig(*configFile)
		if err != nil {
			return usageErr(err)
		}
		if cfg.Addr != "" {
			fileCfg.Addr = cfg.Addr
		}
		if cfg.StateDir != "" {
			fileCfg.StateDir = cfg.StateDir
		}
		cfg = fileCfg
	} else if p.Model != "" {
		cfg.Pools = []home.Pool{p}
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "llorch-home", Level: hclog.Info, JSONFormat: *logJSON, Output: os.Stderr})
	h, err := home.New(cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "llorch home:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := h.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "llorch home:", err)
		return 1
	}
	return 0
}

func engineNames() []string { return engine.Names() }
