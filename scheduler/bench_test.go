package scheduler

import (
	"testing"
	"time"
)

func TestBenchDecideRuns(t *testing.T) {
	for _, n := range []int{10, 1000} {
		r := BenchDecide(n, 50*time.Millisecond)
		if r.PerSec <= 0 || r.P99 < r.P50 {
			t.Fatalf("%+v", r)
		}
		t.Logf("%d candidates: %.0f decisions/s p50 %v p99 %v", n, r.PerSec, r.P50, r.P99)
	}
}
