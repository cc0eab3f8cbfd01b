package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go"
	aoption "github.com/anthropics/anthropic-sdk-go/option"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/responses"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/internal/testenv"
)

// startLlamaServer runs the real llama-server on the generated test model,
// enforcing engineToken, and returns its base URL and its log.
func startLlamaServer(t *testing.T) (string, *bytes.Buffer) {
	t.Helper()
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
	return base, &logs
}

// The official Anthropic SDK and the OpenAI SDK's Responses client
// against the router in front of a real llama-server, which serves both
// APIs natively (as its adapter declares): create, stream, count tokens,
// errors, and a bad key in either header style, each in its API's envelope.
func TestRealLlamaServerAgentAPIs(t *testing.T) {
	base, logs := startLlamaServer(t)
	in := inst(t, "llama-1", "n1", testModel, base)
	in.Engine, in.APIs = "llamacpp", engine.LlamaCpp{}.APIs()
	h := newHarness(t, nil, in)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	defer func() {
		if t.Failed() {
			t.Logf("llama-server log:\n%s", logs.String())
		}
	}()

	// Anthropic Messages, x-api-key auth.
	cl := anthropicClient(h.srv.URL, aoption.WithAPIKey(clientToken))
	p := hiMessage(testModel, 8)
	p.Temperature = anthropic.Float(0)
	msg, err := cl.Messages.New(ctx, p)
	if err != nil {
		t.Fatalf("messages.create: %v", err)
	}
	if msg.Type != "message" || msg.Role != "assistant" || len(msg.Content) == 0 || msg.Content[0].Type != "text" || msg.Usage.OutputTokens == 0 {
		t.Fatalf("messages.create answer %+v", msg)
	}
	stream := cl.Messages.NewStreaming(ctx, p)
	var acc anthropic.Message
	events := 0
	for stream.Next() {
		if err := acc.Accumulate(stream.Current()); err != nil {
			t.Fatalf("accumulate: %v", err)
		}
		events++
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("messages.stream: %v", err)
	}
	if events < 4 || len(acc.Content) == 0 || acc.StopReason == "" {
		t.Fatalf("messages.stream: %d events, %+v", events, acc)
	}
	// Same prompt, temperature 0: the streamed text is the created one.
	if acc.Content[0].Text != msg.Content[0].Text {
		t.Fatalf("streamed %q, created %q", acc.Content[0].Text, msg.Content[0].Text)
	}
	cnt, err := cl.Messages.CountTokens(ctx, anthropic.MessageCountTokensParams{Model: testModel,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi there"))}})
	if err != nil || cnt.InputTokens <= 0 {
		t.Fatalf("count_tokens: %v %+v", err, cnt)
	}
	_, err = cl.Messages.New(ctx, hiMessage("no-such-model", 8))
	anthropicErr(t, "unknown model", err, http.StatusNotFound, "not_found_error", CodeModelNotAvailable)
	badKey := anthropicClient(h.srv.URL, aoption.WithAPIKey("wrong-key"))
	_, err = badKey.Messages.New(ctx, p)
	anthropicErr(t, "bad x-api-key", err, http.StatusUnauthorized, "authentication_error", "")
	badBearer := anthropicClient(h.srv.URL, aoption.WithAuthToken("wrong-key"))
	_, err = badBearer.Messages.New(ctx, p)
	anthropicErr(t, "bad bearer", err, http.StatusUnauthorized, "authentication_error", "")
	bearer := anthropicClient(h.srv.URL, aoption.WithAuthToken(clientToken))
	if _, err := bearer.Messages.New(ctx, p); err != nil {
		t.Fatalf("bearer auth: %v", err)
	}

	// OpenAI Responses.
	ocl := sdkClient(h.srv.URL, clientToken)
	rp := responses.ResponseNewParams{Model: testModel, MaxOutputTokens: openai.Int(16), Temperature: openai.Float(0),
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")}}
	resp, err := ocl.Responses.New(ctx, rp)
	if err != nil {
		t.Fatalf("responses.create: %v", err)
	}
	if resp.Status != "completed" && resp.Status != "incomplete" || resp.OutputText() == "" {
		t.Fatalf("responses.create: status %q text %q", resp.Status, resp.OutputText())
	}
	rs := ocl.Responses.NewStreaming(ctx, rp)
	var deltas strings.Builder
	completed := false
	for rs.Next() {
		ev := rs.Current()
		switch ev.Type {
		case "response.output_text.delta":
			deltas.WriteString(ev.Delta)
		case "response.completed", "response.incomplete":
			completed = true
		}
	}
	if err := rs.Err(); err != nil || !completed || deltas.String() != resp.OutputText() {
		t.Fatalf("responses.stream: err %v completed %v text %q, created %q", err, completed, deltas.String(), resp.OutputText())
	}
	_, err = ocl.Responses.New(ctx, responses.ResponseNewParams{Model: "no-such-model",
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")}})
	var oe *openai.Error
	if !errors.As(err, &oe) || oe.StatusCode != 404 || oe.Code != CodeModelNotAvailable {
		t.Fatalf("responses unknown model: %v", err)
	}
	prev := rp
	prev.PreviousResponseID = openai.String(resp.ID)
	_, err = ocl.Responses.New(ctx, prev)
	if !errors.As(err, &oe) || oe.StatusCode != 400 || oe.Param != "previous_response_id" {
		t.Fatalf("previous_response_id on a stateless router: %v", err)
	}
	badOpenAI := sdkClient(h.srv.URL, "wrong-key")
	_, err = badOpenAI.Responses.New(ctx, rp)
	if !errors.As(err, &oe) || oe.StatusCode != 401 {
		t.Fatalf("responses bad key: %v", err)
	}
}
