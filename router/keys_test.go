package router

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llorch/llorch/internal/openaifixture"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/keys"
)

// Secrets of the test keys.
const (
	secretA = "llk_team-a-secret-0123456789abcdefghijkl"
	secretB = "llk_team-b-secret-0123456789abcdefghijkl"
	secretC = "llk_team-c-secret-0123456789abcdefghijkl"
	secretD = "llk_team-d-secret-0123456789abcdefghijkl" // disabled
	secretE = "llk_team-e-secret-0123456789abcdefghijkl" // expired
	secretF = "llk_team-f-secret-0123456789abcdefghijkl" // added by a reload
)

func writeKeys(t testing.TB, path string, ks ...keys.Key) {
	t.Helper()
	if err := keys.WriteFile(path, keys.File{Keys: ks}); err != nil {
		t.Fatal(err)
	}
}

func threeKeys() []keys.Key {
	past := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	return []keys.Key{
		{Name: "team-a", Digest: keys.DigestOf(secretA), Models: []string{"tiny*"}, RPM: 5},
		{Name: "team-b", Digest: keys.DigestOf(secretB), Models: []string{"other-*"}, TPM: 20},
		{Name: "team-c", Digest: keys.DigestOf(secretC), Concurrent: 2, Priority: "batch"},
		{Name: "team-d", Digest: keys.DigestOf(secretD), Disabled: true},
		{Name: "team-e", Digest: keys.DigestOf(secretE), Expires: &past},
	}
}

type keyHarness struct {
	*harness
	log  *lockedBuf
	file string
	fx   map[string]*openaifixture.Server
}

// newKeyHarness is a router with a keys file in front of two fixtures,
// models "tiny" and "other-1"; its log (info, JSON) is kept.
func newKeyHarness(t *testing.T, mut func(*Config), ks ...keys.Key) *keyHarness {
	t.Helper()
	old := keys.WatchPoll
	keys.WatchPoll = 20 * time.Millisecond
	t.Cleanup(func() { keys.WatchPoll = old })
	kh := &keyHarness{log: &lockedBuf{}, file: filepath.Join(t.TempDir(), "keys.yaml"), fx: map[string]*openaifixture.Server{}}
	writeKeys(t, kh.file, ks...)
	var insts []registry.Instance
	for i, m := range []string{testModel, "other-1"} {
		fx, hs := openaifixture.Start(t, m)
		kh.fx[m] = fx
		insts = append(insts, inst(t, fmt.Sprintf("i%d", i), "n1", m, hs.URL))
	}
	cfg := testConfig()
	cfg.KeysFile = kh.file
	if mut != nil {
		mut(&cfg)
	}
	src := registry.NewStatic(insts...)
	reg := prometheus.NewRegistry()
	lg := hclog.New(&hclog.LoggerOptions{Name: "router", Level: hclog.Info, JSONFormat: true, Output: kh.log})
	rt, err := New(cfg, src, nil, lg, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = rt.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	srv := httptest.NewServer(rt.Handler())
	t.Cleanup(srv.Close)
	waitFor(t, 5*time.Second, "first snapshot", rt.Ready)
	kh.harness = &harness{t: t, rt: rt, srv: srv, src: src, reg: reg, cl: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	return kh
}

// as sends body to path with secret.
func (h *harness) as(secret, path, body string) (int, http.Header, string) {
	h.t.Helper()
	return h.do("POST", path, body, "Authorization", "Bearer "+secret)
}

func errCode(t testing.TB, body string) string {
	t.Helper()
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
		Code string `json:"code"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	if e.Error.Code != "" {
		return e.Error.Code
	}
	return e.Code
}

func TestKeysModelsDisabledExpiredAndRPM(t *testing.T) {
	h := newKeyHarness(t, nil, threeKeys()...)
	chat := chatBody(testModel, false)
	// Each key reaches only its models.
	if st, _, b := h.as(secretB, "/v1/chat/completions", chat); st != http.StatusForbidden || errCode(t, b) != keys.CodeModelNotAllowed || !strings.Contains(b, "other-*") {
		t.Fatalf("team-b on tiny: %d %s", st, b)
	}
	if st, _, b := h.as(secretA, "/v1/chat/completions", chatBody("other-1", false)); st != http.StatusForbidden || errCode(t, b) != keys.CodeModelNotAllowed {
		t.Fatalf("team-a on other-1: %d %s", st, b)
	}
	// A model that does not exist is still 403, not 404: the key learns
	// nothing about models it may not use.
	if st, _, b := h.as(secretA, "/v1/chat/completions", chatBody("secret-model", false)); st != http.StatusForbidden {
		t.Fatalf("team-a on an unknown model outside its globs: %d %s", st, b)
	}
	for _, c := range []struct{ secret, code string }{{secretD, keys.CodeKeyDisabled}, {secretE, keys.CodeKeyExpired}, {"llk_no-such-key", "BAD_TOKEN"}} {
		if st, _, b := h.as(c.secret, "/v1/chat/completions", chat); st != http.StatusUnauthorized || errCode(t, b) != c.code {
			t.Fatalf("%s: %d %s, want 401 %s", c.code, st, b, c.code)
		}
	}
	// rpm 5: five answered, the sixth refused with Retry-After; the
	// refusals above cost team-a nothing.
	for i := 1; i <= 5; i++ {
		if st, _, b := h.as(secretA, "/v1/chat/completions", chat); st != 200 {
			t.Fatalf("team-a request %d: %d %s", i, st, b)
		}
	}
	st, hdr, b := h.as(secretA, "/v1/chat/completions", chat)
	if st != http.StatusTooManyRequests || errCode(t, b) != keys.CodeRateLimited || !strings.Contains(b, "rpm") {
		t.Fatalf("6th request: %d %s", st, b)
	}
	if ra, err := strconv.Atoi(hdr.Get("Retry-After")); err != nil || ra < 1 || ra > 61 {
		t.Fatalf("Retry-After %q", hdr.Get("Retry-After"))
	}
	// The single API token keeps working, unlimited.
	for i := 0; i < 7; i++ {
		if st, _, b := h.do("POST", "/v1/chat/completions", chat); st != 200 {
			t.Fatalf("API token: %d %s", st, b)
		}
	}
	// The access log names the key, never a secret.
	logs := h.log.String()
	if !strings.Contains(logs, `"identity":"key:team-a"`) {
		t.Fatalf("access log does not name the key:\n%s", logs)
	}
	for _, s := range []string{secretA, secretB, secretC, secretD, secretE} {
		if strings.Contains(logs, s) {
			t.Fatalf("a key secret is in the log")
		}
	}
	// Usage: team-a's five answers, 1 prompt + 8 completion tokens each
	// (the fixture's usage); refusals are not requests.
	st, _, b = h.do("GET", "/v2/usage?key=team-a", "")
	var u struct {
		Usage []keys.Row `json:"usage"`
	}
	if err := json.Unmarshal([]byte(b), &u); st != 200 || err != nil || len(u.Usage) != 1 {
		t.Fatalf("usage: %d %s %v", st, b, err)
	}
	if r := u.Usage[0]; r.Key != "team-a" || r.Model != testModel || r.Requests != 5 || r.PromptTokens != 5 || r.CompletionTokens != 40 || r.Errors != 0 {
		t.Fatalf("team-a usage %+v", r)
	}
	if got := h.metricSum("llorch_key_refused_total"); got != 4 {
		t.Fatalf("refused series: %v, want 4 (3 models, 1 rpm)", got)
	}
	// A key sees its own usage only.
	if st, _, b := h.do("GET", "/v2/usage?key=team-a&window=5m", "", "Authorization", "Bearer "+secretB); st != http.StatusForbidden {
		t.Fatalf("team-b reading team-a's usage: %d %s", st, b)
	}
	if st, _, b := h.do("GET", "/v2/usage?window=5m", "", "Authorization", "Bearer "+secretA); st != 200 || !strings.Contains(b, `"requests":5`) {
		t.Fatalf("team-a's own windowed usage: %d %s", st, b)
	}
}

func TestKeysTPMChargedFromEngineUsage(t *testing.T) {
	h := newKeyHarness(t, nil, threeKeys()...)
	body := chatBody("other-1", true) // streamed: the router asks for usage
	// 9 tokens per answer (1 + 8): admitted at 0, 9, 18 used; refused at 27.
	for i := 1; i <= 3; i++ {
		st, _, b := h.as(secretB, "/v1/chat/completions", body)
		if st != 200 {
			t.Fatalf("team-b request %d: %d %s", i, st, b)
		}
		if strings.Contains(b, "completion_tokens") {
			t.Fatalf("the usage chunk the client did not ask for reached it:\n%s", b)
		}
	}
	for _, s := range h.fx["other-1"].Seen() {
		if !s.IncludeUsage {
			t.Fatal("the router did not ask the engine for streamed usage")
		}
	}
	st, hdr, b := h.as(secretB, "/v1/chat/completions", body)
	if st != http.StatusTooManyRequests || errCode(t, b) != keys.CodeRateLimited || !strings.Contains(b, "tpm") || hdr.Get("Retry-After") == "" {
		t.Fatalf("4th request at 27 of 20 tokens: %d %s (Retry-After %q)", st, b, hdr.Get("Retry-After"))
	}
	// A client that asks for usage gets its chunk (team-c: no limits).
	_, _, b = h.as(secretC, "/v1/chat/completions", `{"model":"other-1","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`)
	if !strings.Contains(b, `"completion_tokens":8`) {
		t.Fatalf("asked-for usage chunk missing:\n%s", b)
	}
	rows := h.rt.keys.Usage.Report("", "other-1", 0)
	if len(rows) != 2 || rows[0].Key != "team-b" || rows[0].PromptTokens+rows[0].CompletionTokens != 27 || rows[1].CompletionTokens != 8 {
		t.Fatalf("usage %+v", rows)
	}
}

func TestKeysConcurrencyUnderParallelRequests(t *testing.T) {
	h := newKeyHarness(t, nil, threeKeys()...)
	h.fx[testModel].SetBehavior(openaifixture.Behavior{Tokens: 4, TokenDelay: 100 * time.Millisecond})
	const n = 8
	var wg sync.WaitGroup
	statuses := make(chan int, n)
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			st, _, _ := h.as(secretC, "/v1/chat/completions", chatBody(testModel, true))
			statuses <- st
		}()
	}
	peak := 0
	stop := make(chan struct{})
	var pw sync.WaitGroup
	pw.Add(1)
	go func() {
		defer pw.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			peak = max(peak, int(h.fx[testModel].InFlight()))
			time.Sleep(time.Millisecond)
		}
	}()
	close(start)
	wg.Wait()
	close(stop)
	pw.Wait()
	close(statuses)
	ok, limited := 0, 0
	for st := range statuses {
		switch st {
		case 200:
			ok++
		case http.StatusTooManyRequests:
			limited++
		default:
			t.Fatalf("status %d", st)
		}
	}
	// The 8 arrive within far less than one answer's 400 ms, so exactly
	// the limit's 2 are answered.
	if ok != 2 || limited != n-2 || peak > 2 {
		t.Fatalf("concurrent 2: %d answered, %d limited, engine peak %d in flight", ok, limited, peak)
	}
	// When they are done, the slots are free again.
	if st, _, b := h.as(secretC, "/v1/chat/completions", chatBody(testModel, false)); st != 200 {
		t.Fatalf("after the burst: %d %s", st, b)
	}
}

func TestKeysReloadAddsAndRemoves(t *testing.T) {
	h := newKeyHarness(t, nil, threeKeys()...)
	chat := chatBody(testModel, false)
	if st, _, _ := h.as(secretF, "/v1/chat/completions", chat); st != http.StatusUnauthorized {
		t.Fatalf("team-f before it exists: %d", st)
	}
	ks := threeKeys()[1:] // team-a removed
	ks = append(ks, keys.Key{Name: "team-f", Digest: keys.DigestOf(secretF)})
	writeKeys(t, h.file, ks...)
	waitFor(t, 5*time.Second, "team-f to work", func() bool {
		st, _, _ := h.as(secretF, "/v1/chat/completions", chat)
		return st == 200
	})
	if st, _, _ := h.as(secretA, "/v1/chat/completions", chat); st != http.StatusUnauthorized {
		t.Fatalf("removed team-a: %d", st)
	}
	// A broken file keeps the keys in force.
	if err := os.WriteFile(h.file, []byte("keys: [ {name: x"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // several polls
	if st, _, _ := h.as(secretF, "/v1/chat/completions", chat); st != 200 {
		t.Fatalf("team-f after a broken file: %d", st)
	}
	if !strings.Contains(h.log.String(), "keys file re-read failed") {
		t.Fatal("the broken file was not logged")
	}
}

// /v2/tasks with a key: the same allow-list and limits, and the task's
// tokens charged from the engine's streamed usage.
func TestKeysApplyToTasks(t *testing.T) {
	h := newKeyHarness(t, nil, threeKeys()...)
	if st, _, b := h.as(secretB, "/v2/tasks", `{"model_ref":"tiny","prompt":"hi","max_tokens":8}`); st != http.StatusForbidden || errCode(t, b) != keys.CodeModelNotAllowed {
		t.Fatalf("team-b task on tiny: %d %s", st, b)
	}
	st, _, b := h.as(secretB, "/v2/tasks", `{"task_id":"kt-1","model_ref":"other-1","prompt":"hi","max_tokens":8}`)
	if st != http.StatusAccepted {
		t.Fatalf("team-b task on other-1: %d %s", st, b)
	}
	evs := h.events(t, "kt-1")
	if names(evs) == "" || !strings.Contains(names(evs), "end") {
		t.Fatalf("task events: %s", names(evs))
	}
	waitFor(t, 5*time.Second, "the task's usage", func() bool {
		r := h.rt.keys.Usage.Report("team-b", "other-1", 0)
		return len(r) == 1 && r[0].Requests == 1 && r[0].PromptTokens == 1 && r[0].CompletionTokens == 8
	})
	if !h.fx["other-1"].Seen()[0].IncludeUsage {
		t.Fatal("the task did not ask the engine for usage")
	}
}
