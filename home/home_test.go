package home_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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
	log   *strings.Builder
	done  chan struct{}
}

// startHome runs the built `llorch home` binary, as a user would.
func startHome(t *testing.T, state, model string) *homeProc {
	t.Helper()
	bin := nomadclient.Binary(t)
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	h := &homeProc{state: state, addr: addr, log: &strings.Builder{}, done: make(chan struct{})}
	h.cmd = exec.Command(bin, "home", "--model", model, "--state-dir", state, "--addr", addr, "--engine-bin", testenv.LlamaServer(t), "--slots", "2")
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
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := cl.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: "tiny", Temperature: openai.Float(0), Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")}})
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

// The home profile serves a real engine to the unchanged OpenAI SDK; a
// kill -9 of llorch home leaves the engine, which the next start cleans
// up (no duplicate); Ctrl-C stops the engine and exits 0.
func TestHomeProfileLifecycle(t *testing.T) {
	model := ggufgen.TestModel(t, ggufgen.DefaultOptions())
	model2 := filepath.Join(filepath.Dir(model), "tiny.gguf")
	if err := os.Rename(model, model2); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()

	h := startHome(t, state, model2)
	got := chatUntilReady(t, h.client(t))
	if got == "" {
		t.Fatalf("empty answer\n%s", h.log)
	}
	first := engines(state)
	if len(first) != 1 {
		t.Fatalf("engines: %v\n%s", first, h.log)
	}

	// kill -9: the engine outlives it (own process group) ...
	_ = h.cmd.Process.Signal(syscall.SIGKILL)
	<-h.done
	if len(engines(state)) != 1 {
		t.Fatalf("engine did not outlive kill -9 of llorch home")
	}
	// ... and the next start stops it and runs exactly one new engine.
	h2 := startHome(t, state, model2)
	if got2 := chatUntilReady(t, h2.client(t)); got2 != got {
		t.Errorf("greedy answers differ: %q vs %q", got, got2)
	}
	waitFor(t, 5*time.Second, "old engine gone", func() bool {
		for _, p := range engines(state) {
			if p == first[0] {
				return false
			}
		}
		return true
	})
	if n := len(engines(state)); n != 1 {
		t.Fatalf("%d engines after restart, want 1\n%s", n, h2.log)
	}
	if !strings.Contains(h2.log.String(), "earlier run left behind") {
		t.Errorf("cleanup not logged:\n%s", h2.log)
	}

	// Ctrl-C: engines stop, exit code 0.
	_ = h2.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-h2.done:
	case <-time.After(15 * time.Second):
		t.Fatal("llorch home did not exit on SIGINT")
	}
	if code := h2.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d\n%s", code, h2.log)
	}
	if left := engines(state); len(left) != 0 {
		t.Errorf("engines left after Ctrl-C: %v", left)
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
	t.Setenv("LLORCH_PROFILE", "cloud")
	if _, err := home.New(home.Config{Pools: []home.Pool{{Model: write("x")}}, StateDir: dir}, nil); err == nil || !strings.Contains(err.Error(), "llorch router") {
		t.Errorf("cloud profile: %v", err)
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
	for _, want := range []string{`"finish_reason":"stop"`, "reply: ", "Try it yourself:", "curl http://" + addr} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}
