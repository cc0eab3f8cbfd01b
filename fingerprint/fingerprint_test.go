package fingerprint_test

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/llorch/llorch/fingerprint"
	"github.com/llorch/llorch/fingerprint/nvmlmock"
)

var update = flag.Bool("update", false, "rewrite golden files")

func mockServer(t *testing.T, kind string, n int) *nvmlmock.Server {
	t.Helper()
	s, err := nvmlmock.New(kind, n)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestGPUCounts(t *testing.T) {
	for _, n := range []int{0, 1, 8} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			src := fingerprint.New(mockServer(t, "dgxh100", n))
			defer src.Close()
			snap := src.Refresh()
			if !snap.Status.Available || snap.Fault != "" {
				t.Fatalf("status %+v fault %q", snap.Status, snap.Fault)
			}
			if len(snap.GPUs) != n {
				t.Fatalf("got %d GPUs, want %d", len(snap.GPUs), n)
			}
			attrs := fingerprint.Attributes(fingerprint.Prefix, snap)
			if got := attrs["driver.llorch.gpu.count"].Render(); got != fmt.Sprint(n) {
				t.Errorf("gpu.count = %q, want %d", got, n)
			}
			wantTotal := fmt.Sprintf("%dMiB", n*81920)
			if got := attrs["driver.llorch.vram.total"].Render(); got != wantTotal {
				t.Errorf("vram.total = %q, want %q", got, wantTotal)
			}
			healthy, _ := snap.Health(true)
			if healthy != (n > 0) {
				t.Errorf("require_gpu health with %d GPUs = %v", n, healthy)
			}
		})
	}
}

func TestGPUFields(t *testing.T) {
	srv := mockServer(t, "dgxh100", 8)
	srv.SetFreeMiB(2, 40000)
	snap := fingerprint.New(srv).Refresh()
	if snap.DriverVersion != "550.54.15" || snap.CUDAVersion != "12.4" {
		t.Errorf("versions %q %q", snap.DriverVersion, snap.CUDAVersion)
	}
	g := snap.GPUs[2]
	if g.Index != 2 || g.Device != "2" || g.UUID != srv.UUID(2) || g.Name != "NVIDIA H100 80GB HBM3" {
		t.Errorf("identity: %+v", g)
	}
	if g.PCIBusID != "00000000:12:00.0" || g.ComputeCapability != "9.0" {
		t.Errorf("pci %q cc %q", g.PCIBusID, g.ComputeCapability)
	}
	if *g.MemoryTotalMiB != 81920 || *g.MemoryFreeMiB != 40000 || *g.MemoryUsedMiB != 41920 {
		t.Errorf("memory %d/%d/%d", *g.MemoryTotalMiB, *g.MemoryFreeMiB, *g.MemoryUsedMiB)
	}
	if *g.TemperatureC != 32 || *g.PowerDrawMilliW != 70000 || *g.PowerLimitMilliW != 700000 || g.GPUUtilPercent == nil {
		t.Errorf("telemetry: %+v", g)
	}
}

func TestNotSupportedFieldsAreOmitted(t *testing.T) {
	srv := mockServer(t, "dgxa100", 2)
	d := srv.Device(1)
	d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, nvml.ERROR_NOT_SUPPORTED }
	snap := fingerprint.New(srv).Refresh()
	if snap.Fault != "" || len(snap.GPUs) != 2 {
		t.Fatalf("NOT_SUPPORTED must not be fatal: fault %q, %d GPUs", snap.Fault, len(snap.GPUs))
	}
	b, _ := json.Marshal(snap.GPUs[1])
	for _, k := range []string{"temperature_c", "power_draw_mw", "memory_total_mib"} {
		if strings.Contains(string(b), k) {
			t.Errorf("%s present in %s", k, b)
		}
	}
	attrs := fingerprint.Attributes(fingerprint.Prefix, snap)
	if _, ok := attrs["driver.llorch.gpu.1.memory.total"]; ok {
		t.Error("memory.total attribute for a GPU without memory info")
	}
	if got := attrs["driver.llorch.vram.total"].Render(); got != "40960MiB" {
		t.Errorf("vram.total = %s, want only GPU 0's 40960MiB", got)
	}
}

func TestMIGInstancesReplaceTheirParent(t *testing.T) {
	srv := mockServer(t, "dgxh100", 2)
	migs, err := srv.EnableMIG(1, nvml.GPU_INSTANCE_PROFILE_1_SLICE, 3)
	if err != nil {
		t.Fatal(err)
	}
	snap := fingerprint.New(srv).Refresh()
	if snap.Fault != "" {
		t.Fatal(snap.Fault)
	}
	if len(snap.GPUs) != 4 {
		t.Fatalf("want GPU 0 + 3 MIG devices, got %d: %+v", len(snap.GPUs), snap.GPUs)
	}
	for j, g := range snap.GPUs[1:] {
		if !g.MIG || g.UUID != migs[j] || g.ParentUUID != srv.UUID(1) || g.Device != fmt.Sprintf("1:%d", j) || g.Index != j+1 {
			t.Errorf("MIG %d: %+v", j, g)
		}
		if *g.MemoryTotalMiB != 10240 || g.TemperatureC != nil || g.PCIBusID != "00000000:11:00.0" {
			t.Errorf("MIG %d fields: %+v", j, g)
		}
	}
	attrs := fingerprint.Attributes(fingerprint.Prefix, snap)
	if attrs["driver.llorch.gpu.count"].Render() != "4" || attrs["driver.llorch.gpu.3.uuid"].Render() != migs[2] {
		t.Errorf("MIG attributes: count %s gpu.3.uuid %s", attrs["driver.llorch.gpu.count"].Render(), attrs["driver.llorch.gpu.3.uuid"].Render())
	}
}

func TestInitFailureIsAStatusAndRecovers(t *testing.T) {
	srv := mockServer(t, "dgxh100", 1)
	srv.InitFunc = func() nvml.Return { return nvml.ERROR_DRIVER_NOT_LOADED }
	src := fingerprint.New(srv)
	snap := src.Refresh()
	if snap.Status.Available || !strings.Contains(snap.Status.Reason, "kernel driver is not loaded") {
		t.Fatalf("status %+v", snap.Status)
	}
	if ok, why := snap.Health(false); !ok || !strings.Contains(why, "CPU engines only") {
		t.Errorf("without require_gpu: %v %q", ok, why)
	}
	if ok, why := snap.Health(true); ok || !strings.Contains(why, "ERROR_DRIVER_NOT_LOADED") {
		t.Errorf("with require_gpu: %v %q", ok, why)
	}
	if got := fingerprint.Attributes(fingerprint.Prefix, snap)["driver.llorch.gpu.count"].Render(); got != "0" {
		t.Errorf("gpu.count without NVML = %q", got)
	}
	if _, err := src.Processes(); err == nil {
		t.Error("Processes without NVML: want error")
	}
	srv.InitFunc = func() nvml.Return { return nvml.SUCCESS }
	if snap := src.Refresh(); !snap.Status.Available || len(snap.GPUs) != 1 {
		t.Errorf("after the driver loaded: %+v", snap.Status)
	}
}

func TestLibraryNotFound(t *testing.T) {
	lib := nvml.New(nvml.WithLibraryPath(filepath.Join(t.TempDir(), "libnvidia-ml.so.1")))
	snap := fingerprint.New(lib).Refresh()
	if snap.Status.Available || !strings.Contains(snap.Status.Reason, "ERROR_LIBRARY_NOT_FOUND") {
		t.Fatalf("status %+v", snap.Status)
	}
	if len(snap.GPUs) != 0 {
		t.Errorf("GPUs without a library: %d", len(snap.GPUs))
	}
}

func TestLostGPUFaultsAndRecovers(t *testing.T) {
	srv := mockServer(t, "dgxh100", 8)
	src := fingerprint.New(srv)
	srv.SetLost(3, true)
	snap := src.Refresh()
	if !strings.Contains(snap.Fault, "GPU 3") || !strings.Contains(snap.Fault, "ERROR_GPU_IS_LOST") {
		t.Fatalf("fault %q", snap.Fault)
	}
	if len(snap.GPUs) != 7 {
		t.Errorf("healthy GPUs reported: %d, want 7", len(snap.GPUs))
	}
	if ok, why := snap.Health(false); ok || !strings.Contains(why, "ERROR_GPU_IS_LOST") {
		t.Errorf("health %v %q", ok, why)
	}
	if _, err := src.Processes(); err == nil || !strings.Contains(err.Error(), "ERROR_GPU_IS_LOST") {
		t.Errorf("Processes with a lost GPU: %v", err)
	}
	srv.SetLost(3, false)
	snap = src.Refresh()
	if ok, why := snap.Health(false); !ok || len(snap.GPUs) != 8 {
		t.Errorf("after recovery: %v %q, %d GPUs", ok, why, len(snap.GPUs))
	}
}

func TestTaskMemoryFromProcesses(t *testing.T) {
	srv := mockServer(t, "dgxh100", 2)
	srv.SetProcesses(srv.UUID(0), nvml.ProcessInfo{Pid: 100, UsedGpuMemory: 3 << 30}, nvml.ProcessInfo{Pid: 200, UsedGpuMemory: 1 << 30})
	srv.SetProcesses(srv.UUID(1), nvml.ProcessInfo{Pid: 100, UsedGpuMemory: 2 << 30}, nvml.ProcessInfo{Pid: 101, UsedGpuMemory: ^uint64(0)})
	src := fingerprint.New(srv)
	snap := src.Refresh()
	if got := snap.TaskMemoryBytes([]int{100, 101}); got != 5<<30 {
		t.Errorf("task memory = %d, want %d (pid 101's unknown use counts as 0)", got, 5<<30)
	}
	procs, err := src.Processes()
	if err != nil || len(procs) != 4 {
		t.Fatalf("Processes: %v %v", procs, err)
	}
	if got := (fingerprint.Snapshot{Processes: procs}).TaskMemoryBytes([]int{200}); got != 1<<30 {
		t.Errorf("pid 200 = %d", got)
	}
}

func TestAttributesGolden(t *testing.T) {
	srv := mockServer(t, "dgxh100", 2)
	srv.SetFreeMiB(1, 30000)
	attrs := fingerprint.Attributes(fingerprint.Prefix, fingerprint.New(srv).Refresh())
	var lines []string
	for k, a := range attrs {
		typ := map[bool]string{true: "int"}[a.Int != nil]
		if a.String != nil {
			typ = "string"
		}
		lines = append(lines, fmt.Sprintf("%s = %s (%s unit=%q)", k, a.Render(), typ, a.Unit))
	}
	sort.Strings(lines)
	got := strings.Join(lines, "\n") + "\n"
	golden := filepath.Join("testdata", "attributes_dgxh100_2.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("attributes differ from %s:\n got:\n%s\nwant:\n%s", golden, got, want)
	}
}

func TestChangedIgnoresFreeMemoryNoise(t *testing.T) {
	srv := mockServer(t, "dgxh100", 2)
	src := fingerprint.New(srv)
	sent := fingerprint.Attributes(fingerprint.Prefix, src.Refresh())
	base := *sent["driver.llorch.gpu.0.memory.free"].Int

	srv.SetFreeMiB(0, uint64(base-fingerprint.FreeNoiseMiB+1))
	next := fingerprint.Attributes(fingerprint.Prefix, src.Refresh())
	if fingerprint.Changed(sent, next) {
		t.Error("a free-memory move below the noise threshold counted as a change")
	}
	srv.SetFreeMiB(0, uint64(base-fingerprint.FreeNoiseMiB))
	next = fingerprint.Attributes(fingerprint.Prefix, src.Refresh())
	if !fingerprint.Changed(sent, next) {
		t.Error("a free-memory move of the threshold was ignored")
	}

	srv.SetLost(1, true)
	gone := fingerprint.Attributes(fingerprint.Prefix, src.Refresh())
	if !fingerprint.Changed(sent, gone) {
		t.Error("a vanished GPU was not a change")
	}
	out := fingerprint.WithDeletions(sent, gone)
	if a, ok := out["driver.llorch.gpu.1.uuid"]; !ok || a.String == nil || *a.String != "" {
		t.Errorf("vanished GPU's uuid attribute not deleted with \"\": %+v", a)
	}
	if out["driver.llorch.gpu.count"].Render() != "1" {
		t.Errorf("gpu.count after loss = %s", out["driver.llorch.gpu.count"].Render())
	}
}

func TestTombstonesDoNotFlap(t *testing.T) {
	srv := mockServer(t, "dgxh100", 2)
	src := fingerprint.New(srv)
	sent := fingerprint.Attributes(fingerprint.Prefix, src.Refresh())
	srv.SetLost(1, true)
	next := fingerprint.Attributes(fingerprint.Prefix, src.Refresh())
	sent = fingerprint.WithDeletions(sent, next)
	if fingerprint.Changed(sent, fingerprint.Attributes(fingerprint.Prefix, src.Refresh())) {
		t.Error("an unchanged refresh after a deletion counts as a change")
	}
	srv.SetLost(1, false)
	back := fingerprint.Attributes(fingerprint.Prefix, src.Refresh())
	if !fingerprint.Changed(sent, back) {
		t.Error("a GPU coming back is not a change")
	}
	if got := fingerprint.WithDeletions(sent, back)["driver.llorch.gpu.1.uuid"].Render(); got != srv.UUID(1) {
		t.Errorf("returned GPU's uuid = %q", got)
	}
}
