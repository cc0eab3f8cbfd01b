package cgroup

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const hybridMountinfo = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime shared:9 - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

func TestReadMountsHybrid(t *testing.T) {
	f := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(f, []byte(hybridMountinfo), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := ReadMounts(f)
	if err != nil {
		t.Fatal(err)
	}
	if m.V2 != "/sys/fs/cgroup/unified" {
		t.Errorf("V2 = %q", m.V2)
	}
	for c, want := range map[string]string{"memory": "/sys/fs/cgroup/memory", "cpuset": "/sys/fs/cgroup/cpuset", "freezer": "/sys/fs/cgroup/freezer", "pids": "/sys/fs/cgroup/pids"} {
		if m.V1[c] != want {
			t.Errorf("V1[%s] = %q, want %q", c, m.V1[c], want)
		}
	}
	if m.Unified() {
		t.Error("a host with the v1 memory controller mounted manages memory through v1")
	}
}

func TestResolveAgentV1DerivesEveryController(t *testing.T) {
	root := t.TempDir()
	m := Mounts{V1: map[string]string{}}
	for _, c := range []string{"cpuset", "memory", "cpu", "pids", "freezer"} {
		m.V1[c] = filepath.Join(root, c)
	}
	const task = "0b3c5a1e-8d2f-4c6a-9e1b-7f2d4a6c8e0f.web" // <alloc id>.<task>, as Nomad 1.7+ names it
	cpuset := filepath.Join(root, "cpuset", "nomad", "share", task)
	if err := os.MkdirAll(cpuset, 0o755); err != nil {
		t.Fatal(err)
	}
	g, err := Resolve(m, cpuset, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if g.Version != 1 || g.Source != "agent" {
		t.Fatalf("group %+v", g)
	}
	if g.Paths["cpuset"] != cpuset {
		t.Errorf("cpuset = %q", g.Paths["cpuset"])
	}
	if want := filepath.Join(root, "memory", "nomad", task); g.Paths["memory"] != want {
		t.Errorf("memory = %q, want %q (the partition element is the cpuset's alone)", g.Paths["memory"], want)
	}
	if _, err := Resolve(m, "/elsewhere/x", "", ""); err == nil {
		t.Error("a path under no cgroup mount was accepted")
	}
}

// Nomad 1.6 sends every task without reserved cores the same v1 cpuset
// cgroup (.../cpuset/nomad/shared), seen on a real 1.6.5 agent. The engine
// joins it for cpuset only; memory and the rest are the task's own, so one
// task's limit never lands on every engine of the node.
func TestResolveAgentV1SharedCpusetKeepsLimitsPerTask(t *testing.T) {
	root := t.TempDir()
	m := Mounts{V1: map[string]string{}}
	for _, c := range []string{"cpuset", "memory", "cpu", "pids"} {
		m.V1[c] = filepath.Join(root, c)
	}
	shared := filepath.Join(root, "cpuset", "nomad", "shared")
	if err := os.MkdirAll(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	self := "4:memory:/system.slice/nomad.service\n3:cpu:/\n2:pids:/\n1:cpuset:/\n"
	a, err := Resolve(m, shared, self, "alloc-a.engine.0")
	if err != nil {
		t.Fatal(err)
	}
	b, err := Resolve(m, shared, self, "alloc-b.engine.0")
	if err != nil {
		t.Fatal(err)
	}
	if a.Paths["cpuset"] != shared || b.Paths["cpuset"] != shared {
		t.Errorf("cpuset = %q, %q; want the agent's shared %q", a.Paths["cpuset"], b.Paths["cpuset"], shared)
	}
	for _, c := range []string{"memory", "cpu", "pids"} {
		if a.Paths[c] == b.Paths[c] || !strings.Contains(a.Paths[c], "alloc-a.engine.0") {
			t.Errorf("%s: %q and %q, want one cgroup per task", c, a.Paths[c], b.Paths[c])
		}
	}
	if want := filepath.Join(root, "memory", "system.slice/nomad.service", "llorch", "alloc-a.engine.0"); a.Paths["memory"] != want {
		t.Errorf("memory = %q, want %q", a.Paths["memory"], want)
	}
}

func TestResolveDriverMadeIsUnderOwnCgroup(t *testing.T) {
	m := Mounts{V1: map[string]string{"memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids"}}
	self := "9:name=systemd:/\n4:memory:/system.slice/nomad.service\n8:pids:/\n0::/\n"
	g, err := Resolve(m, "", self, "a1.web")
	if err != nil {
		t.Fatal(err)
	}
	if want := "/sys/fs/cgroup/memory/system.slice/nomad.service/llorch/a1.web"; g.Paths["memory"] != want {
		t.Errorf("memory = %q, want %q", g.Paths["memory"], want)
	}
	if _, err := Resolve(m, "", self, "../x"); err == nil {
		t.Error("a name with a slash was accepted")
	}
	m2 := Mounts{V2: "/sys/fs/cgroup", V1: map[string]string{}}
	g2, err := Resolve(m2, "", "0::/system.slice/nomad.service\n", "a1.web")
	if err != nil {
		t.Fatal(err)
	}
	if g2.Version != 2 || g2.Path != "/sys/fs/cgroup/system.slice/nomad.service/llorch/a1.web" {
		t.Errorf("v2 group %+v", g2)
	}
}

func TestSharesToWeight(t *testing.T) {
	for shares, want := range map[int64]uint64{2: 1, 1024: 39, 262144: 10000, 0: 1} {
		if got := sharesToWeight(shares); got != want {
			t.Errorf("sharesToWeight(%d) = %d, want %d", shares, got, want)
		}
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: creating cgroups needs root")
	}
}

// A process over the group's v1 memory limit is OOM-killed, and the group
// counts it.
func TestV1MemoryLimitOOMKills(t *testing.T) {
	needRoot(t)
	m, err := ReadMounts("")
	if err != nil {
		t.Fatal(err)
	}
	if m.V1["memory"] == "" {
		t.Skip("skipped: no cgroup v1 memory hierarchy on this host")
	}
	self, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	m.V2 = "" // force v1 on a hybrid host
	g, err := Resolve(m, "", self, fmt.Sprintf("test-%d", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Create(Limits{MemoryMax: 32 << 20, CPUShares: 100}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.KillAll(); _ = g.Remove(5 * time.Second) })
	before, ok := g.OOMKills()
	if !ok {
		t.Skip("skipped: this kernel does not count oom_kill in memory.oom_control")
	}
	restore, err := g.EnterV1()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("tail", "/dev/zero") // holds its whole "line" in memory
	startErr := cmd.Start()
	if err := restore(); err != nil {
		t.Fatalf("leave the group: %v", err)
	}
	if startErr != nil {
		t.Fatal(startErr)
	}
	pids, _ := g.Procs()
	if !slices.Contains(pids, cmd.Process.Pid) {
		t.Errorf("pid %d not in the group (procs %v)", cmd.Process.Pid, pids)
	}
	if slices.Contains(pids, os.Getpid()) {
		t.Errorf("the test process stayed in the group")
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("a process allocating without bound was not killed within 30s under a 32 MiB limit")
	}
	ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("exit %v, want SIGKILL", cmd.ProcessState)
	}
	after, _ := g.OOMKills()
	if after != before+1 {
		t.Errorf("oom_kill went %d → %d, want one more", before, after)
	}
	if err := g.Remove(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, d := range g.Made {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after Remove", d)
		}
	}
}

// On v2 the engine is born inside the group (CgroupFD); a memory limit
// that the tree does not delegate is reported, not silently dropped.
func TestV2PlacementAtClone(t *testing.T) {
	needRoot(t)
	m, err := ReadMounts("")
	if err != nil {
		t.Fatal(err)
	}
	if m.V2 == "" {
		t.Skip("skipped: no cgroup2 mount on this host")
	}
	self, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	m.V1 = nil // force v2
	g, err := Resolve(m, "", self, fmt.Sprintf("test-%d", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	err = g.Create(Limits{MemoryMax: 64 << 20})
	t.Cleanup(func() { _ = g.KillAll(); _ = g.Remove(5 * time.Second) })
	var ne *NotEnforcedError
	switch {
	case err == nil:
		if b, _ := os.ReadFile(filepath.Join(g.Path, "memory.max")); string(b) != fmt.Sprintln(64<<20) {
			t.Errorf("memory.max = %q", b)
		}
	case errors.As(err, &ne):
		t.Logf("memory not delegated here, as reported: %v", err)
	default:
		t.Fatal(err)
	}
	fd, err := g.OpenFD()
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	cmd := exec.Command("sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pids, err := g.Procs()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(pids, cmd.Process.Pid) {
		t.Errorf("pid %d not in %s (procs %v)", cmd.Process.Pid, g.Path, pids)
	}
	if err := g.KillAll(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if err := g.Remove(5 * time.Second); err != nil {
		t.Fatal(err)
	}
}
