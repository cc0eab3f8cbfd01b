package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/commands.golden")

func TestRegistered(t *testing.T) {
	got := strings.Join(Names(), ",")
	if got != "llamacpp,ollama,sglang,tgi,vllm" {
		t.Fatalf("registered engines %q", got)
	}
	if _, err := Get("nope"); err == nil || !strings.Contains(err.Error(), "llamacpp") {
		t.Errorf("Get(nope) error %v should list the known engines", err)
	}
	for _, n := range Names() {
		a, _ := Get(n)
		if len(a.APIs()) == 0 || a.DefaultBinary() == "" {
			t.Errorf("%s: empty APIs or default binary", n)
		}
	}
}

// TestCommandsGolden pins every adapter's command line; run with -update
// after a deliberate change and review the diff.
func TestCommandsGolden(t *testing.T) {
	specs := map[string]Spec{
		"minimal": {Model: "/m/tiny.gguf", ModelName: "tiny", Host: "127.0.0.1", Port: 8080},
		"full": {Model: "/m/tiny.gguf", ModelName: "tiny", Host: "10.0.0.5", Port: 9000,
			Ctx: 4096, Slots: 4, GPULayers: -1, Threads: 8, APIKey: "k-secret",
			ExtraArgs: []string{"--flash-attn"}, StateDir: "/alloc/task/state"},
		"some-layers": {Model: "/m/tiny.gguf", ModelName: "tiny", Host: "::1", Port: 1,
			Ctx: 2048, GPULayers: 12, StateDir: "/s"},
	}
	var b strings.Builder
	names := Names()
	specNames := []string{"minimal", "full", "some-layers"}
	for _, n := range names {
		a, _ := Get(n)
		for _, sn := range specNames {
			cmd, err := a.Command("", specs[sn])
			if err != nil {
				fmt.Fprintf(&b, "%s/%s: error: %v\n", n, sn, err)
				continue
			}
			env := append([]string(nil), cmd.Env...)
			sort.Strings(env)
			fmt.Fprintf(&b, "%s/%s:\n  path: %s\n  args: %q\n  env: %q\n", n, sn, cmd.Path, cmd.Args, env)
		}
	}
	golden := filepath.Join("testdata", "commands.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./engine -run Golden -update)", err)
	}
	if b.String() != string(want) {
		t.Errorf("command lines changed; got:\n%s", b.String())
	}
}

func TestCommandFacts(t *testing.T) {
	full := Spec{Model: "/m/x.gguf", ModelName: "tiny", Host: "127.0.0.1", Port: 8080, Ctx: 2048, Slots: 3, APIKey: "sekrit", StateDir: "/s"}
	l, _ := LlamaCpp{}.Command("/bin/llama-server", full)
	args := strings.Join(l.Args, " ")
	if !strings.Contains(args, "-c 6144") || !strings.Contains(args, "-np 3") {
		t.Errorf("llama-server -c must be ctx*slots (6144) with -np 3: %s", args)
	}
	for _, a := range []Adapter{LlamaCpp{}, VLLM{}, TGI{}} {
		c, _ := a.Command("", full)
		if strings.Contains(strings.Join(c.Args, " "), "sekrit") {
			t.Errorf("%s puts the API key on the command line (visible in ps): %q", a.Name(), c.Args)
		}
		if !strings.Contains(strings.Join(c.Env, " "), "sekrit") {
			t.Errorf("%s does not pass the API key at all: env %q", a.Name(), c.Env)
		}
	}
	if (Ollama{}).TakesAPIKey() {
		t.Error("Ollama has no API key; TakesAPIKey must be false")
	}
	o, _ := Ollama{}.Command("", full)
	env := strings.Join(o.Env, " ")
	for _, want := range []string{"HOME=/s", "OLLAMA_MODELS=/s/models", "OLLAMA_HOST=127.0.0.1:8080", "OLLAMA_NUM_PARALLEL=3", "OLLAMA_CONTEXT_LENGTH=2048", "OLLAMA_KEEP_ALIVE=-1"} {
		if !strings.Contains(env, want) {
			t.Errorf("ollama env %q lacks %s", env, want)
		}
	}
}

func TestCommandBadSpecNamesField(t *testing.T) {
	ok := Spec{Model: "m", ModelName: "n", Host: "h", Port: 1, StateDir: "/s"}
	cases := map[string]func(*Spec){
		"spec.model":      func(s *Spec) { s.Model = "" },
		"spec.model_name": func(s *Spec) { s.ModelName = "" },
		"spec.host":       func(s *Spec) { s.Host = "" },
		"spec.port":       func(s *Spec) { s.Port = 70000 },
		"spec.slots":      func(s *Spec) { s.Slots = -1 },
		"spec.gpu_layers": func(s *Spec) { s.GPULayers = -2 },
	}
	for field, mut := range cases {
		s := ok
		mut(&s)
		for _, n := range []string{"llamacpp", "vllm", "sglang", "ollama"} {
			a, _ := Get(n)
			if _, err := a.Command("", s); err == nil || !strings.Contains(err.Error(), field) {
				t.Errorf("%s with bad %s: error %v", n, field, err)
			}
		}
	}
	s := ok
	s.StateDir = ""
	if _, err := (Ollama{}).Command("", s); err == nil || !strings.Contains(err.Error(), "spec.state_dir") {
		t.Errorf("ollama without state dir: %v", err)
	}
}

// recorded serves testdata files by path; key, when set, is required as a
// bearer token (llama-server's behaviour with --api-key).
type recorded struct {
	files map[string]string // path → testdata file
	key   string
	code  map[string]int
}

func (r recorded) server(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if r.key != "" && req.URL.Path != "/health" && req.Header.Get("Authorization") != "Bearer "+r.key {
			w.WriteHeader(401)
			b, _ := os.ReadFile("testdata/llamacpp/unauthorized.json")
			w.Write(b)
			return
		}
		f, ok := r.files[req.URL.Path]
		if !ok {
			http.NotFound(w, req)
			return
		}
		b, err := os.ReadFile(filepath.Join("testdata", f))
		if err != nil {
			t.Errorf("testdata: %v", err)
		}
		if c := r.code[req.URL.Path]; c != 0 {
			w.WriteHeader(c)
		}
		w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestLlamaCppProbes(t *testing.T) {
	s := Spec{ModelName: "tiny", APIKey: "sekrit", Slots: 2}
	base := recorded{key: "sekrit", files: map[string]string{
		"/health": "llamacpp/health.json", "/props": "llamacpp/props.json",
		"/slots": "llamacpp/slots-busy.json", "/metrics": "llamacpp/metrics-busy.txt",
	}}.server(t)
	a := LlamaCpp{}
	if err := a.Ready(ctx(t), nil, base, s); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	v, err := a.Version(ctx(t), nil, base, s)
	if err != nil || v != "b11669-Debian" {
		t.Errorf("Version = %q, %v", v, err)
	}
	l, err := a.Load(ctx(t), nil, base, s)
	want := Load{Known: true, SlotsBusy: 2, SlotsFree: 0, QueueLen: 1, Cache: CacheStats{Counters: true, PromptTokens: 8}}
	if err != nil || l != want {
		t.Errorf("Load = %+v, %v; want %+v", l, err, want)
	}

	idle := recorded{key: "sekrit", files: map[string]string{"/slots": "llamacpp/slots-idle.json", "/metrics": "llamacpp/metrics-idle.txt"}}.server(t)
	l, err = a.Load(ctx(t), nil, idle, s)
	if want := (Load{Known: true, SlotsFree: 2, Cache: CacheStats{Counters: true, PromptTokens: 12, CachedTokens: 3}}); err != nil || l != want {
		t.Errorf("idle Load = %+v, %v; want %+v", l, err, want)
	}

	// Without the key every status page is refused, and Load says so.
	noKey := s
	noKey.APIKey = ""
	if _, err := a.Load(ctx(t), nil, base, noKey); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("Load without key: %v, want a 401 error", err)
	}

	loading := recorded{files: map[string]string{"/health": "llamacpp/health-loading.json"}, code: map[string]int{"/health": 503}}.server(t)
	if err := a.Ready(ctx(t), nil, loading, s); err == nil || !strings.Contains(err.Error(), "loading") {
		t.Errorf("Ready while loading: %v", err)
	}
}

func TestVLLMProbes(t *testing.T) {
	s := Spec{ModelName: "tiny", Slots: 8}
	base := recorded{files: map[string]string{"/health": "tgi/metrics.txt", "/version": "vllm/version.json", "/metrics": "vllm/metrics.txt"}}.server(t)
	a := VLLM{}
	if err := a.Ready(ctx(t), nil, base, s); err != nil {
		t.Fatal(err)
	}
	if v, err := a.Version(ctx(t), nil, base, s); err != nil || v != "0.11.0" {
		t.Errorf("Version %q %v", v, err)
	}
	l, err := a.Load(ctx(t), nil, base, s)
	if want := (Load{Known: true, SlotsBusy: 5, SlotsFree: 3, QueueLen: 4, KVCacheUsage: 0.42, KVKnown: true}); err != nil || l != want {
		t.Errorf("Load %+v %v, want %+v", l, err, want)
	}
	old := recorded{files: map[string]string{"/metrics": "vllm/metrics-old.txt"}}.server(t)
	l, err = a.Load(ctx(t), nil, old, Spec{})
	if want := (Load{Known: true, SlotsBusy: 1, KVCacheUsage: 0.05, KVKnown: true}); err != nil || l != want {
		t.Errorf("old-name Load %+v %v, want %+v", l, err, want)
	}
	prefix := recorded{files: map[string]string{"/metrics": "vllm/metrics-prefix.txt"}}.server(t)
	l, err = a.Load(ctx(t), nil, prefix, s)
	if want := (Load{Known: true, SlotsBusy: 2, SlotsFree: 6, QueueLen: 1, KVCacheUsage: 0.25, KVKnown: true,
		Cache: CacheStats{Counters: true, PromptTokens: 12000, CachedTokens: 9000}}); err != nil || l != want {
		t.Errorf("V1 prefix-cache Load %+v %v, want %+v", l, err, want)
	}
	if r, ok := l.Cache.HitRate(); !ok || r != 0.75 {
		t.Errorf("V1 hit rate %v %v, want 0.75", r, ok)
	}
	v0 := recorded{files: map[string]string{"/metrics": "vllm/metrics-v0-prefix.txt"}}.server(t)
	l, err = a.Load(ctx(t), nil, v0, Spec{})
	if want := (Load{Known: true, SlotsBusy: 1, KVCacheUsage: 0.05, KVKnown: true, Cache: CacheStats{RateKnown: true, Rate: 0.6}}); err != nil || l != want {
		t.Errorf("V0 prefix-cache Load %+v %v, want %+v", l, err, want)
	}
	wrong := recorded{files: map[string]string{"/metrics": "tgi/metrics.txt"}}.server(t)
	if _, err := a.Load(ctx(t), nil, wrong, s); err == nil {
		t.Error("Load from a page without vLLM metrics must fail")
	}
	down := recorded{}.server(t)
	if err := a.Ready(ctx(t), nil, down, s); err == nil {
		t.Error("Ready with /health 404 must fail")
	}
}

func TestSGLangProbes(t *testing.T) {
	s := Spec{ModelName: "tiny", Slots: 8}
	base := recorded{files: map[string]string{"/health": "vllm/version.json", "/get_server_info": "sglang/get_server_info.json", "/metrics": "sglang/metrics.txt"}}.server(t)
	a := SGLang{}
	if err := a.Ready(ctx(t), nil, base, s); err != nil {
		t.Fatal(err)
	}
	if v, err := a.Version(ctx(t), nil, base, s); err != nil || v != "0.5.4" {
		t.Errorf("Version %q %v", v, err)
	}
	l, err := a.Load(ctx(t), nil, base, s)
	if want := (Load{Known: true, SlotsBusy: 6, SlotsFree: 2, QueueLen: 2, KVCacheUsage: 0.28, KVKnown: true, Cache: CacheStats{RateKnown: true, Rate: 0.0075}}); err != nil || l != want {
		t.Errorf("Load %+v %v, want %+v", l, err, want)
	}
}

func TestTGIProbes(t *testing.T) {
	s := Spec{ModelName: "tiny", Slots: 8}
	base := recorded{files: map[string]string{"/health": "vllm/version.json", "/info": "tgi/info.json", "/metrics": "tgi/metrics.txt"}}.server(t)
	a := TGI{}
	if err := a.Ready(ctx(t), nil, base, s); err != nil {
		t.Fatal(err)
	}
	if v, err := a.Version(ctx(t), nil, base, s); err != nil || v != "3.3.6" {
		t.Errorf("Version %q %v", v, err)
	}
	l, err := a.Load(ctx(t), nil, base, s)
	if want := (Load{Known: true, SlotsBusy: 7, SlotsFree: 1, QueueLen: 5}); err != nil || l != want {
		t.Errorf("Load %+v %v, want %+v", l, err, want)
	}
}

// fakeOllama is a stateful stand-in for Ollama's model API, following its
// documented create flow: blob upload by sha256, create from files, load on
// generate.
type fakeOllama struct {
	mu      sync.Mutex
	blobs   map[string][]byte
	models  map[string]bool
	loaded  map[string]bool
	calls   []string
	created map[string]any
}

func (f *fakeOllama) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, r.Method+" "+r.URL.Path)
	list := func(m map[string]bool) {
		var out ollamaModels
		for n := range m {
			out.Models = append(out.Models, struct {
				Name  string `json:"name"`
				Model string `json:"model"`
			}{n, n})
		}
		json.NewEncoder(w).Encode(out)
	}
	switch {
	case r.URL.Path == "/api/version":
		b, _ := os.ReadFile("testdata/ollama/version.json")
		w.Write(b)
	case r.URL.Path == "/api/ps":
		list(f.loaded)
	case r.URL.Path == "/api/tags":
		list(f.models)
	case strings.HasPrefix(r.URL.Path, "/api/blobs/sha256:"):
		d := strings.TrimPrefix(r.URL.Path, "/api/blobs/sha256:")
		if r.Method == http.MethodHead {
			if _, ok := f.blobs[d]; !ok {
				w.WriteHeader(404)
			}
			return
		}
		b, _ := io.ReadAll(r.Body)
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) != d {
			w.WriteHeader(400)
			fmt.Fprint(w, `{"error":"digest mismatch"}`)
			return
		}
		f.blobs[d] = b
		w.WriteHeader(201)
	case r.URL.Path == "/api/create":
		var req map[string]any
		json.NewDecoder(r.Body).Decode(&req)
		f.created = req
		for _, d := range req["files"].(map[string]any) {
			if _, ok := f.blobs[strings.TrimPrefix(d.(string), "sha256:")]; !ok {
				w.WriteHeader(400)
				fmt.Fprint(w, `{"error":"blob not found"}`)
				return
			}
		}
		f.models[ollamaName(req["model"].(string))] = true
		fmt.Fprint(w, `{"status":"success"}`)
	case r.URL.Path == "/api/generate":
		var req map[string]any
		json.NewDecoder(r.Body).Decode(&req)
		n := ollamaName(req["model"].(string))
		if !f.models[n] {
			w.WriteHeader(404)
			fmt.Fprintf(w, `{"error":"model %q not found"}`, n)
			return
		}
		f.loaded[n] = true
		fmt.Fprint(w, `{"model":"tiny","response":"","done":true,"done_reason":"load"}`)
	default:
		http.NotFound(w, r)
	}
}

func TestOllamaReadyCreatesAndLoads(t *testing.T) {
	model := filepath.Join(t.TempDir(), "tiny.gguf")
	if err := os.WriteFile(model, []byte("GGUF not really a model"), 0o644); err != nil {
		t.Fatal(err)
	}
	f := &fakeOllama{blobs: map[string][]byte{}, models: map[string]bool{}, loaded: map[string]bool{}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	s := Spec{Model: model, ModelName: "tiny", Ctx: 2048, Threads: 2}
	a := Ollama{}
	if err := a.Ready(ctx(t), nil, srv.URL, s); err != nil {
		t.Fatalf("Ready: %v (calls %v)", err, f.calls)
	}
	if len(f.blobs) != 1 || !f.loaded["tiny:latest"] {
		t.Fatalf("after Ready: blobs %d, loaded %v, calls %v", len(f.blobs), f.loaded, f.calls)
	}
	params, _ := f.created["parameters"].(map[string]any)
	if params["num_ctx"] != float64(2048) || params["num_thread"] != float64(2) {
		t.Errorf("create parameters %v", f.created["parameters"])
	}
	// Ready again: already loaded, so nothing is created or uploaded.
	n := len(f.calls)
	if err := a.Ready(ctx(t), nil, srv.URL, s); err != nil {
		t.Fatal(err)
	}
	for _, c := range f.calls[n:] {
		if strings.HasPrefix(c, "POST") {
			t.Errorf("second Ready made %s", c)
		}
	}
	if v, err := a.Version(ctx(t), nil, srv.URL, s); err != nil || v != "0.17.4" {
		t.Errorf("Version %q %v", v, err)
	}
	if l, err := a.Load(ctx(t), nil, srv.URL, s); err != nil || l.Known {
		t.Errorf("Load %+v %v; want unknown load, no error", l, err)
	}
	// Unloaded (e.g. evicted): Load reports it, Ready reloads without re-creating.
	f.mu.Lock()
	f.loaded = map[string]bool{}
	f.mu.Unlock()
	if _, err := a.Load(ctx(t), nil, srv.URL, s); err == nil || !strings.Contains(err.Error(), "not loaded") {
		t.Errorf("Load of unloaded model: %v", err)
	}
	n = len(f.calls)
	if err := a.Ready(ctx(t), nil, srv.URL, s); err != nil {
		t.Fatal(err)
	}
	for _, c := range f.calls[n:] {
		if c == "POST /api/create" || strings.HasPrefix(c, "POST /api/blobs") {
			t.Errorf("reload re-created the model: %s", c)
		}
	}
}

func TestOllamaReadyNotAnswering(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	err := Ollama{}.Ready(ctx(t), nil, srv.URL, Spec{ModelName: "tiny"})
	if err == nil || !strings.Contains(err.Error(), "not answering") {
		t.Errorf("Ready against a closed port: %v", err)
	}
}

// Engines that serve HTTPS themselves get their own flags for the task's
// pair; the others refuse it (the relay serves TLS for them); half a pair
// is an error naming both fields.
func TestCommandTLS(t *testing.T) {
	s := Spec{Model: "/m/x.gguf", ModelName: "tiny", Host: "10.0.0.5", Port: 8080, TLSCertFile: "/secrets/tls.crt", TLSKeyFile: "/secrets/tls.key"}
	for a, want := range map[Adapter]string{
		LlamaCpp{}: "--ssl-cert-file /secrets/tls.crt --ssl-key-file /secrets/tls.key",
		VLLM{}:     "--ssl-certfile /secrets/tls.crt --ssl-keyfile /secrets/tls.key",
	} {
		c, err := a.Command("", s)
		if err != nil || !strings.Contains(strings.Join(c.Args, " "), want) || !ServesTLS(a) {
			t.Errorf("%s with a TLS pair: %v %q; want %q", a.Name(), err, c.Args, want)
		}
	}
	for _, a := range []Adapter{Ollama{}, SGLang{}, TGI{}} {
		if _, err := a.Command("", s); err == nil || !strings.Contains(err.Error(), "relay") || ServesTLS(a) {
			t.Errorf("%s with a TLS pair: %v, want a refusal naming the relay", a.Name(), err)
		}
	}
	half := s
	half.TLSKeyFile = ""
	if _, err := (LlamaCpp{}).Command("", half); err == nil || !strings.Contains(err.Error(), "tls_key_file") {
		t.Errorf("half a pair: %v", err)
	}
	plain := s
	plain.TLSCertFile, plain.TLSKeyFile = "", ""
	if c, _ := (LlamaCpp{}).Command("", plain); strings.Contains(strings.Join(c.Args, " "), "ssl") {
		t.Errorf("no pair, yet ssl flags: %q", c.Args)
	}
}
