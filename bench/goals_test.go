package main

import (
	"strings"
	"testing"
	"time"
)

func metText(m *bool) string {
	if m == nil {
		return "unjudged"
	}
	return map[bool]string{true: "yes", false: "NO"}[*m]
}

// The ratio goals judge llorch against nginx's own figure, refuse to judge
// noise or a missing nginx, and still fail llorch when nginx adds next to
// nothing and llorch adds clearly more than the limit allows.
func TestRatioGoal(t *testing.T) {
	us := time.Microsecond
	for _, c := range []struct {
		llorch, nginx time.Duration
		have          bool
		limit         float64
		want          string
	}{
		{140 * us, 100 * us, true, 1.5, "yes"},
		{160 * us, 100 * us, true, 1.5, "NO"},
		{100 * us, 100 * us, true, 1.0, "yes"},
		{101 * us, 100 * us, true, 1.0, "NO"},
		{500 * us, 0, false, 1.5, "unjudged"},       // no nginx
		{-20 * us, 100 * us, true, 1.5, "unjudged"}, // llorch below direct: noise
		{12 * us, 5 * us, true, 1.5, "unjudged"},    // both within the noise
		{200 * us, 5 * us, true, 2.0, "NO"},         // nginx ~0, llorch clearly not
	} {
		val, goal, met := ratioGoal(c.llorch, c.nginx, c.have, c.limit)
		if got := metText(met); got != c.want {
			t.Errorf("ratioGoal(%v, %v, %v, %v) met %s (%q), want %s", c.llorch, c.nginx, c.have, c.limit, got, val, c.want)
		}
		if !strings.Contains(goal, "nginx") || val == "" {
			t.Errorf("goal %q value %q", goal, val)
		}
		if !c.have && val != "no nginx" {
			t.Errorf("without nginx the value reads %q", val)
		}
	}
}

// CPU per request is ticks (1/100 s) over requests; 100 µs is the goal.
func TestCPUGoal(t *testing.T) {
	for _, c := range []struct {
		ticks uint64
		n     int
		want  string
		text  string
	}{
		{60, 6000, "yes", "100 µs"}, // 0.6 s over 6,000 requests
		{61, 6000, "NO", "102 µs"},
		{5, 0, "unjudged", "-"},
	} {
		_, met := cpuGoal(c.ticks, c.n)
		if got := metText(met); got != c.want || cpuText(c.ticks, c.n) != c.text {
			t.Errorf("cpuGoal(%d, %d) = %s %q, want %s %q", c.ticks, c.n, got, cpuText(c.ticks, c.n), c.want, c.text)
		}
	}
}

func TestClosedLoopAndAbsGoals(t *testing.T) {
	if _, _, met := closedLoopGoal(600, 1000); metText(met) != "yes" {
		t.Error("60% of direct should meet the closed-loop goal")
	}
	if _, _, met := closedLoopGoal(599, 1000); metText(met) != "NO" {
		t.Error("59.9% of direct should miss the closed-loop goal")
	}
	if _, _, met := closedLoopGoal(500, 0); met != nil {
		t.Error("a direct run that served nothing cannot judge the goal")
	}
	if _, met := absGoal(goalTTFB50, goalTTFB50); metText(met) != "yes" {
		t.Error("exactly the limit meets it")
	}
	if _, met := absGoal(goalTTFB50+time.Microsecond, goalTTFB50); metText(met) != "NO" {
		t.Error("over the limit misses it")
	}
}

// lat is one latency of n microseconds, for table tests.
func lat(us int) []time.Duration { return []time.Duration{time.Duration(us) * time.Microsecond} }
