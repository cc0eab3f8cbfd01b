package driver_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
)

// The GPU tests run the plugin built with the llorch_nvmlmock tag, whose
// NVML is go-nvml's mock chosen by LLORCH_NVML_MOCK (see gpu_nvmlmock.go).
// The mock's UUIDs are deterministic, so a second plugin process sees the
// same GPUs as the first. (llorch_devengine only matters while the real
// llamacpp adapter is being written; without that file the tag is inert.)

var (
	mockBinOnce sync.Once
	mockBin     string
	mockBinErr  error
)

func nvmlMockBinary(t *testing.T) string {
	t.Helper()
	mockBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "llorch-nvmlmock-bin-")
		if err != nil {
			mockBinErr = err
			return
		}
		mockBin = filepath.Join(dir, "llorch")
		cmd := exec.Command("go", "build", "-tags", "llorch_nvmlmock llorch_devengine", "-o", mockBin, ".")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			mockBinErr = fmt.Errorf("go build -tags llorch_nvmlmock: %v\n%s", err, out)
		}
	})
	if mockBinErr != nil {
		t.Fatal(mockBinErr)
	}
	return mockBin
}

// launchGPU starts a plugin whose NVML is the mock `spec` (kind[:count]).
func launchGPU(t *testing.T, spec string, extra map[string]interface{}) *nomadclient.Plugin {
	t.Helper()
	t.Setenv("LLORCH_NVML_MOCK", spec)
	p := nomadclient.Launch(t, nvmlMockBinary(t))
	setConfig(t, p, pluginConfig(t, extra))
	return p
}

// mockUUID is nvmlmock's UUID of physical GPU i of a dgxh100.
func mockUUID(i int) string { return fmt.Sprintf("GPU-00000002-0000-4000-8000-%012x", i) }

// engineEnv reads the running engine's environment from /proc.
func engineEnv(t *testing.T, a *alloc) map[string]string {
	t.Helper()
	var pids []int
	eventually(t, 5*time.Second, "engine process", func() bool { pids = enginePIDs(a.marker); return len(pids) > 0 })
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pids[0]) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, kv := range bytes.Split(raw, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			env[k] = v
		}
	}
	return env
}

func destroy(t *testing.T, p *nomadclient.Plugin, id string) {
	t.Helper()
	if _, err := p.Driver.DestroyTask(ctxT(t, 10*time.Second), &drivers.DestroyTaskRequest{TaskId: id, Force: true}); err != nil {
		t.Fatalf("DestroyTask: %v", err)
	}
}

func TestGPUFingerprintAttributes(t *testing.T) {
	p := launchGPU(t, "dgxh100", map[string]interface{}{"require_gpu": true})
	ctx, cancel := context.WithCancel(ctxT(t, 10*time.Second))
	defer cancel()
	stream, err := p.Driver.Fingerprint(ctx, &drivers.FingerprintRequest{})
	if err != nil {
		t.Fatal(err)
	}
	fp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if fp.GetHealth() != drivers.FingerprintResponse_HEALTHY {
		t.Fatalf("health %v: %s", fp.GetHealth(), fp.GetHealthDescription())
	}
	attrs := fp.GetAttributes()
	// What Nomad renders: %v of the value, unit appended without a space.
	render := func(k string) string {
		a, ok := attrs[k]
		if !ok {
			t.Errorf("attribute %s missing", k)
			return ""
		}
		switch {
		case a.GetStringVal() != "":
			return a.GetStringVal()
		default:
			return fmt.Sprintf("%v%s", a.GetIntVal(), a.GetUnit())
		}
	}
	want := map[string]string{
		"driver.llorch.gpu.count":           "8",
		"driver.llorch.gpu.0.uuid":          mockUUID(0),
		"driver.llorch.gpu.7.uuid":          mockUUID(7),
		"driver.llorch.gpu.3.name":          "NVIDIA H100 80GB HBM3",
		"driver.llorch.gpu.3.memory.total":  "81920MiB",
		"driver.llorch.gpu.3.memory.free":   "81408MiB",
		"driver.llorch.vram.total":          "655360MiB",
		"driver.llorch.vram.free":           "651264MiB",
		"driver.llorch.vram.largest_free":   "81408MiB",
		"driver.llorch.nvml.driver_version": "550.54.15",
		"driver.llorch.nvml.cuda_version":   "12.4",
	}
	for k, v := range want {
		if got := render(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if attrs["driver.llorch.gpu.count"].GetUnit() != "" || attrs["driver.llorch.gpu.0.memory.total"].GetIntVal() != 81920 {
		t.Errorf("types: gpu.count %v, memory.total %v", attrs["driver.llorch.gpu.count"], attrs["driver.llorch.gpu.0.memory.total"])
	}
}

func TestGPUAssignmentAndRecovery(t *testing.T) {
	p1 := launchGPU(t, "dgxh100:2", nil)
	model := writeModel(t)

	// Two GPUs, whole: the engine sees exactly them, by UUID.
	a := newAlloc(t)
	tcA := a.taskConfig(t, p1, engineConfig(model, map[string]interface{}{"gpus": 2}))
	hA := start(t, p1, tcA)
	env := engineEnv(t, a)
	if got, want := env["CUDA_VISIBLE_DEVICES"], mockUUID(0)+","+mockUUID(1); got != want {
		t.Fatalf("CUDA_VISIBLE_DEVICES = %q, want %q", got, want)
	}
	if env["CUDA_DEVICE_ORDER"] != "PCI_BUS_ID" || env["NVIDIA_VISIBLE_DEVICES"] != mockUUID(0)+","+mockUUID(1) {
		t.Errorf("device env: %q %q", env["CUDA_DEVICE_ORDER"], env["NVIDIA_VISIBLE_DEVICES"])
	}

	// The plugin dies; the next one recovers the task and its reservation.
	p1.Crash(t)
	eventually(t, 5*time.Second, "plugin gone", p1.Exited)
	p2 := launchGPU(t, "dgxh100:2", nil)
	persisted := &drivers.TaskHandle{
		Version: hA.GetVersion(), State: drivers.TaskState_UNKNOWN, DriverState: hA.GetDriverState(),
		Config: &drivers.TaskConfig{Id: tcA.GetId(), Name: tcA.GetName(), AllocId: tcA.GetAllocId(), AllocDir: tcA.GetAllocDir()},
	}
	if _, err := p2.Driver.RecoverTask(ctxT(t, 10*time.Second), &drivers.RecoverTaskRequest{Handle: persisted}); err != nil {
		t.Fatalf("RecoverTask: %v", err)
	}
	b := newAlloc(t)
	tcB := b.taskConfig(t, p2, engineConfig(model, map[string]interface{}{"gpus": 1}))
	_, err := p2.Driver.StartTask(ctxT(t, 20*time.Second), &drivers.StartTaskRequest{Task: tcB})
	if err == nil {
		t.Fatal("a GPU task started while the recovered task holds both GPUs whole: the reservation was lost")
	}
	if !isRecoverable(err) || !strings.Contains(err.Error(), "no GPU fits") || !strings.Contains(err.Error(), "held exclusively") {
		t.Fatalf("error (recoverable=%v): %v", isRecoverable(err), err)
	}
	b.requireNoProcesses(t)

	// Destroying the holder frees the GPUs.
	destroy(t, p2, tcA.GetId())
	a.requireNoProcesses(t)
	tcB = b.taskConfig(t, p2, engineConfig(model, map[string]interface{}{"gpus": 1}))
	start(t, p2, tcB)
	if got := engineEnv(t, b)["CUDA_VISIBLE_DEVICES"]; got != mockUUID(0) {
		t.Errorf("after release: CUDA_VISIBLE_DEVICES = %q, want %q", got, mockUUID(0))
	}
	destroy(t, p2, tcB.GetId())
	b.requireNoProcesses(t)
}

func TestGPUSharingAndExhaustedVRAM(t *testing.T) {
	p := launchGPU(t, "dgxh100:2", map[string]interface{}{"vram_headroom_mib": 1024})
	model := writeModel(t)

	// 81408 MiB free, 1024 headroom: two 40000 MiB engines share GPU 0
	// (best fit), a third goes to GPU 1, a fourth finds no room.
	var ids []string
	for i, wantGPU := range []int{0, 0, 1} {
		a := newAlloc(t)
		tc := a.taskConfig(t, p, engineConfig(model, map[string]interface{}{"gpus": 1, "vram_mib": 40000}))
		start(t, p, tc)
		ids = append(ids, tc.GetId())
		if got := engineEnv(t, a)["CUDA_VISIBLE_DEVICES"]; got != mockUUID(wantGPU) {
			t.Fatalf("engine %d on %q, want %s", i, got, mockUUID(wantGPU))
		}
	}
	// VRAM on GPU 1 is left, but not 45000 MiB of it.
	a := newAlloc(t)
	_, err := p.Driver.StartTask(ctxT(t, 20*time.Second), &drivers.StartTaskRequest{Task: a.taskConfig(t, p, engineConfig(model, map[string]interface{}{"vram_mib": 45000}))})
	if err == nil || !isRecoverable(err) {
		t.Fatalf("exhausted VRAM: want a recoverable error, got %v", err)
	}
	for _, s := range []string{"45000 MiB", "headroom 1024 MiB", mockUUID(0), "free 81408 MiB", "reserved-pending 80000 MiB", "room 384 MiB", mockUUID(1), "room 40384 MiB"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %q: %v", s, err)
		}
	}
	a.requireNoProcesses(t)

	// A task without GPUs sees none.
	c := newAlloc(t)
	tc := c.taskConfig(t, p, engineConfig(model, nil))
	start(t, p, tc)
	if env := engineEnv(t, c); env["CUDA_VISIBLE_DEVICES"] != "" || env["NVIDIA_VISIBLE_DEVICES"] != "void" {
		t.Errorf("CPU task env: CUDA_VISIBLE_DEVICES=%q NVIDIA_VISIBLE_DEVICES=%q", env["CUDA_VISIBLE_DEVICES"], env["NVIDIA_VISIBLE_DEVICES"])
	}
	for _, id := range append(ids, tc.GetId()) {
		destroy(t, p, id)
	}
}

// A task that got GPUs from Nomad's own device plugin (`device
// "nvidia/gpu"`: the agent's device env) keeps them: the driver neither
// hides the node's GPUs from it nor touches the agent's variables, only
// adds CUDA_VISIBLE_DEVICES for them (indices for vLLM). A task asking
// `gpus` on top of that is refused.
func TestNomadDeviceEnvRespected(t *testing.T) {
	fake := fakeEngine(t)
	p := launchGPU(t, "dgxh100:2", map[string]interface{}{"engines": map[string]interface{}{"llamacpp": fake, "vllm": fake}})
	model := writeModel(t)
	device := map[string]string{"NVIDIA_VISIBLE_DEVICES": mockUUID(1)}
	for _, c := range []struct{ engine, wantCUDA string }{{"llamacpp", mockUUID(1)}, {"vllm", "1"}} {
		a := newAlloc(t)
		tc := nomadclient.Alloc{ID: a.id, Task: a.task, Dir: a.dir, Port: a.port, Env: map[string]string{"LLORCH_MARKER": a.marker},
			DeviceEnv: device, Job: "chat", Group: "inference", NodeID: "node-id-1", NodeName: "node-1"}.
			TaskConfig("0000000"+c.engine[:1], a.encode(t, p, engineConfig(model, map[string]interface{}{"engine": c.engine})))
		start(t, p, tc)
		env := engineEnv(t, a)
		if env["NVIDIA_VISIBLE_DEVICES"] != mockUUID(1) || env["CUDA_VISIBLE_DEVICES"] != c.wantCUDA {
			t.Errorf("%s: NVIDIA_VISIBLE_DEVICES=%q CUDA_VISIBLE_DEVICES=%q, want %q and %q", c.engine,
				env["NVIDIA_VISIBLE_DEVICES"], env["CUDA_VISIBLE_DEVICES"], mockUUID(1), c.wantCUDA)
		}
		stopAndDestroy(t, p, tc.GetId())
		a.requireNoProcesses(t)
	}

	a := newAlloc(t)
	tc := nomadclient.Alloc{ID: a.id, Task: a.task, Dir: a.dir, Port: a.port, Env: map[string]string{"LLORCH_MARKER": a.marker},
		DeviceEnv: device}.TaskConfig("00000002", a.encode(t, p, engineConfig(model, map[string]interface{}{"gpus": 1})))
	_, err := p.Driver.StartTask(ctxT(t, 20*time.Second), &drivers.StartTaskRequest{Task: tc})
	if err == nil || !strings.Contains(err.Error(), `field "gpus"`) || !strings.Contains(err.Error(), "device block") {
		t.Fatalf("a task with device GPUs and gpus: %v", err)
	}
	a.requireNoProcesses(t)
}
