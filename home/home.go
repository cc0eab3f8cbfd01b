package home

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/llorch/llorch/authmin"
	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/homereg"
	"github.com/llorch/llorch/instance"
	"github.com/llorch/llorch/internal/procfs"
	"github.com/llorch/llorch/router"
	"github.com/llorch/llorch/supervise"
)

// stopGrace is how long an engine has to exit after SIGTERM.
const stopGrace = 10 * time.Second

// Home is a running home profile.
type Home struct {
	cfg   Config
	log   hclog.Logger
	reg   *homereg.Registry
	state *stateFile
	node  string

	mu       sync.Mutex
	sups     map[string]*supervise.Supervisor
	listener net.Listener
	ready    chan struct{}
}

// New prepares a home profile: state directory, tokens, and the cleanup of
// engines an earlier run left (a crash or kill -9 of llorch home). It
// starts nothing; Run does.
func New(cfg Config, log hclog.Logger) (*Home, error) {
	if p := strings.ToLower(os.Getenv("LLORCH_PROFILE")); p == "cloud" {
		return nil, errors.New("LLORCH_PROFILE=cloud: the home profile runs without Nomad and Consul; in the cloud profile run `llorch router` (engines run as Nomad tasks of the llorch driver, see docs/install.md)")
	}
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "logs"), 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	st, err := openState(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	h := &Home{cfg: cfg, log: log, reg: homereg.New(), state: st, sups: map[string]*supervise.Supervisor{}, ready: make(chan struct{})}
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
	st.cleanup(log)
	return h, nil
}

func (h *Home) engineTokenFile() string { return filepath.Join(h.cfg.StateDir, "engine.token") }

// Ready is closed once every pool's engine is ready and announced.
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
	rcfg.EngineTokenFile = h.engineTokenFile()
	promReg := prometheus.NewRegistry()
	promReg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	rt, err := router.New(rcfg, h.reg, nil, h.log.Named("router"), promReg)
	if err != nil {
		return err
	}
	engineToken, err := os.ReadFile(h.engineTokenFile())
	if err != nil {
		return fmt.Errorf("engine token: %w", err)
	}
	ln, err := net.Listen("tcp", h.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", h.cfg.Addr, err)
	}
	h.mu.Lock()
	h.listener = ln
	h.mu.Unlock()
	srv := &http.Server{Handler: rt.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: h.log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2 + len(h.cfg.Pools))
	go func() { defer wg.Done(); _ = rt.Run(runCtx) }()
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.log.Error("serve", "error", err)
			cancel()
		}
	}()
	readyEach := make([]chan struct{}, len(h.cfg.Pools))
	for i, p := range h.cfg.Pools {
		readyEach[i] = make(chan struct{})
		go func() { defer wg.Done(); h.runPool(runCtx, p, strings.TrimSpace(string(engineToken)), readyEach[i]) }()
	}
	go func() {
		for _, c := range readyEach {
			select {
			case <-c:
			case <-runCtx.Done():
				return
			}
		}
		h.log.Info("home profile ready", "addr", ln.Addr().String(), "pools", len(h.cfg.Pools))
		close(h.ready)
	}()
	h.log.Info("router listening", "addr", ln.Addr().String(), "api_token_file", h.cfg.APITokenFile)

	<-runCtx.Done()
	h.log.Info("stopping: engines first, then the router")
	shCtx, shCancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer shCancel()
	_ = srv.Shutdown(shCtx)
	wg.Wait()
	return nil
}

// runPool keeps one pool's engine running: start, supervise, restart with
// back-off when it dies, stop it when ctx ends.
func (h *Home) runPool(ctx context.Context, p Pool, engineToken string, ready chan struct{}) {
	log := h.log.With("pool", p.Name)
	ad, _ := engine.Get(p.Engine) // validated by Normalize
	bin, err := resolveBinary(p, ad)
	if err != nil {
		log.Error("engine not found", "error", err)
		return
	}
	backoff := time.Second
	readyOnce := sync.Once{}
	for ctx.Err() == nil {
		started := time.Now()
		err := h.runEngineOnce(ctx, p, ad, bin, engineToken, log, func() { readyOnce.Do(func() { close(ready) }) })
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > time.Minute {
			backoff = time.Second // it ran a while: not a crash loop
		}
		log.Warn("engine exited; restarting", "error", err, "in", backoff.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

func (h *Home) runEngineOnce(ctx context.Context, p Pool, ad engine.Adapter, bin, engineToken string, log hclog.Logger, onReady func()) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	spec := engine.Spec{Model: p.Model, ModelName: p.ModelName, Host: "127.0.0.1", Port: port, Ctx: p.Ctx, Slots: p.Slots,
		GPULayers: p.GPULayers, Threads: p.Threads, ExtraArgs: p.ExtraArgs, StateDir: filepath.Join(h.cfg.StateDir, "engines", p.Name)}
	if ad.TakesAPIKey() {
		spec.APIKey = engineToken
	}
	if err := os.MkdirAll(spec.StateDir, 0o700); err != nil {
		return fmt.Errorf("engine state dir: %w", err)
	}
	c, err := ad.Command(bin, spec)
	if err != nil {
		return fmt.Errorf("engine command: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(h.cfg.StateDir, "logs", p.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("engine log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = spec.StateDir
	// Its own process group: a stop reaches the engine's children too, and
	// Ctrl-C in the terminal reaches only llorch, which stops it cleanly.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	pid := cmd.Process.Pid
	if err := h.state.add(p.Name, pid); err != nil {
		log.Warn("state file", "error", err)
	}
	defer h.state.remove(pid)
	log.Info("engine started", "engine", p.Engine, "pid", pid, "port", port, "log", logf.Name())

	sup := supervise.New(supervise.Config{
		Adapter: ad, Spec: spec, Registrar: h.reg, Logger: log.Named("supervise"),
		Instance: instance.Instance{
			ID: "home-" + p.Name, Service: instance.DefaultServiceName, Address: "127.0.0.1", Port: port,
			Model: p.ModelName, Engine: p.Engine, NodeID: h.node, NodeName: h.node, PoolID: p.Name,
			Ctx: p.Ctx, Slots: p.Slots, APIs: ad.APIs(),
		},
	})
	h.mu.Lock()
	h.sups[p.Name] = sup
	h.mu.Unlock()
	supDone := make(chan error, 1)
	go func() { supDone <- sup.Run(ctx) }()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	go func() {
		select {
		case <-sup.Ready():
			log.Info("engine ready", "model", p.ModelName, "version", sup.Version())
			onReady()
		case <-sup.Done():
		}
	}()

	select {
	case err := <-waited:
		sup.ProcessExited()
		<-supDone
		return fmt.Errorf("engine pid %d exited: %v", pid, err)
	case <-ctx.Done():
		stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = sup.Stop(stopCtx)
		cancel()
		terminate(pid, waited, log)
		<-supDone
		return ctx.Err()
	}
}

// terminate stops an engine's process group: SIGTERM, then SIGKILL after
// stopGrace.
func terminate(pid int, waited <-chan error, log hclog.Logger) {
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-waited:
		log.Info("engine stopped", "pid", pid)
	case <-time.After(stopGrace):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-waited
		log.Warn("engine killed after the stop grace period", "pid", pid)
	}
}

func resolveBinary(p Pool, ad engine.Adapter) (string, error) {
	if p.Binary != "" {
		return p.Binary, nil
	}
	cache := os.Getenv("LLORCH_CACHE")
	if cache == "" {
		if hd, err := os.UserHomeDir(); err == nil {
			cache = filepath.Join(hd, ".cache", "llorch")
		}
	}
	if cache != "" {
		c := filepath.Join(cache, "bin", filepath.Base(ad.DefaultBinary()))
		if _, err := os.Stat(c); err == nil {
			return c, nil
		}
	}
	if path, err := exec.LookPath(ad.DefaultBinary()); err == nil {
		return path, nil
	}
	return "", fmt.Errorf("%s engine binary %q not found in %s/bin or PATH (run scripts/get-llama-server.sh, or set binary: in the pool)", ad.Name(), ad.DefaultBinary(), cache)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// stateFile records the engines this home profile started (pid and start
// time) so the next run can clean up after a crash. An exclusive lock on it
// keeps two home profiles from sharing a state dir.
type stateFile struct {
	path string
	lock *os.File
	mu   sync.Mutex
	list []stateEntry
}

type stateEntry struct {
	Pool  string `json:"pool"`
	PID   int    `json:"pid"`
	Start uint64 `json:"start"` // /proc start time: guards against pid reuse
}

func openState(dir string) (*stateFile, error) {
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state lock: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("another llorch home is running with state dir %s", dir)
	}
	s := &stateFile{path: filepath.Join(dir, "engines.json"), lock: lock}
	if b, err := os.ReadFile(s.path); err == nil {
		_ = json.Unmarshal(b, &s.list)
	}
	return s, nil
}

// cleanup stops engines a previous run left behind. Adopting them would
// need their ports and tokens to match this run's config; a restart of a
// 100 ms engine start is simpler and always right.
func (s *stateFile) cleanup(log hclog.Logger) {
	s.mu.Lock()
	left := s.list
	s.list = nil
	s.mu.Unlock()
	for _, e := range left {
		if !procfs.Alive(e.PID, e.Start) {
			continue
		}
		log.Warn("stopping an engine an earlier run left behind", "pool", e.Pool, "pid", e.PID)
		_ = syscall.Kill(-e.PID, syscall.SIGTERM)
		deadline := time.Now().Add(stopGrace)
		for procfs.Alive(e.PID, e.Start) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if procfs.Alive(e.PID, e.Start) {
			_ = syscall.Kill(-e.PID, syscall.SIGKILL)
		}
	}
	s.save()
}

func (s *stateFile) add(pool string, pid int) error {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.list = append(s.list, stateEntry{Pool: pool, PID: pid, Start: st.StartTime})
	s.mu.Unlock()
	return s.save()
}

func (s *stateFile) remove(pid int) {
	s.mu.Lock()
	out := s.list[:0]
	for _, e := range s.list {
		if e.PID != pid {
			out = append(out, e)
		}
	}
	s.list = out
	s.mu.Unlock()
	_ = s.save()
}

func (s *stateFile) save() error {
	s.mu.Lock()
	b, _ := json.Marshal(s.list)
	s.mu.Unlock()
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.path)
}

func (s *stateFile) close() {
	if s.lock != nil {
		s.lock.Close()
	}
}
