package consul_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/internal/consultest"
	"github.com/llorch/llorch/internal/testenv"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/registry/consul"
)

// eventWait bounds waiting for a change the test just made to show up in
// the watch (a blocking query wakes in milliseconds); it is a hang guard,
// not a goal, so it is generous for a loaded CI machine.
const eventWait = 15 * time.Second

// ttlMargin is how late past the TTL a check may turn critical before the
// test calls it broken.
const ttlMargin = 10 * time.Second

func testInstance() registry.Instance {
	return registry.Instance{
		ID: "llorch-alloc1-engine", Address: "127.0.0.1", Port: 18080,
		Model: "tiny", ModelDigest: "abc123", Engine: "llamacpp", EngineVersion: "b11669",
		NodeID: "node-1", NodeName: "n1", PoolID: "cpu", Ctx: 512, Slots: 2,
		APIs: []string{"/v1/chat/completions", "/v1/completions"}, Health: registry.HealthPassing,
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// TestRegistrarLifecycle runs against a real Consul with ACLs on, using a
// token made from deploy/consul/driver-policy.hcl, and reads back through
// a token made from deploy/consul/router-policy.hcl.
func TestRegistrarLifecycle(t *testing.T) {
	c := testenv.StartConsul(t)
	driverTok := c.Token(t, consultest.DriverPolicy(t))
	routerTok := c.Token(t, consultest.RouterPolicy(t))
	reader := c.Client(t, routerTok)

	r, err := consul.NewRegistrar(consul.RegistrarConfig{Address: c.Addr, Token: driverTok, Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	inst := testInstance()
	w := consultest.Watch(t, reader, registry.DefaultServiceName, consul.CheckID(inst.ID))
	if err := r.Register(ctx(t), inst); err != nil {
		t.Fatalf("Register: %v", err)
	}
	w.WaitFor(t, "passing", 5*time.Second)

	// The router's view: passing-only health query, tags and meta round-trip.
	entries, _, err := reader.Health().Service(registry.DefaultServiceName, "", true, nil)
	if err != nil || len(entries) != 1 {
		t.Fatalf("router health query: %d entries, %v", len(entries), err)
	}
	e := entries[0]
	got, err := registry.FromRegistry(e.Service.ID, e.Service.Service, e.Service.Address, e.Service.Port, e.Service.Tags, e.Service.Meta, registry.HealthPassing)
	if err != nil {
		t.Fatal(err)
	}
	if got.Model != "tiny" || got.NodeID != "node-1" || got.PoolID != "cpu" || got.Slots != 2 || got.Ctx != 512 ||
		got.EngineVersion != "b11669" || got.Port != 18080 || !got.Serves("/v1/completions") {
		t.Errorf("round trip lost data: %+v", got)
	}
	if !strings.Contains(strings.Join(e.Service.Tags, ","), "model=tiny") {
		t.Errorf("tags %v", e.Service.Tags)
	}

	// Re-registering a passing instance must not flap it.
	t0 := time.Now()
	for i := 0; i < 3; i++ {
		if err := r.Register(ctx(t), inst); err != nil {
			t.Fatal(err)
		}
	}
	// Keep feeding while we watch for a flap.
	for i := 0; i < 4; i++ {
		if err := r.SetHealth(ctx(t), inst.ID, registry.HealthPassing, "ok"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if s := w.Since(t0); len(s) != 1 || s[0] != "passing" {
		t.Errorf("re-register flapped: %v", s)
	}
	// Register with unknown health keeps what the agent has.
	inst2 := inst
	inst2.Health = ""
	if err := r.Register(ctx(t), inst2); err != nil {
		t.Fatal(err)
	}
	if s := w.Since(t0); len(s) != 1 {
		t.Errorf("register without health changed state: %v", s)
	}

	// Health feed: critical with a note, then back.
	if err := r.SetHealth(ctx(t), inst.ID, registry.HealthCritical, "engine hung"); err != nil {
		t.Fatal(err)
	}
	w.WaitFor(t, "critical", eventWait)
	if err := r.SetHealth(ctx(t), inst.ID, registry.HealthPassing, "recovered"); err != nil {
		t.Fatal(err)
	}
	w.WaitFor(t, "passing", eventWait)

	// Nobody feeds the check: critical once the TTL runs out. The wait is
	// derived from the TTL; its margin covers Consul's TTL timer and the
	// blocking query being scheduled late on a loaded 2-core machine. The
	// behaviour asserted is "not before the TTL, and it does happen".
	fed := time.Now()
	at := w.WaitFor(t, "critical", consul.DefaultTTL+ttlMargin)
	t.Logf("last feed → critical in %v (TTL %v)", at.Sub(fed).Round(time.Millisecond), consul.DefaultTTL)
	if d := at.Sub(fed); d < consul.DefaultTTL-500*time.Millisecond {
		t.Errorf("critical after %v, before the TTL", d)
	}

	if err := r.SetHealth(ctx(t), inst.ID, "bogus", ""); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("SetHealth(bogus): %v", err)
	}

	// Deregister: gone at once; again (unknown id) is fine.
	if err := r.Deregister(ctx(t), inst.ID); err != nil {
		t.Fatal(err)
	}
	w.WaitFor(t, "absent", eventWait)
	if err := r.Deregister(ctx(t), inst.ID); err != nil {
		t.Errorf("second Deregister: %v", err)
	}
	if err := r.SetHealth(ctx(t), inst.ID, registry.HealthPassing, ""); !errors.Is(err, consul.ErrNotRegistered) {
		t.Errorf("SetHealth after deregister: %v, want ErrNotRegistered", err)
	}
}

func TestRegistrarACLDenied(t *testing.T) {
	c := testenv.StartConsul(t)
	// Read-only on the service: registering must be refused, clearly.
	tok := c.Token(t, consultest.RouterPolicy(t))
	r, err := consul.NewRegistrar(consul.RegistrarConfig{Address: c.Addr, Token: tok})
	if err != nil {
		t.Fatal(err)
	}
	err = r.Register(ctx(t), testInstance())
	if err == nil {
		t.Fatal("Register with a read-only token succeeded")
	}
	if !errors.Is(err, consul.ErrACLDenied) || !strings.Contains(err.Error(), "consul ACL denied: token token:") ||
		!strings.Contains(err.Error(), "lacks service:write on llorch-engine") {
		t.Errorf("error is not clear: %v", err)
	}
	if strings.Contains(err.Error(), tok) {
		t.Errorf("error leaks the raw token: %v", err)
	}
	// The router policy must not be able to write anything either.
	if svcs, _, err := c.Client(t, c.ManagementToken).Catalog().Service(registry.DefaultServiceName, "", nil); err != nil || len(svcs) != 0 {
		t.Errorf("something was registered: %v %v", svcs, err)
	}
	// A different service name is outside the driver policy.
	dr, _ := consul.NewRegistrar(consul.RegistrarConfig{Address: c.Addr, Token: c.Token(t, consultest.DriverPolicy(t)), Service: "other"})
	if err := dr.Register(ctx(t), testInstance()); !errors.Is(err, consul.ErrACLDenied) || !strings.Contains(err.Error(), "on other") {
		t.Errorf("driver token on another service: %v", err)
	}
}

func TestRegistrarAgentRestartNeedsReregister(t *testing.T) {
	c := testenv.StartConsul(t)
	r, err := consul.NewRegistrar(consul.RegistrarConfig{Address: c.Addr, Token: c.ManagementToken})
	if err != nil {
		t.Fatal(err)
	}
	inst := testInstance()
	if err := r.Register(ctx(t), inst); err != nil {
		t.Fatal(err)
	}
	c.Stop()
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	// A dev agent comes back empty (as a lost agent would); the feeder must
	// learn it has to register again rather than fail forever.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err = r.SetHealth(ctx(t), inst.ID, registry.HealthPassing, "")
		if errors.Is(err, consul.ErrNotRegistered) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SetHealth after agent restart: %v, want ErrNotRegistered", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := consul.NewRegistrar(consul.RegistrarConfig{DeregisterAfter: 10 * time.Second}); err == nil || !strings.Contains(err.Error(), "deregister_after") {
		t.Errorf("DeregisterAfter below 1m: %v", err)
	}
	if _, err := consul.NewRegistrar(consul.RegistrarConfig{TokenFile: "/nonexistent/token"}); err == nil || !strings.Contains(err.Error(), "token file") {
		t.Errorf("missing token file: %v", err)
	}
}
