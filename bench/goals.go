package main

import (
	"fmt"
	"time"
)

// The data-plane goals of issue #23, in one place so the goal column and
// the met column cannot disagree.
const (
	goalP50Ratio       = 1.5                    // p50 added at 1,000 rps, llorch over nginx
	goalP50Stretch     = 1.0                    // the same, stretch
	goalP99Ratio       = 2.0                    // p99 added at 3,000 rps, llorch over nginx
	goalCPUPerReq      = 100 * time.Microsecond // router CPU per request at 1,000 rps
	goalTTFBOneRatio   = 2.0                    // time to first byte added, one stream, over nginx's
	goalTTFB50         = 500 * time.Microsecond // time to first byte added, 50 streams at once
	goalClosedLoopFrac = 0.60                   // closed-loop throughput over direct
	goalAllocs         = 30                     // allocations per proxied request (router's Go benchmark)
	goalRSSMB          = 100                    // router RSS at 1,000 concurrent streams
)

// ratioGoal judges "llorch adds at most limit × what nginx adds" and
// returns the value shown, the goal text, and met: nil when it cannot be
// judged (no nginx, or both figures are within the noise), NO when
// llorch's figure is clearly above what the limit allows even though
// nginx's is too small to divide by.
func ratioGoal(llorch, nginx time.Duration, haveNginx bool, limit float64) (val, goal string, met *bool) {
	goal = fmt.Sprintf("≤%.1f× nginx", limit)
	if !haveNginx {
		return "no nginx", goal, nil
	}
	ratio, ok, why := addedRatio(llorch, nginx)
	if ok {
		return fmt.Sprintf("%.2f× (%s vs %s)", ratio, ms(llorch), ms(nginx)), goal, b(ratio <= limit)
	}
	if nginx < noiseFloor && llorch > time.Duration(limit*float64(noiseFloor)) {
		// nginx adds next to nothing; llorch adds more than the limit
		// allows over even the noise floor: that is a miss, not noise.
		return fmt.Sprintf("%s (llorch adds %s)", why, ms(llorch)), goal, b(false)
	}
	return why, goal, nil
}

// nginxUnit is a ratio row's baseline column: nginx is 1.00× itself.
func nginxUnit(haveNginx bool) string {
	if !haveNginx {
		return "no nginx"
	}
	return "1.00× (nginx)"
}

// perRequest is a process's CPU (clock ticks) spread over the requests it
// served; ok false when it served none.
func perRequest(ticks uint64, n int) (time.Duration, bool) {
	if n <= 0 {
		return 0, false
	}
	return time.Duration(float64(ticks) / clkTck * float64(time.Second) / float64(n)), true
}

// cpuText prints a per-request CPU figure ("-" when there were no requests).
func cpuText(ticks uint64, n int) string {
	d, ok := perRequest(ticks, n)
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

// cpuGoal judges the router's CPU per request against goalCPUPerReq.
func cpuGoal(ticks uint64, n int) (goal string, met *bool) {
	goal = fmt.Sprintf("≤%.0f µs", float64(goalCPUPerReq)/float64(time.Microsecond))
	d, ok := perRequest(ticks, n)
	if !ok {
		return goal, nil
	}
	return goal, b(d <= goalCPUPerReq)
}

// closedLoopGoal judges closed-loop throughput against direct's.
func closedLoopGoal(llorch, direct float64) (val, goal string, met *bool) {
	goal = fmt.Sprintf("≥%.0f%% of direct", 100*goalClosedLoopFrac)
	if direct <= 0 {
		return fmt.Sprintf("%.0f req/s (direct served nothing)", llorch), goal, nil
	}
	return fmt.Sprintf("%.0f req/s (%.0f%% of direct)", llorch, 100*llorch/direct), goal, b(llorch >= goalClosedLoopFrac*direct)
}

// absGoal judges an added latency against an absolute limit.
func absGoal(d, limit time.Duration) (goal string, met *bool) {
	return "≤" + ms(limit), b(d <= limit)
}
