package main

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// allocsBenchName is the router's own Go benchmark of one proxied request
// (sub-benchmarks json and sse): allocations are counted there, where the
// Go runtime counts them exactly, not guessed from a process outside.
const allocsBenchName = "BenchmarkProxyAllocs"

// benchLine is one result line of `go test -bench -benchmem`.
type benchLine struct {
	Sub      string // the sub-benchmark ("json"), "" for the top level
	NsOp     float64
	BOp      float64
	AllocsOp float64
	hasMem   bool // B/op and allocs/op were there (-benchmem)
}

// parseBenchOutput picks name's result lines out of go test's output, e.g.
//
//	BenchmarkProxyAllocs/json-2   20000   12345 ns/op   4567 B/op   89 allocs/op
//
// The -N suffix (GOMAXPROCS) is absent when it is 1; further metrics a
// benchmark reports are skipped. A line that is only the name (printed
// before a benchmark's log output) has no figures and is skipped too.
func parseBenchOutput(out, name string) []benchLine {
	var res []benchLine
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 4 || !(f[0] == name || strings.HasPrefix(f[0], name+"/") || strings.HasPrefix(f[0], name+"-")) {
			continue
		}
		if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
			continue // not a result line
		}
		bl := benchLine{Sub: subName(f[0], name)}
		var seen int
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			switch f[i+1] {
			case "ns/op":
				bl.NsOp, seen = v, seen|1
			case "B/op":
				bl.BOp, seen = v, seen|2
			case "allocs/op":
				bl.AllocsOp, seen = v, seen|4
			}
		}
		if seen&1 == 0 {
			continue
		}
		bl.hasMem = seen&6 == 6
		res = append(res, bl)
	}
	return res
}

// subName is "json" for "BenchmarkProxyAllocs/json-2": the part after the
// benchmark's name, without the GOMAXPROCS suffix.
func subName(full, name string) string {
	s := strings.TrimPrefix(full, name)
	if i := strings.LastIndexByte(s, '-'); i >= 0 {
		if _, err := strconv.Atoi(s[i+1:]); err == nil {
			s = s[:i]
		}
	}
	return strings.TrimPrefix(s, "/")
}

// allocsRows turns the benchmark's lines into table rows: allocs/op and
// B/op per sub-benchmark against goalAllocs. A "floor" sub-benchmark (a
// bare net/http server answering the same request) is what Go's HTTP
// server itself costs, which no handler can avoid: with it, the goal is
// judged on the router's own share (total − floor), the floor beside it.
// No lines (the benchmark is not in this tree yet) is a figure not
// measured, with the reason.
func allocsRows(section string, lines []benchLine) {
	if len(lines) == 0 {
		notMeasured(section, "allocations per proxied request", allocsBenchName+" is not in ./router (no result lines)")
		return
	}
	var floor *benchLine
	for i := range lines {
		if lines[i].Sub == "floor" && lines[i].hasMem {
			floor = &lines[i]
		}
	}
	for _, l := range lines {
		if l.Sub == "floor" {
			continue
		}
		fig := "allocations per proxied request"
		if l.Sub != "" {
			fig += ", " + l.Sub
		}
		if !l.hasMem {
			notMeasured(section, fig, "no allocs/op in the output (-benchmem missing?)")
			continue
		}
		if floor == nil {
			add(section, fig, fmt.Sprintf("%.0f allocs/op, %.0f B/op (%.0f ns/op)", l.AllocsOp, l.BOp, l.NsOp), "",
				fmt.Sprintf("≤%d allocs", goalAllocs), b(l.AllocsOp <= goalAllocs))
			continue
		}
		own := l.AllocsOp - floor.AllocsOp
		add(section, fig, fmt.Sprintf("%.0f allocs/op of the router's own (%.0f in all, %.0f B/op)", own, l.AllocsOp, l.BOp),
			fmt.Sprintf("%.0f allocs/op, %.0f B/op (Go's HTTP server alone)", floor.AllocsOp, floor.BOp),
			fmt.Sprintf("≤%d allocs (router's own)", goalAllocs), b(own <= goalAllocs))
	}
}

// allocsBench runs the router's allocation benchmark in this tree, so the
// figure is the router being benchmarked, whatever it is now.
func allocsBench() {
	const section = "router allocations (go test -bench " + allocsBenchName + " -benchmem -benchtime 20000x ./router/)"
	// Compiling the router's tests on a small machine takes minutes.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", "^"+allocsBenchName+"$", "-benchmem", "-benchtime", "20000x", "./router/")
	out, err := cmd.CombinedOutput()
	if err != nil {
		notMeasured(section, "allocations per proxied request", fmt.Sprintf("go test: %v: %s", err, strings.ReplaceAll(lastLines(string(out), 3), "\n", " / ")))
		return
	}
	allocsRows(section, parseBenchOutput(string(out), allocsBenchName))
	note(section, "allocs/op and B/op are the Go runtime's counts per proxied request in the router's own benchmark; ns/op there is in-process, not a latency figure.")
}
