package supervise_test

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/engine/enginetest"
	"github.com/llorch/llorch/engine/supervise"
	"github.com/llorch/llorch/internal/consultest"
	"github.com/llorch/llorch/internal/testenv"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/registry/consul"
)

func newInstance(spec engine.Spec) registry.Instance {
	return registry.Instance{
		ID: "llorch-test-" + spec.ModelName, Address: spec.Host, Port: spec.Port,
		Model: spec.ModelName, Engine: "llamacpp", NodeID: "node-1", NodeName: "n1",
		PoolID: "cpu", Ctx: spec.Ctx, Slots: spec.Slots,
	}
}

// Timing goals below are derived from the supervisor's configured
// intervals plus this margin: one check update through the local Consul
// agent, on a loaded 2-core machine.
const consulWriteMargin = time.Second

type run struct {
	sup    *supervise.Supervisor
	cancel context.CancelFunc
	result chan error
}

func start(t *testing.T, cfg supervise.Config) *run {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{sup: supervise.New(cfg), cancel: cancel, result: make(chan error, 1)}
	go func() { r.result <- r.sup.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-r.sup.Done()
	})
	return r
}

func waitReady(t *testing.T, r *run, limit time.Duration) {
	t.Helper()
	select {
	case <-r.sup.Ready():
	case err := <-r.result:
		t.Fatalf("Run ended before ready: %v (Err %v)", err, r.sup.Err())
	case <-time.After(limit):
		_, h, note := r.sup.State()
		t.Fatalf("not ready after %v: %s %s, Err %v", limit, h, note, r.sup.Err())
	}
}

// TestSupervisorLifecycle: real Consul (ACLs on, driver token from
// deploy/consul/driver-policy.hcl) and a real llama-server with the
// generated model. Measures the detection times the design promises.
func TestSupervisorLifecycle(t *testing.T) {
	c := testenv.StartConsul(t)
	reg, err := consul.NewRegistrar(consul.RegistrarConfig{Address: c.Addr, Token: c.Token(t, consultest.DriverPolicy(t))})
	if err != nil {
		t.Fatal(err)
	}
	reader := c.Client(t, c.Token(t, consultest.RouterPolicy(t)))
	a, _ := engine.Get("llamacpp")
	spec := enginetest.LlamaSpec(t)
	inst := newInstance(spec)
	w := consultest.Watch(t, reader, registry.DefaultServiceName, consul.CheckID(inst.ID))
	log := hclog.New(&hclog.LoggerOptions{Name: "supervise", Level: hclog.Info, Output: testWriter{t}})
	cfg := supervise.Config{Adapter: a, Spec: spec, Instance: inst, Registrar: reg, Logger: log}

	// Registration only after the engine is ready: start both together.
	p := enginetest.Start(t, a, testenv.LlamaServer(t), spec)
	r1 := start(t, cfg)
	waitReady(t, r1, 20*time.Second)
	w.WaitFor(t, "passing", 3*time.Second)
	if err := r1.sup.Err(); err != nil {
		t.Errorf("Err after ready: %v", err)
	}
	entries, _, err := reader.Health().Service(registry.DefaultServiceName, "", true, nil)
	if err != nil || len(entries) != 1 {
		t.Fatalf("passing instances: %d, %v", len(entries), err)
	}
	svc := entries[0].Service
	if svc.Meta[registry.MetaEngineVersion] == "" || svc.Meta[registry.MetaModel] != "tiny" ||
		svc.Meta[registry.MetaSlots] != "2" || svc.Meta[registry.MetaAPIs] == "" || svc.Port != spec.Port {
		t.Errorf("registration: meta %v port %d", svc.Meta, svc.Port)
	}
	// The load arrives with a probe: wait for it, for a few probe
	// intervals (a probe on a loaded machine may take more than one).
	loadBy := time.Now().Add(4 * supervise.DefaultProbeInterval)
	for l := r1.sup.Load(); !l.Known || l.SlotsFree != 2; l = r1.sup.Load() {
		if time.Now().After(loadBy) {
			t.Errorf("Load %+v, want known with 2 free slots", l)
			break
		}
		time.Sleep(supervise.DefaultProbeInterval / 10)
	}

	// A hung engine (SIGSTOP) turns critical once no probe succeeded for
	// HungAfter, checked every probe interval, plus one Consul write.
	hungGoal := supervise.DefaultHungAfter + supervise.DefaultProbeInterval + consulWriteMargin
	stopAt := time.Now()
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	hung := w.WaitFor(t, "critical", 2*hungGoal).Sub(stopAt)
	t.Logf("SIGSTOP→critical %v", hung.Round(time.Millisecond))
	if hung > hungGoal {
		t.Errorf("SIGSTOP→critical took %v, goal ≤ %v (hung_after %v + probe interval %v + Consul write %v)",
			hung, hungGoal, supervise.DefaultHungAfter, supervise.DefaultProbeInterval, consulWriteMargin)
	}
	if _, h, note := r1.sup.State(); h != registry.HealthCritical || !strings.Contains(note, "not answering") {
		t.Errorf("State after SIGSTOP: %s %q", h, note)
	}
	contAt := time.Now()
	p.Signal(syscall.SIGCONT)
	back := w.WaitFor(t, "passing", 5*time.Second).Sub(contAt)
	t.Logf("SIGCONT→passing %v", back.Round(time.Millisecond))

	// Plugin restart: the first supervisor goes away without Stop (its
	// context ends), a second one takes over the same instance. The check
	// must never leave passing, and there is still exactly one instance.
	r1.cancel()
	<-r1.sup.Done()
	t0 := time.Now()
	r2 := start(t, cfg)
	waitReady(t, r2, 10*time.Second)
	time.Sleep(4 * time.Second) // longer than the TTL: the feed really moved to r2
	if s := w.Since(t0); len(s) != 1 || s[0] != "passing" {
		t.Errorf("takeover flapped: %v (history %s)", s, w)
	}
	if svcs, _, _ := reader.Catalog().Service(registry.DefaultServiceName, "", nil); len(svcs) != 1 {
		t.Errorf("after takeover %d instances, want 1", len(svcs))
	}

	// Stop deregisters at once.
	stopCall := time.Now()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r2.sup.Stop(sctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	gone := w.WaitFor(t, "absent", 3*time.Second).Sub(stopCall)
	t.Logf("Stop→deregistered %v", gone.Round(time.Millisecond))
	if err := <-r2.result; err != nil {
		t.Errorf("Run after Stop: %v", err)
	}

	// Crash: kill -9; the owner notices the exit and calls ProcessExited.
	r3 := start(t, cfg)
	waitReady(t, r3, 10*time.Second)
	w.WaitFor(t, "passing", 3*time.Second)
	noticedAt := make(chan time.Time, 1)
	go func() { <-p.Done(); noticedAt <- time.Now(); r3.sup.ProcessExited() }()
	killAt := time.Now()
	p.Cmd.Process.Signal(syscall.SIGKILL)
	down := w.WaitNot(t, "passing", 3*time.Second)
	w.WaitFor(t, "absent", 3*time.Second)
	noticed := <-noticedAt
	t.Logf("crash→critical %v (kill→noticed %v, noticed→critical %v)",
		down.Sub(killAt).Round(time.Millisecond), noticed.Sub(killAt).Round(time.Millisecond), down.Sub(noticed).Round(time.Millisecond))
	// ProcessExited turns the check critical with one Consul write.
	if d := down.Sub(noticed); d > consulWriteMargin {
		t.Errorf("ProcessExited→critical took %v, want ≤ %v (one Consul write)", d, consulWriteMargin)
	}
	if err := <-r3.result; !errors.Is(err, supervise.ErrProcessExited) {
		t.Errorf("Run after crash: %v", err)
	}
	if ready, h, _ := r3.sup.State(); ready || h != registry.HealthCritical {
		t.Errorf("State after crash: ready %v %s", ready, h)
	}
}

// TestSupervisorACLDenied: a token without service:write never registers
// and the task never becomes ready; Err says why.
func TestSupervisorACLDenied(t *testing.T) {
	c := testenv.StartConsul(t)
	reg, err := consul.NewRegistrar(consul.RegistrarConfig{Address: c.Addr, Token: c.Token(t, consultest.RouterPolicy(t))})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := engine.Get("llamacpp")
	spec := enginetest.LlamaSpec(t)
	enginetest.StartLlama(t, spec)
	r := start(t, supervise.Config{Adapter: a, Spec: spec, Instance: newInstance(spec), Registrar: reg})
	select {
	case err := <-r.result:
		if !strings.Contains(err.Error(), "consul ACL denied: token token:") || !strings.Contains(err.Error(), "lacks service:write on llorch-engine") {
			t.Errorf("Run error not clear: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not give up on an ACL refusal")
	}
	select {
	case <-r.sup.Ready():
		t.Error("Ready closed although registration was refused")
	default:
	}
	if err := r.sup.Err(); err == nil || !strings.Contains(err.Error(), "ACL denied") {
		t.Errorf("Err = %v", err)
	}
	if ready, _, _ := r.sup.State(); ready {
		t.Error("State reports ready")
	}
	if svcs, _, _ := c.Client(t, c.ManagementToken).Catalog().Service(registry.DefaultServiceName, "", nil); len(svcs) != 0 {
		t.Errorf("registered anyway: %v", svcs)
	}
}

// TestSupervisorWithoutRegistrar: the home profile may run without a
// registry; readiness and probing still work, and a dead engine ends Run.
func TestSupervisorWithoutRegistrar(t *testing.T) {
	a, _ := engine.Get("llamacpp")
	spec := enginetest.LlamaSpec(t)
	spec.Host = "0.0.0.0" // probed on loopback
	p := enginetest.Start(t, a, testenv.LlamaServer(t), spec)
	r := start(t, supervise.Config{Adapter: a, Spec: spec, Instance: newInstance(spec)})
	waitReady(t, r, 20*time.Second)
	if r.sup.Version() == "" {
		t.Error("no engine version")
	}
	p.Kill()
	r.sup.ProcessExited()
	select {
	case err := <-r.result:
		if !errors.Is(err, supervise.ErrProcessExited) {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not end after ProcessExited")
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
