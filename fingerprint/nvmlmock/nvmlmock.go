// Package nvmlmock completes go-nvml's DGX mock servers so they answer every
// NVML call the fingerprint package makes, deterministically.
//
// go-nvml's mocks (pkg/nvml/mock/dgx*) implement identity, memory and MIG
// profile calls but leave utilisation, temperature, power, processes and MIG
// device handles unset (calling them panics), give every GPU a random UUID
// and report all memory as neither free nor used. Tests and the driver's
// test-only NVML path need stable UUIDs across processes (a reservation
// written by one plugin process is restored by the next), realistic free
// memory and a way to inject faults, so this package fills those gaps on top
// of the upstream mock instead of writing a fake NVML from scratch.
//
// Only tests import this package; the llorch binary does not.
package nvmlmock

import (
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxb200"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh200"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// Server is an upstream mock server plus the state the upstream one lacks.
// It satisfies nvml.Interface.
type Server struct {
	*server.Server
	kindID int

	mu    sync.Mutex
	procs map[string][]nvml.ProcessInfo // by device UUID
	lost  map[int]bool                  // physical index → ERROR_GPU_IS_LOST
	migs  map[int][]*mock.Device        // physical index → MIG devices
}

var kinds = map[string]struct {
	id  int
	gpu gpus.Config
	mk  func(...gpus.Config) *server.Server
}{
	"dgxa100": {1, gpus.A100_SXM4_40GB, dgxa100.NewWithGPUs},
	"dgxh100": {2, gpus.H100_SXM5_80GB, dgxh100.NewWithGPUs},
	"dgxh200": {3, gpus.H200_SXM5_141GB, dgxh200.NewWithGPUs},
	"dgxb200": {4, gpus.B200_SXM5_180GB, dgxb200.NewWithGPUs},
}

// Parse builds a server from a spec "kind" or "kind:N" (N GPUs, default 8),
// kind one of dgxa100, dgxh100, dgxh200, dgxb200.
func Parse(spec string) (*Server, error) {
	kind, count, hasCount := strings.Cut(spec, ":")
	n := 8
	if hasCount {
		v, err := strconv.Atoi(count)
		if err != nil || v < 0 || v > 64 {
			return nil, fmt.Errorf("nvml mock spec %q: GPU count must be 0..64", spec)
		}
		n = v
	}
	return New(kind, n)
}

// New builds a mock of the given DGX kind with n GPUs.
func New(kind string, n int) (*Server, error) {
	k, ok := kinds[kind]
	if !ok {
		return nil, fmt.Errorf("unknown nvml mock kind %q (want dgxa100, dgxh100, dgxh200 or dgxb200)", kind)
	}
	s := &Server{
		Server: k.mk(gpus.Multiple(n, k.gpu)...),
		kindID: k.id,
		procs:  map[string][]nvml.ProcessInfo{},
		lost:   map[int]bool{},
		migs:   map[int][]*mock.Device{},
	}
	for i := range s.Devices {
		s.complete(i)
	}
	return s, nil
}

// Device returns physical GPU i for per-test overrides.
func (s *Server) Device(i int) *server.Device { return s.Devices[i].(*server.Device) }

// UUID is the deterministic UUID of physical GPU i.
func (s *Server) UUID(i int) string { return s.Device(i).UUID }

func (s *Server) complete(i int) {
	d := s.Device(i)
	d.UUID = fmt.Sprintf("GPU-%08x-0000-4000-8000-%012x", s.kindID, i)
	d.PciBusID = fmt.Sprintf("00000000:%02X:00.0", 0x10+i)
	total := d.MemoryInfo.Total
	// A driver keeps some memory for itself; make free a bit below total
	// so tests see free ≠ total.
	used := uint64(512) << 20
	d.MemoryInfo = nvml.Memory{Total: total, Free: total - used, Used: used}

	gone := func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.lost[i] }
	uuidFn := d.GetUUIDFunc
	d.GetUUIDFunc = func() (string, nvml.Return) {
		if gone() {
			return "", nvml.ERROR_GPU_IS_LOST
		}
		return uuidFn()
	}
	d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
		if gone() {
			return nvml.Memory{}, nvml.ERROR_GPU_IS_LOST
		}
		d.RLock()
		defer d.RUnlock()
		return d.MemoryInfo, nvml.SUCCESS
	}
	d.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) {
		p := nvml.PciInfo{PciDeviceId: d.Config.PciDeviceId, Bus: uint32(0x10 + i)}
		for j, c := range []byte(d.PciBusID) {
			p.BusId[j] = int8(c)
		}
		return p, nvml.SUCCESS
	}
	d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
		if gone() {
			return nvml.Utilization{}, nvml.ERROR_GPU_IS_LOST
		}
		return nvml.Utilization{Gpu: 0, Memory: 0}, nvml.SUCCESS
	}
	d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return uint32(30 + i), nvml.SUCCESS }
	d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return 70000, nvml.SUCCESS }
	d.GetEnforcedPowerLimitFunc = func() (uint32, nvml.Return) { return 700000, nvml.SUCCESS }
	d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		if gone() {
			return nil, nvml.ERROR_GPU_IS_LOST
		}
		return s.processes(d.UUID), nvml.SUCCESS
	}
	d.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 7, nvml.SUCCESS }
	d.GetMigDeviceHandleByIndexFunc = func(j int) (nvml.Device, nvml.Return) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if j < 0 || j >= len(s.migs[i]) {
			return nil, nvml.ERROR_NOT_FOUND
		}
		return s.migs[i][j], nvml.SUCCESS
	}
	d.IsMigDeviceHandleFunc = func() (bool, nvml.Return) { return false, nvml.SUCCESS }
}

func (s *Server) processes(uuid string) []nvml.ProcessInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]nvml.ProcessInfo(nil), s.procs[uuid]...)
}

// SetProcesses replaces the compute processes NVML reports for a device
// (a GPU or MIG UUID).
func (s *Server) SetProcesses(uuid string, ps ...nvml.ProcessInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.procs[uuid] = ps
}

// SetFreeMiB sets the free memory of physical GPU i (used = total − free).
func (s *Server) SetFreeMiB(i int, free uint64) {
	d := s.Device(i)
	d.Lock()
	defer d.Unlock()
	f := min(free<<20, d.MemoryInfo.Total)
	d.MemoryInfo.Free, d.MemoryInfo.Used = f, d.MemoryInfo.Total-f
}

// SetLost makes calls on physical GPU i answer ERROR_GPU_IS_LOST
// (lost=true) or work again (lost=false).
func (s *Server) SetLost(i int, lost bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lost[i] = lost
}

// EnableMIG switches physical GPU i to MIG mode and creates count GPU
// instances of the given profile (nvml.GPU_INSTANCE_PROFILE_*), each exposed
// as a MIG device with its own UUID and the profile's memory. MIG devices
// answer NOT_SUPPORTED for utilisation, temperature and power, as real ones do.
func (s *Server) EnableMIG(i int, profile int, count int) ([]string, error) {
	d := s.Device(i)
	info, ret := d.GetGpuInstanceProfileInfo(profile)
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("GPU %d: MIG profile %d: %w", i, profile, ret)
	}
	d.SetMigMode(nvml.DEVICE_MIG_ENABLE)
	var uuids []string
	for j := 0; j < count; j++ {
		if _, ret := d.CreateGpuInstance(&info); ret != nvml.SUCCESS {
			return nil, fmt.Errorf("GPU %d: create GPU instance: %w", i, ret)
		}
		m := s.migDevice(i, j, d, info)
		s.mu.Lock()
		s.migs[i] = append(s.migs[i], m)
		s.mu.Unlock()
		uuids = append(uuids, s.migUUID(i, j))
	}
	return uuids, nil
}

func (s *Server) migUUID(i, j int) string {
	return fmt.Sprintf("MIG-%08x-%04x-4000-8000-%012x", s.kindID, i, j)
}

func (s *Server) migDevice(i, j int, parent *server.Device, info nvml.GpuInstanceProfileInfo) *mock.Device {
	uuid := s.migUUID(i, j)
	mem := info.MemorySizeMB << 20
	ns := nvml.ERROR_NOT_SUPPORTED
	return &mock.Device{
		GetUUIDFunc: func() (string, nvml.Return) { return uuid, nvml.SUCCESS },
		GetNameFunc: func() (string, nvml.Return) {
			return fmt.Sprintf("%s MIG %dg.%dgb", parent.Config.Name, info.SliceCount, info.MemorySizeMB/1024), nvml.SUCCESS
		},
		GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
			return nvml.Memory{Total: mem, Free: mem, Used: 0}, nvml.SUCCESS
		},
		GetPciInfoFunc:               func() (nvml.PciInfo, nvml.Return) { return nvml.PciInfo{}, ns },
		GetCudaComputeCapabilityFunc: func() (int, int, nvml.Return) { return 0, 0, ns },
		GetUtilizationRatesFunc:      func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, ns },
		GetTemperatureFunc:           func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, ns },
		GetPowerUsageFunc:            func() (uint32, nvml.Return) { return 0, ns },
		GetEnforcedPowerLimitFunc:    func() (uint32, nvml.Return) { return 0, ns },
		GetComputeRunningProcessesFunc: func() ([]nvml.ProcessInfo, nvml.Return) {
			return s.processes(uuid), nvml.SUCCESS
		},
		IsMigDeviceHandleFunc:                  func() (bool, nvml.Return) { return true, nvml.SUCCESS },
		GetDeviceHandleFromMigDeviceHandleFunc: func() (nvml.Device, nvml.Return) { return parent, nvml.SUCCESS },
	}
}
