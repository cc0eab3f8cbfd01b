package router

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/llorch/llorch/internal/openaifixture"
)

// sdkClient is the unchanged official SDK pointed at the router.
func sdkClient(baseURL, token string, opts ...option.RequestOption) openai.Client {
	return openai.NewClient(append([]option.RequestOption{option.WithBaseURL(baseURL + "/v1/"), option.WithAPIKey(token), option.WithMaxRetries(0)}, opts...)...)
}

// exerciseSDK runs the calls a stock OpenAI client makes against a router
// whose only model is `model`, served by fixtures that answer 8 tokens.
// opts are added to every client (an HTTPS test's trust, for one).
func exerciseSDK(t *testing.T, baseURL, model string, opts ...option.RequestOption) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl := sdkClient(baseURL, clientToken, opts...)

	chat, err := cl.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: model, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	if err != nil {
		t.Fatalf("chat: %v", err)
	}
	if len(chat.Choices) != 1 || chat.Choices[0].Message.Content != openaifixture.Text(8) {
		t.Fatalf("chat answer %+v", chat.Choices)
	}

	comp, err := cl.Completions.New(ctx, openai.CompletionNewParams{
		Model: openai.CompletionNewParamsModel(model), Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("hi")}})
	if err != nil {
		t.Fatalf("completion: %v", err)
	}
	if len(comp.Choices) != 1 || comp.Choices[0].Text != openaifixture.Text(8) {
		t.Fatalf("completion answer %+v", comp.Choices)
	}

	stream := cl.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model: model, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	var acc openai.ChatCompletionAccumulator
	chunks := 0
	for stream.Next() {
		acc.AddChunk(stream.Current())
		chunks++
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	if len(acc.Choices) != 1 || acc.Choices[0].Message.Content != openaifixture.Text(8) || chunks != 9 {
		t.Fatalf("streamed %d chunks, text %+v", chunks, acc.Choices)
	}

	emb, err := cl.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: model, Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("x")}})
	if err != nil {
		t.Fatalf("embeddings: %v", err)
	}
	if len(emb.Data) != 1 || len(emb.Data[0].Embedding) != 8 {
		t.Fatalf("embedding %+v", emb.Data)
	}

	page, err := cl.Models.List(ctx)
	if err != nil {
		t.Fatalf("models: %v", err)
	}
	if len(page.Data) != 1 || page.Data[0].ID != model {
		t.Fatalf("models %+v", page.Data)
	}

	_, err = cl.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "no-such-model", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != CodeModelNotAvailable || apiErr.Message == "" {
		t.Fatalf("unknown model: want *openai.Error 404 %s, got %#v", CodeModelNotAvailable, err)
	}

	bad := sdkClient(baseURL, "wrong-token", opts...)
	_, err = bad.Models.List(ctx)
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 401 {
		t.Fatalf("wrong token: want *openai.Error 401, got %v", err)
	}
}

func TestOpenAISDK(t *testing.T) {
	_, u := startFixture(t)
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, u))
	exerciseSDK(t, h.srv.URL, testModel)
}

// A stream the engine breaks surfaces in the SDK as a stream error carrying
// WORKER_RESET.
func TestOpenAISDKStreamError(t *testing.T) {
	fx, u := startFixture(t)
	fx.SetBehavior(openaifixture.Behavior{Tokens: 10, Fault: openaifixture.FaultDieMidStream, DieAfter: 2})
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, u))
	cl := sdkClient(h.srv.URL, clientToken)
	stream := cl.Chat.Completions.NewStreaming(context.Background(), openai.ChatCompletionNewParams{
		Model: testModel, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	n := 0
	for stream.Next() {
		n++
	}
	if err := stream.Err(); n != 2 || err == nil || !strings.Contains(err.Error(), CodeWorkerReset) {
		t.Fatalf("after %d chunks: err %v, want a stream error with %s", n, err, CodeWorkerReset)
	}
}
