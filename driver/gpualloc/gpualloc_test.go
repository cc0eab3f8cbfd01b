package gpualloc_test

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/llorch/llorch/driver/gpualloc"
)

// node is n GPUs of 80 GiB with the given free MiB each.
func node(free ...uint64) []gpualloc.Device {
	out := make([]gpualloc.Device, len(free))
	for i, f := range free {
		out[i] = gpualloc.Device{UUID: fmt.Sprintf("GPU-%d", i), Index: i, Name: fmt.Sprint(i), TotalMiB: 81920, FreeMiB: f}
	}
	return out
}

func uuids(r gpualloc.Reservation) []string {
	var out []string
	for _, g := range r.GPUs {
		out = append(out, g.UUID)
	}
	return out
}

var shared = gpualloc.Policy{Sharing: true, HeadroomMiB: 512}

func TestBestFitAndTies(t *testing.T) {
	tab := gpualloc.NewTable()
	devs := node(80000, 30000, 30000, 60000)
	r, err := tab.Assign("a", gpualloc.Request{VRAMMiB: 20000}, devs, shared)
	if err != nil {
		t.Fatal(err)
	}
	// GPUs 1 and 2 tie on room; the lower index wins.
	if got := uuids(r); !reflect.DeepEqual(got, []string{"GPU-1"}) {
		t.Errorf("best fit chose %v, want GPU-1", got)
	}
	r, err = tab.Assign("b", gpualloc.Request{Count: 2, VRAMMiB: 20000}, devs, shared)
	if err != nil {
		t.Fatal(err)
	}
	// GPU-1 now has 30000-20000-512 room: too little; next tightest are 2, then 3.
	if got := uuids(r); !reflect.DeepEqual(got, []string{"GPU-2", "GPU-3"}) {
		t.Errorf("chose %v, want GPU-2, GPU-3", got)
	}
}

func TestSharingAndExhaustion(t *testing.T) {
	tab := gpualloc.NewTable()
	devs := node(40000)
	for i, want := range []bool{true, true, false} {
		_, err := tab.Assign(fmt.Sprint("t", i), gpualloc.Request{VRAMMiB: 15000}, devs, shared)
		if (err == nil) != want {
			t.Fatalf("task %d: err %v, want fit=%v", i, err, want)
		}
		if err != nil {
			var nf *gpualloc.NoFitError
			if !errors.As(err, &nf) {
				t.Fatalf("want *NoFitError, got %T %v", err, err)
			}
			msg := err.Error()
			for _, s := range []string{"1 GPU(s) with 15000 MiB each", "GPU-0", "free 40000 MiB", "reserved-pending 30000 MiB", "room 9488 MiB", "2 task(s)"} {
				if !strings.Contains(msg, s) {
					t.Errorf("message lacks %q: %s", s, msg)
				}
			}
		}
	}
	// Once the engines loaded, NVML free shows their memory; the
	// reservations must not be subtracted a second time.
	devs[0].FreeMiB = 10000
	devs[0].HeldMiB = map[string]uint64{"t0": 15000, "t1": 15000}
	if _, err := tab.Assign("t3", gpualloc.Request{VRAMMiB: 9000}, devs, shared); err != nil {
		t.Errorf("loaded engines counted twice: %v", err)
	}
	tab.Release("t0")
	tab.Release("t0") // idempotent
	if _, ok := tab.Get("t0"); ok {
		t.Error("released reservation still present")
	}
}

func TestExclusiveWithoutSharingOrVRAM(t *testing.T) {
	devs := node(80000, 80000)
	tab := gpualloc.NewTable()
	excl := gpualloc.Policy{Sharing: false}
	if _, err := tab.Assign("a", gpualloc.Request{VRAMMiB: 1000}, devs, excl); err != nil {
		t.Fatal(err)
	}
	r, err := tab.Assign("b", gpualloc.Request{VRAMMiB: 1000}, devs, excl)
	if err != nil || uuids(r)[0] != "GPU-1" {
		t.Fatalf("without sharing the second task must get GPU-1: %v %v", uuids(r), err)
	}
	if _, err := tab.Assign("c", gpualloc.Request{VRAMMiB: 1000}, devs, excl); err == nil {
		t.Error("third task fit on two exclusively held GPUs")
	}

	// With sharing on, a whole-GPU request still needs an untouched GPU,
	// and nobody joins it afterwards.
	tab = gpualloc.NewTable()
	if _, err := tab.Assign("small", gpualloc.Request{VRAMMiB: 1000}, devs, shared); err != nil {
		t.Fatal(err)
	}
	r, err = tab.Assign("whole", gpualloc.Request{Count: 1}, devs, shared)
	if err != nil || uuids(r)[0] != "GPU-1" {
		t.Fatalf("whole request: %v %v", uuids(r), err)
	}
	if !r.Whole() {
		t.Error("count-only request is not whole")
	}
	if _, err := tab.Assign("late", gpualloc.Request{Count: 1, VRAMMiB: 79000}, devs, shared); err == nil {
		t.Error("a task joined a GPU held whole")
	}
}

func TestExplicitUUIDs(t *testing.T) {
	devs := node(80000, 80000, 80000)
	tab := gpualloc.NewTable()
	r, err := tab.Assign("a", gpualloc.Request{UUIDs: []string{"GPU-2", "GPU-0"}, VRAMMiB: 1000}, devs, shared)
	if err != nil || !reflect.DeepEqual(uuids(r), []string{"GPU-2", "GPU-0"}) {
		t.Fatalf("%v %v", uuids(r), err)
	}
	var re *gpualloc.RequestError
	_, err = tab.Assign("b", gpualloc.Request{UUIDs: []string{"GPU-9"}}, devs, shared)
	if !errors.As(err, &re) || re.Field != "gpus[0]" {
		t.Errorf("unknown UUID: %v", err)
	}
	_, err = tab.Assign("b", gpualloc.Request{UUIDs: []string{"GPU-1", "GPU-1"}}, devs, shared)
	if !errors.As(err, &re) || re.Field != "gpus[1]" {
		t.Errorf("duplicate UUID: %v", err)
	}
	_, err = tab.Assign("b", gpualloc.Request{Count: 4}, devs, shared)
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "this node has 3") {
		t.Errorf("too many GPUs: %v", err)
	}
	var nf *gpualloc.NoFitError
	_, err = tab.Assign("b", gpualloc.Request{Count: 1}, nil, shared)
	if !errors.As(err, &nf) || !strings.Contains(err.Error(), "no GPU") {
		t.Errorf("GPU request on a node without GPUs: %v", err)
	}
}

func TestEnv(t *testing.T) {
	r := gpualloc.Reservation{TaskID: "a", GPUs: []gpualloc.Assigned{{UUID: "GPU-aa", Name: "3"}, {UUID: "GPU-bb", Name: "5"}}}
	want := map[string]string{"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "NVIDIA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}
	if got := r.Env(false); !reflect.DeepEqual(got, want) {
		t.Errorf("uuid env %v", got)
	}
	if got := r.Env(true)["CUDA_VISIBLE_DEVICES"]; got != "3,5" {
		t.Errorf("numeric env %q", got)
	}
	mig := gpualloc.Reservation{TaskID: "m", GPUs: []gpualloc.Assigned{{UUID: "MIG-cc", Name: "1:0"}}}
	if got := mig.Env(true)["CUDA_VISIBLE_DEVICES"]; got != "MIG-cc" {
		t.Errorf("MIG must stay a UUID even when numeric is asked: %q", got)
	}
	none := gpualloc.Reservation{TaskID: "cpu"}
	if got := none.Env(false); got["CUDA_VISIBLE_DEVICES"] != "" || got["NVIDIA_VISIBLE_DEVICES"] != "void" {
		t.Errorf("no-GPU env %v", got)
	}
}

func TestReservationSurvivesSerialiseRestore(t *testing.T) {
	devs := node(40000, 40000)
	tab := gpualloc.NewTable()
	r, err := tab.Assign("alloc/task/1", gpualloc.Request{Count: 2, VRAMMiB: 30000}, devs, shared)
	if err != nil {
		t.Fatal(err)
	}
	state, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// A new plugin process: empty table, RecoverTask restores from state.
	fresh := gpualloc.NewTable()
	back, err := gpualloc.Unmarshal(state)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, r) {
		t.Fatalf("round trip: %+v != %+v", back, r)
	}
	if err := fresh.Restore(back); err != nil {
		t.Fatal(err)
	}
	if _, err := fresh.Assign("other", gpualloc.Request{VRAMMiB: 20000}, devs, shared); err == nil {
		t.Error("restored reservation did not block an overcommit")
	}
	if _, err := gpualloc.Unmarshal([]byte(`{"gpus":[]}`)); err == nil {
		t.Error("reservation without task_id accepted")
	}
	if _, err := gpualloc.Unmarshal([]byte(`{`)); err == nil {
		t.Error("garbage accepted")
	}
}
