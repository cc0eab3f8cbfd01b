package router

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/llorch/llorch/internal/testenv"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/keys"
)

// Two routers, one key, its limit shared: each router counts the live
// llorch-router instances in Consul and enforces its share, so together
// they admit the limit, whatever the split of traffic beyond it. The key
// itself comes from Consul KV, read with the router's shipped policy. The
// limit window is shortened to 2 s (the maths is the minute's); the
// measured drift is printed for CI's log.
func TestKeysTwoRoutersShareOneLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Consul and two routers for several seconds")
	}
	c := testenv.StartConsul(t)
	admin := c.Client(t, c.ManagementToken)
	secret := uuid.NewString()
	consulReadToken(t, admin, secret)
	routerCl := c.Client(t, secret)

	const (
		window = 2 * time.Second
		limit  = 100 // requests per window
		runs   = 3   // windows measured
	)
	doc, _ := yaml.Marshal(keys.Key{Digest: keys.DigestOf(secretA), RPM: limit})
	if _, err := admin.KV().Put(&consulapi.KVPair{Key: "llorch/keys/team-a", Value: doc}, nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := admin.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{ID: fmt.Sprintf("router-%d", i), Name: "llorch-router", Port: 8080 + i}); err != nil {
			t.Fatal(err)
		}
	}
	_, fxURL := startFixture(t)
	var routers []*Router
	var urls []string
	for i := 0; i < 2; i++ {
		cfg := testConfig()
		cfg.Consul, cfg.KeysConsulPrefix, cfg.RouterService, cfg.KeyWindow = routerCl, "llorch/keys/", "llorch-router", window
		rt, err := New(cfg, registry.NewStatic(inst(t, "i1", "n1", testModel, fxURL)), nil,
			hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: testWriter{t}}), prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = rt.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		srv := httptest.NewServer(rt.Handler())
		t.Cleanup(srv.Close)
		routers, urls = append(routers, rt), append(urls, srv.URL)
	}
	for _, rt := range routers {
		waitFor(t, 10*time.Second, "both routers to count 2 routers", func() bool { return rt.keys.Limits.Routers() == 2 })
		if rt.keys.Store.Current().Get("team-a") == nil {
			t.Fatal("the key from Consul KV is missing")
		}
	}

	// Clients send as fast as they can for runs windows: clients[i] of
	// them to router i.
	cl := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	hammer := func(label string, clients [2]int) {
		var mu sync.Mutex
		var admitted []span // each admitted request, from sent to answered
		var refused atomic.Int64
		end := time.Now().Add(runs * window)
		var wg sync.WaitGroup
		for r, u := range urls {
			for g := 0; g < clients[r]; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for time.Now().Before(end) {
						sent := time.Now()
						req, _ := http.NewRequest("POST", u+"/v1/chat/completions", stringsReader(chatBody(testModel, false)))
						req.Header.Set("Authorization", "Bearer "+secretA)
						resp, err := cl.Do(req)
						if err != nil {
							t.Error(err)
							return
						}
						resp.Body.Close()
						switch resp.StatusCode {
						case 200:
							mu.Lock()
							admitted = append(admitted, span{sent, time.Now()})
							mu.Unlock()
						case http.StatusTooManyRequests:
							refused.Add(1)
							time.Sleep(2 * time.Millisecond)
						default:
							t.Errorf("status %d", resp.StatusCode)
							return
						}
					}
				}()
			}
		}
		wg.Wait()
		sort.Slice(admitted, func(i, j int) bool { return admitted[i].sent.Before(admitted[j].sent) })
		// The most admitted in any window-long stretch, counting only the
		// requests wholly inside it (so client-side latency cannot inflate
		// it: the router admitted each somewhere between sent and
		// answered), and the average per window over the run.
		peak := 0
		for i := range admitted {
			from, to, n := admitted[i].sent, admitted[i].sent.Add(window), 0
			for _, a := range admitted[i:] {
				if !a.sent.Before(from) && !a.done.After(to) {
					n++
				}
			}
			peak = max(peak, n)
		}
		perWindow := float64(len(admitted)) / runs
		drift := (perWindow - limit) / limit
		line := fmt.Sprintf("keys two routers, %s: limit %d/window, admitted %.1f/window on average (drift %+.1f%%), peak %d in any window, %d refused",
			label, limit, perWindow, drift*100, peak, refused.Load())
		fmt.Println(line)
		t.Log(line)
		if drift < -0.10 || drift > 0.10 {
			t.Fatalf("%s: total admitted per window %.1f is not within 10%% of the limit %d", label, perWindow, limit)
		}
		if float64(peak) > limit*1.10 {
			t.Fatalf("%s: %d admitted within one window, over the limit %d by more than 10%%", label, peak, limit)
		}
	}
	hammer("even split", [2]int{4, 4})
	// A skewed balancer: while both routers see more than their share,
	// the total is still the limit.
	hammer("3:1 split", [2]int{6, 2})

	// The KV prefix is followed: a key added appears, a key deleted goes.
	doc, _ = yaml.Marshal(keys.Key{Digest: keys.DigestOf(secretB)})
	if _, err := admin.KV().Put(&consulapi.KVPair{Key: "llorch/keys/team-b", Value: doc}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.KV().Delete("llorch/keys/team-a", nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the KV change to reach the router", func() bool {
		s := routers[0].keys.Store.Current()
		return s.Get("team-b") != nil && s.Get("team-a") == nil
	})

	// A router leaves: the other takes the whole limit.
	if err := admin.Agent().ServiceDeregister("router-1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the share to follow", func() bool { return routers[0].keys.Limits.Routers() == 1 })
}

type span struct{ sent, done time.Time }

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }
