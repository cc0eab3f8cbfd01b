package router

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llorch/llorch/registry"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// Every log line about a request carries its correlation id, and each
// request gets one access line with model, instance, node, status and
// latency (JSON logs, as LLORCH_LOG_JSON makes them).
func TestLogLinesCarryCorrelationID(t *testing.T) {
	_, good := startFixture(t)
	dead := inst(t, "a-dead", "n1", testModel, "http://127.0.0.1:1") // refuses connections: a retry
	ok := inst(t, "b-ok", "n2", testModel, good)
	var buf lockedBuf
	log := hclog.New(&hclog.LoggerOptions{Name: "router", Level: hclog.Info, JSONFormat: true, Output: &buf})
	rt, err := New(testConfig(), registry.NewStatic(dead, ok), LeastInFlight{}, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go rt.Run(ctx)
	waitFor(t, 5*time.Second, "snapshot", rt.Ready)
	srv := httptest.NewServer(rt.Handler())
	defer srv.Close()
	req, _ := http.NewRequest("POST", srv.URL+"/v1/chat/completions", strings.NewReader(chatBody(testModel, false)))
	req.Header.Set("Authorization", "Bearer "+clientToken)
	req.Header.Set(CorrelationHeader, "corr-4711")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	resp.Body.Close()
	// The access line is written when the handler returns, which can be
	// just after the client has the answer: wait for it, not a fixed time.
	waitFor(t, 5*time.Second, "the access line", func() bool { return strings.Contains(buf.String(), `"@message":"request"`) })
	lines := 0
	access := false
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil {
			t.Fatalf("not JSON: %s", l)
		}
		msg, _ := m["@message"].(string)
		if msg == "request" || strings.Contains(msg, "trying the next") {
			lines++
			if m["correlation_id"] != "corr-4711" {
				t.Errorf("line without the correlation id: %s", l)
			}
		}
		if msg == "request" {
			access = m["model"] == testModel && m["instance_id"] == "b-ok" && m["node_id"] == "n2" && m["status"] == float64(200) && m["duration_ms"] != nil
		}
	}
	if lines < 2 || !access {
		t.Errorf("want a retry line and an access line with model/instance/node/status/latency; got:\n%s", buf.String())
	}
}
