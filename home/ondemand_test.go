package home_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/home"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/internal/testenv"
	"github.com/llorch/llorch/models/vramest"
)

// onDemand is an in-process home profile with on_demand pools.
type onDemand struct {
	h     *home.Home
	state string
	token string
	log   *syncBuf
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func startOnDemand(t *testing.T, cfg home.Config) *onDemand {
	t.Helper()
	cfg.OnDemand = true
	cfg.StateDir = t.TempDir()
	cfg.Addr = "127.0.0.1:0"
	buf := &syncBuf{}
	h, err := home.New(cfg, hclog.New(&hclog.LoggerOptions{Name: "home", Output: buf, Level: hclog.Info}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		if left := engines(cfg.StateDir); len(left) != 0 {
			t.Errorf("engines left after the home profile stopped: %v", left)
		}
	})
	select {
	case <-h.Ready():
	case err := <-done:
		t.Fatalf("home stopped: %v\n%s", err, buf)
	case <-time.After(30 * time.Second):
		t.Fatalf("not ready\n%s", buf)
	}
	tok, err := os.ReadFile(filepath.Join(cfg.StateDir, "api.token"))
	if err != nil {
		t.Fatal(err)
	}
	return &onDemand{h: h, state: cfg.StateDir, token: strings.TrimSpace(string(tok)), log: buf}
}

func (o *onDemand) do(t *testing.T, method, path, body string) (int, string) {
	req, _ := http.NewRequest(method, "http://"+o.h.Addr()+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+o.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, path, err)
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (o *onDemand) chat(t *testing.T, model string) (int, string) {
	return o.do(t, "POST", "/v1/chat/completions", `{"model":"`+model+`","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`)
}

func (o *onDemand) states(t *testing.T) map[string]string {
	t.Helper()
	status, body := o.do(t, "GET", "/v1/models", "")
	if status != 200 {
		t.Fatalf("/v1/models: %d %s", status, body)
	}
	var list struct{ Data []struct{ ID, State string } }
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, d := range list.Data {
		out[d.ID] = d.State
	}
	return out
}

// pidsOf lists the engine processes of one pool (working directory
// <state>/engines/<pool>).
func pidsOf(state, pool string) []int {
	var out []int
	for _, pid := range engines(state) {
		cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		if cwd == filepath.Join(state, "engines", pool) {
			out = append(out, pid)
		}
	}
	return out
}

func estimate(t *testing.T, model string) int {
	e, err := vramest.FromFile(model, vramest.Params{Engine: "llamacpp"})
	if err != nil {
		t.Fatal(err)
	}
	return e.TotalMiB()
}

// Many models, a RAM budget that fits the pinned one and one other: each
// starts on its first request; a request for the second stops the first
// (LRU) before starting the second, and 10 concurrent requests during that
// load are all answered; the pinned model is never stopped; a model idle
// for its idle time is stopped. /v1/models shows each model's state.
func TestOnDemandBudgetEvictsAndIdleStops(t *testing.T) {
	oa := ggufgen.DefaultOptions()
	ob := ggufgen.DefaultOptions()
	ob.Name, ob.Seed, ob.Layers = "llorch-tiny-b", 2, 3
	ma, mb := ggufgen.TestModel(t, oa), ggufgen.TestModel(t, ob)
	ea, eb := estimate(t, ma), estimate(t, mb)
	budget := ea + max(ea, eb) + 1 // the pinned one (model a's file) and one more
	bin := testenv.LlamaServer(t)
	const idle = 3 * time.Second
	o := startOnDemand(t, home.Config{RAMBudgetMiB: budget, Idle: idle, Pools: []home.Pool{
		{Name: "a", Model: ma, ModelName: "alpha", Binary: bin, Ctx: 256},
		{Name: "b", Model: mb, ModelName: "beta", Binary: bin, Ctx: 256},
		{Name: "p", Model: ma, ModelName: "pinned", Binary: bin, Ctx: 256, Pinned: true},
	}})
	t.Logf("estimates: a %d MiB, b %d MiB; RAM budget %d MiB", ea, eb, budget)
	pinned := pidsOf(o.state, "p")
	if len(pinned) != 1 {
		t.Fatalf("pinned engine at start: %v\n%s", pinned, o.log)
	}
	if st := o.states(t); st["alpha"] != "stopped" || st["beta"] != "stopped" || st["pinned"] != "loaded" {
		t.Fatalf("states at start: %v", st)
	}
	if n := len(engines(o.state)); n != 1 {
		t.Fatalf("%d engines at start, want only the pinned one", n)
	}

	// Watch the engines: never more than the budget allows (pinned + one).
	stop := make(chan struct{})
	most := make(chan int, 1)
	go func() {
		m := 0
		for {
			select {
			case <-stop:
				most <- m
				return
			case <-time.After(10 * time.Millisecond):
				m = max(m, len(engines(o.state)))
			}
		}
	}()

	start := time.Now()
	if status, body := o.chat(t, "alpha"); status != 200 {
		t.Fatalf("first request for alpha: %d %s\n%s", status, body, o.log)
	}
	t.Logf("alpha: request → answer from stopped in %v", time.Since(start).Round(time.Millisecond))
	alphaPids := pidsOf(o.state, "a")
	if len(alphaPids) != 1 {
		t.Fatalf("alpha engines: %v", alphaPids)
	}

	// 10 concurrent requests for beta while it loads.
	var wg sync.WaitGroup
	errs := make(chan string, 10)
	start = time.Now()
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if status, body := o.chat(t, "beta"); status != 200 {
				errs <- fmt.Sprintf("%d %s", status, body)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("a request during beta's load failed: %s", e)
	}
	t.Logf("beta: 10 concurrent requests answered in %v (alpha evicted first)", time.Since(start).Round(time.Millisecond))
	if testing.Verbose() {
		t.Log(o.log.String())
	}
	close(stop)
	if m := <-most; m > 2 {
		t.Errorf("%d engines ran at once; the budget fits 2", m)
	}
	if left := pidsOf(o.state, "a"); len(left) != 0 {
		t.Errorf("alpha still runs after beta took its memory: %v", left)
	}
	if !strings.Contains(o.log.String(), "evicted (least recently used) for b") {
		t.Errorf("no eviction in the log:\n%s", o.log)
	}
	if st := o.states(t); st["alpha"] != "stopped" || st["beta"] != "loaded" || st["pinned"] != "loaded" {
		t.Fatalf("states after the swap: %v", st)
	}
	loadedAt := time.Now()

	// Idle: beta stops after 3 s without requests; the pinned one never.
	time.Sleep(idle / 2)
	if st := o.states(t); st["beta"] != "loaded" {
		t.Fatalf("beta stopped before its idle time: %v", st)
	}
	waitFor(t, idle+5*time.Second, "beta idle stop", func() bool { return len(pidsOf(o.state, "b")) == 0 })
	t.Logf("beta stopped %v after its last request (idle %v)", time.Since(loadedAt).Round(time.Millisecond), idle)
	if st := o.states(t); st["beta"] != "stopped" {
		t.Fatalf("states after idle: %v", st)
	}
	if now := pidsOf(o.state, "p"); len(now) != 1 || now[0] != pinned[0] {
		t.Fatalf("the pinned engine changed: %v → %v", pinned, now)
	}
	status, body := o.do(t, "GET", "/v2/nodes", "")
	if status != 200 || !strings.Contains(body, `"pool":"p"`) || !strings.Contains(body, `"pinned":true`) {
		t.Fatalf("/v2/nodes pools: %d %s", status, body)
	}
}

// An evicted model's answers in flight finish before its engine stops:
// the instance is drained first (nothing new placed on it), then stopped
// once the router has no request in flight to it.
func TestOnDemandEvictionLetsAnswersFinish(t *testing.T) {
	oa := ggufgen.DefaultOptions()
	oa.StopAfter = 0 // generation runs to max_tokens: a long answer
	ob := ggufgen.DefaultOptions()
	ob.Name, ob.Seed = "llorch-tiny-b", 2
	ma, mb := ggufgen.TestModel(t, oa), ggufgen.TestModel(t, ob)
	bin := testenv.LlamaServer(t)
	o := startOnDemand(t, home.Config{RAMBudgetMiB: max(estimate(t, ma), estimate(t, mb)) + 1, Pools: []home.Pool{
		{Name: "a", Model: ma, ModelName: "alpha", Binary: bin, Ctx: 2048, Threads: 1},
		{Name: "b", Model: mb, ModelName: "beta", Binary: bin, Ctx: 256},
	}})
	req, _ := http.NewRequest("POST", "http://"+o.h.Addr()+"/v1/chat/completions",
		strings.NewReader(`{"model":"alpha","stream":true,"max_tokens":1500,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+o.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("long answer from alpha: %v %v", err, resp)
	}
	defer resp.Body.Close()
	buf := make([]byte, 1)
	if _, err := resp.Body.Read(buf); err != nil {
		t.Fatal(err)
	}
	// alpha is streaming: now beta needs its memory.
	betaDone := make(chan string, 1)
	go func() {
		status, body := o.chat(t, "beta")
		betaDone <- fmt.Sprint(status, " ", body)
	}()
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("alpha's stream broke during the eviction: %v", err)
	}
	stream := string(buf) + string(rest)
	if !strings.Contains(stream, `"finish_reason":"length"`) || !strings.Contains(stream, "[DONE]") {
		t.Fatalf("alpha's answer was cut by the eviction:\n%s", stream[max(0, len(stream)-400):])
	}
	select {
	case got := <-betaDone:
		if !strings.HasPrefix(got, "200 ") {
			t.Fatalf("beta: %s", got)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("beta not answered")
	}
	if left := pidsOf(o.state, "a"); len(left) != 0 {
		t.Fatalf("alpha still runs: %v", left)
	}
	if !strings.Contains(o.log.String(), "evicted (least recently used) for b") {
		t.Fatalf("no eviction in the log:\n%s", o.log)
	}
}

// Budgets are checked at start-up, naming the field: a pool over its
// budget, pinned pools over it together, and a pool with no estimate
// (vLLM) under a budget without memory_mib.
func TestOnDemandBudgetErrors(t *testing.T) {
	m := ggufgen.TestModel(t, ggufgen.DefaultOptions())
	need := estimate(t, m)
	bin := testenv.LlamaServer(t)
	for want, cfg := range map[string]home.Config{
		"over the RAM budget": {RAMBudgetMiB: need - 1, Pools: []home.Pool{{Model: m, Binary: bin}}},
		"pinned pools need":   {RAMBudgetMiB: need + 1, Pools: []home.Pool{{Name: "a", Model: m, Binary: bin, Pinned: true}, {Name: "b", Model: m, Binary: bin, Pinned: true}}},
		"pools[0].memory_mib": {VRAMBudgetMiB: 1000, Pools: []home.Pool{{Engine: "vllm", Model: "org/model", Binary: "/bin/true"}}},
	} {
		cfg.OnDemand, cfg.StateDir = true, t.TempDir()
		if _, err := home.New(cfg, nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want an error naming %q, got %v", want, err)
		}
	}
	// A size given by hand replaces the estimate.
	ok := home.Config{OnDemand: true, StateDir: t.TempDir(), RAMBudgetMiB: 100, Pools: []home.Pool{{Model: m, Binary: bin, MemoryMiB: 100}}}
	if _, err := home.New(ok, nil); err != nil {
		t.Errorf("memory_mib within the budget: %v", err)
	}
}
