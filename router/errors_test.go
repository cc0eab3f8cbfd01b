package router

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/llorch/llorch/internal/apierr"
	"github.com/llorch/llorch/internal/openaifixture"
)

// errCase is one error path of one route, as a client meets it.
type errCase struct {
	name, method, path, body string
	hdr                      []string // header name, value (empty value: delete)
	status                   int
	code, param              string
}

// sdkError sends c through the official SDK and returns the *openai.Error
// it reads from the answer: the error body must be what the SDK parses.
func sdkError(t *testing.T, baseURL string, c errCase) (*openai.Error, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := openai.NewClient(option.WithBaseURL(baseURL+"/"), option.WithAPIKey(clientToken), option.WithMaxRetries(0))
	opts := []option.RequestOption{}
	if c.body != "" {
		opts = append(opts, option.WithRequestBody("application/json", []byte(c.body)))
	}
	for i := 0; i+1 < len(c.hdr); i += 2 {
		if c.hdr[i+1] == "" {
			opts = append(opts, option.WithHeaderDel(c.hdr[i]))
		} else {
			opts = append(opts, option.WithHeader(c.hdr[i], c.hdr[i+1]))
		}
	}
	var res any
	err := cl.Execute(ctx, c.method, strings.TrimPrefix(c.path, "/"), nil, &res, opts...)
	var ae *openai.Error
	if !errors.As(err, &ae) {
		return nil, err
	}
	return ae, nil
}

// checkSDKError holds one answer to the envelope: status, code, param, the
// type that follows from the status, a message, our retriable field, and
// Retry-After on retriable errors that name a delay.
func checkSDKError(t *testing.T, baseURL string, c errCase) {
	t.Helper()
	ae, err := sdkError(t, baseURL, c)
	if ae == nil {
		t.Fatalf("%s %s: the SDK saw no API error: %v", c.method, c.path, err)
	}
	if ae.StatusCode != c.status || ae.Code != c.code || ae.Param != c.param {
		t.Fatalf("%s %s: status %d code %q param %q, want %d %q %q: %s", c.method, c.path, ae.StatusCode, ae.Code, ae.Param,
			c.status, c.code, c.param, ae.RawJSON())
	}
	if ae.Type != apierr.TypeFor(c.status) || ae.Message == "" || !ae.JSON.Message.Valid() || !ae.JSON.Type.Valid() {
		t.Errorf("%s %s: type %q message %q: %s", c.method, c.path, ae.Type, ae.Message, ae.RawJSON())
	}
	var ours struct {
		Retriable    *bool `json:"retriable"`
		RetryAfterMs int64 `json:"retry_after_ms"`
	}
	if err := json.Unmarshal([]byte(ae.RawJSON()), &ours); err != nil || ours.Retriable == nil {
		t.Errorf("%s %s: no retriable field: %s", c.method, c.path, ae.RawJSON())
	} else if *ours.Retriable && ours.RetryAfterMs > 0 && ae.Response.Header.Get("Retry-After") == "" {
		t.Errorf("%s %s: retriable with retry_after_ms but no Retry-After header", c.method, c.path)
	}
	if ct := ae.Response.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", c.method, c.path, ct)
	}
	if c.status == http.StatusUnauthorized && !strings.HasPrefix(ae.Response.Header.Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("%s %s: 401 without WWW-Authenticate", c.method, c.path)
	}
	if c.status == http.StatusMethodNotAllowed && ae.Response.Header.Get("Allow") == "" {
		t.Errorf("%s %s: 405 without Allow", c.method, c.path)
	}
}

// Every route × every error path it has: each body is the OpenAI
// envelope the official SDK reads (code, message, type, param), plus
// retriable.
func TestEveryErrorIsTheSDKEnvelope(t *testing.T) {
	_, u := startFixture(t)
	h := newHarness(t, func(c *Config) { c.MaxBodyBytes = 1024; c.Retries = 0 },
		inst(t, "a", "n1", testModel, u), inst(t, "dead", "n2", "dead", closedPortURL(t)))
	var cases []errCase
	exempt := map[string]bool{"/healthz": true, "/ui": true, "/metrics": true}
	concrete := func(p string) string {
		return strings.NewReplacer("{id}", "t-none", "{model}", testModel).Replace(p)
	}
	for _, r := range Routes() {
		method, path := r[0], concrete(r[1])
		if !exempt[r[1]] {
			cases = append(cases,
				errCase{name: "no token", method: method, path: path, hdr: []string{"Authorization", ""}, status: 401, code: "MISSING_TOKEN"},
				errCase{name: "bad token", method: method, path: path, hdr: []string{"Authorization", "Bearer nope"}, status: 401, code: "BAD_TOKEN"},
				errCase{name: "malformed token", method: method, path: path, hdr: []string{"Authorization", "Basic x"}, status: 401, code: "BAD_TOKEN"})
		}
		wrong := http.MethodDelete
		cases = append(cases, errCase{name: "wrong method", method: wrong, path: path, status: 405, code: CodeMethodNotAllowed})
	}
	big := `{"model":"tiny","messages":"` + strings.Repeat("x", 2000) + `"}`
	for _, p := range proxiedPaths {
		field := requiredField[p]
		cases = append(cases,
			errCase{name: "not JSON", method: "POST", path: p, body: `[1]`, status: 400, code: CodeInvalidParams},
			errCase{name: "no model", method: "POST", path: p, body: `{"` + field + `":"x"}`, status: 400, code: CodeInvalidParams, param: "model"},
			errCase{name: "model wrong type", method: "POST", path: p, body: `{"model":1}`, status: 400, code: CodeInvalidParams, param: "model"},
			errCase{name: "no " + field, method: "POST", path: p, body: `{"model":"tiny"}`, status: 400, code: CodeInvalidParams, param: field},
			errCase{name: "unknown model", method: "POST", path: p, body: `{"model":"nope","` + field + `":"x"}`, status: 404, code: CodeModelNotAvailable, param: "model"},
			errCase{name: "too large", method: "POST", path: p, body: big, status: 413, code: CodeRequestTooLarge},
			errCase{name: "bad priority", method: "POST", path: p, body: `{"model":"tiny","` + field + `":"x"}`, hdr: []string{"X-Priority", "urgent"}, status: 400, code: CodeInvalidParams, param: "X-Priority"},
			errCase{name: "engine unreachable", method: "POST", path: p, body: `{"model":"dead","` + field + `":"x"}`, status: 503, code: CodeReplicaExhausted})
	}
	cases = append(cases,
		errCase{name: "unknown model", method: "GET", path: "/v1/models/nope", status: 404, code: CodeModelNotAvailable, param: "model"},
		errCase{name: "unknown field", method: "POST", path: "/v2/tasks", body: `{"model_ref":"tiny","prompt":"x","max_tokens":1,"bogus":1}`, status: 400, code: CodeInvalidParams, param: "bogus"},
		errCase{name: "no max_tokens", method: "POST", path: "/v2/tasks", body: `{"model_ref":"tiny","prompt":"x"}`, status: 400, code: CodeInvalidParams, param: "max_tokens"},
		errCase{name: "past deadline", method: "POST", path: "/v2/tasks", body: `{"model_ref":"tiny","prompt":"x","max_tokens":1,"deadline_ms":0}`, status: 400, code: "DEADLINE_UNMET", param: "deadline_ms"},
		errCase{name: "unknown model", method: "POST", path: "/v2/tasks", body: `{"model_ref":"nope","prompt":"x","max_tokens":1}`, status: 404, code: CodeModelNotAvailable, param: "model_ref"},
		errCase{name: "too large", method: "POST", path: "/v2/tasks", body: big, status: 413, code: CodeRequestTooLarge},
		errCase{name: "unknown task", method: "GET", path: "/v2/tasks/t-none/events", status: 404, code: codeTaskUnknown},
		errCase{name: "unknown task", method: "POST", path: "/v2/tasks/t-none/cancel", status: 404, code: codeTaskUnknown},
		errCase{name: "no endpoint", method: "GET", path: "/v9/nothing", status: 404, code: CodeNotFound},
	)
	for _, c := range cases {
		t.Run(c.method+" "+c.path+" "+c.name, func(t *testing.T) { checkSDKError(t, h.srv.URL, c) })
	}
}

// The admission answers (queue full) are the same envelope, on /v1 and /v2.
func TestAdmissionErrorsAreTheSDKEnvelope(t *testing.T) {
	fx, u := startFixture(t)
	fx.SetBehavior(openaifixture.Behavior{Tokens: 200, TokenDelay: 20 * time.Millisecond})
	in := inst(t, "a", "n1", testModel, u)
	in.Slots = 1
	h := newHarness(t, func(c *Config) { c.QueueCapacity = 1 }, in)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	busy := func() {
		r := h.req("POST", "/v1/chat/completions", chatBody(testModel, true))
		resp, err := h.cl.Do(r.WithContext(ctx))
		if err == nil {
			resp.Body.Close()
		}
	}
	go busy()
	waitFor(t, 5*time.Second, "the slot taken", func() bool { return h.rt.state.InFlight("a") == 1 })
	go busy()
	waitFor(t, 5*time.Second, "one request queued", func() bool { i, _ := h.rt.queues.Depth(testModel); return i == 1 })
	for _, c := range []errCase{
		{name: "queue full", method: "POST", path: "/v1/chat/completions", body: chatBody(testModel, false), status: 429, code: "ADMISSION_REJECT"},
		{name: "queue full", method: "POST", path: "/v2/tasks", body: taskBody(testModel, ""), status: 429, code: "ADMISSION_REJECT"},
	} {
		t.Run(c.path, func(t *testing.T) { checkSDKError(t, h.srv.URL, c) })
	}
}
