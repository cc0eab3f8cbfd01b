package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// NotEnforcedError says a limit was asked for that this host cannot apply
// where the engine runs (no memory controller in that part of the tree).
// The engine still runs in the group; the caller decides what to tell.
type NotEnforcedError struct {
	Dir, Controller, Why string
}

func (e *NotEnforcedError) Error() string {
	return fmt.Sprintf("cgroup %s: the %s controller is not available there (%s)", e.Dir, e.Controller, e.Why)
}

func (g *Group) applyV2(l Limits) error {
	if g.Source == "driver" {
		// A driver-made group needs its parents to hand the controllers
		// down. That fails (EBUSY) under a parent that holds processes
		// itself, which is the usual place of an agent under systemd; the
		// check below reports it.
		for _, d := range g.Made {
			_ = write(filepath.Dir(d), "cgroup.subtree_control", "+memory +cpu +pids")
		}
	}
	if l.MemoryMax > 0 {
		if !exists(g.Path, "memory.max") {
			return &NotEnforcedError{Dir: g.Path, Controller: "memory",
				Why: "its parent does not delegate memory in cgroup.subtree_control"}
		}
		if err := write(g.Path, "memory.max", strconv.FormatInt(l.MemoryMax, 10)); err != nil {
			return err
		}
		if l.MemoryLow > 0 {
			if err := write(g.Path, "memory.low", strconv.FormatInt(l.MemoryLow, 10)); err != nil {
				return err
			}
		}
	}
	if l.CPUShares > 0 && exists(g.Path, "cpu.weight") {
		if err := write(g.Path, "cpu.weight", strconv.FormatUint(sharesToWeight(l.CPUShares), 10)); err != nil {
			return err
		}
	}
	return nil
}

// sharesToWeight maps v1 cpu.shares [2, 262144] onto v2 cpu.weight
// [1, 10000] linearly, the mapping the OCI runtimes use.
func sharesToWeight(shares int64) uint64 {
	if shares < 2 {
		shares = 2
	}
	if shares > 262144 {
		shares = 262144
	}
	return uint64(1 + ((shares-2)*9999)/262142)
}

func (g *Group) applyV1(l Limits) error {
	if l.MemoryMax > 0 {
		mem := g.Paths["memory"]
		if mem == "" {
			return &NotEnforcedError{Dir: "(none)", Controller: "memory", Why: "no v1 memory hierarchy is mounted"}
		}
		if err := write(mem, "memory.limit_in_bytes", strconv.FormatInt(l.MemoryMax, 10)); err != nil {
			return err
		}
		if l.MemoryLow > 0 {
			if err := write(mem, "memory.soft_limit_in_bytes", strconv.FormatInt(l.MemoryLow, 10)); err != nil {
				return err
			}
		}
		// Like the agent's own executor: no swapping inside the limit, so
		// a task over it is OOM-killed instead of thrashing (best effort:
		// some kernels refuse it).
		_ = write(mem, "memory.swappiness", "0")
	}
	if cpu := g.Paths["cpu"]; l.CPUShares > 0 && cpu != "" {
		if err := write(cpu, "cpu.shares", strconv.FormatInt(max(l.CPUShares, 2), 10)); err != nil {
			return err
		}
	}
	return nil
}

// OpenFD opens a v2 group for SysProcAttr.CgroupFD, so the engine is born
// inside it (clone3 CLONE_INTO_CGROUP) and never runs a moment outside.
func (g *Group) OpenFD() (int, error) {
	if g.Version != 2 {
		return -1, errors.New("cgroup: OpenFD is for cgroup v2")
	}
	fd, err := unix.Open(g.Path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open cgroup %s: %w", g.Path, err)
	}
	return fd, nil
}

// EnterV1 moves the calling process into the group's v1 cgroups, so that
// a child started now is born there (v1 has no clone-into-cgroup), and
// returns the function that moves it back where it was.
func (g *Group) EnterV1() (restore func() error, err error) {
	if g.Version != 1 {
		return nil, errors.New("cgroup: EnterV1 is for cgroup v1")
	}
	selfText, err := Self()
	if err != nil {
		return nil, err
	}
	own, err := parseProcCgroup(selfText)
	if err != nil {
		return nil, err
	}
	pid := strconv.Itoa(os.Getpid())
	type move struct{ from, to string }
	var moved []move
	back := func() error {
		var errs []error
		for _, m := range moved {
			if err := write(m.from, "cgroup.procs", pid); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	for c, dir := range g.Paths {
		root := g.Roots[c]
		if root == "" {
			continue
		}
		if err := write(dir, "cgroup.procs", pid); err != nil {
			_ = back()
			return nil, err
		}
		moved = append(moved, move{from: filepath.Join(root, own[c]), to: dir})
	}
	return back, nil
}

func exists(dir, file string) bool {
	_, err := os.Stat(filepath.Join(dir, file))
	return err == nil
}
