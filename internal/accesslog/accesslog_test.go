package accesslog

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"
)

type syncBuf struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	if len(p) > maxWrite && bytes.Count(p, []byte("\n")) > 1 {
		panic("a write over maxWrite holding several lines")
	}
	if len(p) == 0 || p[len(p)-1] != '\n' {
		panic("a write that does not end a line")
	}
	return s.b.Write(p)
}

func (s *syncBuf) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func fields() []Field {
	return []Field{Str("correlation_id", "corr-1"), Str("path", "/v1/chat/completions"), Int64("status", 200),
		Str("model", "with space \"q\""), Float64("duration_ms", 1.25), Str("ctl", "a\x01b\xffc")}
}

// The JSON shape parses, with hclog's keys and every field typed.
func TestJSONLinesParse(t *testing.T) {
	var out syncBuf
	l := New(&out, "llorch-router", true)
	l.Info("request", fields()...)
	var m map[string]any
	if err := json.Unmarshal([]byte(out.String()), &m); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if m["@level"] != "info" || m["@message"] != "request" || m["@module"] != "llorch-router" || m["status"] != float64(200) ||
		m["duration_ms"] != 1.25 || m["model"] != `with space "q"` || m["ctl"] != "a\x01b\uFFFDc" {
		t.Errorf("fields: %v", m)
	}
	if _, err := time.Parse(time.RFC3339Nano, m["@timestamp"].(string)); err != nil {
		t.Errorf("timestamp: %v", err)
	}
}

// The text shape is hclog's: time, [INFO], name, message, k=v with
// quoting where a value has spaces or quotes.
func TestTextLinesLookLikeHclog(t *testing.T) {
	var out syncBuf
	l := New(&out, "llorch-router", false)
	l.Info("request", fields()...)
	line := out.String()
	for _, want := range []string{" [INFO]  llorch-router: request: correlation_id=corr-1 path=/v1/chat/completions status=200 model=\"with space \\\"q\\\"\" duration_ms=1.25 "} {
		if !strings.Contains(line, want) {
			t.Errorf("line %q lacks %q", line, want)
		}
	}
}

// With an owner running, lines wait and go out together; when it stops
// they are flushed, and later lines are written at once.
func TestBufferedUntilFlush(t *testing.T) {
	var out syncBuf
	l := New(&out, "r", false)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	for !func() bool { l.mu.Lock(); defer l.mu.Unlock(); return l.ticker }() {
		time.Sleep(time.Millisecond)
	}
	for range 200 {
		l.Info("request", fields()...)
	}
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(out.String(), "\n") < 200 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := strings.Count(out.String(), "\n"); n != 200 {
		t.Fatalf("%d lines flushed, want 200", n)
	}
	if out.writes >= 200 {
		t.Errorf("%d writes for 200 lines: not buffered", out.writes)
	}
	cancel()
	<-done
	l.Info("after", Str("k", "v"))
	if !strings.Contains(out.String(), "after: k=v") {
		t.Error("a line after Run ended was not written at once")
	}
}

func TestInfoAllocatesNothing(t *testing.T) {
	var out bytes.Buffer
	l := New(&out, "r", true)
	f := fields()
	if n := testing.AllocsPerRun(200, func() { l.Info("request", f...); out.Reset() }); n != 0 {
		t.Errorf("%.0f allocations per line", n)
	}
}
