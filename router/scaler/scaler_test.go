package scaler_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/llorch/llorch/internal/nomadfake"
	"github.com/llorch/llorch/internal/openaifixture"
	"github.com/llorch/llorch/internal/testenv"
	"github.com/llorch/llorch/jobs"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/registry/consul"
	"github.com/llorch/llorch/router"
	"github.com/llorch/llorch/router/scaler"
)

const (
	apiToken = "client-token-0123456789abcdef0123456789"
	model    = "tiny"
	poolID   = "tiny-pool"
)

// cluster is the real Consul (readiness, locks, shared demand) and the
// fake Nomad HTTP API: a scale of the pool "places" fixture engines that
// register in Consul as the driver would, or deregisters them.
type cluster struct {
	t      *testing.T
	consul *testenv.Consul
	admin  *consulapi.Client
	nomad  *nomadfake.Server

	mu       sync.Mutex
	engines  []*httptest.Server
	behavior openaifixture.Behavior
	placed   []time.Time // when each scale-up's engines were announced
}

func newCluster(t *testing.T, min, max int, idle string) *cluster {
	c := &cluster{t: t, consul: testenv.StartConsul(t), nomad: nomadfake.Start(t)}
	c.admin = c.consul.Client(t, c.consul.ManagementToken)
	spec := jobs.PoolSpec{Name: poolID, Model: "/models/tiny.gguf", ModelName: model, Min: &min, Max: max, Idle: idle}
	spec.Defaults()
	if err := spec.Validate(); err != nil {
		t.Fatal(err)
	}
	c.nomad.AddJob(jobs.Render(spec))
	fixed := jobs.PoolSpec{Name: "fixed", Model: "/m/other.gguf", Replicas: 1} // no range: never scaled
	fixed.Defaults()
	c.nomad.AddJob(jobs.Render(fixed))
	policy, err := os.ReadFile("../../deploy/nomad/router-scaler-policy.hcl")
	if err != nil {
		t.Fatal(err)
	}
	c.nomad.Grant("router-nomad-token", string(policy))
	c.nomad.OnScale = c.onScale
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, e := range c.engines {
			e.Close()
		}
	})
	return c
}

// onScale runs the pool's engines to match the new count.
func (c *cluster) onScale(s nomadfake.Scale) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.engines) < s.To {
		f := openaifixture.New(model)
		f.SetBehavior(c.behavior)
		hs := httptest.NewServer(f)
		u, _ := url.Parse(hs.URL)
		port, _ := strconv.Atoi(u.Port())
		id := fmt.Sprintf("%s-%d", poolID, len(c.engines))
		in := registry.Instance{ID: id, Service: registry.DefaultServiceName, Address: u.Hostname(), Port: port, Model: model,
			Engine: "fixture", NodeID: "n" + strconv.Itoa(len(c.engines)), PoolID: poolID, Slots: 1,
			APIs: []string{"/v1/chat/completions"}}
		meta, err := in.Meta()
		if err != nil {
			c.t.Error(err)
			return
		}
		if err := c.admin.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{ID: id, Name: registry.DefaultServiceName,
			Address: in.Address, Port: in.Port, Tags: in.Tags(), Meta: meta,
			Check: &consulapi.AgentServiceCheck{CheckID: "ttl-" + id, TTL: "60s", Status: consulapi.HealthPassing}}); err != nil {
			c.t.Errorf("register: %v", err)
		}
		c.engines = append(c.engines, hs)
	}
	for len(c.engines) > s.To {
		last := c.engines[len(c.engines)-1]
		_ = c.admin.Agent().ServiceDeregister(fmt.Sprintf("%s-%d", poolID, len(c.engines)-1))
		last.Close()
		c.engines = c.engines[:len(c.engines)-1]
	}
	c.placed = append(c.placed, time.Now())
}

// aRouter is one router with its scaler, as `llorch router --nomad-addr` runs.
type aRouter struct {
	rt   *router.Router
	sc   *scaler.Scaler
	url  string
	reg  *prometheus.Registry
	stop func()
}

func (c *cluster) router(name string, tune func(*scaler.Config)) *aRouter {
	t := c.t
	rules := ""
	for _, f := range []string{"../../deploy/consul/router-policy.hcl", "../../deploy/consul/router-scaler-policy.hcl"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rules += string(b) + "\n"
	}
	cc := c.consul.Client(t, c.consul.Token(t, rules))
	log := hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Info, Output: testWriter{t}})
	cfg := router.DefaultConfig()
	cfg.APIToken = apiToken
	cfg.QueueTimeout = 15 * time.Second
	reg := prometheus.NewRegistry()
	src := &consul.Watcher{Client: cc, WaitTime: 2 * time.Second, MinBackoff: 50 * time.Millisecond, MaxBackoff: 400 * time.Millisecond}
	rt, err := router.New(cfg, src, nil, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	scfg := scaler.Config{Nomad: c.nomad.Client(t, "router-nomad-token", "default"), Consul: cc, Load: rt, RouterID: name,
		Interval: 100 * time.Millisecond, PoolRefresh: time.Second, Sustain: 500 * time.Millisecond, UpCooldown: time.Second,
		DownCooldown: 500 * time.Millisecond, Logger: log.Named("scaler"), Registerer: reg}
	if tune != nil {
		tune(&scfg)
	}
	sc, err := scaler.New(scfg)
	if err != nil {
		t.Fatal(err)
	}
	rt.SetDemand(sc)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = rt.Run(ctx) }()
	go func() { defer wg.Done(); _ = sc.Run(ctx) }()
	srv := httptest.NewServer(rt.Handler())
	r := &aRouter{rt: rt, sc: sc, url: srv.URL, reg: reg}
	var once sync.Once
	r.stop = func() { once.Do(func() { srv.Close(); cancel(); wg.Wait() }) }
	t.Cleanup(r.stop)
	waitFor(t, 10*time.Second, name+" synced with Consul and knows the pool", func() bool {
		return rt.Ready() && len(sc.Pools()) == 1
	})
	return r
}

func (r *aRouter) do(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, r.url+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+apiToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (r *aRouter) chat(t *testing.T, m string) (int, string) {
	return r.do(t, "POST", "/v1/chat/completions", `{"model":"`+m+`","messages":[{"role":"user","content":"hi"}]}`)
}

func (r *aRouter) pool(t *testing.T) router.PoolState {
	t.Helper()
	for _, p := range r.sc.Pools() {
		if p.Pool == poolID {
			return p
		}
	}
	t.Fatal("pool not known")
	return router.PoolState{}
}

func (r *aRouter) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				if !hasLabel(m, k, v) {
					continue next
				}
			}
			if m.Gauge != nil {
				return m.Gauge.GetValue()
			}
			return m.Counter.GetValue()
		}
	}
	return -1
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

func modelState(t *testing.T, r *aRouter, m string) string {
	t.Helper()
	status, body := r.do(t, "GET", "/v1/models", "")
	if status != 200 {
		t.Fatalf("/v1/models: %d %s", status, body)
	}
	var list struct {
		Data []struct{ ID, State string }
	}
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatal(err)
	}
	for _, d := range list.Data {
		if d.ID == m {
			return d.State
		}
	}
	return ""
}

// A request for a model whose pool is at zero waits in its queue while
// the router scales the pool to 1 through Nomad's scale API (with a
// reason), is answered once the engine passes in Consul, and the pool goes
// back to zero after its idle time without requests. A model no pool
// serves still gets 404 at once.
func TestWakeFromZeroThenIdleDown(t *testing.T) {
	c := newCluster(t, 0, 2, "1500ms")
	r := c.router("router-a", nil)
	if got := modelState(t, r, model); got != "stopped" {
		t.Fatalf("/v1/models state before any request = %q, want stopped", got)
	}

	start := time.Now()
	status, body := r.chat(t, model)
	took := time.Since(start)
	if status != 200 {
		t.Fatalf("request to a pool at zero: %d %s", status, body)
	}
	scales := c.nomad.Scales()
	if len(scales) != 1 || scales[0].From != 0 || scales[0].To != 1 || scales[0].Meta["llorch_reason"] != "wake" || !strings.Contains(scales[0].Message, "at 0") {
		t.Fatalf("scale requests after the wake: %+v", scales)
	}
	t.Logf("request to a pool at zero answered in %v (scale %v after the request, engine announced at once by the fake)", took.Round(time.Millisecond), scales[0].At.Sub(start).Round(time.Millisecond))
	if got := r.metric(t, "llorch_pool_desired", map[string]string{"pool": poolID}); got != 1 {
		t.Fatalf("llorch_pool_desired = %v, want 1", got)
	}
	if got := r.metric(t, "llorch_pool_scale_actions_total", map[string]string{"pool": poolID, "reason": "wake"}); got != 1 {
		t.Fatalf("wake actions = %v, want 1", got)
	}
	if got := modelState(t, r, model); got != "loaded" {
		t.Fatalf("/v1/models state after the wake = %q, want loaded", got)
	}
	lastEnd := time.Now()

	status, body = r.chat(t, "no-such-model")
	if status != 404 || !strings.Contains(body, "MODEL_NOT_AVAILABLE") {
		t.Fatalf("unknown model: %d %s", status, body)
	}

	// Idle 1.5s, down-cooldown 0.5s, ticks of 0.1s: down to min after
	// 1.5s and well within 1.5s + 5 ticks + margin for a loaded machine.
	waitFor(t, 6*time.Second, "idle scale-down", func() bool { return c.nomad.Count("default", poolID) == 0 })
	scales = c.nomad.Scales()
	down := scales[len(scales)-1]
	if len(scales) != 2 || down.Meta["llorch_reason"] != "idle" || down.To != 0 {
		t.Fatalf("scale requests: %+v", scales)
	}
	if idleFor := down.At.Sub(lastEnd); idleFor < 1500*time.Millisecond {
		t.Fatalf("scaled down %v after the last request, before the 1.5s idle time", idleFor)
	}
	t.Logf("idle → scaled down %v after the last request (idle 1.5s)", down.At.Sub(lastEnd).Round(time.Millisecond))
	waitFor(t, 2*time.Second, "/v2/nodes shows the scale-down", func() bool {
		_, nodes := r.do(t, "GET", "/v2/nodes", "")
		return strings.Contains(nodes, `"last_action":"scaled 1→0 (idle)"`) && strings.Contains(nodes, `"pool":"tiny-pool"`)
	})
	waitFor(t, 5*time.Second, "state stopped", func() bool { return modelState(t, r, model) == "stopped" })
	if c.nomad.Count("default", "fixed") != 1 {
		t.Fatal("the fixed-size job was scaled")
	}
}

// Two routers: one decides per pool (Consul lock), the other's traffic
// keeps the pool up (shared demand), a wake from both at once scales once,
// and the lock moves when its holder leaves.
func TestTwoRoutersDoNotFight(t *testing.T) {
	c := newCluster(t, 0, 2, "1s")
	a := c.router("router-a", nil)
	b := c.router("router-b", nil)
	waitFor(t, 5*time.Second, "one leader", func() bool { return a.pool(t).Leader != b.pool(t).Leader })
	leader, other := a, b
	if b.pool(t).Leader {
		leader, other = b, a
	}

	// Both wake at once: Nomad gets one 0→1.
	var wg sync.WaitGroup
	for _, r := range []*aRouter{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if status, body := r.chat(t, model); status != 200 {
				t.Errorf("wake: %d %s", status, body)
			}
		}()
	}
	wg.Wait()
	if s := c.nomad.Scales(); len(s) != 1 || s[0].To != 1 {
		t.Fatalf("two routers waking the pool made %d scale changes: %+v", len(s), s)
	}

	// Traffic only through the router that does not decide, for 3× idle:
	// the decider sees it through Consul and keeps the pool.
	until := time.Now().Add(3 * time.Second)
	var lastEnd time.Time
	for time.Now().Before(until) {
		if status, body := other.chat(t, model); status != 200 {
			t.Fatalf("steady traffic: %d %s", status, body)
		}
		lastEnd = time.Now()
		time.Sleep(200 * time.Millisecond)
	}
	if s := c.nomad.Scales(); len(s) != 1 {
		t.Fatalf("the pool was scaled while the other router had traffic: %+v", s)
	}
	waitFor(t, 6*time.Second, "idle scale-down", func() bool { return c.nomad.Count("default", poolID) == 0 })
	s := c.nomad.Scales()
	if len(s) != 2 || s[1].Meta["llorch_reason"] != "idle" || s[1].Meta["llorch_router"] != leaderName(a, leader) {
		t.Fatalf("scale changes: %+v", s)
	}
	if s[1].At.Sub(lastEnd) < time.Second {
		t.Fatalf("scaled down %v after the last request (idle 1s)", s[1].At.Sub(lastEnd))
	}

	// The decider leaves (its session is destroyed): the other takes the lock.
	leader.stop()
	waitFor(t, 5*time.Second, "lock moves to the remaining router", func() bool { return other.pool(t).Leader })
}

// Requests that keep queueing with the pool's instance busy scale it up
// after the sustain time, one step per cooldown, never past max.
func TestQueueingScalesUpToMax(t *testing.T) {
	c := newCluster(t, 1, 2, "1m")
	c.behavior = openaifixture.Behavior{Tokens: 4, TokenDelay: 250 * time.Millisecond}
	c.onScale(nomadfake.Scale{To: 1}) // min 1: one engine runs from the start
	r := c.router("router-a", nil)
	waitFor(t, 5*time.Second, "engine ready", func() bool { _, ready, _ := r.rt.ModelLoad(model); return ready == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if status, body := r.chat(t, model); status != 200 {
					t.Errorf("under load: %d %s", status, body)
					return
				}
			}
		}()
	}
	waitFor(t, 6*time.Second, "scale-up", func() bool { return c.nomad.Count("default", poolID) == 2 })
	up := c.nomad.Scales()[0]
	if up.Meta["llorch_reason"] != "queueing" && up.Meta["llorch_reason"] != "busy" {
		t.Fatalf("scale-up reason: %+v", up)
	}
	time.Sleep(2 * time.Second) // past the up-cooldown: pressure remains, max holds
	cancel()
	wg.Wait()
	if s := c.nomad.Scales(); len(s) != 1 || c.nomad.Requests("PUT scale") != 1 {
		t.Fatalf("scale requests past max: %+v (%d PUTs)", s, c.nomad.Requests("PUT scale"))
	}
	t.Logf("scaled 1→2 (%s): %s", up.Meta["llorch_reason"], up.Message)
}

func leaderName(a, leader *aRouter) string {
	if leader == a {
		return "router-a"
	}
	return "router-b"
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// docs/monitoring.md lists exactly the scaler's series.
func TestMonitoringDocListsPoolMetrics(t *testing.T) {
	doc, err := os.ReadFile("../../docs/monitoring.md")
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, l := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(l, "| `llorch_pool_") {
			listed[strings.Split(l, "`")[1]] = true
		}
	}
	reg := prometheus.NewRegistry()
	sc, err := scaler.New(scaler.Config{Nomad: nomadfake.Start(t).Client(t, "", "default"), Load: noLoad{}, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	_ = sc
	for _, n := range scaler.MetricNames {
		if !listed[n] {
			t.Errorf("%s is exported but not in docs/monitoring.md", n)
		}
		delete(listed, n)
	}
	for n := range listed {
		t.Errorf("docs/monitoring.md lists %s, which the scaler does not export", n)
	}
}

type noLoad struct{}

func (noLoad) ModelLoad(string) (int, int, int) { return 0, 0, 0 }
