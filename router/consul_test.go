package router

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/google/uuid"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llorch/llorch/internal/testenv"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/registry/consul"
)

// consulReadToken creates a token holding the router's shipped policy
// (deploy/consul/router-policy.hcl) with a chosen secret, so the test also
// proves that policy is enough, and can re-create it after a restart.
func consulReadToken(t testing.TB, admin *consulapi.Client, secret string) {
	t.Helper()
	rules, err := os.ReadFile("../deploy/consul/router-policy.hcl")
	if err != nil {
		t.Fatalf("router policy: %v", err)
	}
	pol, _, err := admin.ACL().PolicyCreate(&consulapi.ACLPolicy{Name: "router-" + uuid.NewString()[:8], Rules: string(rules)}, nil)
	if err != nil {
		t.Fatalf("create policy: %v", err)
	}
	if _, _, err := admin.ACL().TokenCreate(&consulapi.ACLToken{SecretID: secret, Policies: []*consulapi.ACLTokenPolicyLink{{ID: pol.ID}}}, nil); err != nil {
		t.Fatalf("create token: %v", err)
	}
}

func consulRegister(t testing.TB, c *consulapi.Client, in registry.Instance) {
	t.Helper()
	meta, err := in.Meta()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{
		ID: in.ID, Name: registry.DefaultServiceName, Address: in.Address, Port: in.Port, Tags: in.Tags(), Meta: meta,
		Check: &consulapi.AgentServiceCheck{CheckID: "ttl-" + in.ID, TTL: "60s", Status: consulapi.HealthPassing},
	}); err != nil {
		t.Fatalf("register %s: %v", in.ID, err)
	}
}

func (h *harness) health() healthBody {
	h.t.Helper()
	_, _, body := h.do("GET", "/healthz", "")
	var hb healthBody
	if err := json.Unmarshal([]byte(body), &hb); err != nil {
		h.t.Fatalf("healthz: %v: %s", err, body)
	}
	return hb
}

// The router fed by a real Consul (ACLs on, read-only token) follows
// registrations, serves a stock OpenAI client, survives Consul going away
// and resyncs when it returns.
func TestRouterWithConsul(t *testing.T) {
	c := testenv.StartConsul(t)
	admin := c.Client(t, c.ManagementToken)
	secret := uuid.NewString()
	consulReadToken(t, admin, secret)

	fa, ua := startFixture(t)
	fb, ub := startFixture(t)
	a, b := inst(t, "a", "n1", testModel, ua), inst(t, "b", "n2", testModel, ub)

	src := &consul.Watcher{Client: c.Client(t, secret), WaitTime: 2 * time.Second,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 400 * time.Millisecond}
	cfg := testConfig()
	cfg.DegradedAfter = time.Second
	log := hclog.New(&hclog.LoggerOptions{Name: "router", Level: hclog.Info, Output: testWriter{t}})
	rt, err := New(cfg, src, nil, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = rt.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	srv := httptest.NewServer(rt.Handler())
	t.Cleanup(srv.Close)
	h := &harness{t: t, rt: rt, srv: srv, cl: srv.Client()}

	follow := func(what string, want int) {
		t.Helper()
		start := time.Now()
		waitFor(t, 10*time.Second, what, func() bool { return rt.Ready() && len(rt.Snapshot().Instances) == want })
		t.Logf("%s: router view followed Consul in %v", what, time.Since(start).Round(time.Millisecond))
	}
	consulRegister(t, admin, a)
	follow("instance registered", 1)
	exerciseSDK(t, srv.URL, testModel)
	if fa.Finished() == 0 {
		t.Fatal("the registered fixture answered nothing")
	}

	consulRegister(t, admin, b)
	follow("second instance registered", 2)
	if err := admin.Agent().ServiceDeregister("a"); err != nil {
		t.Fatal(err)
	}
	follow("instance deregistered", 1)
	before := fa.Requests()
	for i := 0; i < 3; i++ {
		if status, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, true)); status != 200 {
			t.Fatalf("after deregistration: %d %s", status, body)
		}
	}
	if fa.Requests() != before || fb.Finished() < 3 {
		t.Fatalf("deregistered instance still got traffic (%d→%d), b finished %d", before, fa.Requests(), fb.Finished())
	}

	// Consul away: still serving from the snapshot; /healthz says how old.
	c.Stop()
	time.Sleep(1500 * time.Millisecond)
	if status, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, false)); status != 200 {
		t.Fatalf("with Consul down: %d %s", status, body)
	}
	hb := h.health()
	if hb.Status != "degraded" || hb.SnapshotAgeMs < 1000 || hb.Instances != 1 {
		t.Fatalf("healthz with Consul down 1.5s: %+v", hb)
	}
	t.Logf("healthz with Consul down: %+v", hb)

	// Consul back (empty, as a dev agent restarts): the operator's token
	// and the engine's registration return; the router resyncs.
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	admin = c.Client(t, c.ManagementToken)
	consulReadToken(t, admin, secret)
	consulRegister(t, admin, b)
	waitFor(t, 10*time.Second, "resync", func() bool { return h.health().Status == "ok" })
	t.Logf("resynced %v after Consul came back", time.Since(back).Round(time.Millisecond))
	if status, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, false)); status != 200 {
		t.Fatalf("after resync: %d %s", status, body)
	}
}
