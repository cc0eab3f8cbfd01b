package main

// Placement quality on real engines: three llama-server instances (one
// thread each) behind an in-process router, the same multi-turn chat
// workload replayed under three placers — round-robin (an nginx upstream),
// least-in-flight, and llorch's default profile — with TTFT, output tokens/s
// and the engines' own prompt-cache hit ratio per policy. The engines are
// restarted between policies so no policy inherits another's cache.
//
// The model is generated (internal/ggufgen) and sized by measurement: the
// smallest of a ladder of shapes whose cold 1.5k-token prompt costs at
// least 200 ms on one thread, so prompt processing dominates as it does on
// real models.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router"
)

const (
	plEngines    = 3
	plSlots      = 2
	plCtx        = 4096 // per slot
	plMaxTokens  = 16
	plSystemLen  = 1100 // characters (about tokens: the generated vocabulary is mostly bytes)
	plUserLen    = 90
	plReplyLen   = 40
	plTurns      = 5
	plGroups     = 4
	plLoad       = 0.7
	plModelName  = "bench-chat"
	plRunSeconds = 30
)

type plEngine struct {
	p    *proc
	base string
	spec engine.Spec
}

func placementBench(e *env, quick bool) {
	section := "placement quality, 3 llama-server (1 thread each), multi-turn chat"
	bin := filepath.Join(cacheDir(), "bin", "llama-server")
	if _, err := os.Stat(bin); err != nil {
		notMeasured(section, "TTFT", "llama-server not found (scripts/get-llama-server.sh)")
		return
	}
	model, cold, err := sizeModel(e, bin)
	if err != nil {
		notMeasured(section, "TTFT", "model sizing: "+err.Error())
		return
	}
	fmt.Printf("  model %s: cold 1.5k-token prompt %v on one thread\n", filepath.Base(model), cold.Round(time.Millisecond))
	run := plRunSeconds * time.Second
	if quick {
		run = 12 * time.Second
	}
	// Capacity in cold requests per second: three engines, one cold prompt
	// at a time each; arrivals at plLoad of it.
	rate := plLoad * plEngines / cold.Seconds()
	work := plWorkload(rate, run, 7)
	fmt.Printf("  workload: %d requests in %d conversations, %.1f req/s (%.0f%% of cold capacity), seed 7\n", work.requests, len(work.convs), rate, 100*plLoad)

	type result struct {
		ttft           []time.Duration
		tokens, errs   int
		wall           time.Duration
		hit            float64
		prompt, cached float64
	}
	res := map[string]result{}
	policies := []string{"round-robin", "least-in-flight", "llorch"}
	for _, pol := range policies {
		engines, err := startPlEngines(bin, model)
		if err != nil {
			notMeasured(section, "TTFT", err.Error())
			return
		}
		before := cacheSum(engines)
		rtURL, stop, err := startPlRouter(pol, engines)
		if err != nil {
			stopPlEngines(engines)
			notMeasured(section, "TTFT", err.Error())
			return
		}
		ttft, tokens, errs, wall := replay(rtURL, work)
		after := cacheSum(engines)
		stop()
		stopPlEngines(engines)
		r := result{ttft: ttft, tokens: tokens, errs: errs, wall: wall,
			prompt: after.PromptTokens - before.PromptTokens, cached: after.CachedTokens - before.CachedTokens}
		if r.prompt > 0 {
			r.hit = r.cached / r.prompt
		}
		res[pol] = r
		fmt.Printf("  %-16s TTFT p50 %v p90 %v p99 %v, %.1f tok/s, cache hit %.0f%%, errors %d\n", pol,
			pct(ttft, 0.5).Round(time.Millisecond), pct(ttft, 0.9).Round(time.Millisecond), pct(ttft, 0.99).Round(time.Millisecond),
			float64(tokens)/wall.Seconds(), 100*r.hit, errs)
	}
	tps := func(p string) float64 { return float64(res[p].tokens) / res[p].wall.Seconds() }
	p90 := func(p string) time.Duration { return pct(res[p].ttft, 0.9) }
	for _, q := range []float64{0.5, 0.9, 0.99} {
		add(section, fmt.Sprintf("TTFT p%.0f", 100*q), pct(res["llorch"].ttft, q).Round(time.Millisecond).String(),
			fmt.Sprintf("rr %v, lif %v", pct(res["round-robin"].ttft, q).Round(time.Millisecond), pct(res["least-in-flight"].ttft, q).Round(time.Millisecond)), "", nil)
	}
	add(section, "TTFT p90 vs round-robin", fmt.Sprintf("%.2f×", p90("llorch").Seconds()/p90("round-robin").Seconds()), "", "≤0.33×", b(3*p90("llorch") <= p90("round-robin")))
	add(section, "TTFT p90 vs least-in-flight", fmt.Sprintf("%.2f×", p90("llorch").Seconds()/p90("least-in-flight").Seconds()), "", "≤0.8×", b(p90("llorch").Seconds() <= 0.8*p90("least-in-flight").Seconds()))
	add(section, "output tokens/s", fmt.Sprintf("%.1f", tps("llorch")), fmt.Sprintf("rr %.1f, lif %.1f", tps("round-robin"), tps("least-in-flight")), "≥ both", b(tps("llorch") >= tps("round-robin") && tps("llorch") >= tps("least-in-flight")))
	add(section, "engines' prompt-cache hit ratio", fmt.Sprintf("%.0f%%", 100*res["llorch"].hit), fmt.Sprintf("rr %.0f%%, lif %.0f%%", 100*res["round-robin"].hit, 100*res["least-in-flight"].hit), "", nil)
	add(section, "errors", fmt.Sprint(res["llorch"].errs), fmt.Sprintf("rr %d, lif %d", res["round-robin"].errs, res["least-in-flight"].errs), "0", b(res["llorch"].errs == 0))
}

// plWork is the replayed request list: conversations starting as a
// Poisson process, each a fixed list of turns with think times.
type plWork struct {
	convs    []plConv
	requests int
}

type plConv struct {
	start  time.Duration
	system string
	users  []string
	gaps   []time.Duration // think time before each later turn
}

func plWorkload(rate float64, run time.Duration, seed int64) plWork {
	rng := rand.New(rand.NewSource(seed))
	words := strings.Fields("river mountain valley city harbour desert forest island plain lake coast border capital " +
		"province railway bridge canal market temple castle museum festival winter summer season language")
	text := func(n int) string {
		var sb strings.Builder
		for sb.Len() < n {
			sb.WriteString(words[rng.Intn(len(words))])
			sb.WriteByte(' ')
		}
		return sb.String()[:n]
	}
	systems := make([]string, plGroups)
	for g := range systems {
		systems[g] = fmt.Sprintf("You are guide %d. ", g) + text(plSystemLen)
	}
	// Each conversation brings plTurns requests: start them at rate/plTurns.
	var w plWork
	convRate := rate / plTurns
	meanGap := 2 * time.Second
	for t := time.Duration(0); t < run; t += time.Duration(rng.ExpFloat64() / convRate * float64(time.Second)) {
		c := plConv{start: t, system: systems[rng.Intn(plGroups)]}
		for k := 0; k < plTurns; k++ {
			c.users = append(c.users, text(plUserLen))
			if k > 0 {
				c.gaps = append(c.gaps, time.Duration(rng.ExpFloat64()*float64(meanGap)))
			}
		}
		w.convs = append(w.convs, c)
		w.requests += plTurns
	}
	return w
}

// replay runs the workload against url: every conversation's turns in
// order, each after its think time and after the previous answer. The
// assistant turns in the history are canned (the same for every policy),
// so the request list is identical across policies.
func replay(url string, w plWork) ([]time.Duration, int, int, time.Duration) {
	// No 10 s client timeout here (newClient's): a baseline that queues a
	// request for longer must show it in its TTFT, not drop it as an error.
	cl := newClient(256)
	cl.Timeout = 5 * time.Minute
	var mu sync.Mutex
	var ttft []time.Duration
	tokens, errs := 0, 0
	var wg sync.WaitGroup
	t0 := time.Now()
	for ci, c := range w.convs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Until(t0.Add(c.start)))
			msgs := []map[string]string{{"role": "system", "content": c.system}}
			for k, u := range c.users {
				if k > 0 {
					time.Sleep(c.gaps[k-1])
				}
				msgs = append(msgs, map[string]string{"role": "user", "content": u})
				first, n, err := streamChat(cl, url, msgs)
				mu.Lock()
				if err != nil {
					errs++
				} else {
					ttft = append(ttft, first)
					tokens += n
				}
				mu.Unlock()
				msgs = append(msgs, map[string]string{"role": "assistant", "content": fmt.Sprintf("Answer %d.%d: ", ci, k) + strings.Repeat("noted ", plReplyLen/6)})
			}
		}()
	}
	wg.Wait()
	return ttft, tokens, errs, time.Since(t0)
}

// streamChat sends one streamed chat and returns the time to the first
// content token and the number of content chunks.
func streamChat(cl *http.Client, url string, msgs []map[string]string) (time.Duration, int, error) {
	body, _ := json.Marshal(map[string]any{"model": plModelName, "messages": msgs, "max_tokens": plMaxTokens, "temperature": 0, "stream": true})
	req, _ := http.NewRequest("POST", url+"/v1/chat/completions", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+apiToken)
	start := time.Now()
	resp, err := cl.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return 0, 0, errStatus(resp.StatusCode)
	}
	var first time.Duration
	n := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.HasPrefix(line, []byte("data: {")) {
			continue
		}
		var ev struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
		}
		if json.Unmarshal(line[len("data: "):], &ev) == nil && len(ev.Choices) > 0 && ev.Choices[0].Delta.Content != "" {
			if n == 0 {
				first = time.Since(start)
			}
			n++
		}
	}
	if n == 0 {
		return 0, 0, fmt.Errorf("no tokens")
	}
	return first, n, sc.Err()
}

func startPlEngines(bin, model string) ([]plEngine, error) {
	a, _ := engine.Get("llamacpp")
	var out []plEngine
	for i := 0; i < plEngines; i++ {
		// The prompt cache is the slots' own KV (the host-memory prompt
		// cache off): as on a GPU, where KV memory bounds what an engine
		// keeps. With llama-server's 8 GiB host cache and a model this
		// small, every engine soon holds every prompt and placement
		// matters only for first touches.
		spec := engine.Spec{Model: model, ModelName: plModelName, Host: "127.0.0.1", Port: freePort(), Ctx: plCtx, Slots: plSlots, Threads: 1,
			ExtraArgs: []string{"--cache-ram", "0"}}
		cmd, err := a.Command(bin, spec)
		if err != nil {
			return nil, err
		}
		p, err := start(fmt.Sprintf("placement-engine-%d", i), cmd.Env, cmd.Path, cmd.Args...)
		if err != nil {
			stopPlEngines(out)
			return nil, err
		}
		out = append(out, plEngine{p: p, base: fmt.Sprintf("http://127.0.0.1:%d", spec.Port), spec: spec})
	}
	for _, en := range out {
		if err := waitEngine(en); err != nil {
			stopPlEngines(out)
			return nil, err
		}
	}
	return out, nil
}

// waitEngine waits until the adapter says the engine has loaded its model.
func waitEngine(en plEngine) error {
	a, _ := engine.Get("llamacpp")
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err = a.Ready(ctx, nil, en.base, en.spec)
		cancel()
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("engine %s not ready: %w", en.base, err)
}

func stopPlEngines(es []plEngine) {
	for _, e := range es {
		e.p.stop()
	}
}

func cacheSum(es []plEngine) engine.CacheStats {
	a, _ := engine.Get("llamacpp")
	var sum engine.CacheStats
	for _, e := range es {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		l, err := a.Load(ctx, nil, e.base, e.spec)
		cancel()
		if err == nil {
			sum.PromptTokens += l.Cache.PromptTokens
			sum.CachedTokens += l.Cache.CachedTokens
		}
	}
	return sum
}

// startPlRouter runs an in-process router over the engines with the
// policy's placer; llorch's polls the engines for load.
func startPlRouter(policy string, es []plEngine) (string, func(), error) {
	var insts []registry.Instance
	for i, e := range es {
		insts = append(insts, registry.Instance{ID: fmt.Sprintf("pl-%d", i), Service: registry.DefaultServiceName, Address: "127.0.0.1",
			Port: e.spec.Port, Model: plModelName, Engine: "llamacpp", NodeID: fmt.Sprintf("node-%d", i), Slots: plSlots, Ctx: plCtx,
			APIs: []string{"/v1/chat/completions"}, Health: registry.HealthPassing})
	}
	registry.Sort(insts)
	cfg := router.DefaultConfig()
	cfg.APIToken = apiToken
	cfg.QueueCapacity, cfg.QueueTimeout = 4096, 5*time.Minute
	cfg.FirstByteTimeout = 5 * time.Minute
	profile := ""
	if policy != "llorch" {
		profile, cfg.EnginePoll = policy, 0
	}
	placer, err := router.PlacerFromConfig(profile)
	if err != nil {
		return "", nil, err
	}
	rt, err := router.New(cfg, registry.NewStatic(insts...), placer, nil, nil)
	if err != nil {
		return "", nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = rt.Run(ctx) }()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		return "", nil, err
	}
	srv := &http.Server{Handler: rt.Handler()}
	go srv.Serve(ln)
	for deadline := time.Now().Add(5 * time.Second); !rt.Ready() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	// Let llorch's first load reports in, as a running router has them.
	time.Sleep(3 * cfg.EnginePoll)
	stop := func() {
		srv.Close()
		cancel()
		<-done
	}
	return "http://" + ln.Addr().String(), stop, nil
}

// sizeModel picks the smallest model shape whose cold 1.5k-token prompt
// takes at least 200 ms on one thread, measured on a llama-server.
func sizeModel(e *env, bin string) (string, time.Duration, error) {
	shapes := [][3]int{{128, 2, 256}, {128, 4, 512}, {192, 4, 768}, {256, 4, 1024}, {256, 8, 1024}, {384, 8, 1536}}
	prompt := strings.Repeat("the valley river city ", 1500/22+1)[:1500]
	var last time.Duration
	for _, s := range shapes {
		o := ggufgen.DefaultOptions()
		o.Name = fmt.Sprintf("bench-chat-%d-%d-%d", s[0], s[1], s[2])
		o.Embd, o.Layers, o.FF, o.Ctx, o.StopAfter = s[0], s[1], s[2], 2*plCtx, 0
		path := filepath.Join(e.dir, o.Name+".gguf")
		if err := ggufgen.Write(path, o); err != nil {
			return "", 0, err
		}
		es, err := startPlEngines1(bin, path)
		if err != nil {
			return "", 0, err
		}
		d, err := coldPrompt(es.base, prompt)
		stopPlEngines([]plEngine{es})
		if err != nil {
			return "", 0, err
		}
		last = d
		if d >= 200*time.Millisecond {
			return path, d, nil
		}
	}
	return "", 0, fmt.Errorf("largest shape only %v per cold prompt", last)
}

func startPlEngines1(bin, model string) (plEngine, error) {
	a, _ := engine.Get("llamacpp")
	spec := engine.Spec{Model: model, ModelName: plModelName, Host: "127.0.0.1", Port: freePort(), Ctx: plCtx, Slots: 1, Threads: 1}
	cmd, err := a.Command(bin, spec)
	if err != nil {
		return plEngine{}, err
	}
	p, err := start("placement-sizing", cmd.Env, cmd.Path, cmd.Args...)
	if err != nil {
		return plEngine{}, err
	}
	en := plEngine{p: p, base: fmt.Sprintf("http://127.0.0.1:%d", spec.Port), spec: spec}
	if err := waitEngine(en); err != nil {
		p.stop()
		return plEngine{}, err
	}
	return en, nil
}

// coldPrompt is the engine's own prompt time for prompt (median of three,
// each made cold by a different first character).
func coldPrompt(base, prompt string) (time.Duration, error) {
	var ds []time.Duration
	for i := 0; i < 3; i++ {
		body, _ := json.Marshal(map[string]any{"model": plModelName, "prompt": string(rune('A'+i)) + prompt, "max_tokens": 1, "cache_prompt": false})
		resp, err := http.Post(base+"/v1/completions", "application/json", bytes.NewReader(body))
		if err != nil {
			return 0, err
		}
		var ans struct {
			Timings struct {
				PromptN  int     `json:"prompt_n"`
				PromptMS float64 `json:"prompt_ms"`
			} `json:"timings"`
		}
		err = json.NewDecoder(resp.Body).Decode(&ans)
		resp.Body.Close()
		if err != nil || ans.Timings.PromptN == 0 {
			return 0, fmt.Errorf("sizing answer: %v", err)
		}
		// Scale to 1.5k tokens if the tokenizer merged characters.
		ms := ans.Timings.PromptMS * 1500 / float64(ans.Timings.PromptN)
		ds = append(ds, time.Duration(ms*float64(time.Millisecond)))
	}
	sort.Slice(ds, func(a, b int) bool { return ds[a] < ds[b] })
	return ds[1], nil
}
