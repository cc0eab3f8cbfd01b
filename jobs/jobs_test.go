package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/llorch/llorch/internal/ggufgen"
)

var update = flag.Bool("update", false, "rewrite golden files")

const poolYAML = `
name: tiny-pool
model: /srv/models/tiny.gguf
engine: llamacpp
replicas: 2
ctx: 2048
slots: 2
gpus: 1
vram_mib: 600
distinct_hosts: true
affinities:
  - attribute: "${node.class}"
    value: gpu
    weight: 50
`

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs; got:\n%s", p, got)
	}
}

func TestRenderGolden(t *testing.T) {
	s, err := ParseSpec([]byte(poolYAML))
	if err != nil {
		t.Fatal(err)
	}
	b, err := RenderJSON(Render(s))
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "tiny-pool.json", b)

	cpu, err := ParseSpec([]byte("name: cpu-pool\nmodel: /m/tiny.gguf\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = RenderJSON(Render(cpu))
	golden(t, "cpu-pool.json", b)
}

// The rendered job has what Nomad needs to place a pool correctly: the
// llorch driver, the port, and constraints on the driver's attributes.
func TestRenderConstraints(t *testing.T) {
	s, _ := ParseSpec([]byte(poolYAML))
	job := Render(s)
	tg := job.TaskGroups[0]
	if *tg.Count != 2 || tg.Tasks[0].Driver != "llorch" || tg.Networks[0].DynamicPorts[0].Label != "http" {
		t.Fatalf("group: %+v", tg)
	}
	want := map[string]string{
		"${attr.driver.llorch}":                       "= 1",
		"${attr.driver.llorch.models}":                "set_contains tiny",
		"${attr.driver.llorch.gpu.count}":             ">= 1",
		"${attr.driver.llorch.vram.largest_free_mib}": ">= 600",
		"": "distinct_hosts true",
	}
	got := map[string]string{}
	for _, c := range tg.Constraints {
		got[c.LTarget] = c.Operand + " " + c.RTarget
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("constraint %q = %q, want %q", k, got[k], v)
		}
	}
	if len(tg.Spreads) != 1 || tg.Spreads[0].Attribute != "${node.unique.id}" {
		t.Errorf("spread: %+v", tg.Spreads)
	}
	cfg := tg.Tasks[0].Config
	if cfg["model"] != "/srv/models/tiny.gguf" || cfg["port"] != "http" || cfg["pool"] != "tiny-pool" || cfg["vram_mib"] != 600 {
		t.Errorf("task config: %v", cfg)
	}
}

func TestSpecErrorsNameTheField(t *testing.T) {
	cases := map[string]string{
		"name: x\nmodel: /m.gguf\nreplica: 2\n":    "replica",
		"name: x\nmodel: /m.gguf\nreplicas: two\n": "replicas",
		"name: x\n":                                      "model: required",
		"name: 'bad name'\nmodel: /m.gguf\n":             "name:",
		"name: x\nmodel: /m.gguf\nengine: trt\n":         "engine:",
		"name: x\nmodel: /m.gguf\nvram_mib: 100\n":       "vram_mib:",
		"name: x\nmodel: /m.gguf\nreplicas: -1\n":        "replicas:",
		"name: x\nmodel: /m\naffinities: [{value: a}]\n": "affinities[0]",
	}
	for in, want := range cases {
		_, err := ParseSpec([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want it to mention %q", in, err, want)
		}
	}
}

// A GPU pool whose model is readable here gets its VRAM constraint from
// the GGUF estimate, split over its GPUs.
func TestResolveVRAMFromModel(t *testing.T) {
	m := ggufgen.TestModel(t, ggufgen.DefaultOptions())
	s := PoolSpec{Name: "p", Model: m, GPUs: 2, Ctx: 2048, Slots: 2}
	s.Defaults()
	est, err := ResolveVRAM(&s)
	if err != nil || est == nil {
		t.Fatalf("est=%v err=%v", est, err)
	}
	// vramest's exact test puts this model at 295 MiB; over 2 GPUs, 148.
	if est.TotalMiB() != 295 || s.VRAMMiB != 148 {
		t.Errorf("total %d MiB, per GPU %d", est.TotalMiB(), s.VRAMMiB)
	}
	cpu := PoolSpec{Name: "p", Model: m}
	cpu.Defaults()
	if est, _ := ResolveVRAM(&cpu); est != nil || cpu.VRAMMiB != 0 {
		t.Error("CPU pool got a VRAM constraint")
	}
}

// fakeNomad answers the few Nomad API calls `llorch jobs` makes and records
// what was sent.
type fakeNomad struct {
	mu       sync.Mutex
	models   string // driver.llorch.models of the one node
	jobBody  []byte
	requests []string
}

func (f *fakeNomad) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	switch {
	case r.Method == "GET" && r.URL.Path == "/v1/nodes":
		json.NewEncoder(w).Encode([]map[string]any{{"ID": "n1", "Name": "gpu-1", "Status": "ready"}, {"ID": "n2", "Name": "down", "Status": "down"}})
	case r.Method == "GET" && r.URL.Path == "/v1/node/n1":
		json.NewEncoder(w).Encode(map[string]any{"ID": "n1", "Name": "gpu-1", "Status": "ready",
			"Attributes": map[string]string{"driver.llorch": "1", "driver.llorch.models": f.models}})
	case (r.Method == "PUT" || r.Method == "POST") && r.URL.Path == "/v1/jobs":
		f.jobBody, _ = io.ReadAll(r.Body)
		json.NewEncoder(w).Encode(map[string]any{"EvalID": "eval-1", "JobModifyIndex": 7})
	case r.Method == "DELETE" && r.URL.Path == "/v1/job/tiny-pool":
		json.NewEncoder(w).Encode(map[string]any{"EvalID": "eval-2"})
	default:
		http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, 404)
	}
}

func newClient(t *testing.T, f *fakeNomad) *Client {
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	t.Setenv("NOMAD_ADDR", srv.URL)
	t.Setenv("NOMAD_TOKEN", "")
	c, err := NewClient()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRunSubmitsNomadShapedJob(t *testing.T) {
	f := &fakeNomad{models: "other,tiny"}
	c := newClient(t, f)
	s, _ := ParseSpec([]byte(poolYAML))
	resp, err := c.Run(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if resp.EvalID != "eval-1" {
		t.Errorf("eval = %q", resp.EvalID)
	}
	var body struct {
		Job struct {
			ID, Name, Type string
			Datacenters    []string
			TaskGroups     []struct {
				Name        string
				Count       int
				Constraints []struct{ LTarget, RTarget, Operand string }
				Networks    []struct{ DynamicPorts []struct{ Label string } }
				Tasks       []struct {
					Name, Driver string
					Config       map[string]any
				}
			}
		}
	}
	if err := json.Unmarshal(f.jobBody, &body); err != nil {
		t.Fatalf("body is not {\"Job\": ...}: %v\n%s", err, f.jobBody)
	}
	j := body.Job
	if j.ID != "tiny-pool" || j.Name != "tiny-pool" || j.Type != "service" || len(j.Datacenters) != 1 {
		t.Errorf("job header: %+v", j)
	}
	if len(j.TaskGroups) != 1 || j.TaskGroups[0].Count != 2 || len(j.TaskGroups[0].Constraints) != 5 ||
		j.TaskGroups[0].Networks[0].DynamicPorts[0].Label != "http" || j.TaskGroups[0].Tasks[0].Driver != "llorch" ||
		j.TaskGroups[0].Tasks[0].Config["model"] != "/srv/models/tiny.gguf" {
		t.Errorf("task group: %+v", j.TaskGroups)
	}
}

func TestRunModelOnNoNode(t *testing.T) {
	f := &fakeNomad{models: "other"}
	c := newClient(t, f)
	s, _ := ParseSpec([]byte(poolYAML))
	_, err := c.Run(context.Background(), s)
	if !errors.Is(err, ErrModelNotAvailable) || !strings.Contains(err.Error(), `"tiny"`) {
		t.Fatalf("err = %v", err)
	}
	for _, r := range f.requests {
		if strings.Contains(r, "/v1/jobs") {
			t.Errorf("job submitted although no node holds the model: %v", f.requests)
		}
	}
}

func TestStop(t *testing.T) {
	f := &fakeNomad{}
	c := newClient(t, f)
	eval, err := c.Stop(context.Background(), "tiny-pool", true)
	if err != nil || eval != "eval-2" {
		t.Fatalf("eval=%q err=%v", eval, err)
	}
}
