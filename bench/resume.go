package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router"
)

// resumeBench measures mid-stream failover: two llama-servers behind the
// router, each reached through a TCP relay the benchmark can cut (a reset
// connection, as a node link failure gives). For each run the serving
// relay is cut after 12 tokens; the gap is the time from the cut to the
// next token reaching the client, against the time to first token of the
// same request unbroken.
func resumeBench(e *env, quick bool) {
	section := "mid-stream failover (2 × llama-server)"
	bin := filepath.Join(cacheDir(), "bin", "llama-server")
	if _, err := os.Stat(bin); err != nil {
		notMeasured(section, "resume gap", "llama-server not found (scripts/get-llama-server.sh)")
		return
	}
	o := ggufgen.DefaultOptions()
	o.Embd, o.Layers, o.FF, o.Heads, o.KVHeads, o.StopAfter = 512, 8, 2048, 8, 8, 0
	model := filepath.Join(e.dir, "resume.gguf")
	if err := ggufgen.Write(model, o); err != nil {
		notMeasured(section, "resume gap", err.Error())
		return
	}
	var insts []registry.Instance
	var relays []*cutRelay
	for i := 0; i < 2; i++ {
		port := freePort()
		p, err := start("llama-resume", nil, bin, "-m", model, "--host", "127.0.0.1", "--port", strconv.Itoa(port),
			"-np", "1", "-t", "1", "-c", "1024", "--cache-ram", "0", "--api-key", apiToken)
		if err != nil {
			notMeasured(section, "resume gap", err.Error())
			return
		}
		defer p.stop()
		if err := waitHTTP("http://"+addr(port)+"/health", 30*time.Second); err != nil {
			notMeasured(section, "resume gap", err.Error())
			return
		}
		r, err := newCutRelay(addr(port))
		if err != nil {
			notMeasured(section, "resume gap", err.Error())
			return
		}
		defer r.close()
		relays = append(relays, r)
		insts = append(insts, registry.Instance{ID: "resume-" + strconv.Itoa(i), Service: registry.DefaultServiceName,
			Address: "127.0.0.1", Port: r.port, Model: "resume", Engine: "llamacpp", NodeID: "node-" + strconv.Itoa(i),
			Health: registry.HealthPassing, Slots: 1, APIs: []string{"/v1/chat/completions"}})
	}
	cfg := router.DefaultConfig()
	cfg.APIToken, cfg.EngineToken = apiToken, apiToken
	cfg.EjectBackoff, cfg.EjectBackoffMax = 10*time.Millisecond, 20*time.Millisecond // every run starts with both instances in
	rt, err := router.New(cfg, registry.NewStatic(insts...), nil, hclog.NewNullLogger(), prometheus.NewRegistry())
	if err != nil {
		notMeasured(section, "resume gap", err.Error())
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = rt.Run(ctx) }()
	srv := httptest.NewServer(rt.Handler())
	defer srv.Close()
	for deadline := time.Now().Add(5 * time.Second); !rt.Ready() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}

	runs := 8
	if quick {
		runs = 3
	}
	// Every request has a prompt of its own (same shape and length), so
	// neither engine has it cached: the unbroken run's TTFT and the
	// continuation's prefill are both cold, as for a conversation the
	// other engine never saw.
	body := func(tag string) string {
		return `{"model":"resume","messages":[{"role":"system","content":"You are a helpful assistant who answers in full. Request ` + tag +
			`."},{"role":"user","content":"Explain how a router keeps a stream alive when an engine fails."}],"max_tokens":48,"temperature":0,"stream":true}`
	}
	// One warm-up pair loads both engines' weights into the page cache.
	_, _, _ = resumeRun(srv.URL, body("warm-a"), -1, nil)
	_, _, _ = resumeRun(srv.URL, body("warm-b"), 12, func() {
		for _, r := range relays {
			if r.processing() {
				r.cutActive()
			}
		}
	})
	var ttft, gap []time.Duration
	for i := 0; i < runs; i++ {
		t, _, err := resumeRun(srv.URL, body(fmt.Sprintf("u%03d", i)), -1, nil)
		if err != nil {
			notMeasured(section, "resume gap", "unbroken run: "+err.Error())
			return
		}
		ttft = append(ttft, t)
		time.Sleep(50 * time.Millisecond)
		_, g, err := resumeRun(srv.URL, body(fmt.Sprintf("b%03d", i)), 12, func() {
			for _, r := range relays {
				if r.processing() {
					r.cutActive()
				}
			}
		})
		if err != nil {
			notMeasured(section, "resume gap", "broken run: "+err.Error())
			return
		}
		gap = append(gap, g)
		time.Sleep(50 * time.Millisecond) // ejection back-off ends
	}
	sort.Slice(ttft, func(i, j int) bool { return ttft[i] < ttft[j] })
	sort.Slice(gap, func(i, j int) bool { return gap[i] < gap[j] })
	t50, tmax, g50, gmax := ttft[len(ttft)/2], ttft[len(ttft)-1], gap[len(gap)/2], gap[len(gap)-1]
	add(section, fmt.Sprintf("resume gap (%d breaks; p99 = max)", runs), "p50 "+ms(g50)+", p99 "+ms(gmax),
		"TTFT p50 "+ms(t50)+", p99 "+ms(tmax), "≤2× TTFT", b(g50 <= 2*t50 && gmax <= 2*tmax))
}

// resumeRun streams body and returns the time to the first content chunk
// and, when cutAfter ≥ 0, the time from running cut (after that many
// content chunks) to the next one. The stream must end with [DONE].
func resumeRun(base, body string, cutAfter int, cut func()) (ttft, gap time.Duration, err error) {
	req, _ := http.NewRequest("POST", base+"/v1/chat/completions", bytes.NewReader([]byte(body)))
	req.Header.Set("Authorization", "Bearer "+apiToken)
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return 0, 0, fmt.Errorf("%d %s", resp.StatusCode, b)
	}
	br := bufio.NewReader(resp.Body)
	n, done := 0, false
	var cutAt time.Time
	for {
		line, rerr := br.ReadBytes('\n')
		if bytes.HasPrefix(line, []byte("data: ")) {
			switch {
			case bytes.Contains(line, []byte("[DONE]")):
				done = true
			case bytes.Contains(line, []byte(`"error"`)):
				return 0, 0, fmt.Errorf("stream error: %s", bytes.TrimSpace(line))
			case bytes.Contains(line, []byte(`"content":"`)):
				now := time.Now()
				if n == 0 {
					ttft = now.Sub(start)
				}
				if !cutAt.IsZero() && gap == 0 {
					gap = now.Sub(cutAt)
				}
				n++
				if n == cutAfter && cut != nil {
					cut()
					cutAt = time.Now()
				}
			}
		}
		if rerr != nil {
			break
		}
	}
	if !done {
		return 0, 0, fmt.Errorf("stream ended without [DONE] after %d chunks", n)
	}
	return ttft, gap, nil
}

// cutRelay is a TCP relay to one engine whose open connections can be
// reset at once.
type cutRelay struct {
	ln     net.Listener
	port   int
	target string
	mu     sync.Mutex
	conns  map[net.Conn]bool
}

func newCutRelay(target string) (*cutRelay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &cutRelay{ln: ln, port: ln.Addr().(*net.TCPAddr).Port, target: target, conns: map[net.Conn]bool{}}
	go r.serve()
	return r, nil
}

func (r *cutRelay) serve() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.DialTimeout("tcp", r.target, 2*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		r.mu.Lock()
		r.conns[c], r.conns[u] = true, true
		r.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
			r.mu.Lock()
			delete(r.conns, dst)
			delete(r.conns, src)
			r.mu.Unlock()
		}
		go pipe(u, c)
		go pipe(c, u)
	}
}

// processing reports whether the engine behind the relay is generating.
func (r *cutRelay) processing() bool {
	req, _ := http.NewRequest("GET", "http://"+r.target+"/slots", nil)
	req.Header.Set("Authorization", "Bearer "+apiToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return bytes.Contains(b, []byte(`"is_processing":true`))
}

// cutActive resets every open connection (RST, as a failed link looks).
func (r *cutRelay) cutActive() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		c.Close()
	}
}

func (r *cutRelay) close() { r.ln.Close(); r.cutActive() }
