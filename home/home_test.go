package home_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/home"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/internal/procfs"
	"github.com/llorch/llorch/internal/testenv"
)

type homeProc struct {
	cmd   *exec.Cmd
	state string
	addr  string
	log   *syncLog
	done  chan struct{}
}

// syncLog collects a process's output: exec's copying goroutines write it
// while the test reads it (a bare strings.Builder is a data race).
type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startHome runs the built `llorch home` binary, as a user would.
func startHome(t *testing.T, state, model string, extra ...string) *homeProc {
	t.Helper()
	bin := nomadclient.Binary(t)
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	h := &homeProc{state: state, addr: addr, log: &syncLog{}, done: make(chan struct{})}
	h.cmd = exec.Command(bin, "home", "--model", model, "--state-dir", state, "--addr", addr, "--engine-bin", testenv.LlamaServer(t))
	h.cmd.Args = append(h.cmd.Args, extra...)
	h.cmd.Stdout, h.cmd.Stderr = h.log, h.log
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = h.cmd.Wait(); close(h.done) }()
	t.Cleanup(func() {
		_ = h.cmd.Process.Signal(syscall.SIGKILL)
		<-h.done
	})
	return h
}

func (h *homeProc) client(t *testing.T) openai.Client {
	f := filepath.Join(h.state, "api.token")
	waitFor(t, 10*time.Second, "api token file", func() bool { _, err := os.Stat(f); return err == nil })
	tok, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return openai.NewClient(option.WithBaseURL("http://"+h.addr+"/v1/"), option.WithAPIKey(strings.TrimSpace(string(tok))), option.WithMaxRetries(0))
}

// chatUntilReady retries while the engine starts (503/404 before ready).
func chatUntilReady(t *testing.T, cl openai.Client) string {
	t.Helper()
	return chatModelUntilReady(t, cl, "tiny")
}

func chatModelUntilReady(t *testing.T, cl openai.Client, model string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := cl.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: model, Temperature: openai.Float(0), Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")}})
		cancel()
		if err == nil {
			return resp.Choices[0].Message.Content
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type enginePIDs []int

// engines lists llama-server processes started from this state dir (the
// engine's working directory is <state>/engines/<pool>).
func engines(state string) enginePIDs {
	var out enginePIDs
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		if err == nil && strings.HasPrefix(cwd, filepath.Join(state, "engines")) {
			if st, err := procfs.ReadStat(pid); err == nil && st.State != 'Z' {
				out = append(out, pid)
			}
		}
	}
	return out
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (h *homeProc) kill9(t *testing.T) {
	t.Helper()
	_ = h.cmd.Process.Signal(syscall.SIGKILL)
	<-h.done
}

// The home profile serves a real engine to the unchanged OpenAI SDK. A
// kill -9 of llorch home leaves the engine running (own process group):
// the next start with the same spec adopts it (same pid, no duplicate);
// a start with another spec stops it and starts one new engine. Ctrl-C
// stops the engine and exits 0.
func TestHomeProfileLifecycle(t *testing.T) {
	model := ggufgen.TestModel(t, ggufgen.DefaultOptions())
	model2 := filepath.Join(filepath.Dir(model), "tiny.gguf")
	if err := os.Rename(model, model2); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()

	h := startHome(t, state, model2, "--slots", "2")
	got := chatUntilReady(t, h.client(t))
	if got == "" {
		t.Fatalf("empty answer\n%s", h.log)
	}
	first := engines(state)
	if len(first) != 1 {
		t.Fatalf("engines: %v\n%s", first, h.log)
	}

	// kill -9: the engine outlives llorch home ...
	h.kill9(t)
	if now := engines(state); len(now) != 1 || now[0] != first[0] {
		t.Fatalf("engine did not outlive kill -9 of llorch home: %v", now)
	}
	// ... and the next start with the same spec adopts it.
	h2 := startHome(t, state, model2, "--slots", "2")
	if got2 := chatUntilReady(t, h2.client(t)); got2 != got {
		t.Errorf("greedy answers differ: %q vs %q", got, got2)
	}
	if now := engines(state); len(now) != 1 || now[0] != first[0] {
		t.Fatalf("after restart engines are %v, want the adopted %d\n%s", now, first[0], h2.log)
	}
	if !strings.Contains(h2.log.String(), "adopting the engine an earlier run left behind") {
		t.Errorf("adoption not logged:\n%s", h2.log)
	}

	// kill -9 again, restart with another spec: the leftover is stopped
	// and exactly one new engine runs.
	h2.kill9(t)
	h3 := startHome(t, state, model2, "--slots", "3")
	chatUntilReady(t, h3.client(t))
	now := engines(state)
	if len(now) != 1 || now[0] == first[0] {
		t.Fatalf("after a restart with another spec engines are %v (old %d)\n%s", now, first[0], h3.log)
	}
	if !strings.Contains(h3.log.String(), "its spec differs from the config") {
		t.Errorf("cleanup not logged:\n%s", h3.log)
	}

	// Ctrl-C: engines stop, exit code 0.
	_ = h3.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-h3.done:
	case <-time.After(15 * time.Second):
		t.Fatal("llorch home did not exit on SIGINT")
	}
	if code := h3.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d\n%s", code, h3.log)
	}
	if left := engines(state); len(left) != 0 {
		t.Errorf("engines left after Ctrl-C: %v", left)
	}
}

// Two pools from a config file are served side by side; SIGTERM stops
// both engines and exits 0.
func TestConfigFileTwoPools(t *testing.T) {
	model := ggufgen.TestModel(t, ggufgen.DefaultOptions())
	state := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "home.yaml")
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	yaml := fmt.Sprintf("addr: %s\nstate_dir: %s\npools:\n  - name: a\n    model: %s\n    model_name: alpha\n    binary: %s\n  - name: b\n    model: %s\n    model_name: beta\n    slots: 2\n    ctx: 256\n    binary: %s\n",
		addr, state, model, testenv.LlamaServer(t), model, testenv.LlamaServer(t))
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	h := &homeProc{state: state, addr: addr, log: &syncLog{}, done: make(chan struct{})}
	h.cmd = exec.Command(nomadclient.Binary(t), "home", "--config", cfg)
	h.cmd.Stdout, h.cmd.Stderr = h.log, h.log
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = h.cmd.Wait(); close(h.done) }()
	t.Cleanup(func() { _ = h.cmd.Process.Signal(syscall.SIGKILL); <-h.done })
	cl := h.client(t)
	for _, m := range []string{"alpha", "beta"} {
		if chatModelUntilReady(t, cl, m) == "" {
			t.Errorf("%s: empty answer", m)
		}
	}
	if n := len(engines(state)); n != 2 {
		t.Fatalf("%d engines, want 2\n%s", n, h.log)
	}
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.done:
	case <-time.After(15 * time.Second):
		t.Fatal("llorch home did not exit on SIGTERM")
	}
	if code := h.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d\n%s", code, h.log)
	}
	if left := engines(state); len(left) != 0 {
		t.Errorf("engines left after SIGTERM: %v", left)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "home.yaml")
		os.WriteFile(p, []byte(s), 0o600)
		return p
	}
	if _, err := home.LoadConfig(write("pools:\n  - modle: x\n")); err == nil || !strings.Contains(err.Error(), "modle") {
		t.Errorf("unknown field: %v", err)
	}
	cases := map[string]home.Config{
		"pools: at least one":  {},
		"pools[0].model":       {Pools: []home.Pool{{Engine: "llamacpp"}}},
		"pools[0].engine":      {Pools: []home.Pool{{Engine: "trt", Model: "x"}}},
		"no such file":         {Pools: []home.Pool{{Model: filepath.Join(dir, "none.gguf")}}},
		"pools[1].name":        {Pools: []home.Pool{{Model: write("x"), Name: "a"}, {Model: write("x"), Name: "a"}}},
		"must not be negative": {Pools: []home.Pool{{Model: write("x"), Slots: -1}}},
	}
	for want, c := range cases {
		c.StateDir = dir
		if err := c.Normalize(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", want, err)
		}
	}
	good := home.Config{Pools: []home.Pool{{Model: write("x")}}, StateDir: dir}
	t.Setenv("LLORCH_PROFILE", "cloud")
	if _, err := home.New(good, nil); err == nil || !strings.Contains(err.Error(), "llorch router") {
		t.Errorf("cloud profile: %v", err)
	}
	// A Consul address also means the cloud profile, unless
	// LLORCH_PROFILE=home insists.
	t.Setenv("LLORCH_PROFILE", "")
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.1:8500")
	if _, err := home.New(good, nil); err == nil || !strings.Contains(err.Error(), "CONSUL_HTTP_ADDR") || !strings.Contains(err.Error(), "llorch router") {
		t.Errorf("CONSUL_HTTP_ADDR: %v", err)
	}
	f := home.Flags{ConsulAddr: "10.0.0.1:8500"}
	if _, err := f.Resolve(); err == nil || !strings.Contains(err.Error(), "--consul-addr") {
		t.Errorf("--consul-addr: %v", err)
	}
	f = home.Flags{ConfigFile: write("x"), Pool: home.Pool{Model: "m.gguf"}}
	if _, err := f.Resolve(); err == nil || !strings.Contains(err.Error(), "--model and --config") {
		t.Errorf("--model with --config: %v", err)
	}
	t.Setenv("LLORCH_PROFILE", "home")
	good.Pools[0].Binary = filepath.Join(dir, "no-such-engine")
	if _, err := home.New(good, nil); err == nil || !strings.Contains(err.Error(), "pools[0].binary") {
		t.Errorf("missing engine binary: %v", err)
	}

	// The command itself: a bad key in the file is a usage error (exit 2)
	// naming the key.
	cmd := exec.Command(nomadclient.Binary(t), "home", "--config", write("pools:\n  - model: x\n    slots: 2\n    ctx_size: 4\n"), "--state-dir", dir)
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "ctx_size") {
		t.Errorf("llorch home with a bad key: %v\n%s", err, out)
	}
}

// make demo's script works end to end (CI proves the README's first command).
func TestDemoScript(t *testing.T) {
	testenv.LlamaServer(t)
	state := t.TempDir()
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	cmd := exec.Command("scripts/demo.sh")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "LLORCH_DEMO_STATE="+state, "LLORCH_DEMO_ADDR="+addr)
	out, err := cmd.CombinedOutput()
	defer func() {
		if b, err := os.ReadFile(filepath.Join(state, "home.pid")); err == nil {
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			_ = syscall.Kill(pid, syscall.SIGINT)
			waitFor(t, 15*time.Second, "demo stopped", func() bool { return syscall.Kill(pid, 0) != nil })
		}
	}()
	if err != nil {
		t.Fatalf("demo.sh: %v\n%s", err, out)
	}
	// The demo model is random weights: the reply is gibberish that may
	// run to max_tokens, so any finish reason is fine; the reply must not
	// be empty.
	for _, want := range []string{`"role":"assistant","content":"`, `"finish_reason":"`, "reply: ", "Try it yourself:", "curl http://" + addr, "$(cat " + state + "/api.token)"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if !regexp.MustCompile(`(?m)^reply: \S`).Match(out) {
		t.Errorf("demo printed an empty reply:\n%s", out)
	}
	tok, err := os.ReadFile(filepath.Join(state, "api.token"))
	if err != nil || len(strings.TrimSpace(string(tok))) < 32 {
		t.Fatalf("api token: %v", err)
	}
	if strings.Contains(string(out), strings.TrimSpace(string(tok))) {
		t.Error("demo output shows the API token itself")
	}
	// Idempotent: a second run reuses the running home profile.
	again := exec.Command("scripts/demo.sh")
	again.Dir, again.Env = cmd.Dir, cmd.Env
	out2, err := again.CombinedOutput()
	if err != nil || !strings.Contains(string(out2), "already running") || !regexp.MustCompile(`(?m)^reply: \S`).Match(out2) {
		t.Errorf("second demo.sh run: %v\n%s", err, out2)
	}
}
