package main

import (
	"strings"
	"testing"
)

const sampleBenchOut = `goos: linux
goarch: amd64
pkg: github.com/llorch/llorch/router
cpu: AMD EPYC
BenchmarkProxyAllocs/json-2         	   20000	     12345 ns/op	    4567 B/op	      89 allocs/op
BenchmarkProxyAllocs/sse
    allocs_bench_test.go:40: some log line
BenchmarkProxyAllocs/sse-2          	   20000	     23456 ns/op	    5678 B/op	      28 allocs/op	       3.000 events/op
BenchmarkProxyAllocsOther-2         	   20000	       100 ns/op	       0 B/op	       0 allocs/op
PASS
ok  	github.com/llorch/llorch/router	3.210s
`

// The standard result lines are read per sub-benchmark (GOMAXPROCS suffix
// dropped, extra metrics and log lines skipped), and nothing of another
// benchmark whose name merely starts the same.
func TestParseBenchOutput(t *testing.T) {
	got := parseBenchOutput(sampleBenchOut, allocsBenchName)
	if len(got) != 2 {
		t.Fatalf("got %d lines, want 2: %+v", len(got), got)
	}
	want := []benchLine{{Sub: "json", NsOp: 12345, BOp: 4567, AllocsOp: 89, hasMem: true}, {Sub: "sse", NsOp: 23456, BOp: 5678, AllocsOp: 28, hasMem: true}}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	// GOMAXPROCS=1 prints no suffix; without -benchmem there is no memory.
	one := parseBenchOutput("BenchmarkProxyAllocs/json \t 20000 \t 10 ns/op\n", allocsBenchName)
	if len(one) != 1 || one[0].Sub != "json" || one[0].hasMem {
		t.Errorf("no-suffix, no-benchmem line: %+v", one)
	}
}

// The table gets allocs/op and B/op per sub-benchmark judged against the
// goal; a tree without the benchmark yet gets "not measured", not a row
// that passes.
func TestAllocsRows(t *testing.T) {
	rows = nil
	defer func() { rows = nil }()
	allocsRows("allocs", parseBenchOutput(sampleBenchOut, allocsBenchName))
	if len(rows) != 2 {
		t.Fatalf("%d rows: %+v", len(rows), rows)
	}
	if rows[0].Met != "NO" || !strings.Contains(rows[0].Llorch, "89 allocs/op") || !strings.Contains(rows[0].Llorch, "4567 B/op") || !strings.HasSuffix(rows[0].Figure, "json") {
		t.Errorf("json row: %+v", rows[0])
	}
	if rows[1].Met != "yes" || !strings.Contains(rows[1].Goal, "30") {
		t.Errorf("sse row: %+v", rows[1])
	}
	rows = nil
	allocsRows("allocs", parseBenchOutput("PASS\nok  \tgithub.com/llorch/llorch/router\t0.1s\n", allocsBenchName))
	if len(rows) != 1 || !strings.HasPrefix(rows[0].Llorch, "not measured") || rows[0].Met != "" {
		t.Errorf("benchmark absent: %+v", rows)
	}
}
