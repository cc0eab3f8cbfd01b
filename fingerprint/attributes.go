package fingerprint

import (
	"fmt"
	"strings"
)

// Attr is one node attribute, shaped like the plugin protocol's Attribute
// (exactly one value set, plus a unit) but free of protobuf so this package
// stays usable by the CLI; the driver converts.
type Attr struct {
	Int    *int64
	Float  *float64
	String *string
	Bool   *bool
	Unit   string
}

// Int, Str and MiB build attributes.
func Int(v int64) Attr      { return Attr{Int: &v} }
func MiB(v uint64) Attr     { n := int64(v); return Attr{Int: &n, Unit: "MiB"} }
func Str(v string) Attr     { return Attr{String: &v} }
func deleted() Attr         { return Str("") }
func (a Attr) isFree() bool { return a.Int != nil }

// Render is the attribute as Nomad stores it in node.Attributes: Go's %v
// of the value with the unit appended without a space ("24576MiB").
func (a Attr) Render() string {
	var v any
	switch {
	case a.Int != nil:
		v = *a.Int
	case a.Float != nil:
		v = *a.Float
	case a.String != nil:
		v = *a.String
	case a.Bool != nil:
		v = *a.Bool
	default:
		return ""
	}
	return fmt.Sprintf("%v%s", v, a.Unit)
}

// Prefix is where the driver's attributes live; Nomad copies keys verbatim
// into node.Attributes, so they must carry "driver.<plugin name>.".
const Prefix = "driver.llorch."

// Attributes lists the node attributes of a snapshot (keys include prefix):
//
//	gpu.count                       int
//	gpu.<i>.uuid, gpu.<i>.name      string
//	gpu.<i>.memory.total/.free      int MiB
//	vram.total, vram.free, vram.largest_free   int MiB (over all GPUs)
//	vram.total_mib, vram.free_mib, vram.largest_free_mib   the same, unit-less
//	nvml.driver_version, nvml.cuda_version     string
//
// <i> is GPU.Index. Without NVML only gpu.count (0) and the vram sums (0)
// are set, so job constraints on them evaluate instead of failing to parse.
func Attributes(prefix string, s Snapshot) map[string]Attr {
	out := map[string]Attr{prefix + "gpu.count": Int(int64(len(s.GPUs)))}
	var total, free, largest uint64
	for _, g := range s.GPUs {
		p := fmt.Sprintf("%sgpu.%d.", prefix, g.Index)
		out[p+"uuid"] = Str(g.UUID)
		if g.Name != "" {
			out[p+"name"] = Str(g.Name)
		}
		if g.MemoryTotalMiB != nil {
			out[p+"memory.total"] = MiB(*g.MemoryTotalMiB)
			total += *g.MemoryTotalMiB
		}
		if g.MemoryFreeMiB != nil {
			out[p+"memory.free"] = MiB(*g.MemoryFreeMiB)
			free += *g.MemoryFreeMiB
			largest = max(largest, *g.MemoryFreeMiB)
		}
	}
	out[prefix+"vram.total"] = MiB(total)
	out[prefix+"vram.free"] = MiB(free)
	out[prefix+"vram.largest_free"] = MiB(largest)
	// Unit-less twins for job constraints: Nomad compares attribute values
	// numerically only when both sides parse as numbers, and "24576MiB"
	// does not, so `>=` on the MiB attributes would compare strings.
	out[prefix+"vram.total_mib"] = Int(int64(total))
	out[prefix+"vram.free_mib"] = Int(int64(free))
	out[prefix+"vram.largest_free_mib"] = Int(int64(largest))
	if s.DriverVersion != "" {
		out[prefix+"nvml.driver_version"] = Str(s.DriverVersion)
	}
	if s.CUDAVersion != "" {
		out[prefix+"nvml.cuda_version"] = Str(s.CUDAVersion)
	}
	return out
}

// FreeNoiseMiB is how far a free-memory attribute must move from the value
// last sent before it counts as a change. Free VRAM moves by a few MiB all
// the time (allocator caches, KV growth); every change Nomad sees becomes a
// node update written through the servers' Raft log, so small moves are
// ignored. Comparing with the last *sent* value (not fixed buckets) means a
// value hovering at a boundary never flaps, and drift still gets reported
// once it adds up.
const FreeNoiseMiB = 256

// isFreeKey reports the attributes that carry free memory.
func isFreeKey(k string) bool {
	return strings.HasSuffix(k, ".memory.free") || strings.HasSuffix(k, "vram.free") || strings.HasSuffix(k, "vram.largest_free") ||
		strings.HasSuffix(k, "vram.free_mib") || strings.HasSuffix(k, "vram.largest_free_mib")
}

// Changed reports whether next differs from what was last sent in a way
// worth a fingerprint: any key added or removed, any value other than free
// memory changed, or free memory moved by FreeNoiseMiB or more.
//
// A "" string in sent is a deletion already sent (see WithDeletions) and
// counts as absent.
func Changed(sent, next map[string]Attr) bool {
	sent, next = live(sent), live(next)
	if len(sent) != len(next) {
		return true
	}
	for k, n := range next {
		s, ok := sent[k]
		if !ok {
			return true
		}
		if isFreeKey(k) && s.isFree() && n.isFree() {
			d := *s.Int - *n.Int
			if d >= FreeNoiseMiB || -d >= FreeNoiseMiB {
				return true
			}
			continue
		}
		if s.Render() != n.Render() || s.Unit != n.Unit || kind(s) != kind(n) {
			return true
		}
	}
	return false
}

func isDeletion(a Attr) bool { return a.String != nil && *a.String == "" }

// live drops deletions.
func live(m map[string]Attr) map[string]Attr {
	out := make(map[string]Attr, len(m))
	for k, v := range m {
		if !isDeletion(v) {
			out[k] = v
		}
	}
	return out
}

func kind(a Attr) string {
	switch {
	case a.Int != nil:
		return "int"
	case a.Float != nil:
		return "float"
	case a.String != nil:
		return "string"
	case a.Bool != nil:
		return "bool"
	}
	return ""
}

// WithDeletions returns next plus an empty string for every key that was
// sent before and is gone now: the Nomad client merges driver attributes
// into the node, and "" is how a driver deletes one (a GPU that vanished
// must not linger as gpu.7.*). Deletions already in sent are kept, so the
// result can be stored and compared again without flapping.
func WithDeletions(sent, next map[string]Attr) map[string]Attr {
	out := make(map[string]Attr, len(next))
	for k, v := range next {
		out[k] = v
	}
	for k := range sent {
		if _, ok := next[k]; !ok {
			out[k] = deleted()
		}
	}
	return out
}
