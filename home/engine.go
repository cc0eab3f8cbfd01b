package home

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/engine/supervise"
	"github.com/llorch/llorch/internal/procfs"
	"github.com/llorch/llorch/registry"
)

// startPools runs every pool's engine (or, with on_demand, the loader)
// under wg, and closes h.ready once the engines it waits for are ready.
func (h *Home) startPools(ctx context.Context, wg *sync.WaitGroup, addr string) {
	ready := func() {
		h.log.Info("home profile ready", "addr", addr, "pools", len(h.pools), "on_demand", h.loader != nil)
		close(h.ready)
	}
	if h.loader != nil {
		h.loader.attach(ctx, wg)
		wg.Add(1)
		go func() { defer wg.Done(); h.loader.run(ready) }()
		return
	}
	readyEach := make([]chan struct{}, len(h.pools))
	for i := range h.pools {
		readyEach[i] = make(chan struct{})
		var once sync.Once
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.runPool(ctx, &h.pools[i], poolHooks{ready: func() { once.Do(func() { close(readyEach[i]) }) }})
		}()
	}
	go func() {
		for _, c := range readyEach {
			select {
			case <-c:
			case <-ctx.Done():
				return
			}
		}
		ready()
	}()
}

// instanceID is the pool's instance in the registry.
func instanceID(p *poolPlan) string { return "home-" + p.Name }

// poolHooks tell runPool's owner about the engine: ready each time it
// turns ready, exited each time it ends before ctx does.
type poolHooks struct {
	ready, exited func()
}

// runPool keeps one pool's engine running: adopt or start, supervise,
// restart with back-off when it dies, stop it when ctx ends.
func (h *Home) runPool(ctx context.Context, p *poolPlan, hooks poolHooks) {
	log := h.log.With("pool", p.Name)
	backoff := time.Second
	onReady := func() {
		if hooks.ready != nil {
			hooks.ready()
		}
	}
	adopt := p.adopt
	p.adopt = nil // taken over once; a later start of this pool starts anew
	for ctx.Err() == nil {
		started := time.Now()
		err := h.runEngineOnce(ctx, p, adopt, log, onReady)
		adopt = nil
		if ctx.Err() != nil {
			return
		}
		if hooks.exited != nil {
			hooks.exited()
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
			ID: instanceID(p), Service: registry.DefaultServiceName, Address: "127.0.0.1", Port: spec.Port,
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
