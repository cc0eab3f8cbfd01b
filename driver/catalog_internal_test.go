package driver

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/models/vramest"
)

// The estimate-vs-measured comparison runs for GPU tasks of engines
// vramest models, logs one structured line and gives the event text; it
// stays quiet where a comparison would mislead.
func TestCompareVRAMEstimate(t *testing.T) {
	model := ggufgen.TestModel(t, ggufgen.DefaultOptions()) // 2 layers
	var buf bytes.Buffer
	d, err := New(hclog.New(&hclog.LoggerOptions{Output: &buf, JSONFormat: true, Level: hclog.Debug}))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	task := func(eng string, cfg TaskConfig, gpuLayers int) *taskHandle {
		return newHandle(taskState{
			TaskID: "a/t/1", Engine: eng, Config: cfg,
			Spec: engine.Spec{Model: model, ModelName: "tiny", Ctx: 2048, Slots: 2, GPULayers: gpuLayers},
		}, "")
	}
	gpu := TaskConfig{GPUCount: 1}
	measured := func(mib uint64, ok bool) func(*taskHandle) (uint64, bool) {
		return func(*taskHandle) (uint64, bool) { return mib * vramest.MiB, ok }
	}

	// vramest's exact test puts this model at ctx 2048 × 2 slots at
	// 308340160 bytes (294.06 MiB, 295 whole); against 280 MiB: +5.0 %.
	sum, ok := d.compareVRAMEstimate(task("llamacpp", gpu, 0), measured(280, true))
	if !ok || !strings.HasPrefix(sum, "VRAM estimate 295 MiB, measured 280 MiB (+5.0%)") {
		t.Fatalf("summary %q ok=%v", sum, ok)
	}
	var line map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["@message"] == vramest.LogMessage {
			line = m
		}
	}
	if line == nil || line["error_pct"] != 5.0 || line["estimate_mib"] != 295.0 || line["measured_mib"] != 280.0 ||
		line["task_id"] != "a/t/1" || line["model"] != "tiny" || line["@level"] != "info" {
		t.Errorf("log line %v in\n%s", line, buf.String())
	}

	// All layers offloaded explicitly (2 blocks + output): compared.
	if _, ok := d.compareVRAMEstimate(task("llamacpp", gpu, 3), measured(280, true)); !ok {
		t.Error("full offload (gpu_layers 3) not compared")
	}
	for name, c := range map[string]struct {
		h       *taskHandle
		measure func(*taskHandle) (uint64, bool)
	}{
		"cpu task":        {task("llamacpp", TaskConfig{}, 0), measured(280, true)},
		"vllm":            {task("vllm", gpu, 0), measured(280, true)},
		"partial offload": {task("llamacpp", gpu, 1), measured(280, true)},
		"nvml cannot say": {task("ollama", gpu, 0), measured(0, false)},
		"nothing held":    {task("ollama", gpu, 0), measured(0, true)},
	} {
		if sum, ok := d.compareVRAMEstimate(c.h, c.measure); ok {
			t.Errorf("%s: compared: %q", name, sum)
		}
	}
}

// The watcher belongs to the supervisor: it ends when the supervisor does,
// without a readiness.
func TestWatchVRAMEstimateEndsWithSupervisor(t *testing.T) {
	d, err := New(hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		d.watchVRAMEstimate(newHandle(taskState{TaskID: "x"}, ""), make(chan struct{}), done)
		close(ended)
	}()
	close(done)
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("watcher outlived its supervisor")
	}
}
