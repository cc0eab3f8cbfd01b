package apierr

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// Every shape llorch or an engine answers with re-envelopes into
// Anthropic's, keeping message, code, param and the retry hint.
func TestAnthropicEnvelope(t *testing.T) {
	src := &Error{Status: http.StatusServiceUnavailable, Code: "POOL_UNAVAILABLE", Param: "model", Message: "busy", Retriable: true, RetryAfter: 1500 * time.Millisecond}
	for name, body := range map[string][]byte{
		"openai":    src.Marshal(),
		"anthropic": src.MarshalAnthropic(),
	} {
		e, ok := Parse(http.StatusServiceUnavailable, body)
		if !ok || e.Message != "busy" || e.Code != "POOL_UNAVAILABLE" || e.Param != "model" || !e.Retriable || e.RetryAfter != 1500*time.Millisecond {
			t.Fatalf("%s: parsed %+v ok=%v from %s", name, e, ok, body)
		}
	}
	w := httptest.NewRecorder()
	WriteAnthropic(w, src)
	var env struct {
		Type  string `json:"type"`
		Error struct {
			Type, Message, Code string
			RetryAfterMs        int64 `json:"retry_after_ms"`
		} `json:"error"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &env); err != nil || env.Type != "error" || env.Error.Type != "overloaded_error" ||
		env.Error.Code != "POOL_UNAVAILABLE" || env.Error.RetryAfterMs != 1500 || w.Code != 503 || w.Header().Get("Retry-After") != "2" {
		t.Fatalf("%d %v %s", w.Code, w.Header(), w.Body)
	}
	for body, want := range map[string]string{
		`{"error":{"code":400,"message":"bad","type":"invalid_request_error"}}`: "400",
		`{"code":"BAD_TOKEN","message":"invalid bearer token"}`:                 "BAD_TOKEN",
		`{"error":"plain text"}`: "",
	} {
		if e, ok := Parse(400, []byte(body)); !ok || e.Code != want || e.Message == "" {
			t.Errorf("%s: %+v %v", body, e, ok)
		}
	}
	for _, body := range []string{`not json`, `{"data":[]}`, `[]`} {
		if _, ok := Parse(500, []byte(body)); ok {
			t.Errorf("%s parsed as an error", body)
		}
	}
	if got := string(AnthropicSSE(New(502, "WORKER_RESET", "cut"))); !strings.HasPrefix(got, "event: error\ndata: {\"type\":\"error\"") || !strings.HasSuffix(got, "\n\n") {
		t.Fatalf("sse %q", got)
	}
	for status, typ := range map[int]string{400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error", 500: "api_error"} {
		if AnthropicTypeFor(status) != typ {
			t.Errorf("%d: %s, want %s", status, AnthropicTypeFor(status), typ)
		}
	}
}
