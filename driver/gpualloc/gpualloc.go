// Package gpualloc decides which GPUs a task gets. It is pure logic over a
// list of devices (from the fingerprint) and a table of the reservations
// this driver's running tasks hold; no NVML, no protocol.
//
// Rules (the policy, in one place):
//
//   - vram_mib is per GPU. A task asking for VRAM gets GPUs whose room fits
//     it; room = NVML free − what our other tasks reserved but have not
//     allocated yet − vram_headroom_mib. "Not allocated yet" is
//     max(0, reserved − held), held taken from NVML's per-process memory:
//     an engine that has loaded its model already shows in NVML free, and
//     subtracting its reservation again would count it twice.
//   - A task that asks for GPUs without vram_mib takes them whole: nobody
//     else is placed on them, because we cannot know what it will use.
//   - gpu_sharing = false makes every reservation exclusive.
//   - Choice is deterministic. VRAM requests are best fit (least room that
//     still fits, ties by lower index): small engines pack together and
//     whole GPUs stay free for big models. Whole-GPU requests take the
//     unreserved GPUs with the lowest index.
//   - Explicit UUIDs are honoured as given (still checked for room).
package gpualloc

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Device is one schedulable GPU (a whole GPU or a MIG instance).
type Device struct {
	UUID string
	// Index orders devices and breaks ties (the fingerprint's GPU.Index).
	Index int
	// Name is nvidia-smi's notation, "3" or "3:1" (MIG); a plain number
	// doubles as the CUDA index under CUDA_DEVICE_ORDER=PCI_BUS_ID.
	Name     string
	TotalMiB uint64
	FreeMiB  uint64
	// HeldMiB is what each of our tasks (by task ID) already holds on this
	// device according to NVML's per-process memory.
	HeldMiB map[string]uint64
}

// Request is what a task asks for.
type Request struct {
	Count   int      // number of GPUs; 0 with VRAMMiB > 0 means 1
	UUIDs   []string // exact GPUs; Count, when set, must match
	VRAMMiB uint64   // per GPU; 0 = whole GPUs
}

// Wants reports whether the request asks for any GPU.
func (r Request) Wants() bool { return r.Count > 0 || len(r.UUIDs) > 0 || r.VRAMMiB > 0 }

func (r Request) count() int {
	switch {
	case len(r.UUIDs) > 0:
		return len(r.UUIDs)
	case r.Count == 0 && r.VRAMMiB > 0:
		return 1
	}
	return r.Count
}

func (r Request) String() string {
	what := fmt.Sprintf("%d GPU(s)", r.count())
	if len(r.UUIDs) > 0 {
		what = strings.Join(r.UUIDs, ",")
	}
	if r.VRAMMiB == 0 {
		return what + ", whole"
	}
	return fmt.Sprintf("%s with %d MiB each", what, r.VRAMMiB)
}

// Policy is the plugin config's part of the decision.
type Policy struct {
	Sharing     bool   // gpu_sharing: several tasks per GPU when VRAM allows
	HeadroomMiB uint64 // vram_headroom_mib: kept free on every GPU
}

// Assigned is one GPU of a reservation.
type Assigned struct {
	UUID string `json:"uuid"`
	Name string `json:"name"` // "3" or "3:1", see Device.Name
}

// Reservation is what a task holds. It is stored in the task's
// driver_state (Marshal) so a restarted plugin restores it (Restore).
type Reservation struct {
	TaskID  string     `json:"task_id"`
	GPUs    []Assigned `json:"gpus"`
	VRAMMiB uint64     `json:"vram_mib,omitempty"` // per GPU; 0 = whole GPUs
}

// Whole reports whether the reservation takes its GPUs whole.
func (r Reservation) Whole() bool { return r.VRAMMiB == 0 }

// Marshal encodes the reservation for driver_state.
func (r Reservation) Marshal() ([]byte, error) { return json.Marshal(r) }

// Unmarshal decodes what Marshal wrote.
func Unmarshal(b []byte) (Reservation, error) {
	var r Reservation
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("decode GPU reservation: %w", err)
	}
	if r.TaskID == "" {
		return r, fmt.Errorf("decode GPU reservation: task_id is empty")
	}
	return r, nil
}

// Env pins an engine to its GPUs.
//
// UUIDs by default: NVML's index order (PCI bus) and CUDA's default order
// (fastest first) differ, indices shift when a GPU drops off the bus, and a
// MIG instance can only be named by its MIG-… UUID. numeric asks for plain
// indices instead, for engines that parse CUDA_VISIBLE_DEVICES as integers
// (vLLM does); CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA count the way NVML
// does. MIG instances have no index, so they stay UUIDs either way.
//
// An empty reservation hides every GPU, so an engine that asked for none
// (a CUDA build of llama.cpp on CPU) cannot quietly grab memory that
// other tasks reserved.
func (r Reservation) Env(numeric bool) map[string]string {
	if len(r.GPUs) == 0 {
		return map[string]string{"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"}
	}
	ids := make([]string, len(r.GPUs))
	uuids := make([]string, len(r.GPUs))
	allNumeric := true
	for i, g := range r.GPUs {
		ids[i], uuids[i] = g.Name, g.UUID
		if g.Name == "" || strings.Trim(g.Name, "0123456789") != "" {
			allNumeric = false
		}
	}
	cuda := strings.Join(uuids, ",")
	if numeric && allNumeric {
		cuda = strings.Join(ids, ",")
	}
	return map[string]string{
		"CUDA_VISIBLE_DEVICES":   cuda,
		"CUDA_DEVICE_ORDER":      "PCI_BUS_ID",
		"NVIDIA_VISIBLE_DEVICES": strings.Join(uuids, ","),
	}
}

// RequestError is a request that can never be met on this node (unknown
// UUID, more GPUs than the node has): retrying will not help.
type RequestError struct {
	Field string
	Msg   string
}

func (e *RequestError) Error() string { return e.Field + ": " + e.Msg }

// Room is one GPU's situation, for the "nothing fits" message.
type Room struct {
	UUID       string
	Index      int
	FreeMiB    uint64 // NVML free
	PendingMiB uint64 // reserved by our tasks, not yet allocated
	RoomMiB    uint64 // what a new task could get (after headroom)
	Tasks      int    // our reservations on it
	HeldWhole  bool   // a task holds it whole (or sharing is off)
}

// NoFitError means nothing fits now; it may later (tasks stop, memory
// frees), so the driver reports it as recoverable.
type NoFitError struct {
	Request Request
	Policy  Policy
	GPUs    []Room
}

func (e *NoFitError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "no GPU fits %s (headroom %d MiB, sharing %v)", e.Request, e.Policy.HeadroomMiB, e.Policy.Sharing)
	if len(e.GPUs) == 0 {
		b.WriteString(": this node reports no GPU")
		return b.String()
	}
	b.WriteString("; per GPU:")
	for _, g := range e.GPUs {
		fmt.Fprintf(&b, " [%d %s: free %d MiB, reserved-pending %d MiB, room %d MiB, %d task(s)", g.Index, g.UUID, g.FreeMiB, g.PendingMiB, g.RoomMiB, g.Tasks)
		if g.HeldWhole {
			b.WriteString(", held exclusively")
		}
		b.WriteString("]")
	}
	return b.String()
}

// Table is the reservations of this driver's tasks. Safe for concurrent use.
type Table struct {
	mu  sync.Mutex
	res map[string]Reservation
}

// NewTable returns an empty table.
func NewTable() *Table { return &Table{res: map[string]Reservation{}} }

// Get returns a task's reservation.
func (t *Table) Get(taskID string) (Reservation, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.res[taskID]
	return r, ok
}

// Release frees a task's reservation; unknown IDs are fine (idempotent).
func (t *Table) Release(taskID string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.res, taskID)
}

// Restore puts back a reservation read from driver_state. The task is
// already running on those GPUs, so it is restored even if it overcommits
// them now: the table must describe reality, not re-decide it.
func (t *Table) Restore(r Reservation) error {
	if r.TaskID == "" {
		return fmt.Errorf("restore GPU reservation: task_id is empty")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.res[r.TaskID] = r
	return nil
}

// Assign picks GPUs for a task and records the reservation. A task that
// already holds one (a retried start) has it replaced.
func (t *Table) Assign(taskID string, req Request, devs []Device, pol Policy) (Reservation, error) {
	if taskID == "" {
		return Reservation{}, &RequestError{Field: "task_id", Msg: "is empty"}
	}
	if req.Count < 0 {
		return Reservation{}, &RequestError{Field: "gpus", Msg: fmt.Sprintf("count must not be negative, got %d", req.Count)}
	}
	if len(req.UUIDs) > 0 && req.Count > 0 && req.Count != len(req.UUIDs) {
		return Reservation{}, &RequestError{Field: "gpus", Msg: fmt.Sprintf("count %d does not match the %d UUIDs given", req.Count, len(req.UUIDs))}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.res, taskID)
	res := Reservation{TaskID: taskID, VRAMMiB: req.VRAMMiB}
	if !req.Wants() {
		t.res[taskID] = res
		return res, nil
	}
	rooms := t.rooms(devs, pol)
	fits := func(i int) bool {
		r := rooms[i]
		if r.HeldWhole {
			return false
		}
		if req.VRAMMiB == 0 {
			return r.Tasks == 0 // whole: nobody else on it
		}
		return r.RoomMiB >= req.VRAMMiB
	}
	var chosen []int
	if len(req.UUIDs) > 0 {
		byUUID := make(map[string]int, len(devs))
		for i, d := range devs {
			byUUID[d.UUID] = i
		}
		seen := map[string]bool{}
		for n, u := range req.UUIDs {
			i, ok := byUUID[u]
			if !ok {
				return Reservation{}, &RequestError{Field: fmt.Sprintf("gpus[%d]", n), Msg: fmt.Sprintf("no GPU with UUID %q on this node", u)}
			}
			if seen[u] {
				return Reservation{}, &RequestError{Field: fmt.Sprintf("gpus[%d]", n), Msg: fmt.Sprintf("UUID %q listed twice", u)}
			}
			seen[u] = true
			if !fits(i) {
				return Reservation{}, &NoFitError{Request: req, Policy: pol, GPUs: rooms}
			}
			chosen = append(chosen, i)
		}
	} else {
		want := req.count()
		if want > len(devs) {
			if len(devs) == 0 {
				return Reservation{}, &NoFitError{Request: req, Policy: pol}
			}
			return Reservation{}, &RequestError{Field: "gpus", Msg: fmt.Sprintf("asks for %d GPUs, this node has %d", want, len(devs))}
		}
		var cands []int
		for i := range devs {
			if fits(i) {
				cands = append(cands, i)
			}
		}
		if len(cands) < want {
			return Reservation{}, &NoFitError{Request: req, Policy: pol, GPUs: rooms}
		}
		sort.SliceStable(cands, func(a, b int) bool {
			ra, rb := rooms[cands[a]], rooms[cands[b]]
			if req.VRAMMiB > 0 && ra.RoomMiB != rb.RoomMiB {
				return ra.RoomMiB < rb.RoomMiB
			}
			return ra.Index < rb.Index
		})
		chosen = cands[:want]
	}
	for _, i := range chosen {
		res.GPUs = append(res.GPUs, Assigned{UUID: devs[i].UUID, Name: devs[i].Name})
	}
	t.res[taskID] = res
	return res, nil
}

// rooms computes every device's situation; t.mu must be held.
func (t *Table) rooms(devs []Device, pol Policy) []Room {
	out := make([]Room, len(devs))
	for i, d := range devs {
		r := Room{UUID: d.UUID, Index: d.Index, FreeMiB: d.FreeMiB}
		for _, res := range t.res {
			for _, g := range res.GPUs {
				if g.UUID != d.UUID {
					continue
				}
				r.Tasks++
				if res.Whole() || !pol.Sharing {
					r.HeldWhole = true
				}
				if held := d.HeldMiB[res.TaskID]; res.VRAMMiB > held {
					r.PendingMiB += res.VRAMMiB - held
				}
			}
		}
		if used := r.PendingMiB + pol.HeadroomMiB; d.FreeMiB > used {
			r.RoomMiB = d.FreeMiB - used
		}
		out[i] = r
	}
	return out
}
