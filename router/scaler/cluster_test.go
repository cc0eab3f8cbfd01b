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
