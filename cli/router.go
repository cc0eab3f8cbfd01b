package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/llorch/llorch/authmin"
	"github.com/llorch/llorch/internal/accesslog"
	"github.com/llorch/llorch/internal/tracing"
	"github.com/llorch/llorch/registry/consul"
	"github.com/llorch/llorch/router"
)

func init() {
	Register(Command{
		Name:    "router",
		Summary: "OpenAI-compatible router over the engines registered in Consul",
		Run:     runRouter,
	})
}

const routerUsage = `usage: llorch router [flags]

Serves the OpenAI API (/v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models) and routes each request to an engine instance registered in Consul.
Every setting is a flag or an environment variable; a flag wins.
Secrets come from files or the environment only: LLORCH_API_TOKEN,
CONSUL_HTTP_TOKEN (when no token file is set).

`

func runRouter(args []string) int {
	cfg := router.DefaultConfig()
	if err := cfg.FromEnv(os.Getenv); err != nil {
		fmt.Fprintf(os.Stderr, "llorch router: %v\n", err)
		return 2
	}
	fs := flag.NewFlagSet("router", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), routerUsage)
		fs.PrintDefaults()
	}
	cfg.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "llorch router: unexpected arguments %q\n", fs.Args())
		return 2
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "llorch-router", Level: hclog.LevelFromString(cfg.LogLevel), JSONFormat: cfg.LogJSON, Output: os.Stderr})
	tuneRouterRuntime(log)

	ccfg := consulapi.DefaultConfig()
	ccfg.Address = cfg.ConsulAddr
	if cfg.ConsulTokenFile != "" {
		ccfg.TokenFile = cfg.ConsulTokenFile
	}
	// Blocking queries outlast any fixed timeout: none here (each call has
	// its context).
	if err := (consul.TLS{CAFile: cfg.ConsulCAFile, CertFile: cfg.ConsulCertFile, KeyFile: cfg.ConsulKeyFile}).Apply(ccfg, 0); err != nil {
		log.Error("consul TLS", "error", err)
		return 1
	}
	cc, err := consulapi.NewClient(ccfg)
	if err != nil {
		log.Error("consul client", "error", err)
		return 1
	}
	logConsulToken(log, cfg.ConsulTokenFile)

	shutdownTracing, err := tracing.Setup(context.Background(), "llorch-router", cfg.OTLPEndpoint)
	if err != nil {
		log.Error("tracing", "error", err)
		return 1
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = shutdownTracing(sctx)
	}()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	src := &consul.Watcher{Client: cc, Service: cfg.ServiceName, Logger: log.Named("discovery")}
	cfg.Consul = cc // API keys from KV, and the live routers that share their limits
	rt, err := router.New(cfg, src, nil, log, reg)
	if err == nil {
		rt.SetAccessLog(accesslog.New(os.Stderr, "llorch-router", cfg.LogJSON))
	}
	if err != nil {
		// The policy errors carry their codes (NON_LOOPBACK_WITHOUT_TOKEN,
		// NON_LOOPBACK_PLAINTEXT).
		log.Error("cannot start", "error", err)
		return 1
	}
	runScaler, err := newScaler(cfg, cc, rt, reg, log)
	if err != nil {
		log.Error("pool scaling", "error", err)
		return 1
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		log.Error("listen", "addr", cfg.Addr, "error", err)
		return 1
	}
	srv := rt.HTTPServer()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	runDone := make(chan error, 1)
	go func() { runDone <- rt.Run(ctx) }()
	scalerDone := make(chan struct{})
	go func() {
		defer close(scalerDone)
		if runScaler != nil {
			_ = runScaler(ctx) // releases its Consul session (pool locks) on the way out
		}
	}()
	serveDone := make(chan error, 1)
	go func() { serveDone <- rt.Serve(srv, ln) }()
	log.Info("router listening", "addr", ln.Addr().String(), "tls", rt.TLS(), "consul", cfg.ConsulAddr, "service", cfg.ServiceName)

	code := 0
	select {
	case <-ctx.Done():
		log.Info("shutting down; waiting for answers in flight")
	case err := <-serveDone:
		log.Error("serve", "error", err)
		code = 1
		stop()
	}
	if err := rt.Drain(srv); err != nil {
		log.Warn("shutdown cut answers in flight", "error", err)
	}
	if err := <-runDone; err != nil {
		log.Error("discovery", "error", err)
		code = 1
	}
	<-scalerDone
	return code
}

// logConsulToken says which Consul token is in use, by fingerprint only.
func logConsulToken(log hclog.Logger, file string) {
	token := os.Getenv(consulapi.HTTPTokenEnvName)
	from := consulapi.HTTPTokenEnvName
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return // NewClient already failed on it
		}
		token, from = strings.TrimSpace(string(b)), file
	}
	if token == "" {
		log.Warn("no Consul token: discovery sees what the anonymous token may read")
		return
	}
	log.Info("consul token", "from", from, "token", "token:"+authmin.TokenFP6(token))
}
