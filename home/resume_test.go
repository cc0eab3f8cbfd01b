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

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/internal/procfs"
	"github.com/llorch/llorch/internal/testenv"
)

// Two pools of one model at home: killing the engine that serves a stream
// mid-answer, the SDK still gets exactly the text of an unbroken run (the
// router continues it on the other pool).
func TestHomeStreamSurvivesItsEngine(t *testing.T) {
	o := ggufgen.DefaultOptions()
	o.Embd, o.Layers, o.FF, o.Heads, o.KVHeads, o.StopAfter = 512, 8, 2048, 8, 8, 0
	model := ggufgen.TestModel(t, o)
	state := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "home.yaml")
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	var pools strings.Builder
	for _, name := range []string{"a", "b"} {
		fmt.Fprintf(&pools, "  - name: %s\n    model: %s\n    model_name: tiny\n    slots: 1\n    ctx: 1024\n    threads: 1\n    binary: %s\n", name, model, testenv.LlamaServer(t))
	}
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("addr: %s\nstate_dir: %s\npools:\n%s", addr, state, pools.String())), 0o600); err != nil {
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
	waitFor(t, 60*time.Second, "the model answering", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := cl.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "tiny", MaxTokens: openai.Int(2),
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
		return err == nil
	})
	waitFor(t, 30*time.Second, "both engines", func() bool { return len(engines(state)) == 2 })

	run := func(kill bool) string {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		st := cl.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "tiny",
			Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Tell me how llorch keeps a stream alive at home.")},
			MaxTokens: openai.Int(160), Temperature: openai.Float(0)})
		var acc openai.ChatCompletionAccumulator
		n := 0
		for st.Next() {
			acc.AddChunk(st.Current())
			if n++; kill && n == 12 {
				pid := generating(t, engines(state))
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if err := st.Err(); err != nil {
			t.Fatalf("stream after %d chunks: %v\n%s", n, err, h.log)
		}
		if len(acc.Choices) != 1 {
			t.Fatalf("choices %+v", acc.Choices)
		}
		return acc.Choices[0].Message.Content
	}
	want := run(false)
	if got := run(true); got != want {
		t.Fatalf("home stream after its engine died differs\n got %q\nwant %q", got, want)
	}
}

// generating returns the engine using CPU now (the one decoding).
func generating(t *testing.T, pids []int) int {
	t.Helper()
	cpu := func(pid int) uint64 {
		st, err := procfs.ReadStat(pid)
		if err != nil {
			return 0
		}
		return st.UTime + st.STime
	}
	before := map[int]uint64{}
	for _, p := range pids {
		before[p] = cpu(p)
	}
	time.Sleep(150 * time.Millisecond)
	best, most := 0, uint64(0)
	for _, p := range pids {
		if d := cpu(p) - before[p]; d >= most {
			best, most = p, d
		}
	}
	if best == 0 || most == 0 {
		t.Fatalf("no engine is generating (%v)", pids)
	}
	return best
}
