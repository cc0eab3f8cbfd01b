// Command bench is `make bench`: llorch measured against its baselines in
// the same run, on whatever machine runs it. It writes
// bench/results/latest.md and latest.json and prints the table.
//
// Everything is measured here, now: the router against a direct call and
// against a stock nginx reverse proxy (interleaved rounds, open-loop load),
// streaming relay, the router's footprint at 1,000 streams, scheduler
// decisions, Consul discovery at 1,000 and 10,000 instances, and engine
// failure detection with a real llama-server. A figure that could not be
// measured says why instead.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

type row struct {
	Section string `json:"section"`
	Figure  string `json:"figure"`
	Llorch  string `json:"llorch"`
	Base    string `json:"baseline"`
	Goal    string `json:"goal"`
	Met     string `json:"met"`
}

var rows []row

// notes are each section's explanations, printed under its table.
var notes = map[string][]string{}

// note adds text under section's table, once.
func note(section, text string) {
	if !slices.Contains(notes[section], text) {
		notes[section] = append(notes[section], text)
	}
}

func add(section, figure, llorch, base, goal string, met *bool) {
	m := ""
	if met != nil {
		m = map[bool]string{true: "yes", false: "NO"}[*met]
	}
	rows = append(rows, row{section, figure, llorch, base, goal, m})
	fmt.Printf("  %-34s llorch %-22s baseline %-22s goal %-14s %s\n", figure, llorch, base, goal, m)
}

func notMeasured(section, figure, why string) {
	rows = append(rows, row{section, figure, "not measured: " + why, "", "", ""})
	fmt.Printf("  %-34s not measured: %s\n", figure, why)
}

func b(v bool) *bool { return &v }

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d.Microseconds())/1000) }

func main() {
	quick := flag.Bool("quick", false, "shorter rounds (a smoke run, noisier figures)")
	out := flag.String("out", "bench/results", "where latest.md and latest.json go")
	keep := flag.Bool("keep", false, "keep the run's directory (configurations, certificates, every process's log) and print where it is")
	only := flag.String("only", "", "comma-separated sections to run (default all): "+strings.Join(sectionNames, ", "))
	flag.Parse()
	round := 2 * time.Second
	rounds := 3
	if *quick {
		round, rounds = 700*time.Millisecond, 2
	}
	want := map[string]bool{}
	for _, n := range strings.Split(*only, ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	run := func(name string) bool { return len(want) == 0 || want[name] }
	for n := range want {
		if !slices.Contains(sectionNames, n) {
			fmt.Fprintf(os.Stderr, "bench: -only: unknown section %q (have %s)\n", n, strings.Join(sectionNames, ", "))
			os.Exit(2)
		}
	}
	env, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	env.keep = *keep
	defer env.close()

	if run("overhead") {
		fmt.Println("== router overhead (open loop, interleaved rounds)")
		routerOverhead(env, round, rounds)
	}
	if run("allocs") {
		fmt.Println("== router allocations per proxied request (go test -bench)")
		allocsBench()
	}
	if run("tls") {
		fmt.Println("== TLS: router and nginx terminating TLS, and TLS to the engine")
		tlsBench(env, round, rounds)
	}
	if run("stream") {
		fmt.Println("== streaming relay (50 concurrent streams)")
		streamRelay(env)
	}
	if run("scale") {
		fmt.Println("== router at 1,000 concurrent streams")
		routerScale(env)
	}
	if run("scheduler") {
		fmt.Println("== scheduler decisions")
		schedulerBench(*quick)
		fmt.Println("== prefix-affinity simulation")
		prefixSim(*quick)
	}
	if run("churn") {
		fmt.Println("== placement under snapshot churn")
		churnBench(*quick)
	}
	if run("discovery") {
		fmt.Println("== discovery in Consul")
		discoveryBench(env, *quick)
	}
	if run("failure") {
		fmt.Println("== failure detection (real llama-server)")
		failureBench(env, *quick)
	}
	if run("placement") {
		fmt.Println("== placement quality (3 real llama-server, multi-turn chat)")
		placementBench(env, *quick)
	}
	if run("coldstart") {
		fmt.Println("== cold start: request to a model not loaded → first token (home, real llama-server)")
		coldStartBench(*quick)
	}
	if run("resume") {
		fmt.Println("== mid-stream failover (real llama-server)")
		resumeBench(env, *quick)
	}
	if run("driver") {
		fmt.Println("== driver: StartTask → Consul passing (real llama-server)")
		driverBench(env, *quick)
	}

	if err := write(*out); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		env.close()
		os.Exit(1)
	}
}

// sectionNames are the parts -only can pick, in the order they run.
var sectionNames = []string{"overhead", "allocs", "tls", "stream", "scale", "scheduler", "churn", "discovery", "failure", "placement", "coldstart", "resume", "driver"}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				model = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	nginx := "nginx not found"
	if bin, err := lookNginx(); err == nil {
		if out, err := exec.Command(bin, "-v").CombinedOutput(); err == nil {
			nginx = strings.TrimSpace(string(out))
		}
	}
	// The load average says how much else ran beside the bench: on a
	// shared machine that, not llorch, can be what a tail figure shows.
	load := "load average unknown"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			load = "load average " + strings.Join(f[:3], " ")
		}
	}
	return fmt.Sprintf("%s, %d cores, %s, %s, %s, %s", model, runtime.NumCPU(), runtime.Version(), nginx, load, time.Now().UTC().Format("2006-01-02 15:04 UTC"))
}

func write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var md strings.Builder
	fmt.Fprintf(&md, "# llorch benchmark\n\nMachine: %s\n\nProduced by `make bench`; every figure was measured in this run, baselines beside llorch.\n\n", machine())
	section := ""
	flushNotes := func() {
		for _, n := range notes[section] {
			fmt.Fprintf(&md, "\nNote: %s\n", n)
		}
	}
	for _, r := range rows {
		if r.Section != section {
			flushNotes()
			section = r.Section
			fmt.Fprintf(&md, "\n## %s\n\n| figure | llorch | baseline | goal | met |\n|---|---|---|---|---|\n", section)
		}
		fmt.Fprintf(&md, "| %s | %s | %s | %s | %s |\n", r.Figure, r.Llorch, r.Base, r.Goal, r.Met)
	}
	flushNotes()
	if err := os.WriteFile(filepath.Join(dir, "latest.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	js, _ := json.MarshalIndent(map[string]any{"machine": machine(), "rows": rows, "notes": notes}, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "latest.json"), js, 0o644); err != nil {
		return err
	}
	fmt.Printf("\n%s\nwritten to %s/latest.md and latest.json\n", md.String(), dir)
	return nil
}
