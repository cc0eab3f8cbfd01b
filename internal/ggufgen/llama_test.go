package ggufgen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/llorch/llorch/internal/testenv"
)

// startLlama runs the real llama-server on the model and waits for /health.
func startLlama(t *testing.T, model string) string {
	t.Helper()
	bin := testenv.LlamaServer(t)
	port := testenv.FreePort(t)
	var logs bytes.Buffer
	cmd := exec.Command(bin, "-m", model, "--host", "127.0.0.1", "--port", strconv.Itoa(port),
		"--alias", "tiny", "-np", "1", "-t", "2")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start llama-server: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			t.Fatalf("llama-server exited while loading %s:\n%s", model, logs.String())
		default:
		}
		if r, err := http.Get(base + "/health"); err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				return base
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("llama-server not healthy after 20s:\n%s", logs.String())
	return ""
}

type chatResult struct {
	Text, Finish string
	Tokens       int
}

func chat(t *testing.T, base, prompt string, maxTokens int) chatResult {
	t.Helper()
	return chatBody(t, base, map[string]any{
		"model": "tiny", "temperature": 0, "max_tokens": maxTokens,
		"messages": []map[string]string{{"role": "user", "content": prompt}},
	})
}

// chatDefaultSampling sends no sampling parameters, as scripts/demo.sh does.
func chatDefaultSampling(t *testing.T, base, prompt string, maxTokens int) chatResult {
	t.Helper()
	return chatBody(t, base, map[string]any{
		"model": "tiny", "max_tokens": maxTokens,
		"messages": []map[string]string{{"role": "user", "content": prompt}},
	})
}

func chatBody(t *testing.T, base string, fields map[string]any) chatResult {
	t.Helper()
	body, _ := json.Marshal(fields)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", base+"/v1/chat/completions", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("chat: %v", err)
	}
	defer resp.Body.Close()
	var r struct {
		Choices []struct {
			FinishReason string `json:"finish_reason"`
			Message      struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != 200 || len(r.Choices) != 1 {
		t.Fatalf("chat: status %d, decode err %v, %d choices", resp.StatusCode, err, len(r.Choices))
	}
	return chatResult{r.Choices[0].Message.Content, r.Choices[0].FinishReason, r.Usage.CompletionTokens}
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r != '\n' && (r < 0x20 || r > 0x7e) {
			return false
		}
	}
	return true
}

// TestLlamaServerGreedyChat loads generated models in the real llama-server:
// greedy chat is the same printable text every time and ends by itself
// after StopAfter tokens (+ the EOS, which llama-server counts).
func TestLlamaServerGreedyChat(t *testing.T) {
	gqa := DefaultOptions()
	gqa.Embd, gqa.Heads, gqa.KVHeads, gqa.Layers, gqa.FF = 128, 8, 2, 4, 256
	cases := map[string]Options{"f32": DefaultOptions(), "gqa-q8_0": gqa}
	f16 := DefaultOptions()
	f16.Type = F16
	cases["f16"] = f16
	q8 := DefaultOptions()
	q8.Type = Q8_0
	cases["q8_0"] = q8
	short := DefaultOptions()
	short.StopAfter = 5
	cases["stop5"] = short
	gqa.Type = Q8_0
	cases["gqa-q8_0"] = gqa

	for name, o := range cases {
		t.Run(name, func(t *testing.T) {
			base := startLlama(t, TestModel(t, o))
			a := chat(t, base, "hello", 200)
			b := chat(t, base, "hello", 200)
			t.Logf("%s: %q (%d tokens, %s)", name, a.Text, a.Tokens, a.Finish)
			if a != b {
				t.Errorf("greedy output differs: %+v vs %+v", a, b)
			}
			if a.Finish != "stop" {
				t.Errorf("finish_reason %q, want stop", a.Finish)
			}
			if a.Tokens != o.StopAfter+1 {
				t.Errorf("completion tokens %d, want StopAfter+1 = %d", a.Tokens, o.StopAfter+1)
			}
			if strings.TrimSpace(a.Text) == "" || !printable(a.Text) {
				t.Errorf("output %q is empty or not printable ASCII", a.Text)
			}
		})
	}

	// The demo's request: llama-server's default sampling (no temperature
	// given), and the reply is the readable sentence, every time.
	t.Run("default-sampling-answers-the-sentence", func(t *testing.T) {
		base := startLlama(t, TestModel(t, DefaultOptions()))
		for i := 0; i < 5; i++ {
			r := chatDefaultSampling(t, base, "Hello, llorch!", 64)
			if r.Text != SentenceText || r.Finish != "stop" {
				t.Fatalf("try %d: %q (finish %q), want %q", i, r.Text, r.Finish, SentenceText)
			}
		}
	})

	t.Run("stop-after-0-runs-to-max-tokens", func(t *testing.T) {
		o := DefaultOptions()
		o.StopAfter = 0
		base := startLlama(t, TestModel(t, o))
		r := chat(t, base, "hello", 300)
		if r.Finish != "length" || r.Tokens != 300 {
			t.Errorf("got finish %q after %d tokens, want length after 300", r.Finish, r.Tokens)
		}
		if !printable(r.Text) {
			t.Errorf("output not printable: %q", r.Text)
		}
	})
}
