package home

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/llorch/llorch/authmin"
	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/engine/supervise"
	"github.com/llorch/llorch/internal/procfs"
	"github.com/llorch/llorch/registry"
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
	h.reconcile()
	return h, nil
}

// fingerprint names an engine spec: the pool's settings after defaults,
// the program and the engine token (by hash: the state file must not hold
// it). The port is not part of it: an adopted engine keeps its port.
func fingerprint(p Pool, bin, engineToken string) string {
	b, _ := json.Marshal(struct {
		Pool
		Bin, Token string
	}{p, bin, fmt.Sprintf("%x", sha256.Sum256([]byte(engineToken)))})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// reconcile sorts the engines an earlier run left into adopted (alive,
// same pool and fingerprint, healthy) and stopped (all others).
func (h *Home) reconcile() {
	left := h.state.take()
	byName := map[string]*poolPlan{}
	for i := range h.pools {
		byName[h.pools[i].Name] = &h.pools[i]
	}
	for _, e := range left {
		if !procfs.Alive(e.PID, e.Start) {
			continue
		}
		log := h.log.With("pool", e.Pool, "pid", e.PID)
		p := byName[e.Pool]
		why := ""
		switch {
		case p == nil:
			why = "its pool is not in the config"
		case p.adopt != nil:
			why = "the pool already has an engine"
		case e.Spec != p.fp:
			why = "its spec differs from the config"
		default:
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := p.ad.Ready(ctx, &http.Client{}, "http://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(e.Port)), h.spec(p, e.Port))
			cancel()
			if err != nil {
				why = "it fails its health check: " + err.Error()
			}
		}
		if why == "" {
			e := e
			p.adopt = &e
			h.state.keep(e)
			log.Info("adopting the engine an earlier run left behind", "port", e.Port)
			continue
		}
		log.Warn("stopping an engine an earlier run left behind", "reason", why)
		stopLeftover(e)
	}
	_ = h.state.save()
}

// stopLeftover stops an engine that is not our child: its group gets
// SIGTERM, then SIGKILL after stopGrace.
func stopLeftover(e stateEntry) {
	_ = syscall.Kill(-e.PID, syscall.SIGTERM)
	deadline := time.Now().Add(stopGrace)
	for procfs.Alive(e.PID, e.Start) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if procfs.Alive(e.PID, e.Start) {
		_ = syscall.Kill(-e.PID, syscall.SIGKILL)
	}
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
	wg.Add(2 + len(h.pools))
	go func() { defer wg.Done(); _ = rt.Run(runCtx) }()
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.log.Error("serve", "error", err)
			cancel()
		}
	}()
	readyEach := make([]chan struct{}, len(h.pools))
	for i := range h.pools {
		readyEach[i] = make(chan struct{})
		go func() { defer wg.Done(); h.runPool(runCtx, &h.pools[i], readyEach[i]) }()
	}
	go func() {
		for _, c := range readyEach {
			select {
			case <-c:
			case <-runCtx.Done():
				return
			}
		}
		h.log.Info("home profile ready", "addr", ln.Addr().String(), "pools", len(h.pools))
		close(h.ready)
	}()
	h.log.Info("router listening", "addr", ln.Addr().String(), "api_token_file", h.cfg.APITokenFile)

	<-runCtx.Done()
	h.log.Info("stopping: engines first, then the router")
	_ = rt.Drain(srv)
	wg.Wait()
	return nil
}

// runPool keeps one pool's engine running: adopt or start, supervise,
// restart with back-off when it dies, stop it when ctx ends.
func (h *Home) runPool(ctx context.Context, p *poolPlan, ready chan struct{}) {
	log := h.log.With("pool", p.Name)
	backoff := time.Second
	readyOnce := sync.Once{}
	onReady := func() { readyOnce.Do(func() { close(ready) }) }
	adopt := p.adopt
	for ctx.Err() == nil {
		started := time.Now()
		err := h.runEngineOnce(ctx, p, adopt, log, onReady)
		adopt = nil
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

// engineProc is one engine process, started by us or adopted.
type engineProc struct {
	entry  stateEntry
	waited <-chan error // gets the process's end
}

// start launches a pool's engine in a process group of its own and
// records it in the state file.
func (h *Home) start(p *poolPlan, log hclog.Logger) (*engineProc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	spec := h.spec(p, port)
	if err := os.MkdirAll(spec.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("engine state dir: %w", err)
	}
	c, err := p.ad.Command(p.bin, spec)
	if err != nil {
		return nil, fmt.Errorf("engine command: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(h.cfg.StateDir, "logs", p.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("engine log: %w", err)
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = spec.StateDir
	// Its own process group: a stop reaches the engine's children too, and
	// Ctrl-C in the terminal reaches only llorch, which stops it cleanly.
	// It also outlives a kill -9 of llorch home, so the next run can adopt it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", p.bin, err)
	}
	pid := cmd.Process.Pid
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	e := stateEntry{Pool: p.Name, PID: pid, Port: port, Spec: p.fp}
	if st, err := procfs.ReadStat(pid); err == nil {
		e.Start = st.StartTime
	}
	if err := h.state.add(e); err != nil {
		log.Warn("state file", "error", err)
	}
	log.Info("engine started", "engine", p.Engine, "pid", pid, "port", port, "log", logf.Name())
	return &engineProc{entry: e, waited: waited}, nil
}

// watchAdopted reports the end of an engine that is not our child (its
// parent was the earlier run): /proc is polled, as nothing else can wait
// for it. The poller ends when the process does or stop is closed.
func watchAdopted(e stateEntry, stop <-chan struct{}) <-chan error {
	waited := make(chan error, 1)
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for procfs.Alive(e.PID, e.Start) {
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
		waited <- errors.New("adopted engine exited")
	}()
	return waited
}

func (h *Home) runEngineOnce(ctx context.Context, p *poolPlan, adopt *stateEntry, log hclog.Logger, onReady func()) error {
	var proc *engineProc
	stopWatch := make(chan struct{})
	defer close(stopWatch)
	if adopt != nil {
		proc = &engineProc{entry: *adopt, waited: watchAdopted(*adopt, stopWatch)}
	} else {
		var err error
		if proc, err = h.start(p, log); err != nil {
			return err
		}
	}
	pid := proc.entry.PID
	defer h.state.remove(pid)
	spec := h.spec(p, proc.entry.Port)

	sup := supervise.New(supervise.Config{
		Adapter: p.ad, Spec: spec, Registrar: h.reg, Logger: log.Named("supervise"),
		Instance: registry.Instance{
			ID: "home-" + p.Name, Service: registry.DefaultServiceName, Address: "127.0.0.1", Port: spec.Port,
			Model: p.ModelName, Engine: p.Engine, NodeID: h.node, NodeName: h.node, PoolID: p.Name,
			Ctx: p.Ctx, Slots: p.Slots, APIs: p.ad.APIs(),
		},
	})
	supDone := make(chan error, 1)
	go func() { supDone <- sup.Run(ctx) }()
	go func() {
		select {
		case <-sup.Ready():
			log.Info("engine ready", "model", p.ModelName, "version", sup.Version(), "pid", pid)
			onReady()
		case <-sup.Done():
		}
	}()

	select {
	case err := <-proc.waited:
		sup.ProcessExited()
		<-supDone
		return fmt.Errorf("engine pid %d exited: %v", pid, err)
	case <-ctx.Done():
		stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = sup.Stop(stopCtx)
		cancel()
		terminate(pid, proc.waited, log)
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
		// LookPath checks that a path is an executable file, and finds a
		// bare name on PATH.
		path, err := exec.LookPath(p.Binary)
		if err != nil {
			return "", fmt.Errorf("%s engine binary: %w", ad.Name(), err)
		}
		return path, nil
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

// stateFile records the engines this home profile runs (pid, start time,
// port, spec fingerprint) so the next run can adopt or stop them after a
// crash. An exclusive lock on it keeps two home profiles from sharing a
// state dir.
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
	Port  int    `json:"port"`
	Spec  string `json:"spec"` // fingerprint of the engine's spec
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
		_ = json.Unmarshal(b, &s.list) // a broken file only loses cleanup hints
	}
	return s, nil
}

// take empties the list and returns what it held.
func (s *stateFile) take() []stateEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	left := s.list
	s.list = nil
	return left
}

// keep puts an adopted entry back.
func (s *stateFile) keep(e stateEntry) {
	s.mu.Lock()
	s.list = append(s.list, e)
	s.mu.Unlock()
}

func (s *stateFile) add(e stateEntry) error {
	s.keep(e)
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
