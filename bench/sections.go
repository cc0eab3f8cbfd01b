package main

import (
	"fmt"
	"net/http"
	"time"

	"github.com/llorch/llorch/scheduler"
	"github.com/llorch/llorch/scheduler/sim"
)

// idleWindow is how long the router's idle CPU is watched.
var idleWindow = 3 * time.Second

// overheadNote says what is compared, for the table's notes.
const overheadNote = "llorch runs as shipped: default log level (info) with its access line per request, written to a file. " +
	"nginx writes an access line per request too (access_log to a file, buffer=64k). " +
	"Added latency is the proxied figure minus direct's at the same percentile, rounds interleaved."

func routerOverhead(e *env, round time.Duration, rounds int) {
	haveNginx := e.nginx != nil
	targets := []target{e.direct, e.viaRt}
	if haveNginx {
		targets = []target{e.direct, e.viaNginx, e.viaRt}
	}
	cl := newClient(512)
	// The router's cost with no traffic (discovery's blocking query, the
	// Go runtime): at low rates it is a large part of "CPU per request".
	c0 := cpuTicks(e.viaRt.pgid)
	time.Sleep(idleWindow)
	add("router overhead, idle", "router CPU with no traffic", fmt.Sprintf("%.2f%% of a core", float64(cpuTicks(e.viaRt.pgid)-c0)/clkTck/idleWindow.Seconds()*100), "", "", nil)
	for _, rate := range []int{100, 1000, 3000} {
		res, cpu := measureRounds(targets, rounds, func(t target) sample { return openLoop(cl, t, rate, round) })
		d := res["direct"]
		section := fmt.Sprintf("router overhead, open loop %d rps", rate)
		note(section, overheadNote)
		for _, p := range []struct {
			name string
			q    float64
		}{{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}} {
			base := pct(d.lat, p.q)
			ng := "no nginx"
			if haveNginx {
				ng = added(pct(res["nginx"].lat, p.q)-base) + " (nginx added)"
			}
			add(section, p.name+" added latency", added(pct(res["llorch"].lat, p.q)-base), ng, "", nil)
		}
		thr := func(n string) float64 { return float64(len(res[n].lat)) / (float64(len(d.lat)) + 1e-9) }
		nthr, nerr, ngc := "no nginx", "no nginx", "no nginx" // res has no nginx entry then: never read it
		if haveNginx {
			nthr = fmt.Sprintf("%.1f%% (nginx)", 100*thr("nginx"))
			nerr = fmt.Sprintf("%d of %d (nginx)", res["nginx"].err, res["nginx"].n)
			ngc = cpuText(cpu["nginx"], res["nginx"].n) + " (nginx)"
		}
		add(section, "answered vs direct", fmt.Sprintf("%.1f%%", 100*thr("llorch")), nthr, "", nil)
		add(section, "errors", fmt.Sprintf("%d of %d", res["llorch"].err, res["llorch"].n), nerr, "0", b(res["llorch"].err == 0))
		goal, met := "", (*bool)(nil)
		if rate == 1000 {
			goal, met = cpuGoal(cpu["llorch"], res["llorch"].n)
		}
		add(section, "proxy CPU per request", cpuText(cpu["llorch"], res["llorch"].n), ngc, goal, met)
		// The latency goals are relative to nginx: p50 at 1,000 rps
		// (and a stretch), p99 at 3,000 rps. Other rates show the ratio.
		for _, g := range []struct {
			name  string
			q     float64
			rate  int
			limit float64
			label string
		}{{"p50", 0.5, 1000, goalP50Ratio, ""}, {"p50", 0.5, 1000, goalP50Stretch, " (stretch)"}, {"p99", 0.99, 3000, goalP99Ratio, ""}} {
			if rate != g.rate && g.label != "" {
				continue // the stretch row only where it is a goal
			}
			base := pct(d.lat, g.q)
			var ngAdded time.Duration
			if haveNginx {
				ngAdded = pct(res["nginx"].lat, g.q) - base
			}
			val, goal, met := ratioGoal(pct(res["llorch"].lat, g.q)-base, ngAdded, haveNginx, g.limit)
			if rate != g.rate {
				goal, met = "", nil
			}
			add(section, g.name+" added, llorch/nginx"+g.label, val, nginxUnit(haveNginx), goal, met)
		}
	}
	// Closed loop, 64 concurrent: throughput, latency and the proxies' CPU.
	section := "router overhead, closed loop 64 concurrent"
	note(section, overheadNote)
	thr := map[string]float64{}
	res, cpu := measureRounds(targets, rounds, func(t target) sample {
		s, x := closedLoop(cl, t, 64, round)
		thr[t.name] += x / float64(rounds)
		return s
	})
	ng, ngc, nerr := "no nginx", "no nginx", "no nginx"
	if haveNginx {
		ng = fmt.Sprintf("%.0f req/s (nginx, %.0f%% of direct), %.0f (direct)", thr["nginx"], 100*thr["nginx"]/max(thr["direct"], 1e-9), thr["direct"])
		ngc = cpuText(cpu["nginx"], res["nginx"].n) + " (nginx)"
		nerr = fmt.Sprintf("%d of %d (nginx)", res["nginx"].err, res["nginx"].n)
	}
	val, goal, met := closedLoopGoal(thr["llorch"], thr["direct"])
	add(section, "throughput", val, ng, goal, met)
	for _, p := range []struct {
		name string
		q    float64
	}{{"p50", 0.5}, {"p99", 0.99}} {
		ngl := ms(pct(res["direct"].lat, p.q)) + " (direct)"
		if haveNginx {
			ngl = ms(pct(res["nginx"].lat, p.q)) + " (nginx), " + ngl
		}
		add(section, p.name+" latency", ms(pct(res["llorch"].lat, p.q)), ngl, "", nil)
	}
	add(section, "errors", fmt.Sprintf("%d of %d", res["llorch"].err, res["llorch"].n), nerr, "0", b(res["llorch"].err == 0))
	add(section, "proxy CPU per request", cpuText(cpu["llorch"], res["llorch"].n), ngc, "", nil)
}

// measureRounds runs measure on every target, rounds times, interleaved
// (drift hits every target alike), and returns each target's merged
// samples and the CPU ticks its process group spent meanwhile (targets
// with no process group: none). Every target has an entry.
func measureRounds(targets []target, rounds int, measure func(target) sample) (map[string]*sample, map[string]uint64) {
	res := map[string]*sample{}
	cpu := map[string]uint64{}
	for _, t := range targets {
		res[t.name] = &sample{}
	}
	for r := 0; r < rounds; r++ {
		for _, t := range targets {
			var c0 uint64
			if t.pgid != 0 {
				c0 = cpuTicks(t.pgid)
			}
			s := measure(t)
			if t.pgid != 0 {
				cpu[t.name] += cpuTicks(t.pgid) - c0
			}
			res[t.name].add(s)
		}
	}
	return res, cpu
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
	ng := "no nginx"
	if e.nginx != nil {
		ng = added(pct(rn.ttfb, 0.5)-pct(rd.ttfb, 0.5)) + " (nginx)"
	}
	goal, met := absGoal(ttfbAdded, goalTTFB50)
	add(section, "time to first byte added, p50, 50 at once", added(ttfbAdded), ng, goal, met)
	seqAdded := pct(sr.ttfb, 0.5) - pct(sd.ttfb, 0.5)
	sng, nseq := "no nginx", time.Duration(0)
	if e.nginx != nil {
		nseq = pct(sn.ttfb, 0.5) - pct(sd.ttfb, 0.5)
		sng = added(nseq) + " (nginx)"
	}
	add(section, "time to first byte added, p50, one stream at a time", added(seqAdded), sng, "", nil)
	val, goal, met := ratioGoal(seqAdded, nseq, e.nginx != nil, goalTTFBOneRatio)
	add(section, "time to first byte added, one stream, llorch/nginx", val, nginxUnit(e.nginx != nil), goal, met)
	gap := pct(rr.gap, 0.5) - pct(rd.gap, 0.5)
	ngap := "no nginx"
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
	ng, ntr := "no nginx", "no nginx"
	if e.nginx != nil {
		nrss, ncpu, nres := measure(target{url: "http://" + addr(e.nSlow)}, e.nginx.cmd.Process.Pid, "bench-slow")
		ng = fmt.Sprintf("%.0f MB RSS, %.0f%% of a core (nginx, master + workers)", nrss, ncpu)
		ntr = fmt.Sprintf("%d of %d (nginx)", nres.truncated, nres.n)
	}
	add(section, "router RSS", fmt.Sprintf("%.0f MB", rss), ng, fmt.Sprintf("≤%d MB", goalRSSMB), b(rss <= goalRSSMB))
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
