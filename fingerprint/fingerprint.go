// Package fingerprint discovers NVIDIA GPUs through NVML and turns what it
// finds into plain values: a Snapshot for the driver and the CLI, and a map
// of Nomad attributes free of any protocol types (the driver converts them).
//
// Everything goes through go-nvml's nvml.Interface so tests hand in go-nvml's
// own mock servers; production code uses nvml.New(), which dlopens
// libnvidia-ml.so.1 at Init and therefore builds and runs on machines
// without NVIDIA libraries (Init then reports ERROR_LIBRARY_NOT_FOUND).
package fingerprint

import (
	"errors"
	"fmt"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Status says whether NVML can be used on this machine at all.
type Status struct {
	Available bool   `json:"available"`
	Reason    string `json:"reason,omitempty"` // why not, when !Available
}

// GPU is one schedulable GPU: a whole physical GPU, or a MIG instance when
// its parent runs in MIG mode (the parent is then not reported, since CUDA
// can only use its instances).
//
// Optional fields are nil when NVML answers NOT_SUPPORTED (or no permission)
// for them; they are omitted, never fatal.
type GPU struct {
	// Index is the position in Snapshot.GPUs (0..count-1) and the <index>
	// of the gpu.<index>.* attributes. Without MIG it equals the NVML index.
	Index int `json:"index"`
	// Device names the GPU the way nvidia-smi does: "3" for GPU 3, "3:1"
	// for MIG device 1 of GPU 3.
	Device     string `json:"device"`
	UUID       string `json:"uuid"`
	Name       string `json:"name,omitempty"`
	PCIBusID   string `json:"pci_bus_id,omitempty"`
	MIG        bool   `json:"mig,omitempty"`
	ParentUUID string `json:"parent_uuid,omitempty"`

	ComputeCapability string `json:"compute_capability,omitempty"` // "9.0"

	MemoryTotalMiB *uint64 `json:"memory_total_mib,omitempty"`
	MemoryFreeMiB  *uint64 `json:"memory_free_mib,omitempty"`
	MemoryUsedMiB  *uint64 `json:"memory_used_mib,omitempty"`

	GPUUtilPercent    *uint32 `json:"gpu_util_percent,omitempty"`
	MemoryUtilPercent *uint32 `json:"memory_util_percent,omitempty"`
	TemperatureC      *uint32 `json:"temperature_c,omitempty"`
	PowerDrawMilliW   *uint32 `json:"power_draw_mw,omitempty"`
	PowerLimitMilliW  *uint32 `json:"power_limit_mw,omitempty"`
}

// Process is one compute process holding memory on a GPU.
type Process struct {
	PID     int    `json:"pid"`
	GPUUUID string `json:"gpu_uuid"`
	// UsedBytes is nil when NVML cannot attribute memory to the process
	// (it reports NVML_VALUE_NOT_AVAILABLE, e.g. without permission).
	UsedBytes *uint64 `json:"used_bytes,omitempty"`
}

// Snapshot is the result of one refresh.
type Snapshot struct {
	Status        Status    `json:"status"`
	DriverVersion string    `json:"driver_version,omitempty"`
	CUDAVersion   string    `json:"cuda_version,omitempty"` // "12.4"
	GPUs          []GPU     `json:"gpus"`
	Processes     []Process `json:"processes,omitempty"`
	// Fault is set when NVML works but a GPU failed during this refresh
	// (ERROR_GPU_IS_LOST and the like). Failed GPUs are left out of GPUs,
	// and the driver is unhealthy until a refresh succeeds again.
	Fault string `json:"fault,omitempty"`
}

// Health turns a snapshot into the driver's health. Without NVML the driver
// stays healthy for CPU-only engines unless requireGPU is set; a GPU fault
// is always unhealthy, because tasks pinned to that GPU are broken.
func (s Snapshot) Health(requireGPU bool) (healthy bool, description string) {
	switch {
	case !s.Status.Available && requireGPU:
		return false, "require_gpu is set but no NVIDIA GPU is usable (NVML not available: " + s.Status.Reason + ")"
	case !s.Status.Available:
		return true, "no NVIDIA GPU (NVML not available: " + s.Status.Reason + "); CPU engines only"
	case s.Fault != "":
		return false, s.Fault
	case len(s.GPUs) == 0 && requireGPU:
		return false, "require_gpu is set but NVML reports no NVIDIA GPU"
	}
	return true, fmt.Sprintf("healthy, %d GPU(s)", len(s.GPUs))
}

// TaskMemoryBytes sums the GPU memory the given processes hold over all GPUs.
// Processes whose use NVML cannot report count as zero.
func (s Snapshot) TaskMemoryBytes(pids []int) uint64 {
	want := make(map[int]bool, len(pids))
	for _, p := range pids {
		want[p] = true
	}
	var sum uint64
	for _, p := range s.Processes {
		if want[p.PID] && p.UsedBytes != nil {
			sum += *p.UsedBytes
		}
	}
	return sum
}

// Source reads NVML. It initialises NVML lazily and retries Init at every
// refresh until it succeeds, so a node whose driver loads after the plugin
// started recovers without a restart. Safe for concurrent use.
type Source struct {
	mu     sync.Mutex
	lib    nvml.Interface
	inited bool
}

// New wraps an NVML implementation: nvml.New() in production, a go-nvml
// mock server in tests.
func New(lib nvml.Interface) *Source { return &Source{lib: lib} }

// Close shuts NVML down if this source initialised it.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.inited {
		return nil
	}
	s.inited = false
	if ret := s.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("nvml shutdown: %w", ret)
	}
	return nil
}

// ensureInit must be called with s.mu held.
func (s *Source) ensureInit() Status {
	if s.inited {
		return Status{Available: true}
	}
	if s.lib == nil {
		return Status{Reason: "no NVML implementation configured"}
	}
	if ret := s.lib.Init(); ret != nvml.SUCCESS {
		return Status{Reason: initReason(ret)}
	}
	s.inited = true
	return Status{Available: true}
}

// initReason explains the Init failures an operator will actually meet.
func initReason(ret nvml.Return) string {
	switch ret {
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return "libnvidia-ml.so.1 not found (no NVIDIA driver installed?): ERROR_LIBRARY_NOT_FOUND"
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return "the NVIDIA kernel driver is not loaded: ERROR_DRIVER_NOT_LOADED"
	case nvml.ERROR_LIB_RM_VERSION_MISMATCH:
		return "NVML library and kernel driver versions differ (driver upgraded without reboot?): ERROR_LIB_RM_VERSION_MISMATCH"
	case nvml.ERROR_NO_PERMISSION:
		return "no permission to open the NVIDIA device files: ERROR_NO_PERMISSION"
	}
	return "nvml init failed: " + retName(ret)
}

// retName is the NVML error name; go-nvml's Return.Error() already falls
// back to a static table when the library is not loaded.
func retName(ret nvml.Return) string { return ret.Error() }

// skippable returns true for answers that mean "this field does not exist
// here" rather than "something is wrong".
func skippable(ret nvml.Return) bool {
	switch ret {
	case nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_NO_PERMISSION, nvml.ERROR_FUNCTION_NOT_FOUND, nvml.ERROR_NOT_FOUND:
		return true
	}
	return false
}

// deviceError marks a GPU as failed; the refresh records it as the fault.
type deviceError struct {
	device string
	call   string
	ret    nvml.Return
}

func (e *deviceError) Error() string {
	return fmt.Sprintf("GPU %s: %s: %s", e.device, e.call, retName(e.ret))
}

// Refresh reads everything once. It never fails: problems land in
// Snapshot.Status (NVML unusable) or Snapshot.Fault (a GPU failed).
func (s *Source) Refresh() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := Snapshot{GPUs: []GPU{}}
	snap.Status = s.ensureInit()
	if !snap.Status.Available {
		return snap
	}
	if v, ret := s.lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		snap.DriverVersion = v
	}
	if v, ret := s.lib.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS {
		snap.CUDAVersion = cudaVersion(v)
	}
	n, ret := s.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		snap.Fault = "nvml device count: " + retName(ret)
		return snap
	}
	var faults []error
	for i := 0; i < n; i++ {
		gpus, procs, err := s.readPhysical(i)
		if err != nil {
			faults = append(faults, err)
			continue
		}
		for _, g := range gpus {
			g.Index = len(snap.GPUs)
			snap.GPUs = append(snap.GPUs, g)
		}
		snap.Processes = append(snap.Processes, procs...)
	}
	if len(faults) > 0 {
		snap.Fault = errors.Join(faults...).Error()
	}
	return snap
}

// Processes reads only the per-process GPU memory, for TaskStats, which
// runs every second and must not pay for a full refresh.
func (s *Source) Processes() ([]Process, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.ensureInit(); !st.Available {
		return nil, errors.New(st.Reason)
	}
	n, ret := s.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("nvml device count: %w", ret)
	}
	var out []Process
	for i := 0; i < n; i++ {
		d, ret := s.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			return nil, &deviceError{device: fmt.Sprint(i), call: "get handle", ret: ret}
		}
		devs, err := leaves(d, fmt.Sprint(i))
		if err != nil {
			return nil, err
		}
		for _, l := range devs {
			uuid, ret := l.dev.GetUUID()
			if ret != nvml.SUCCESS {
				return nil, &deviceError{device: l.name, call: "uuid", ret: ret}
			}
			ps, err := processes(l.dev, l.name, uuid)
			if err != nil {
				return nil, err
			}
			out = append(out, ps...)
		}
	}
	return out, nil
}

// leaf is a device CUDA can use: a GPU, or a MIG instance of one.
type leaf struct {
	dev  nvml.Device
	name string // "3" or "3:1"
	mig  bool
}

// leaves returns the GPU itself, or its MIG instances when MIG is on.
func leaves(d nvml.Device, name string) ([]leaf, error) {
	cur, _, ret := d.GetMigMode()
	if ret != nvml.SUCCESS && !skippable(ret) {
		return nil, &deviceError{device: name, call: "MIG mode", ret: ret}
	}
	if ret != nvml.SUCCESS || cur != nvml.DEVICE_MIG_ENABLE {
		return []leaf{{dev: d, name: name}}, nil
	}
	max, ret := d.GetMaxMigDeviceCount()
	if ret != nvml.SUCCESS {
		return nil, &deviceError{device: name, call: "MIG device count", ret: ret}
	}
	var out []leaf
	// MIG slots are sparse: an empty slot answers NOT_FOUND.
	for j := 0; j < max; j++ {
		m, ret := d.GetMigDeviceHandleByIndex(j)
		if ret == nvml.ERROR_NOT_FOUND || ret == nvml.ERROR_INVALID_ARGUMENT {
			continue
		}
		if ret != nvml.SUCCESS {
			return nil, &deviceError{device: fmt.Sprintf("%s:%d", name, j), call: "MIG handle", ret: ret}
		}
		out = append(out, leaf{dev: m, name: fmt.Sprintf("%s:%d", name, j), mig: true})
	}
	return out, nil
}

// readPhysical reads GPU i and, in MIG mode, its instances.
func (s *Source) readPhysical(i int) ([]GPU, []Process, error) {
	name := fmt.Sprint(i)
	d, ret := s.lib.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		return nil, nil, &deviceError{device: name, call: "get handle", ret: ret}
	}
	parent, err := readDevice(d, name)
	if err != nil {
		return nil, nil, err
	}
	ls, err := leaves(d, name)
	if err != nil {
		return nil, nil, err
	}
	var gpus []GPU
	var procs []Process
	for _, l := range ls {
		g := parent
		if l.mig {
			g, err = readDevice(l.dev, l.name)
			if err != nil {
				return nil, nil, err
			}
			// A MIG handle answers neither bus id nor compute capability
			// on every driver; they are the parent's anyway.
			g.MIG, g.ParentUUID = true, parent.UUID
			g.PCIBusID, g.ComputeCapability = parent.PCIBusID, parent.ComputeCapability
		}
		ps, err := processes(l.dev, l.name, g.UUID)
		if err != nil {
			return nil, nil, err
		}
		gpus = append(gpus, g)
		procs = append(procs, ps...)
	}
	return gpus, procs, nil
}

// readDevice reads one handle. UUID is required (assignment is by UUID);
// every other field is optional.
func readDevice(d nvml.Device, name string) (GPU, error) {
	g := GPU{Device: name}
	var ret nvml.Return
	if g.UUID, ret = d.GetUUID(); ret != nvml.SUCCESS {
		return g, &deviceError{device: name, call: "uuid", ret: ret}
	}
	// opt records an optional answer: fine, skipped, or a device failure.
	var failed error
	opt := func(call string, ret nvml.Return) bool {
		if ret == nvml.SUCCESS {
			return true
		}
		if !skippable(ret) && failed == nil {
			failed = &deviceError{device: name, call: call, ret: ret}
		}
		return false
	}
	if v, ret := d.GetName(); opt("name", ret) {
		g.Name = v
	}
	if p, ret := d.GetPciInfo(); opt("PCI info", ret) {
		g.PCIBusID = cString(p.BusId[:])
	}
	if maj, min, ret := d.GetCudaComputeCapability(); opt("compute capability", ret) {
		g.ComputeCapability = fmt.Sprintf("%d.%d", maj, min)
	}
	if m, ret := d.GetMemoryInfo(); opt("memory", ret) {
		g.MemoryTotalMiB, g.MemoryFreeMiB, g.MemoryUsedMiB = ptr(m.Total>>20), ptr(m.Free>>20), ptr(m.Used>>20)
	}
	if u, ret := d.GetUtilizationRates(); opt("utilization", ret) {
		g.GPUUtilPercent, g.MemoryUtilPercent = ptr(u.Gpu), ptr(u.Memory)
	}
	if t, ret := d.GetTemperature(nvml.TEMPERATURE_GPU); opt("temperature", ret) {
		g.TemperatureC = ptr(t)
	}
	if p, ret := d.GetPowerUsage(); opt("power usage", ret) {
		g.PowerDrawMilliW = ptr(p)
	}
	if p, ret := d.GetEnforcedPowerLimit(); opt("power limit", ret) {
		g.PowerLimitMilliW = ptr(p)
	}
	return g, failed
}

// valueNotAvailable is NVML_VALUE_NOT_AVAILABLE as an unsigned long long.
const valueNotAvailable = ^uint64(0)

func processes(d nvml.Device, name, uuid string) ([]Process, error) {
	ps, ret := d.GetComputeRunningProcesses()
	if ret != nvml.SUCCESS {
		if skippable(ret) {
			return nil, nil
		}
		return nil, &deviceError{device: name, call: "running processes", ret: ret}
	}
	out := make([]Process, 0, len(ps))
	for _, p := range ps {
		pr := Process{PID: int(p.Pid), GPUUUID: uuid}
		if p.UsedGpuMemory != valueNotAvailable {
			pr.UsedBytes = ptr(p.UsedGpuMemory)
		}
		out = append(out, pr)
	}
	return out, nil
}

// cudaVersion renders NVML's 12040 as "12.4".
func cudaVersion(v int) string { return fmt.Sprintf("%d.%d", v/1000, (v%1000)/10) }

func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

func ptr[T any](v T) *T { return &v }
