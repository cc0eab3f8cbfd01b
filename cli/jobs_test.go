package cli

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/llorch/llorch/internal/ggufgen"
)

func runCmd(main func([]string, *bytes.Buffer, *bytes.Buffer) int, args ...string) (int, string, string) {
	var so, se bytes.Buffer
	rc := main(args, &so, &se)
	return rc, so.String(), se.String()
}

func estimate(args []string, so, se *bytes.Buffer) int { return estimateMain(args, so, se) }
func jobsCmd(args []string, so, se *bytes.Buffer) int  { return jobsMain(args, so, se) }

// `llorch estimate model.gguf -ctx N -slots N` (flags after the model, as
// users type it) prints each part; the numbers are vramest's exact test.
func TestEstimateCommand(t *testing.T) {
	m := ggufgen.TestModel(t, ggufgen.DefaultOptions())
	rc, out, errOut := runCmd(estimate, m, "-ctx", "2048", "-slots", "2")
	if rc != 0 {
		t.Fatalf("rc %d: %s", rc, errOut)
	}
	for _, s := range []string{"weights", "0.5 MiB", "kv cache", "2.0 MiB", "compute", "33.7 MiB", "overhead", "256.0 MiB", "margin", "= 295 MiB"} {
		if !strings.Contains(out, s) {
			t.Errorf("table lacks %q:\n%s", s, out)
		}
	}
	rc, out, _ = runCmd(estimate, "-json", "-engine", "ollama", "-ctx", "1024", m)
	var e struct {
		Engine   string `json:"engine"`
		Overhead uint64 `json:"overhead_bytes"`
		CtxTotal uint64 `json:"ctx_total"`
	}
	if rc != 0 || json.Unmarshal([]byte(out), &e) != nil || e.Engine != "ollama" || e.Overhead != 384<<20 || e.CtxTotal != 1024 {
		t.Errorf("json: rc %d %+v\n%s", rc, e, out)
	}
	for args, want := range map[string]string{
		"":                   "usage: llorch estimate",
		m + " -engine vllm":  "not supported",
		m + " -kv-type q4":   "kv type",
		"/nonexistent.gguf":  "read GGUF header",
		m + " " + m:          "usage: llorch estimate",
		m + " -ctx notanint": "invalid value",
	} {
		rc, _, errOut := runCmd(estimate, strings.Fields(args)...)
		if rc == 0 || !strings.Contains(errOut, want) {
			t.Errorf("%q: rc %d, stderr %q, want %q", args, rc, errOut, want)
		}
	}
}

// A GPU pool from flags, with the model readable here, renders a job whose
// VRAM constraint is the estimate split over the GPUs (295 MiB / 2 → 148).
func TestJobsRenderFromFlags(t *testing.T) {
	m := ggufgen.TestModel(t, ggufgen.DefaultOptions())
	rc, out, errOut := runCmd(jobsCmd, "render", "-name", "tiny-pool", "-model", m, "-gpus", "2", "-ctx", "2048", "-slots", "2", "-replicas", "3")
	if rc != 0 {
		t.Fatalf("rc %d: %s", rc, errOut)
	}
	var body struct {
		Job struct {
			ID         string
			TaskGroups []struct {
				Count       int
				Constraints []struct{ LTarget, Operand, RTarget string }
				Tasks       []struct{ Config map[string]any }
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &body); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	tg := body.Job.TaskGroups[0]
	found := false
	for _, c := range tg.Constraints {
		found = found || c.LTarget == "${attr.driver.llorch.vram.largest_free_mib}" && c.Operand == ">=" && c.RTarget == "148"
	}
	if body.Job.ID != "tiny-pool" || tg.Count != 3 || !found || tg.Tasks[0].Config["vram_mib"] != 148.0 {
		t.Errorf("job: %+v", body.Job)
	}
	if !strings.Contains(errOut, "= 295 MiB") {
		t.Errorf("stderr does not show the estimate used: %s", errOut)
	}

	spec := filepath.Join(t.TempDir(), "pool.yaml")
	os.WriteFile(spec, []byte("name: p\nmodel: /m/tiny.gguf\n"), 0o644)
	for args, want := range map[string]string{
		"render -f " + spec + " -replicas 2": "-replicas and -f both given",
		"render -model /m.gguf":              "name:",
		"render -name p -model /m.gguf x":    `unexpected argument "x"`,
		"status":                             "want one pool name",
		"frobnicate":                         "usage: llorch jobs",
	} {
		rc, _, errOut := runCmd(jobsCmd, strings.Fields(args)...)
		if rc != 2 || !strings.Contains(errOut, want) {
			t.Errorf("%q: rc %d, stderr %q, want %q", args, rc, errOut, want)
		}
	}
}

// `llorch jobs run` against a Nomad whose only node lacks the model: exit
// 3, MODEL_NOT_AVAILABLE, and nothing submitted. `status` reads the job and
// its allocations.
func TestJobsRunAndStatusAgainstNomadAPI(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path)
		mu.Unlock()
		enc := json.NewEncoder(w)
		switch r.URL.Path {
		case "/v1/nodes":
			enc.Encode([]map[string]any{{"ID": "n1", "Name": "gpu-1", "Status": "ready"}})
		case "/v1/node/n1":
			enc.Encode(map[string]any{"ID": "n1", "Name": "gpu-1", "Status": "ready",
				"Attributes": map[string]string{"driver.llorch": "1", "driver.llorch.models": "other"}})
		case "/v1/job/tiny-pool":
			enc.Encode(map[string]any{"ID": "tiny-pool", "Status": "running",
				"TaskGroups": []map[string]any{{"Name": "engine", "Constraints": []map[string]string{{"LTarget": "${attr.driver.llorch}", "Operand": "=", "RTarget": "1"}}}}})
		case "/v1/job/tiny-pool/allocations":
			enc.Encode([]map[string]any{{"ID": "0123456789abcdef", "NodeName": "gpu-1", "DesiredStatus": "run", "ClientStatus": "running"}})
		default:
			http.Error(w, "unexpected", 404)
		}
	}))
	defer srv.Close()
	t.Setenv("NOMAD_ADDR", srv.URL)
	t.Setenv("NOMAD_TOKEN", "")

	rc, _, errOut := runCmd(jobsCmd, "run", "-name", "tiny-pool", "-model", "/m/tiny.gguf")
	if rc != 3 || !strings.Contains(errOut, "MODEL_NOT_AVAILABLE") || !strings.Contains(errOut, `"tiny"`) {
		t.Errorf("run: rc %d, stderr %q", rc, errOut)
	}
	mu.Lock()
	for _, s := range seen {
		if strings.HasPrefix(s, "PUT") || strings.HasPrefix(s, "POST") {
			t.Errorf("submitted although no node holds the model: %v", seen)
		}
	}
	mu.Unlock()

	rc, out, errOut := runCmd(jobsCmd, "status", "tiny-pool")
	if rc != 0 || !strings.Contains(out, "pool tiny-pool: job running") || !strings.Contains(out, "01234567") ||
		!strings.Contains(out, "constraint ${attr.driver.llorch} = 1") {
		t.Errorf("status: rc %d\n%s%s", rc, out, errOut)
	}
}

// `llorch jobs render -min 0 -max 4 -idle 10m` renders a pool that starts
// at zero, with its range in the job's meta (what the router reads) and in
// a disabled scaling block (so Nomad refuses counts outside it); a bad
// range is refused naming the field.
func TestJobsRenderScalingRange(t *testing.T) {
	rc, out, errOut := runCmd(jobsCmd, "render", "-name", "tiny", "-model", "/m/tiny.gguf", "-min", "0", "-max", "4", "-idle", "10m")
	if rc != 0 {
		t.Fatalf("rc %d: %s", rc, errOut)
	}
	var doc struct {
		Job struct {
			Meta       map[string]string
			TaskGroups []struct {
				Name    string
				Count   int
				Scaling struct {
					Min, Max int64
					Enabled  bool
				}
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	m, tg := doc.Job.Meta, doc.Job.TaskGroups[0]
	if m["llorch_min"] != "0" || m["llorch_max"] != "4" || m["llorch_idle"] != "10m" || m["llorch_model"] != "tiny" {
		t.Errorf("meta: %v", m)
	}
	if tg.Name != "engine" || tg.Count != 0 || tg.Scaling.Min != 0 || tg.Scaling.Max != 4 || tg.Scaling.Enabled {
		t.Errorf("group: %+v", tg)
	}
	for args, want := range map[string]string{
		"-min 5 -max 4":      "min: 5",
		"-min 1 -idle 5m":    "max is 0",
		"-max 2 -idle soon":  "idle:",
		"-max 2 -replicas 3": "replicas: 3",
		"-max 2000":          "max: 2000",
	} {
		rc, _, errOut := runCmd(jobsCmd, append([]string{"render", "-name", "x", "-model", "/m/x.gguf"}, strings.Fields(args)...)...)
		if rc != 2 || !strings.Contains(errOut, want) {
			t.Errorf("%s: rc %d, %q (want %q)", args, rc, errOut, want)
		}
	}
}
