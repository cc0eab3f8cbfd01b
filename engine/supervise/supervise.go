// Package supervise watches one running engine and keeps its registry
// entry true: wait until the engine is ready, register it passing, then
// probe its health and load every interval and feed the registry's check.
// The driver and the home profile both run one Supervisor per engine task;
// they own the process, the Supervisor owns the registration.
package supervise

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/registry"
)

// Defaults.
const (
	DefaultProbeInterval = 500 * time.Millisecond
	DefaultHungAfter     = 2 * time.Second
	// DefaultReadyAttempt bounds one readiness attempt; Ollama's attempt
	// may upload and create a model, so it is generous.
	DefaultReadyAttempt = 2 * time.Minute
	// finalTimeout bounds the last registry calls after the engine died or
	// the task stopped (the caller's context may already be done).
	finalTimeout = 5 * time.Second
	// feedEvery re-sends an unchanged health well inside Consul's TTL.
	feedEvery = time.Second
)

// ErrProcessExited is Run's result when the engine process died.
var ErrProcessExited = errors.New("engine process exited")

// Config describes one engine instance to supervise.
type Config struct {
	Adapter engine.Adapter
	Spec    engine.Spec
	// Instance is the registration, everything but health and version
	// (the Supervisor fills those in).
	Instance  registry.Instance
	Registrar registry.Registrar // nil: supervise without registering
	Logger    hclog.Logger
	// ProbeInterval is how often health and load are probed.
	ProbeInterval time.Duration
	// HungAfter: probes failing or timing out this long → critical.
	HungAfter time.Duration
	// ProbeTimeout bounds one probe (default: HungAfter/2).
	ProbeTimeout time.Duration
	// ReadyAttempt bounds one readiness attempt.
	ReadyAttempt time.Duration
	Client       *http.Client
	// Base is the engine's URL for probes; default http://<spec host>:<port>,
	// with a wildcard host probed on loopback.
	Base string
	// OnChange, when set, is called (from Run's goroutine) each time
	// readiness or health changes; the driver turns it into task events.
	OnChange func(ready bool, h registry.Health, note string)
}

// Supervisor supervises one engine instance.
type Supervisor struct {
	cfg  Config
	log  hclog.Logger
	base string

	ready   chan struct{}
	done    chan struct{}
	exited  chan struct{}
	stopped chan struct{}
	exitOne sync.Once
	stopOne sync.Once
	runOne  sync.Once

	mu         sync.Mutex
	isReady    bool
	registered bool
	health     registry.Health
	note       string
	load       engine.Load
	err        error
	lastFeed   time.Time
	fedHealth  registry.Health
	version    string
	deregErr   error
}

// New checks nothing and starts nothing; Run does the work.
func New(cfg Config) *Supervisor {
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = DefaultProbeInterval
	}
	if cfg.HungAfter <= 0 {
		cfg.HungAfter = DefaultHungAfter
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = cfg.HungAfter / 2
	}
	if cfg.ReadyAttempt <= 0 {
		cfg.ReadyAttempt = DefaultReadyAttempt
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{}
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	base := cfg.Base
	if base == "" {
		host := cfg.Spec.Host
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			host = "127.0.0.1"
		}
		base = "http://" + net.JoinHostPort(host, strconv.Itoa(cfg.Spec.Port))
	}
	return &Supervisor{
		cfg:     cfg,
		base:    base,
		log:     cfg.Logger.With("instance", cfg.Instance.ID),
		ready:   make(chan struct{}),
		done:    make(chan struct{}),
		exited:  make(chan struct{}),
		stopped: make(chan struct{}),
		health:  registry.HealthCritical,
		note:    "starting",
	}
}

// Ready is closed once the engine is ready and registered.
func (s *Supervisor) Ready() <-chan struct{} { return s.ready }

// Done is closed when Run has returned.
func (s *Supervisor) Done() <-chan struct{} { return s.done }

// Load is the engine's last probed load.
func (s *Supervisor) Load() engine.Load {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.load
}

// State is whether the instance is ready, its health and why.
func (s *Supervisor) State() (ready bool, h registry.Health, note string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.isReady, s.health, s.note
}

// Version is the engine version read once it was ready.
func (s *Supervisor) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// Err is the registration error, if the last attempt failed (for example
// the token lacks permission); while it is set the task is not ready.
func (s *Supervisor) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// ProcessExited tells the Supervisor the engine died: the instance turns
// critical at once and is deregistered; Run then returns ErrProcessExited.
func (s *Supervisor) ProcessExited() {
	s.exitOne.Do(func() { close(s.exited) })
}

// Stop deregisters the instance and ends Run; it waits for Run until ctx
// ends. Safe to call more than once, and before or without Run.
func (s *Supervisor) Stop(ctx context.Context) error {
	s.stopOne.Do(func() { close(s.stopped) })
	neverRan := false
	s.runOne.Do(func() { neverRan = true; close(s.done) })
	if neverRan {
		// A registration may still exist from before (a plugin restart
		// that is stopping a recovered task): remove it.
		dctx, cancel := context.WithTimeout(ctx, finalTimeout)
		defer cancel()
		s.deregister(dctx)
	}
	select {
	case <-s.done:
	case <-ctx.Done():
		return fmt.Errorf("supervise %s: stop: %w", s.cfg.Instance.ID, ctx.Err())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deregErr
}

// Run supervises until the process exits, Stop is called or ctx ends. It
// returns ErrProcessExited, nil after Stop, ctx's error, or a registration
// error that retrying cannot fix (ACL denied).
func (s *Supervisor) Run(ctx context.Context) error {
	first := false
	s.runOne.Do(func() { first = true })
	if !first {
		return fmt.Errorf("supervise %s: Run called twice or after Stop", s.cfg.Instance.ID)
	}
	defer close(s.done)
	// inner ends every probe at once when the process dies or Stop is called.
	inner, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.exited:
		case <-s.stopped:
		case <-inner.Done():
		}
		cancel()
	}()
	err := s.run(inner)
	return s.finish(ctx, err)
}

func (s *Supervisor) run(ctx context.Context) error {
	if err := s.waitReady(ctx); err != nil {
		return err
	}
	s.readVersion(ctx)
	if err := s.register(ctx); err != nil {
		return err
	}
	return s.loop(ctx)
}

// finish turns how run ended into the last registry actions and Run's result.
func (s *Supervisor) finish(outer context.Context, err error) error {
	final, cancel := context.WithTimeout(context.Background(), finalTimeout)
	defer cancel()
	switch {
	case isClosed(s.exited):
		// Dead: critical first (routers watching health drop it now), then
		// gone. The order matters if deregistration fails.
		s.setState(false, registry.HealthCritical, "engine process exited")
		s.feed(final, true)
		s.deregister(final)
		s.log.Info("engine exited; instance deregistered")
		return ErrProcessExited
	case isClosed(s.stopped):
		s.setState(false, registry.HealthCritical, "stopped")
		s.deregister(final)
		s.log.Info("stopped; instance deregistered")
		return nil
	case outer.Err() != nil:
		// The owner is going away without saying why (e.g. plugin shutdown):
		// leave the registration; a recovering plugin re-asserts it, and the
		// TTL turns it critical if nobody does.
		return outer.Err()
	default:
		return err
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
