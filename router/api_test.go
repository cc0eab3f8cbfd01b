package router

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func decodeErr(t testing.TB, body string) wireError {
	t.Helper()
	var env struct{ Error wireError }
	if err := json.Unmarshal([]byte(body), &env); err != nil {
		t.Fatalf("error body is not the envelope: %v: %s", err, body)
	}
	return env.Error
}

func TestErrors(t *testing.T) {
	fx, u := startFixture(t)
	h := newHarness(t, func(c *Config) { c.MaxBodyBytes = 1024 }, inst(t, "a", "n1", testModel, u))
	cases := []struct {
		name, method, path, body string
		status                   int
		code, param              string
	}{
		{"unknown model", "POST", "/v1/chat/completions", chatBody("gpt-404", false), 404, CodeModelNotAvailable, "model"},
		{"path not served", "POST", "/v1/embeddings", `{"model":"other","input":"x"}`, 404, CodeModelNotAvailable, "model"},
		{"missing model", "POST", "/v1/chat/completions", `{"messages":[]}`, 400, CodeInvalidParams, "model"},
		{"stream not bool", "POST", "/v1/chat/completions", `{"model":"tiny","stream":"yes","messages":[]}`, 400, CodeInvalidParams, "stream"},
		{"missing messages", "POST", "/v1/chat/completions", `{"model":"tiny"}`, 400, CodeInvalidParams, "messages"},
		{"missing prompt", "POST", "/v1/completions", `{"model":"tiny"}`, 400, CodeInvalidParams, "prompt"},
		{"not an object", "POST", "/v1/chat/completions", `[1,2]`, 400, CodeInvalidParams, ""},
		{"bad json", "POST", "/v1/chat/completions", `{"model":`, 400, CodeInvalidParams, ""},
		{"too large", "POST", "/v1/chat/completions", `{"model":"tiny","messages":"` + strings.Repeat("x", 2000) + `"}`, 413, CodeRequestTooLarge, ""},
		{"wrong method", "GET", "/v1/chat/completions", ``, 405, CodeMethodNotAllowed, ""},
		{"no endpoint", "GET", "/v2/whatever", ``, 404, CodeNotFound, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, hdr, body := h.do(c.method, c.path, c.body)
			if status != c.status {
				t.Fatalf("status %d, want %d: %s", status, c.status, body)
			}
			e := decodeErr(t, body)
			if e.Code != c.code || e.Param != c.param || e.Message == "" || e.Type == "" {
				t.Errorf("error %+v, want code %s param %q", e, c.code, c.param)
			}
			if hdr.Get(CorrelationHeader) == "" {
				t.Errorf("no correlation id on the error")
			}
		})
	}
	if n := fx.Requests(); n != 0 {
		t.Errorf("bad requests reached the engine %d times", n)
	}
}

func TestAuth(t *testing.T) {
	fx, u := startFixture(t)
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, u))
	for name, hdr := range map[string][]string{
		"missing": {"Authorization", ""},
		"wrong":   {"Authorization", "Bearer not-the-token"},
		"basic":   {"Authorization", "Basic Zm9vOmJhcg=="},
	} {
		for _, path := range []string{"/v1/chat/completions", "/v1/models"} {
			status, rh, body := h.do("POST", path, chatBody(testModel, false), hdr...)
			if status != 401 {
				t.Errorf("%s token on %s: status %d, want 401: %s", name, path, status, body)
				continue
			}
			var b struct{ Code string }
			if json.Unmarshal([]byte(body), &b); b.Code == "" {
				var env struct{ Error struct{ Code string } }
				json.Unmarshal([]byte(body), &env)
				b.Code = env.Error.Code
			}
			if b.Code == "" {
				t.Errorf("%s token: 401 without a code: %s", name, body)
			}
			if rh.Get(CorrelationHeader) == "" {
				t.Errorf("%s token: 401 without correlation id", name)
			}
		}
	}
	if n := fx.Requests(); n != 0 {
		t.Fatalf("unauthenticated requests reached the engine %d times", n)
	}
	if status, _, _ := h.do("GET", "/healthz", "", "Authorization", ""); status != 200 {
		t.Errorf("/healthz without token: %d", status)
	}
	if status, _, _ := h.do("GET", "/metrics", "", "Authorization", ""); status != 200 {
		t.Errorf("/metrics without token (metrics-auth off): %d", status)
	}
	h2 := newHarness(t, func(c *Config) { c.MetricsAuth = true }, inst(t, "a", "n1", testModel, u))
	if status, _, _ := h2.do("GET", "/metrics", "", "Authorization", ""); status != 401 {
		t.Errorf("/metrics without token (metrics-auth on): %d, want 401", status)
	}
	if status, _, _ := h2.do("GET", "/metrics", ""); status != 200 {
		t.Errorf("/metrics with token: %d", status)
	}
}

func TestNonLoopbackNeedsToken(t *testing.T) {
	cfg := testConfig()
	cfg.Addr, cfg.APIToken = "0.0.0.0:8080", ""
	if _, err := New(cfg, nil, nil, nil, nil); err == nil {
		t.Fatal("New without a source: want error")
	}
	_, err := New(cfg, staticEmpty(), nil, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "NON_LOOPBACK_WITHOUT_TOKEN") {
		t.Fatalf("non-loopback bind without token: got %v, want NON_LOOPBACK_WITHOUT_TOKEN", err)
	}
	cfg.APIToken = strings.Repeat("k", 32)
	cfg.AllowPlaintext = true // the plaintext policy is TestNonLoopbackNeedsTLS's
	if _, err := New(cfg, staticEmpty(), nil, nil, nil); err != nil {
		t.Fatalf("non-loopback bind with a 32-char token: %v", err)
	}
}

func TestModelsAndHealth(t *testing.T) {
	_, u := startFixture(t)
	a := inst(t, "a", "n1", "m-one", u)
	b := inst(t, "b", "n1", "m-two", u)
	c := inst(t, "c", "n2", "m-three", u)
	c.Draining = true
	h := newHarness(t, nil, a, b, c)
	status, _, body := h.do("GET", "/v1/models", "")
	var list modelList
	if status != 200 || json.Unmarshal([]byte(body), &list) != nil || list.Object != "list" || len(list.Data) != 2 ||
		list.Data[0].ID != "m-one" || list.Data[1].ID != "m-two" || list.Data[0].Object != "model" {
		t.Fatalf("models: %d %s", status, body)
	}
	if status, _, _ := h.do("GET", "/v1/models/m-two", ""); status != 200 {
		t.Errorf("GET /v1/models/m-two: %d", status)
	}
	if status, _, body := h.do("GET", "/v1/models/m-three", ""); status != 404 || decodeErr(t, body).Code != CodeModelNotAvailable {
		t.Errorf("GET a draining model: %d %s", status, body)
	}
	// Draining only: 503, not 404 — the model exists but cannot take work.
	status, _, body = h.do("POST", "/v1/chat/completions", chatBody("m-three", false))
	if e := decodeErr(t, body); status != 503 || e.Code != CodePoolUnavailable || !e.Retriable {
		t.Errorf("draining-only model: %d %+v", status, e)
	}

	status, _, body = h.do("GET", "/healthz", "")
	var hb healthBody
	if status != 200 || json.Unmarshal([]byte(body), &hb) != nil || hb.Status != "ok" || hb.Instances != 3 || hb.SnapshotAgeMs < 0 {
		t.Fatalf("healthz: %d %s", status, body)
	}
	h.rt.cfg.DegradedAfter = 0
	time.Sleep(2 * time.Millisecond)
	if status, _, body = h.do("GET", "/healthz", ""); status != 200 || !strings.Contains(body, `"degraded"`) {
		t.Fatalf("healthz with an old snapshot: %d %s", status, body)
	}

	// The view follows the source.
	h.src.Set(a)
	waitFor(t, time.Second, "view to follow the source", func() bool { return len(h.rt.Snapshot().Instances) == 1 })
}

func TestMetricsExposed(t *testing.T) {
	_, u := startFixture(t)
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, u))
	h.do("POST", "/v1/chat/completions", chatBody(testModel, false))
	h.do("POST", "/v1/chat/completions", chatBody("invented-model", false))
	_, _, body := h.do("GET", "/metrics", "")
	for _, want := range []string{
		`llorch_router_requests_total{model="tiny",path="/v1/chat/completions",status="200"} 1`,
		`llorch_router_requests_total{model="_unknown",path="/v1/chat/completions",status="404"} 1`,
		`llorch_router_snapshot_age_seconds`, `llorch_router_instances 1`, `llorch_router_ejections_total 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(body, "invented-model") {
		t.Error("a client-chosen model name became a label value")
	}
}
