package driver

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/llorch/llorch/driver/gpualloc"
	"github.com/llorch/llorch/fingerprint"
	"github.com/llorch/llorch/internal/nomadpb/structs"
	"github.com/llorch/llorch/internal/procfs"
)

// GPU discovery (fingerprint/) and assignment (gpualloc/) wired into the
// driver. The driver's other files call the six methods below; the state
// lives in Driver.gpus, whose zero value is ready (initialised on first use,
// so the agent's short validation launches never touch NVML).

// newNVML is how the driver reaches NVML. The llorch_nvmlmock build tag
// (tests only, gpu_nvmlmock.go) replaces it with go-nvml's mock so the
// protocol tests, which run the plugin as a separate process, can fingerprint
// GPUs on machines without any.
var newNVML = func() (nvml.Interface, error) { return nvml.New(), nil }

// gpuState is the driver's GPU bookkeeping.
type gpuState struct {
	once  sync.Once
	src   *fingerprint.Source // nil when newNVML failed
	table *gpualloc.Table
	why   string // newNVML's error

	mu   sync.Mutex
	snap fingerprint.Snapshot
	// published is what the Fingerprint stream last carried. It only moves
	// when fingerprint.Changed says the news is worth a node update (free
	// memory moves by FreeNoiseMiB or more, or anything else changes), so
	// the stream, which sends when its response differs, is not chatty.
	published map[string]fingerprint.Attr
}

func (d *Driver) gpuInit() *gpuState {
	g := &d.gpus
	g.once.Do(func() {
		g.table = gpualloc.NewTable()
		lib, err := newNVML()
		if err != nil {
			g.why = err.Error()
			return
		}
		g.src = fingerprint.New(lib)
	})
	return g
}

// refresh reads NVML now and keeps the result for gpuHealth.
func (g *gpuState) refresh() fingerprint.Snapshot {
	var snap fingerprint.Snapshot
	if g.src == nil {
		snap = fingerprint.Snapshot{Status: fingerprint.Status{Reason: g.why}, GPUs: []fingerprint.GPU{}}
	} else {
		snap = g.src.Refresh()
	}
	g.mu.Lock()
	g.snap = snap
	g.mu.Unlock()
	return snap
}

// gpuAttributes is merged into every Fingerprint response; the stream
// calls it once per fingerprint_period, which is what paces NVML reads.
func (d *Driver) gpuAttributes() map[string]*structs.Attribute {
	g := d.gpuInit()
	snap := g.refresh()
	fresh := fingerprint.Attributes(fingerprint.Prefix, snap)
	g.mu.Lock()
	if g.published == nil || fingerprint.Changed(g.published, fresh) {
		// Keys that vanished (a lost GPU) stay as "" so the agent deletes
		// them from the node; Changed ignores such tombstones.
		g.published = fingerprint.WithDeletions(g.published, fresh)
	}
	out := make(map[string]*structs.Attribute, len(g.published))
	for k, a := range g.published {
		out[k] = toAttribute(a)
	}
	g.mu.Unlock()
	if snap.Fault != "" {
		d.metrics.fingerprintError(d.nodeID())
		d.log.Warn("GPU fault", "fault", snap.Fault)
	}
	return out
}

func toAttribute(a fingerprint.Attr) *structs.Attribute {
	out := &structs.Attribute{Unit: a.Unit}
	switch {
	case a.Int != nil:
		out.Value = &structs.Attribute_IntVal{IntVal: *a.Int}
	case a.Float != nil:
		out.Value = &structs.Attribute_FloatVal{FloatVal: *a.Float}
	case a.Bool != nil:
		out.Value = &structs.Attribute_BoolVal{BoolVal: *a.Bool}
	case a.String != nil:
		out.Value = &structs.Attribute_StringVal{StringVal: *a.String}
	}
	return out
}

// gpuHealth is the GPU part of the driver's health, from the refresh the
// same fingerprint just made: unhealthy when require_gpu is set and no GPU
// is usable, or when a GPU failed (whatever require_gpu says: tasks pinned
// to it are broken). It recovers at the first refresh that succeeds.
func (d *Driver) gpuHealth() (ok bool, why string) {
	g := d.gpuInit()
	g.mu.Lock()
	snap := g.snap
	g.mu.Unlock()
	return snap.Health(d.config().RequireGPU)
}

// numericDevices lists the engines that need CUDA_VISIBLE_DEVICES as
// integers: vLLM parses each entry with int() and fails on GPU-/MIG- UUIDs
// (vllm-project/vllm issues 13815, 20939, 41848).
var numericDevices = map[string]bool{"vllm": true}

// assignGPUs reserves GPUs for a task before launch. env pins the engine to
// them; reservation goes into the task's driver_state and comes back
// through restoreGPUs. Errors are reported as recoverable by the caller:
// *gpualloc.NoFitError says what was asked and what each GPU has free.
//
// A task that asks for no GPU on a node with GPUs gets them all hidden
// (CUDA_VISIBLE_DEVICES=""), so a CUDA build of an engine cannot take
// memory that other tasks reserved.
func (d *Driver) assignGPUs(taskID string, cfg TaskConfig) (env map[string]string, reservation []byte, err error) {
	g := d.gpuInit()
	req := gpualloc.Request{Count: cfg.GPUCount, UUIDs: cfg.GPUIDs}
	if cfg.VRAMMiB > 0 {
		req.VRAMMiB = uint64(cfg.VRAMMiB)
	}
	// Free memory must be current at the moment of choice, not a period old.
	snap := g.refresh()
	if !req.Wants() {
		if snap.Status.Available && len(snap.GPUs) > 0 {
			return gpualloc.Reservation{TaskID: taskID}.Env(false), nil, nil
		}
		return nil, nil, nil
	}
	if !snap.Status.Available {
		return nil, nil, fmt.Errorf("no GPUs fingerprinted on this node (NVML not available: %s); the task asks for %s", snap.Status.Reason, req)
	}
	pol := gpualloc.Policy{Sharing: d.config().GPUSharing}
	if h := d.config().VRAMHeadroomMiB; h > 0 {
		pol.HeadroomMiB = uint64(h)
	}
	res, err := g.table.Assign(taskID, req, d.gpuDevices(snap), pol)
	if err != nil {
		var nf *gpualloc.NoFitError
		if errors.As(err, &nf) && snap.Fault != "" {
			return nil, nil, fmt.Errorf("%w (GPU fault: %s)", err, snap.Fault)
		}
		return nil, nil, err
	}
	b, err := res.Marshal()
	if err != nil {
		g.table.Release(taskID)
		return nil, nil, fmt.Errorf("encode GPU reservation: %w", err)
	}
	eng := cfg.Engine
	if eng == "" {
		eng = d.config().DefaultEngine
	}
	env = res.Env(numericDevices[eng])
	d.log.Info("GPUs reserved", "task_id", taskID, "gpus", env["NVIDIA_VISIBLE_DEVICES"], "vram_mib_per_gpu", res.VRAMMiB)
	return env, b, nil
}

// gpuDevices turns a snapshot into gpualloc's input, with what each of our
// running tasks already holds per GPU (NVML per-process memory, matched by
// the task's process tree).
func (d *Driver) gpuDevices(snap fingerprint.Snapshot) []gpualloc.Device {
	taskOf := map[int]string{}
	for _, h := range d.tasks.all() {
		if h.Pid() <= 0 {
			continue
		}
		for _, p := range procfs.Tree(h.Pid()) {
			taskOf[p.PID] = h.TaskID()
		}
	}
	held := map[string]map[string]uint64{} // GPU UUID → task → MiB
	for _, p := range snap.Processes {
		task, ok := taskOf[p.PID]
		if !ok || p.UsedBytes == nil {
			continue
		}
		if held[p.GPUUUID] == nil {
			held[p.GPUUUID] = map[string]uint64{}
		}
		held[p.GPUUUID][task] += *p.UsedBytes >> 20
	}
	out := make([]gpualloc.Device, 0, len(snap.GPUs))
	for _, gpu := range snap.GPUs {
		dev := gpualloc.Device{UUID: gpu.UUID, Index: gpu.Index, Name: gpu.Device, HeldMiB: held[gpu.UUID]}
		if gpu.MemoryTotalMiB != nil {
			dev.TotalMiB = *gpu.MemoryTotalMiB
		}
		if gpu.MemoryFreeMiB != nil {
			dev.FreeMiB = *gpu.MemoryFreeMiB
		}
		out = append(out, dev)
	}
	return out
}

// releaseGPUs frees a task's reservation (DestroyTask, failed start).
func (d *Driver) releaseGPUs(taskID string) { d.gpuInit().table.Release(taskID) }

// restoreGPUs re-creates a reservation after a plugin restart, from the
// bytes assignGPUs returned. A task that held no GPU has none.
func (d *Driver) restoreGPUs(taskID string, reservation []byte) error {
	if len(reservation) == 0 {
		return nil
	}
	r, err := gpualloc.Unmarshal(reservation)
	if err != nil {
		return err
	}
	if r.TaskID != taskID {
		return fmt.Errorf("GPU reservation belongs to task %q, not %q", r.TaskID, taskID)
	}
	return d.gpuInit().table.Restore(r)
}

// gpuTaskMemoryBytes is the GPU memory a task's processes hold, summed
// over all GPUs, from NVML's per-process accounting. The Nomad protocol's
// TaskResourceUsage has no GPU field, so this is for our own metrics and
// events; ok is false where NVML cannot tell.
func (d *Driver) gpuTaskMemoryBytes(h *taskHandle) (bytes uint64, ok bool) {
	g := d.gpuInit()
	if g.src == nil || h.Pid() <= 0 {
		return 0, false
	}
	procs, err := g.src.Processes()
	if err != nil {
		return 0, false
	}
	var pids []int
	for _, p := range procfs.Tree(h.Pid()) {
		pids = append(pids, p.PID)
	}
	return fingerprint.Snapshot{Processes: procs}.TaskMemoryBytes(pids), true
}

// nvidiaVisibleDevices is what Nomad's nvidia device plugin sets in a
// task's device env for the GPUs it reserved (`device "nvidia/gpu"`).
const nvidiaVisibleDevices = "NVIDIA_VISIBLE_DEVICES"

// deviceGPUEnv pins the engine of a task that got its GPUs from Nomad's
// device plugin to those GPUs. The agent's device env is left as it is:
// only CUDA_VISIBLE_DEVICES is added when the agent did not set it (a
// process outside a container runtime reads that, not
// NVIDIA_VISIBLE_DEVICES), with indices for engines that need them.
func (d *Driver) deviceGPUEnv(st taskState) map[string]string {
	if _, set := st.Env["CUDA_VISIBLE_DEVICES"]; set {
		return nil
	}
	ids := strings.Split(st.DeviceGPUs, ",")
	switch strings.TrimSpace(strings.ToLower(st.DeviceGPUs)) {
	case "all":
		return nil
	case "none", "void":
		return map[string]string{"CUDA_VISIBLE_DEVICES": ""}
	}
	if numericDevices[st.Engine] {
		index := map[string]int{}
		for _, g := range d.gpuInit().refresh().GPUs {
			index[g.UUID] = g.Index
		}
		var out []string
		for _, id := range ids {
			i, ok := index[strings.TrimSpace(id)]
			if !ok {
				d.log.Warn("device GPU not fingerprinted; passing its UUID", "task_id", st.TaskID, "gpu", id)
				return map[string]string{"CUDA_VISIBLE_DEVICES": st.DeviceGPUs}
			}
			out = append(out, strconv.Itoa(i))
		}
		return map[string]string{"CUDA_VISIBLE_DEVICES": strings.Join(out, ",")}
	}
	return map[string]string{"CUDA_VISIBLE_DEVICES": st.DeviceGPUs}
}
