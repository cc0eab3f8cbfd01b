package home

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/llorch/llorch/authmin"
	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/registry/memory"
	"github.com/llorch/llorch/router"
)

// stopGrace is how long an engine has to exit after SIGTERM.
const stopGrace = 10 * time.Second

// Home is a running home profile.
type Home struct {
	cfg         Config
	log         hclog.Logger
	reg         *memory.Registry
	state       *stateFile
	node        string
	engineToken string
	pools       []poolPlan
	loader      *loader // on_demand: starts and stops pools; nil = all run

	mu       sync.Mutex
	listener net.Listener
	ready    chan struct{}
}

// poolPlan is a pool with what New resolved for it.
type poolPlan struct {
	Pool
	ad  engine.Adapter
	bin string
	// fp fingerprints everything that shapes the engine process (pool
	// settings, program, engine token): a leftover engine is adopted only
	// when its fingerprint is this one.
	fp string
	// adopt is a live engine an earlier run left, healthy and of this very
	// spec; runPool takes it over instead of starting another.
	adopt *stateEntry
}

// New prepares a home profile: state directory, tokens, engine programs,
// and the engines an earlier run left (a crash or kill -9 of llorch home):
// each is adopted when it runs this config's spec and answers its health
// check, else stopped. It starts nothing; Run does.
func New(cfg Config, log hclog.Logger) (*Home, error) {
	if err := checkProfile(); err != nil {
		return nil, err
	}
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	plans := make([]poolPlan, len(cfg.Pools))
	for i, p := range cfg.Pools {
		ad, _ := engine.Get(p.Engine) // validated by Normalize
		bin, err := resolveBinary(p, ad)
		if err != nil {
			return nil, fmt.Errorf("home config: pools[%d].binary: %w", i, err)
		}
		plans[i] = poolPlan{Pool: p, ad: ad, bin: bin}
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "logs"), 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	st, err := openState(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	h := &Home{cfg: cfg, log: log, reg: memory.New(), state: st, ready: make(chan struct{})}
	h.node, _ = os.Hostname()
	if h.node == "" {
		h.node = "home"
	}
	for _, f := range []string{cfg.APITokenFile, h.engineTokenFile()} {
		if _, err := os.Stat(f); errors.Is(err, os.ErrNotExist) {
			if err := authmin.WriteNewTokenFile(f, false); err != nil {
				st.close()
				return nil, err
			}
			log.Info("created token file", "path", f)
		}
	}
	tok, err := os.ReadFile(h.engineTokenFile())
	if err != nil {
		st.close()
		return nil, fmt.Errorf("engine token: %w", err)
	}
	h.engineToken = strings.TrimSpace(string(tok))
	for i := range plans {
		plans[i].fp = fingerprint(plans[i].Pool, plans[i].bin, h.engineToken)
	}
	h.pools = plans
	if cfg.OnDemand {
		if h.loader, err = newLoader(h); err != nil {
			st.close()
			return nil, err
		}
	}
	h.reconcile()
	return h, nil
}

func (h *Home) spec(p *poolPlan, port int) engine.Spec {
	s := engine.Spec{Model: p.Model, ModelName: p.ModelName, Host: "127.0.0.1", Port: port, Ctx: p.Ctx, Slots: p.Slots,
		GPULayers: p.GPULayers, Threads: p.Threads, ExtraArgs: p.ExtraArgs, StateDir: filepath.Join(h.cfg.StateDir, "engines", p.Name)}
	if p.ad.TakesAPIKey() {
		s.APIKey = h.engineToken
	}
	return s
}

func (h *Home) engineTokenFile() string { return filepath.Join(h.cfg.StateDir, "engine.token") }

// Ready is closed once every pool's engine is ready and announced (with
// on_demand: once the router listens and the pinned pools are ready).
func (h *Home) Ready() <-chan struct{} { return h.ready }

// Addr is the router's listening address once Run has bound it.
func (h *Home) Addr() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.listener == nil {
		return ""
	}
	return h.listener.Addr().String()
}

// Run serves until ctx ends, then stops every engine and returns.
func (h *Home) Run(ctx context.Context) error {
	defer h.state.close()
	rcfg := router.DefaultConfig()
	rcfg.Addr = h.cfg.Addr
	rcfg.APITokenFile = h.cfg.APITokenFile
	// The home profile serves plain HTTP (loopback by default; a LAN
	// address still needs the API token). TLS is the cloud router's.
	rcfg.AllowPlaintext = true
	rcfg.EngineTokenFile = h.engineTokenFile()
	rcfg.QueueTimeout, rcfg.QueueCapacity = h.cfg.QueueTimeout, h.cfg.QueueCapacity
	var err error
	if rcfg.ModelAliases, rcfg.ModelFallbacks, err = router.FormatModelRoutes(h.cfg.Aliases, h.cfg.Fallbacks); err != nil {
		return err
	}
	promReg := prometheus.NewRegistry()
	promReg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	rt, err := router.New(rcfg, h.reg, nil, h.log.Named("router"), promReg)
	if err != nil {
		return err
	}
	if h.loader != nil {
		rt.SetDemand(h.loader) // models start on their first request
		h.loader.inFlight = rt.InstanceInFlight
	}
	ln, err := net.Listen("tcp", h.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", h.cfg.Addr, err)
	}
	h.mu.Lock()
	h.listener = ln
	h.mu.Unlock()
	srv := rt.HTTPServer() // the same timeouts and drain as `llorch router`

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = rt.Run(runCtx) }()
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.log.Error("serve", "error", err)
			cancel()
		}
	}()
	h.startPools(runCtx, &wg, ln.Addr().String())
	h.log.Info("router listening", "addr", ln.Addr().String(), "api_token_file", h.cfg.APITokenFile)

	<-runCtx.Done()
	h.log.Info("stopping: engines first, then the router")
	_ = rt.Drain(srv)
	wg.Wait()
	return nil
}
