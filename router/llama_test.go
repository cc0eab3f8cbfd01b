package router

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/internal/testenv"
)

// A streamed chat through the router to the real llama-server, which
// enforces the engine token itself (--api-key): the request only succeeds
// if the router swapped the client's token for the engine's.
func TestRealLlamaServerStreamedChat(t *testing.T) {
	bin := testenv.LlamaServer(t)
	model := ggufgen.TestModel(t, ggufgen.DefaultOptions())
	port := testenv.FreePort(t)
	var logs bytes.Buffer
	cmd := exec.Command(bin, "-m", model, "--host", "127.0.0.1", "--port", strconv.Itoa(port),
		"--alias", testModel, "-np", "1", "-t", "2", "--api-key", engineToken)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start llama-server: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitFor(t, 30*time.Second, "llama-server /health", func() bool {
		select {
		case <-exited:
			t.Fatalf("llama-server exited:\n%s", logs.String())
		default:
		}
		r, err := http.Get(base + "/health")
		if err != nil {
			return false
		}
		r.Body.Close()
		return r.StatusCode == 200
	})

	in := inst(t, "llama-1", "n1", testModel, base)
	in.Engine, in.APIs = "llamacpp", []string{"/v1/chat/completions", "/v1/completions"}
	h := newHarness(t, nil, in)
	cl := sdkClient(h.srv.URL, clientToken)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	stream := cl.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model: testModel, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")},
		MaxTokens: openai.Int(16), Temperature: openai.Float(0)})
	var acc openai.ChatCompletionAccumulator
	chunks := 0
	var firstChunk time.Duration
	for stream.Next() {
		if chunks == 0 {
			firstChunk = time.Since(start)
		}
		acc.AddChunk(stream.Current())
		chunks++
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("stream through the router: %v\nllama-server log:\n%s", err, logs.String())
	}
	if len(acc.Choices) != 1 || acc.Choices[0].Message.Content == "" || chunks < 2 {
		t.Fatalf("%d chunks, choices %+v", chunks, acc.Choices)
	}
	t.Logf("llama-server via router: %d chunks, first after %v, all in %v: %q", chunks,
		firstChunk.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), acc.Choices[0].Message.Content)

	// The same request straight to the engine without its token fails:
	// the success above really depended on the router's token swap.
	req, _ := http.NewRequest("POST", base+"/v1/chat/completions", bytes.NewReader([]byte(chatBody(testModel, false))))
	req.Header.Set("Authorization", "Bearer "+clientToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("llama-server with the client's token: %d, want 401 (is --api-key enforced?)", resp.StatusCode)
	}
}
