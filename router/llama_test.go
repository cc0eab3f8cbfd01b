package router

import (
	"bytes"
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
)

// A streamed chat through the router to the real llama-server, which
// enforces the engine token itself (--api-key): the request only succeeds
// if the router swapped the client's token for the engine's.
func TestRealLlamaServerStreamedChat(t *testing.T) {
	base, logs := startLlamaServer(t)

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
