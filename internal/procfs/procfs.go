// Package procfs reads what llorch needs from /proc: process state, start
// times (which with the pid name one process for ever), trees, groups.
// The driver and the home profile share it.
package procfs

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Stat is the part of /proc/<pid>/stat the driver uses.
type Stat struct {
	PID, PPID, PGRP int
	State           byte
	UTime, STime    uint64 // clock ticks
	StartTime       uint64 // clock ticks after boot; with the pid, names one process for ever
	RSSPages        int64
}

// ReadStat parses /proc/<pid>/stat. The command name may contain
// spaces and parentheses, so fields are counted from the last ')'.
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return Stat{}, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(b[i+2:]))
	// f[0] is field 3 (state); field N is f[N-3].
	if len(f) < 22 {
		return Stat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	num := func(n int) uint64 { v, _ := strconv.ParseUint(f[n-3], 10, 64); return v }
	rss, _ := strconv.ParseInt(f[24-3], 10, 64)
	return Stat{
		PID: pid, PPID: int(num(4)), PGRP: int(num(5)), State: f[0][0],
		UTime: num(14), STime: num(15), StartTime: num(22), RSSPages: rss,
	}, nil
}

// Alive reports whether pid is still the process that started at
// start (guarding against pid reuse) and has not exited (a zombie counts as
// exited: its parent may not be us and may never reap it).
func Alive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	st, err := ReadStat(pid)
	if err != nil {
		return false
	}
	if start != 0 && st.StartTime != start {
		return false
	}
	return st.State != 'Z' && st.State != 'X'
}

// Tree returns root and all its descendants that are alive.
func Tree(root int) []Stat {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]Stat{}
	var rootStat *Stat
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := ReadStat(pid)
		if err != nil || st.State == 'Z' {
			continue
		}
		if pid == root {
			s := st
			rootStat = &s
		}
		children[st.PPID] = append(children[st.PPID], st)
	}
	if rootStat == nil {
		return nil
	}
	out := []Stat{*rootStat}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i].PID]...)
	}
	return out
}

// GroupMembers lists live pids whose process group is pgid.
func GroupMembers(pgid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := ReadStat(pid); err == nil && st.PGRP == pgid && st.State != 'Z' {
			out = append(out, pid)
		}
	}
	return out
}

// SwapBytes reads VmSwap from /proc/<pid>/status.
func SwapBytes(pid int) uint64 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "VmSwap:") {
			fs := strings.Fields(line)
			if len(fs) >= 2 {
				kb, _ := strconv.ParseUint(fs[1], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

// CPUMHz is the first core's clock from /proc/cpuinfo (0 when unknown);
// Nomad accounts CPU in MHz, so percent is converted with it.
func CPUMHz() float64 {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "cpu MHz") {
			if i := strings.IndexByte(line, ':'); i > 0 {
				v, _ := strconv.ParseFloat(strings.TrimSpace(line[i+1:]), 64)
				return v
			}
		}
	}
	return 0
}

// Environ is the environment pid started with, if pid is still the process
// that started at start (checked after reading, so a reused pid is never
// read as ours). Reading another user's needs root.
func Environ(pid int, start uint64) ([]string, error) {
	if !Alive(pid, start) {
		return nil, fmt.Errorf("process %d is gone", pid)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return nil, err
	}
	if !Alive(pid, start) {
		return nil, fmt.Errorf("process %d is gone", pid)
	}
	var out []string
	for _, kv := range bytes.Split(b, []byte{0}) {
		if len(kv) > 0 {
			out = append(out, string(kv))
		}
	}
	return out, nil
}
