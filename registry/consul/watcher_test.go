package consul

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/google/uuid"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/internal/testenv"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/discovery"
)

// routerPolicy is the router's shipped Consul policy; the test proves it
// is enough to follow the registry.
func routerPolicy(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("../../deploy/consul/router-policy.hcl")
	if err != nil {
		t.Fatalf("router policy: %v", err)
	}
	return string(b)
}

func register(t testing.TB, c *consulapi.Client, in registry.Instance) {
	t.Helper()
	meta, err := in.Meta()
	if err != nil {
		t.Fatal(err)
	}
	err = c.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{
		ID: in.ID, Name: registry.DefaultServiceName, Address: in.Address, Port: in.Port,
		Tags: in.Tags(), Meta: meta,
		Check: &consulapi.AgentServiceCheck{CheckID: "ttl-" + in.ID, TTL: "60s", Status: consulapi.HealthPassing},
	})
	if err != nil {
		t.Fatalf("register %s: %v", in.ID, err)
	}
}

func testInstance(id string, port int) registry.Instance {
	return registry.Instance{ID: id, Address: "127.0.0.1", Port: port, Model: "tiny", Engine: "llamacpp", NodeID: "node-" + id}
}

func ids(v *discovery.View) []string {
	var out []string
	for _, in := range v.Current().Instances {
		out = append(out, in.ID)
	}
	return out
}

func TestConsulSourceFollowsRegistry(t *testing.T) {
	c := testenv.StartConsul(t)
	admin := c.Client(t, c.ManagementToken)
	readerSecret := uuid.NewString()
	readToken(t, admin, readerSecret)
	reader := c.Client(t, readerSecret)

	src := &Watcher{Client: reader, WaitTime: 2 * time.Second, MinBackoff: 50 * time.Millisecond, MaxBackoff: 400 * time.Millisecond,
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: testLog{t}})}
	v := discovery.NewView()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.Run(ctx, src) }()
	defer func() {
		cancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	}()
	waitUntil(t, 10*time.Second, "first snapshot", v.Synced)
	if n := len(v.Current().Instances); n != 0 {
		t.Fatalf("empty Consul gave %d instances", n)
	}

	follow := func(what string, want ...string) {
		t.Helper()
		start := time.Now()
		waitUntil(t, 10*time.Second, what, func() bool { return equal(ids(v), want) })
		t.Logf("%s: view followed in %v", what, time.Since(start).Round(time.Millisecond))
	}
	register(t, admin, testInstance("b", 9002))
	follow("instance added", "b")
	register(t, admin, testInstance("a", 9001))
	follow("second instance added (sorted by node)", "a", "b")

	// A registration this build cannot read is skipped, the rest served.
	bad := testInstance("c", 9003)
	meta, _ := bad.Meta()
	meta[registry.MetaCtx] = "lots"
	// The index before the change (read after it, the watcher may already
	// have moved past it and the wait below would wait for a second change).
	idx := v.Current().Index
	if err := admin.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{ID: "c", Name: registry.DefaultServiceName,
		Address: "127.0.0.1", Port: 9003, Meta: meta}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "index past the bad registration", func() bool { return v.Current().Index > idx })
	if got := ids(v); !equal(got, []string{"a", "b"}) {
		t.Fatalf("with a bad registration: %v", got)
	}

	// Failing health check: gone from the view (passing only).
	if err := admin.Agent().UpdateTTL("ttl-a", "engine down", consulapi.HealthCritical); err != nil {
		t.Fatal(err)
	}
	follow("instance critical", "b")
	if err := admin.Agent().ServiceDeregister("b"); err != nil {
		t.Fatal(err)
	}
	follow("instance deregistered")
	register(t, admin, testInstance("b", 9002))
	follow("re-registered", "b")

	// Consul goes away: the last snapshot stays, its age grows.
	c.Stop()
	time.Sleep(1500 * time.Millisecond)
	if got := ids(v); !equal(got, []string{"b"}) {
		t.Fatalf("while Consul is down the view changed to %v", got)
	}
	if age := v.Age(); age < time.Second {
		t.Fatalf("snapshot age %v while Consul has been down 1.5s", age)
	}
	t.Logf("snapshot age with Consul down 1.5s: %v", v.Age().Round(time.Millisecond))

	// Consul comes back empty (a dev agent keeps nothing); the view
	// follows it, then the re-registration.
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	admin = c.Client(t, c.ManagementToken)
	// The reader's token died with the agent's data; the operator
	// re-issues the same secret.
	readToken(t, admin, readerSecret)
	register(t, admin, testInstance("a", 9001))
	follow("resync after Consul restart", "a")
	t.Logf("resync %v after Consul came back", time.Since(restarted).Round(time.Millisecond))
	if age := v.Age(); age > 2500*time.Millisecond {
		t.Fatalf("age %v after resync", age)
	}
}

// readToken creates a token with the router's read policy and a chosen
// secret, so it can be re-created after a dev agent restart.
func readToken(t testing.TB, admin *consulapi.Client, secret string) {
	t.Helper()
	pol, _, err := admin.ACL().PolicyCreate(&consulapi.ACLPolicy{Name: "router-read-" + uuid.NewString()[:8], Rules: routerPolicy(t)}, nil)
	if err != nil {
		t.Fatalf("create policy: %v", err)
	}
	if _, _, err := admin.ACL().TokenCreate(&consulapi.ACLToken{SecretID: secret,
		Policies: []*consulapi.ACLTokenPolicyLink{{ID: pol.ID}}}, nil); err != nil {
		t.Fatalf("create token: %v", err)
	}
}

type testLog struct{ t testing.TB }

func (w testLog) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }

func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
