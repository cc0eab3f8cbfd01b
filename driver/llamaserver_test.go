package driver_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
	"github.com/llorch/llorch/internal/testenv"
)

// TestRealLlamaServer runs the real llama-server through the driver: it
// must come up serving the task's model on the resolved port, and stop on
// the agent's default (empty) signal without needing SIGKILL.
func TestRealLlamaServer(t *testing.T) {
	bin := testenv.LlamaServer(t)
	model := ggufgen.TestModel(t, ggufgen.DefaultOptions())
	const token = "llamaserver-test-token-0123456789"
	tokenFile := filepath.Join(t.TempDir(), "engine.token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := nomadclient.Launch(t, nomadclient.Binary(t))
	setConfig(t, p, map[string]interface{}{"engines": map[string]interface{}{"llamacpp": bin}, "engine_token_file": tokenFile})
	a := newAlloc(t)
	tc := a.taskConfig(t, p, map[string]interface{}{
		"engine": "llamacpp", "model": model, "model_name": "tiny", "port": "http", "slots": 1, "threads": 2, "ctx": 512,
	})
	start(t, p, tc)

	base := "http://127.0.0.1:" + strconv.Itoa(a.port)
	client := &http.Client{Timeout: 2 * time.Second}
	eventually(t, 60*time.Second, "llama-server /health", func() bool {
		resp, err := client.Get(base + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	// Without the engine token: refused. With it: the task's model.
	resp, err := client.Get(base + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("/v1/models without the engine token: status %d, want 401", resp.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/models", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var models struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	err = json.NewDecoder(resp.Body).Decode(&models)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || err != nil || len(models.Data) == 0 || !strings.Contains(models.Data[0].ID, "tiny") {
		t.Fatalf("/v1/models: status %d, %+v, %v", resp.StatusCode, models, err)
	}
	if a.stderr.String()+a.stdout.String() == "" {
		t.Fatal("llama-server wrote nothing to the task's log FIFOs")
	}

	t0 := time.Now()
	if _, err := p.Driver.StopTask(ctxT(t, 30*time.Second), &drivers.StopTaskRequest{TaskId: tc.GetId(), Timeout: durationpb.New(10 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	res := waitTask(t, p, tc.GetId(), 5*time.Second)
	if res.GetResult().GetSignal() == 9 {
		t.Fatalf("llama-server needed SIGKILL after %s: %v", time.Since(t0), res.GetResult())
	}
	t.Logf("llama-server stopped in %s with %v", time.Since(t0), res.GetResult())
	if _, err := p.Driver.DestroyTask(ctxT(t, 10*time.Second), &drivers.DestroyTaskRequest{TaskId: tc.GetId(), Force: true}); err != nil {
		t.Fatal(err)
	}
	a.requireNoProcesses(t)
}
