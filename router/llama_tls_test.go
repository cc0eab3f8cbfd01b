package router

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/internal/testenv"
	"github.com/llorch/llorch/internal/tlsfiles/tlstest"
)

// The router reaches a real llama-server over HTTPS (its own
// --ssl-cert-file/--ssl-key-file), verifying it against the engine CA by
// the announced address; with the wrong CA every attempt fails its
// handshake and the client gets 503 ENGINE_TLS_FAILED.
func TestRealLlamaServerOverTLS(t *testing.T) {
	bin := testenv.LlamaServer(t)
	model := ggufgen.TestModel(t, ggufgen.DefaultOptions())
	port := testenv.FreePort(t)
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "engine-ca")
	f := ca.WriteFiles(t, dir, "engine", "llama-1", "127.0.0.1")
	var logs bytes.Buffer
	cmd := exec.Command(bin, "-m", model, "--host", "127.0.0.1", "--port", strconv.Itoa(port),
		"--alias", testModel, "-np", "1", "-t", "2", "--api-key", engineToken,
		"--ssl-cert-file", f.Cert, "--ssl-key-file", f.Key)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start llama-server: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	direct := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	base := fmt.Sprintf("https://127.0.0.1:%d", port)
	waitFor(t, 30*time.Second, "llama-server /health over HTTPS", func() bool {
		select {
		case <-exited:
			t.Fatalf("llama-server exited:\n%s", logs.String())
		default:
		}
		r, err := direct.Get(base + "/health")
		if err != nil {
			return false
		}
		r.Body.Close()
		return r.StatusCode == 200
	})

	in := inst(t, "llama-tls", "n1", testModel, base)
	in.Engine, in.APIs, in.TLS = "llamacpp", []string{"/v1/chat/completions", "/v1/completions"}, true
	h := newHarness(t, func(c *Config) { c.EngineCAFile = f.CA }, in)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl := sdkClient(h.srv.URL, clientToken)
	stream := cl.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model: testModel, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")},
		MaxTokens: openai.Int(8), Temperature: openai.Float(0)})
	var acc openai.ChatCompletionAccumulator
	chunks := 0
	for stream.Next() {
		acc.AddChunk(stream.Current())
		chunks++
	}
	if err := stream.Err(); err != nil || len(acc.Choices) != 1 || chunks < 2 {
		t.Fatalf("stream over HTTPS: %v, %d chunks, %+v\nllama-server log:\n%s", err, chunks, acc.Choices, logs.String())
	}

	other := tlstest.NewCA(t, "other-ca")
	wrong := filepath.Join(dir, "other.crt")
	if err := os.WriteFile(wrong, other.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	hw := newHarness(t, func(c *Config) { c.EngineCAFile = wrong }, in)
	assertTLSRefused(t, hw, "real llama-server, wrong CA")
	// The engine is fine: the router that trusts its CA still gets answers.
	if st, _, body := h.do("POST", "/v1/chat/completions", `{"model":"`+testModel+`","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`); st != 200 {
		t.Fatalf("after the wrong-CA router's attempts: %d %s", st, body)
	}
}
