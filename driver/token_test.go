// Every engine the driver starts demands the engine token on the address
// it announces: llama-server itself (real binary), Ollama through the
// supervisor's relay (a stand-in program that serves HTTP where
// OLLAMA_HOST says, as `ollama serve` does).

package driver_test

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
	"github.com/llorch/llorch/internal/testenv"
)

const engineToken = "engine-token-for-401-tests-0123456789"

func tokenFile(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "engine.token")
	if err := os.WriteFile(f, []byte(engineToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// statusWith is the status of GET url with the given Authorization.
func statusWith(t *testing.T, url, auth string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	var b [4096]byte
	n, _ := resp.Body.Read(b[:])
	return resp.StatusCode, b[:n]
}

func requireUnauthorizedWithoutToken(t *testing.T, url string) {
	t.Helper()
	for _, auth := range []string{"", "Bearer wrong-" + engineToken, "Bearer "} {
		if code, body := statusWith(t, url, auth); code != http.StatusUnauthorized {
			t.Errorf("GET %s with Authorization %q: %d %s, want 401", url, auth, code, body)
		}
	}
}

func TestLlamaServerDemandsToken(t *testing.T) {
	bin := testenv.LlamaServer(t)
	model := ggufgen.TestModel(t, ggufgen.DefaultOptions())
	p := nomadclient.Launch(t, nomadclient.Binary(t))
	setConfig(t, p, map[string]interface{}{"engines": map[string]interface{}{"llamacpp": bin}, "engine_token_file": tokenFile(t)})
	a := newAlloc(t)
	tc := a.taskConfig(t, p, map[string]interface{}{
		"engine": "llamacpp", "model": model, "model_name": "tiny", "port": "http", "slots": 1, "threads": 2, "ctx": 512,
	})
	start(t, p, tc)
	base := "http://127.0.0.1:" + strconv.Itoa(a.port)
	eventually(t, 60*time.Second, "llama-server answering with the token", func() bool {
		code, _ := statusWith(t, base+"/v1/models", "Bearer "+engineToken)
		return code == http.StatusOK
	})
	requireUnauthorizedWithoutToken(t, base+"/v1/models")
	stopAndDestroy(t, p, tc.GetId())
}

func buildFakeOllama(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ollama")
	cmd := exec.Command("go", "build", "-o", bin, "./testdata/fakeollama")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build fake ollama: %v\n%s", err, out)
	}
	return bin
}

func TestOllamaBehindRelayDemandsToken(t *testing.T) {
	bin := buildFakeOllama(t)
	p := nomadclient.Launch(t, nomadclient.Binary(t))
	setConfig(t, p, map[string]interface{}{"engines": map[string]interface{}{"ollama": bin}, "engine_token_file": tokenFile(t)})
	a := newAlloc(t)
	tc := a.taskConfig(t, p, engineConfig(writeModel(t), map[string]interface{}{"engine": "ollama"}))
	start(t, p, tc)
	base := "http://127.0.0.1:" + strconv.Itoa(a.port)
	var body []byte
	eventually(t, 10*time.Second, "the relay forwarding with the token", func() bool {
		var code int
		code, body = statusWith(t, base+"/api/tags", "Bearer "+engineToken)
		return code == http.StatusOK
	})
	requireUnauthorizedWithoutToken(t, base+"/api/tags")
	requireUnauthorizedWithoutToken(t, base+"/v1/chat/completions")

	var seen struct{ Listen, Authorization string }
	if err := json.Unmarshal(body, &seen); err != nil {
		t.Fatalf("engine answer %q: %v", body, err)
	}
	host, port, _ := strings.Cut(seen.Listen, ":")
	if host != "127.0.0.1" || port == strconv.Itoa(a.port) {
		t.Errorf("the engine listens on %s; want loopback on a port of its own behind the relay", seen.Listen)
	}
	if seen.Authorization != "" {
		t.Errorf("the engine received Authorization %q; the relay must not pass the token on", seen.Authorization)
	}
	stopAndDestroy(t, p, tc.GetId())
	a.requireNoProcesses(t)
}

// Without an engine token an engine that has no authentication of its own
// is refused rather than served open.
func TestOllamaWithoutTokenRefused(t *testing.T) {
	p := nomadclient.Launch(t, nomadclient.Binary(t))
	setConfig(t, p, map[string]interface{}{"engines": map[string]interface{}{"ollama": "/bin/true"}})
	a := newAlloc(t)
	tc := a.taskConfig(t, p, engineConfig(writeModel(t), map[string]interface{}{"engine": "ollama"}))
	_, err := p.Driver.StartTask(ctxT(t, 10*time.Second), &drivers.StartTaskRequest{Task: tc})
	if err == nil || !strings.Contains(err.Error(), "engine_token_file") {
		t.Fatalf("StartTask of ollama without a token: %v", err)
	}
}
