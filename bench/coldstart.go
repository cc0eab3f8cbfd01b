package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/home"
	"github.com/llorch/llorch/internal/ggufgen"
)

// coldStartBench: a request to a model that is not loaded (the home
// profile's on-demand pools, a pool at zero) until its first token, split
// into phases from the profile's own log lines, against the engine's own
// start time (process start → /health ok) with the same command line.
func coldStartBench(quick bool) {
	section := "cold start: request → first token, model not loaded (home, real llama-server)"
	const figure = "request → first token, minus engine start"
	llama := filepath.Join(cacheDir(), "bin", "llama-server")
	if _, err := os.Stat(llama); err != nil {
		notMeasured(section, figure, "llama-server not found (scripts/get-llama-server.sh)")
		return
	}
	dir, err := os.MkdirTemp("", "llorch-coldstart-")
	if err != nil {
		notMeasured(section, figure, err.Error())
		return
	}
	defer os.RemoveAll(dir)
	model := filepath.Join(dir, "tiny.gguf")
	if err := ggufgen.Write(model, ggufgen.DefaultOptions()); err != nil {
		notMeasured(section, figure, "generate model: "+err.Error())
		return
	}
	logs := &phaseLog{}
	// The same engine settings engineLoadTime uses; a short idle stops the
	// model between trials, so each trial starts cold.
	cfg := home.Config{Addr: addr(freePort()), StateDir: filepath.Join(dir, "state"), OnDemand: true, Idle: 300 * time.Millisecond,
		Pools: []home.Pool{{Name: "tiny", Model: model, ModelName: "tiny", Binary: llama, Slots: 2, Ctx: 512, Threads: 1}}}
	h, err := home.New(cfg, hclog.New(&hclog.LoggerOptions{Output: logs, JSONFormat: true, Level: hclog.Info}))
	if err != nil {
		notMeasured(section, figure, err.Error())
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-h.Ready()
	tok, _ := os.ReadFile(filepath.Join(cfg.StateDir, "api.token"))
	token := strings.TrimSpace(string(tok))

	trials := 5
	if quick {
		trials = 2
	}
	var total, wake, spawn, load, serve, alone []time.Duration
	for i := 0; i < trials; i++ {
		if err := waitStopped(h.Addr(), token, 15*time.Second); err != nil {
			notMeasured(section, figure, err.Error())
			return
		}
		logs.reset()
		t0 := time.Now()
		first, err := firstToken(h.Addr(), token)
		if err != nil {
			notMeasured(section, figure, err.Error())
			return
		}
		ph := logs.times()
		if ph["starting pool"].IsZero() || ph["engine started"].IsZero() || ph["engine ready"].IsZero() {
			notMeasured(section, figure, fmt.Sprintf("phase log lines missing: %v", ph))
			return
		}
		total = append(total, first.Sub(t0))
		wake = append(wake, ph["starting pool"].Sub(t0))
		spawn = append(spawn, ph["engine started"].Sub(ph["starting pool"]))
		load = append(load, ph["engine ready"].Sub(ph["engine started"]))
		serve = append(serve, first.Sub(ph["engine ready"]))
		l, err := engineLoadTime(llama, model)
		if err != nil {
			notMeasured(section, figure, "engine alone: "+err.Error())
			return
		}
		alone = append(alone, l)
	}
	med := func(l []time.Duration) time.Duration {
		c := append([]time.Duration(nil), l...)
		sort.Slice(c, func(i, j int) bool { return c[i] < c[j] })
		return c[len(c)/2]
	}
	over := med(total) - med(alone)
	add(section, fmt.Sprintf("request → first token (p50 of %d)", trials), ms(med(total)), ms(med(alone))+" (engine alone to /health ok)", "", nil)
	add(section, figure+" (p50)", added(over), "", "≤ 1000 ms", b(over <= time.Second))
	add(section, "phase: request → pool starting (wake)", ms(med(wake)), "", "", nil)
	add(section, "phase: pool starting → engine process started", ms(med(spawn)), "", "", nil)
	add(section, "phase: engine started → ready (readiness probe)", ms(med(load)), ms(med(alone))+" (engine alone)", "", nil)
	add(section, "phase: ready → first token (announce, queue drains, place, prompt)", ms(med(serve)), "", "", nil)
}

// firstToken sends a streaming chat request and returns when the first
// data line arrives.
func firstToken(hostport, token string) (time.Time, error) {
	body := `{"model":"tiny","stream":true,"max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`
	req, _ := http.NewRequest("POST", "http://"+hostport+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return time.Time{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return time.Time{}, fmt.Errorf("cold request: status %d: %s", resp.StatusCode, strings.TrimSpace(string(msg)))
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data:") {
			t := time.Now()
			for sc.Scan() { // drain: the request ends, the idle timer starts
			}
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("stream ended without a data line")
}

// waitStopped waits until /v2/nodes says the pool has stopped (not
// merely stopping), so the next request starts cold.
func waitStopped(hostport, token string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequest("GET", "http://"+hostport+"/v2/nodes", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			var list struct {
				Pools []struct{ Pool, State string }
			}
			_ = json.NewDecoder(resp.Body).Decode(&list)
			resp.Body.Close()
			for _, d := range list.Pools {
				if d.Pool == "tiny" && d.State == "stopped" {
					return nil
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("model not stopped after its idle time within %v", limit)
}

// phaseLog keeps the first time each phase's log line appears.
type phaseLog struct {
	mu   sync.Mutex
	seen map[string]time.Time
}

var phaseMessages = []string{"starting pool", "engine started", "engine ready"}

func (p *phaseLog) Write(b []byte) (int, error) {
	now := time.Now() // the line's own timestamp has millisecond resolution
	var line struct {
		Msg    string `json:"@message"`
		Module string `json:"@module"`
	}
	if json.Unmarshal(b, &line) == nil {
		p.mu.Lock()
		if p.seen == nil {
			p.seen = map[string]time.Time{}
		}
		for _, m := range phaseMessages {
			// "engine ready" comes from supervise (probe passed) and from
			// home (announced); the first is the engine's readiness.
			if line.Msg == m {
				if _, ok := p.seen[m]; !ok {
					p.seen[m] = now
				}
			}
		}
		p.mu.Unlock()
	}
	return len(b), nil
}

func (p *phaseLog) reset() { p.mu.Lock(); p.seen = nil; p.mu.Unlock() }

func (p *phaseLog) times() map[string]time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]time.Time{}
	for k, v := range p.seen {
		out[k] = v
	}
	return out
}
