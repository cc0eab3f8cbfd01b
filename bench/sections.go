package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/engine/supervise"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/registry/consul"
	"github.com/llorch/llorch/scheduler"
	"github.com/llorch/llorch/scheduler/sim"
)

func routerOverhead(e *env, round time.Duration, rounds int) {
	targets := []target{e.direct, e.viaRt}
	if e.nginx != nil {
		targets = []target{e.direct, e.viaNginx, e.viaRt}
	}
	cl := newClient(512)
	// The router's cost with no traffic (discovery's blocking query, the
	// Go runtime): at low rates it is a large part of "CPU per request".
	c0 := cpuTicks(e.viaRt.pgid)
	time.Sleep(3 * time.Second)
	add("router overhead, idle", "router CPU with no traffic", fmt.Sprintf("%.2f%% of a core", float64(cpuTicks(e.viaRt.pgid)-c0)/clkTck/3*100), "", "", nil)
	for _, rate := range []int{100, 1000, 3000} {
		res := map[string]*sample{}
		cpu := map[string]uint64{}
		for _, t := range targets {
			res[t.name] = &sample{}
		}
		for r := 0; r < rounds; r++ {
			for _, t := range targets { // interleaved: drift hits every target alike
				c0 := cpuTicks(t.pgid)
				s := openLoop(cl, t, rate, round)
				if t.pgid != 0 {
					cpu[t.name] += cpuTicks(t.pgid) - c0
				}
				res[t.name].add(s)
			}
		}
		d := res["direct"]
		section := fmt.Sprintf("router overhead, open loop %d rps", rate)
		for _, p := range []struct {
			name string
			q    float64
		}{{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}} {
			base := pct(d.lat, p.q)
			rt := pct(res["llorch"].lat, p.q) - base
			ng := "no nginx"
			var met *bool
			goal := ""
			if rate == 1000 && p.name != "p90" { // the goals are set at 1,000 rps
				lim := map[string]time.Duration{"p50": 200 * time.Microsecond, "p99": time.Millisecond}[p.name]
				goal, met = "≤"+ms(lim), b(rt <= lim)
			}
			if e.nginx != nil { // the "no more than nginx" goal is the ratio row below
				ng = added(pct(res["nginx"].lat, p.q)-base) + " (nginx added)"
			}
			add(section, p.name+" added latency", added(rt), ng, goal, met)
		}
		thr := func(n string) float64 { return float64(len(res[n].lat)) / (float64(len(d.lat)) + 1e-9) }
		nthr := "no nginx" // res has no nginx entry then: never evaluate thr("nginx")
		if e.nginx != nil {
			nthr = fmt.Sprintf("%.1f%% (nginx)", 100*thr("nginx"))
		}
		add(section, "throughput vs direct", fmt.Sprintf("%.1f%%", 100*thr("llorch")), nthr, "≥90%", b(thr("llorch") >= 0.9))
		errs := fmt.Sprintf("%d of %d", res["llorch"].err, res["llorch"].n)
		nerr := ""
		if e.nginx != nil {
			nerr = fmt.Sprintf("%d of %d (nginx)", res["nginx"].err, res["nginx"].n)
		}
		add(section, "errors", errs, nerr, "0", b(res["llorch"].err == 0))
		per := func(n string) string {
			if res[n].n == 0 {
				return "-"
			}
			return fmt.Sprintf("%.0f µs", float64(cpu[n])*1e6/clkTck/float64(res[n].n))
		}
		ngc := ""
		if e.nginx != nil {
			ngc = per("nginx") + " (nginx)"
		}
		add(section, "proxy CPU per request", per("llorch"), ngc, "", nil)
		if e.nginx != nil {
			for _, p := range []struct {
				name string
				q    float64
			}{{"p50", 0.5}, {"p99", 0.99}} {
				base := pct(d.lat, p.q)
				ratio, ok, val := addedRatio(pct(res["llorch"].lat, p.q)-base, pct(res["nginx"].lat, p.q)-base)
				goal, met := "", (*bool)(nil)
				if rate == 1000 {
					goal, met = "≤1.0", b(ok && ratio <= 1.0)
				}
				if ok {
					val = fmt.Sprintf("%.2f", ratio)
				}
				add(section, p.name+" added, llorch/nginx", val, "1.00", goal, met)
			}
		}
	}
	// Closed loop, 64 concurrent: throughput, latency and the proxies' CPU.
	section := "router overhead, closed loop 64 concurrent"
	thr := map[string]float64{}
	res := map[string]*sample{}
	cpu := map[string]uint64{}
	for _, t := range targets {
		res[t.name] = &sample{}
	}
	for r := 0; r < rounds; r++ {
		for _, t := range targets {
			c0 := cpuTicks(t.pgid)
			s, x := closedLoop(cl, t, 64, round)
			if t.pgid != 0 {
				cpu[t.name] += cpuTicks(t.pgid) - c0
			}
			res[t.name].add(s)
			thr[t.name] += x / float64(rounds)
		}
	}
	ng := ""
	if e.nginx != nil {
		ng = fmt.Sprintf("%.0f req/s (nginx, %.0f%% of direct), %.0f (direct)", thr["nginx"], 100*thr["nginx"]/thr["direct"], thr["direct"])
	}
	add(section, "throughput", fmt.Sprintf("%.0f req/s (%.0f%% of direct)", thr["llorch"], 100*thr["llorch"]/thr["direct"]), ng, "≥90% of direct", b(thr["llorch"] >= 0.9*thr["direct"]))
	for _, p := range []struct {
		name string
		q    float64
	}{{"p50", 0.5}, {"p99", 0.99}} {
		ngl := ""
		if e.nginx != nil {
			ngl = ms(pct(res["nginx"].lat, p.q)) + " (nginx), " + ms(pct(res["direct"].lat, p.q)) + " (direct)"
		}
		add(section, p.name+" latency", ms(pct(res["llorch"].lat, p.q)), ngl, "", nil)
	}
	nerr := ""
	if e.nginx != nil {
		nerr = fmt.Sprintf("%d of %d (nginx)", res["nginx"].err, res["nginx"].n)
	}
	add(section, "errors", fmt.Sprintf("%d of %d", res["llorch"].err, res["llorch"].n), nerr, "0", b(res["llorch"].err == 0))
	per := func(n string) string {
		if res[n].n == 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f µs", float64(cpu[n])*1e6/clkTck/float64(res[n].n))
	}
	ngc := ""
	if e.nginx != nil {
		ngc = per("nginx") + " (nginx)"
	}
	add(section, "proxy CPU per request", per("llorch"), ngc, "", nil)
}

// noiseFloor is the smallest added latency a ratio is taken over: below it,
// on a 2-core machine shared by load generator, proxy and upstream, the
// difference of two percentiles is scheduling noise and a ratio means nothing.
// added prints an added latency; a negative one (the proxied run measured
// faster than direct) is noise and says so instead of passing for a gain.
func added(d time.Duration) string {
	if d < 0 {
		return "≤0 (" + ms(d) + ", noise)"
	}
	return ms(d)
}

const noiseFloor = 10 * time.Microsecond

// addedRatio is llorch's added latency over nginx's. It is not taken (ok
// false, why says which) when nginx's is under the noise floor, or when
// llorch's is negative (measured faster than direct: noise, not a win).
func addedRatio(llorch, nginx time.Duration) (ratio float64, ok bool, why string) {
	switch {
	case nginx < noiseFloor:
		return 0, false, "n/a: nginx adds less than the 10 µs noise floor"
	case llorch < 0:
		return 0, false, "n/a: llorch's figure is below direct's (noise)"
	}
	return float64(llorch) / float64(nginx), true, ""
}

func streamRelay(e *env) {
	cl := newClient(256)
	direct := target{url: "http://" + addr(e.sPort)}
	rt := target{url: e.routerURL, token: apiToken}
	var rd, rr, rn streamResult
	for r := 0; r < 3; r++ {
		rd = mergeStreams(rd, streamsModel(cl, direct, 50, "bench-stream"))
		if e.nginx != nil {
			rn = mergeStreams(rn, streamsModel(cl, target{url: "http://" + addr(e.nStream)}, 50, "bench-stream"))
		}
		rr = mergeStreams(rr, streamsModel(cl, rt, 50, "bench-stream"))
	}
	// One stream at a time: the relay's own first-byte cost, without the
	// queueing a burst of 50 adds on two cores.
	var sd, sr, sn streamResult
	for i := 0; i < 50; i++ {
		sd = mergeStreams(sd, streamsModel(cl, direct, 1, "bench-stream"))
		if e.nginx != nil {
			sn = mergeStreams(sn, streamsModel(cl, target{url: "http://" + addr(e.nStream)}, 1, "bench-stream"))
		}
		sr = mergeStreams(sr, streamsModel(cl, rt, 1, "bench-stream"))
	}
	section := "streaming relay, 50 concurrent streams × 32 tokens"
	ttfbAdded := pct(rr.ttfb, 0.5) - pct(rd.ttfb, 0.5)
	ng := ""
	if e.nginx != nil {
		ng = added(pct(rn.ttfb, 0.5)-pct(rd.ttfb, 0.5)) + " (nginx)"
	}
	add(section, "time to first byte added, p50, 50 at once", added(ttfbAdded), ng, "≤0.1 ms", b(ttfbAdded <= 100*time.Microsecond))
	seqAdded := pct(sr.ttfb, 0.5) - pct(sd.ttfb, 0.5)
	sng := ""
	if e.nginx != nil {
		sng = added(pct(sn.ttfb, 0.5)-pct(sd.ttfb, 0.5)) + " (nginx)"
	}
	add(section, "time to first byte added, p50, one stream at a time", added(seqAdded), sng, "≤0.1 ms", b(seqAdded <= 100*time.Microsecond))
	gap := pct(rr.gap, 0.5) - pct(rd.gap, 0.5)
	ngap := ""
	if e.nginx != nil {
		ngap = added(pct(rn.gap, 0.5)-pct(rd.gap, 0.5)) + " (nginx)"
	}
	add(section, "inter-token gap added, p50", added(gap), ngap, "", nil)
	add(section, "truncated streams", fmt.Sprintf("%d of %d", rr.truncated+sr.truncated, rr.n+sr.n), fmt.Sprintf("%d of %d (direct)", rd.truncated+sd.truncated, rd.n+sd.n), "0", b(rr.truncated+sr.truncated == 0))
}

func mergeStreams(a, b streamResult) streamResult {
	a.ttfb = append(a.ttfb, b.ttfb...)
	a.gap = append(a.gap, b.gap...)
	a.truncated += b.truncated
	a.n += b.n
	return a
}

func streamsModel(cl *http.Client, t target, c int, model string) streamResult {
	old := streamBody
	streamBody = []byte(`{"model":"` + model + `","stream":true,"messages":[{"role":"user","content":"hello"}]}`)
	defer func() { streamBody = old }()
	return streams(cl, t, c)
}

func routerScale(e *env) {
	section := "router footprint, 1,000 concurrent streams (2 s each)"
	measure := func(t target, pid int, model string) (float64, float64, streamResult) {
		cl := newClient(1100)
		var res streamResult
		done := make(chan struct{})
		go func() { res = streamsModel(cl, t, 1000, model); close(done) }()
		time.Sleep(800 * time.Millisecond)
		c0 := cpuTicks(pid)
		rss := rssGroupMB(pid)
		time.Sleep(time.Second)
		cpu := float64(cpuTicks(pid)-c0) / clkTck * 100
		rss = max(rss, rssGroupMB(pid))
		<-done
		return rss, cpu, res
	}
	rss, cpu, res := measure(target{url: e.routerURL, token: apiToken}, e.router.cmd.Process.Pid, "bench-slow")
	ng, ntr := "", ""
	if e.nginx != nil {
		nrss, ncpu, nres := measure(target{url: "http://" + addr(e.nSlow)}, e.nginx.cmd.Process.Pid, "bench-slow")
		ng = fmt.Sprintf("%.0f MB RSS, %.0f%% of a core (nginx, master + workers)", nrss, ncpu)
		ntr = fmt.Sprintf("%d of %d (nginx)", nres.truncated, nres.n)
	}
	add(section, "router RSS", fmt.Sprintf("%.0f MB", rss), ng, "≤100 MB", b(rss <= 100))
	add(section, "router CPU", fmt.Sprintf("%.0f%% of a core", cpu), "", "", nil)
	add(section, "truncated streams", fmt.Sprintf("%d of %d", res.truncated, res.n), ntr, "0", b(res.truncated == 0))
}

func schedulerBench(quick bool) {
	d := time.Second
	if quick {
		d = 300 * time.Millisecond
	}
	for _, n := range []int{10, 100, 1000, 10000} {
		r := scheduler.BenchDecide(n, d)
		goal := ""
		var met *bool
		if n == 10000 {
			goal = "p99 ≤20 µs"
			met = b(r.P99 <= 20*time.Microsecond)
		}
		add("scheduler decisions (default profile)", fmt.Sprintf("%d candidates", n),
			fmt.Sprintf("%.0f/s, p50 %v, p99 %v", r.PerSec, r.P50.Round(100*time.Nanosecond), r.P99.Round(100*time.Nanosecond)), "", goal, met)
	}
}

// prefixSim runs the fleet simulation with prefix caches: what routing by
// prompt prefix buys over least-loaded and round-robin on the same
// workload (8 instances × 4 slots, shared system prompts, multi-turn
// sessions, caches too small to hold everything everywhere).
func prefixSim(quick bool) {
	cfg := sim.DefaultConfig()
	if quick {
		cfg.Requests = 4000
	}
	res, err := sim.Compare(cfg)
	if err != nil {
		notMeasured("prefix-affinity simulation", "all policies", err.Error())
		return
	}
	base := map[sim.Policy]sim.Result{}
	for _, r := range res {
		base[r.Policy] = r
	}
	rr := base[sim.RoundRobin]
	for _, r := range res {
		add("prefix-affinity simulation (8 instances × 4 slots, 20k requests)", string(r.Policy),
			fmt.Sprintf("cache hit %.1f%%, queue p99 %.0f ms, latency mean %.0f ms p99 %.0f ms, busiest %.0f%%", 100*r.HitRate, r.P99QueueMs, r.MeanLatencyMs, r.P99LatencyMs, 100*r.MaxShare),
			fmt.Sprintf("round-robin: hit %.1f%%, latency mean %.0f ms", 100*rr.HitRate, rr.MeanLatencyMs), "", nil)
	}
}

// watcher runs a consul.Watcher and reports each snapshot's size.
type watcher struct {
	mu   sync.Mutex
	last registry.Snapshot
	when time.Time
	ch   chan struct{}
}

func newWatcher(ctx context.Context, cc *consulapi.Client) *watcher {
	w := &watcher{ch: make(chan struct{}, 1)}
	src := &consul.Watcher{Client: cc, WaitTime: 30 * time.Second}
	go src.Watch(ctx, func(s registry.Snapshot) {
		w.mu.Lock()
		w.last, w.when = s, time.Now()
		w.mu.Unlock()
		select {
		case w.ch <- struct{}{}:
		default:
		}
	})
	return w
}

// until waits for a snapshot that satisfies cond; it returns when it came.
func (w *watcher) until(d time.Duration, cond func(registry.Snapshot) bool) (time.Time, bool) {
	deadline := time.After(d)
	for {
		w.mu.Lock()
		s, at := w.last, w.when
		w.mu.Unlock()
		if cond(s) {
			return at, true
		}
		select {
		case <-w.ch:
		case <-deadline:
			return time.Time{}, false
		}
	}
}

func has(id string) func(registry.Snapshot) bool {
	return func(s registry.Snapshot) bool {
		for _, in := range s.Instances {
			if in.ID == id {
				return true
			}
		}
		return false
	}
}

func discoveryBench(e *env, quick bool) {
	sizes := []int{1000, 10000}
	if quick {
		sizes = []int{1000}
	}
	for _, n := range sizes {
		section := fmt.Sprintf("discovery, %d instances in Consul", n)
		t0 := time.Now()
		if err := registerMany(e.cc, n); err != nil {
			notMeasured(section, "registration", err.Error())
			continue
		}
		regTime := time.Since(t0)
		want := n + 3
		ctx, cancel := context.WithCancel(context.Background())
		start := time.Now()
		w := newWatcher(ctx, e.cc)
		at, ok := w.until(60*time.Second, func(s registry.Snapshot) bool { return len(s.Instances) >= want })
		if !ok {
			notMeasured(section, "snapshot build", "the snapshot never held every instance")
			cancel()
			continue
		}
		add(section, "first snapshot (query + decode + build)", ms(at.Sub(start)), fmt.Sprintf("registering took %v", regTime.Round(time.Millisecond)), "", nil)
		// One change: how long until the router's view has it.
		var delays []time.Duration
		for k := 0; k < 5; k++ {
			id := fmt.Sprintf("bench-change-%d-%d", n, k)
			t1 := time.Now()
			if err := e.cc.Agent().ServiceRegister(benchReg(id, 40000+k)); err != nil {
				break
			}
			if at, ok := w.until(10*time.Second, has(id)); ok {
				delays = append(delays, at.Sub(t1))
			}
		}
		sort.Slice(delays, func(i, j int) bool { return delays[i] < delays[j] })
		if len(delays) > 0 {
			p50 := delays[len(delays)/2]
			add(section, "one change visible (p50 of 5)", ms(p50), "max "+ms(delays[len(delays)-1]), "≤500 ms", b(p50 <= 500*time.Millisecond))
		}
		cancel()
		deregisterMany(e.cc, n)
		for k := 0; k < 5; k++ {
			e.cc.Agent().ServiceDeregister(fmt.Sprintf("bench-change-%d-%d", n, k))
		}
	}
}

func benchReg(id string, port int) *consulapi.AgentServiceRegistration {
	in := registry.Instance{ID: id, Service: registry.DefaultServiceName, Address: "127.0.0.2", Port: port, Model: "scale", Engine: "fixture", NodeID: "bench-node", Slots: 4}
	meta, _ := in.Meta()
	return &consulapi.AgentServiceRegistration{ID: in.ID, Name: in.Service, Address: in.Address, Port: in.Port, Tags: in.Tags(), Meta: meta}
}

// registerMany puts n instances on 100 catalog nodes (parallel batches):
// the shape of a large fleet, without n agents.
func registerMany(cc *consulapi.Client, n int) error {
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				node := fmt.Sprintf("bench-n%03d", i%100)
				in := registry.Instance{ID: fmt.Sprintf("scale-%05d", i), Service: registry.DefaultServiceName, Address: "10.99.0.1", Port: 10000 + i%50000,
					Model: fmt.Sprintf("scale-%d", i%10), Engine: "fixture", NodeID: node, Slots: 4}
				meta, _ := in.Meta()
				_, err := cc.Catalog().Register(&consulapi.CatalogRegistration{Node: node, Address: "10.99.0.1",
					Service: &consulapi.AgentService{ID: in.ID, Service: in.Service, Address: in.Address, Port: in.Port, Tags: in.Tags(), Meta: meta}}, nil)
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

func deregisterMany(cc *consulapi.Client, n int) {
	for i := 0; i < 100; i++ {
		cc.Catalog().Deregister(&consulapi.CatalogDeregistration{Node: fmt.Sprintf("bench-n%03d", i)}, nil)
	}
}

// failureBench measures, with a real llama-server, supervise and Consul:
// engine killed → gone from the router's view, and engine hung (SIGSTOP)
// → gone, over repeated trials.
func failureBench(e *env, quick bool) {
	section := "failure detection (llama-server, Consul, router view)"
	bin := filepath.Join(cacheDir(), "bin", "llama-server")
	if _, err := os.Stat(bin); err != nil {
		notMeasured(section, "engine kill → excluded", "llama-server not found (scripts/get-llama-server.sh)")
		return
	}
	model := filepath.Join(e.dir, "tiny.gguf")
	if err := ggufgen.Write(model, ggufgen.DefaultOptions()); err != nil {
		notMeasured(section, "engine kill → excluded", err.Error())
		return
	}
	trials := 7
	if quick {
		trials = 3
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := newWatcher(ctx, e.cc)
	reg, err := consul.NewRegistrar(consul.RegistrarConfig{Address: e.consulAddr})
	if err != nil {
		notMeasured(section, "engine kill → excluded", err.Error())
		return
	}
	var kill, hung []time.Duration
	for i := 0; i < trials; i++ {
		for _, mode := range []string{"kill", "hung"} {
			if mode == "hung" && i >= 3 {
				continue // each hung trial takes seconds
			}
			d, err := oneFailure(ctx, w, reg, bin, model, fmt.Sprintf("bench-fail-%s-%d", mode, i), mode)
			if err != nil {
				notMeasured(section, "engine "+mode, err.Error())
				return
			}
			if mode == "kill" {
				kill = append(kill, d)
			} else {
				hung = append(hung, d)
			}
		}
	}
	report := func(name string, l []time.Duration, goal time.Duration) {
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
		add(section, fmt.Sprintf("%s → excluded (%d trials)", name, len(l)), "p50 "+ms(l[len(l)/2])+", max "+ms(l[len(l)-1]), "", "≤"+goal.String(), b(l[len(l)-1] <= goal))
	}
	report("engine kill -9", kill, time.Second)
	report("engine hung (SIGSTOP)", hung, 5*time.Second)
	notMeasured(section, "node loss → excluded", "needs several hosts: the e2e suite (network namespaces)")
}

func oneFailure(ctx context.Context, w *watcher, reg *consul.Registrar, bin, model, id, mode string) (time.Duration, error) {
	ad, _ := engine.Get("llamacpp")
	port := freePort()
	spec := engine.Spec{Model: model, ModelName: "tiny", Host: "127.0.0.1", Port: port, Slots: 1}
	c, err := ad.Command(bin, spec)
	if err != nil {
		return 0, err
	}
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	sup := supervise.New(supervise.Config{Adapter: ad, Spec: spec, Registrar: reg, Instance: registry.Instance{ID: id, Service: registry.DefaultServiceName,
		Address: "127.0.0.1", Port: port, Model: "tiny", Engine: "llamacpp", NodeID: "bench-node", Slots: 1}})
	go sup.Run(ctx)
	waited := make(chan struct{})
	go func() { cmd.Wait(); sup.ProcessExited(); close(waited) }()
	if _, ok := w.until(20*time.Second, has(id)); !ok {
		return 0, fmt.Errorf("engine never visible")
	}
	t0 := time.Now()
	if mode == "kill" {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	} else {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGSTOP)
	}
	at, ok := w.until(20*time.Second, func(s registry.Snapshot) bool { return !has(id)(s) })
	if !ok {
		return 0, fmt.Errorf("engine %s never excluded", mode)
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT)
	<-waited
	stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	sup.Stop(stopCtx)
	cancel()
	return at.Sub(t0), nil
}
