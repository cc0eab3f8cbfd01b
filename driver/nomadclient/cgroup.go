package nomadclient

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const cgroupRoot = "/sys/fs/cgroup"

// AgentCgroup makes the cgroup a Nomad agent (1.7+) makes for a task
// before StartTask, and returns what the agent sends as
// LinuxResources.cpuset_cgroup:
//   - cgroup v2 (/sys/fs/cgroup is cgroup2): nomad.slice/share.slice/<alloc>.<task>.scope,
//     with cpuset, cpu, io, memory and pids delegated down to it;
//   - cgroup v1: freezer, cpu and memory at nomad/<alloc>.<task>, and the
//     cpuset cgroup at nomad/share/<alloc>.<task> (the path returned).
//
// Like the agent after the task stops, the test's cleanup kills what is
// left in it and removes it. It skips the test when not root.
func AgentCgroup(t testing.TB, allocID, task string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: making the agent's task cgroup needs root")
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(cgroupRoot, &st); err != nil {
		t.Skipf("skipped: no cgroup filesystem: %v", err)
	}
	const cgroup2Magic = 0x63677270
	if st.Type == cgroup2Magic {
		return agentCgroupV2(t, allocID, task)
	}
	return agentCgroupV1(t, allocID, task)
}

func agentCgroupV2(t testing.TB, allocID, task string) string {
	const activation = "+cpuset +cpu +io +memory +pids"
	parent := cgroupRoot
	for _, d := range []string{"nomad.slice", "share.slice"} {
		_ = os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte(activation), 0o644)
		parent = filepath.Join(parent, d)
		if err := os.MkdirAll(parent, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte(activation), 0o644)
	dir := filepath.Join(parent, allocID+"."+task+".scope")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0o644)
		rmdirWhenEmpty(dir)
	})
	return dir
}

func agentCgroupV1(t testing.TB, allocID, task string) string {
	scope := allocID + "." + task
	var made []string
	for _, c := range []string{"freezer", "cpu", "memory"} {
		if _, err := os.Stat(filepath.Join(cgroupRoot, c)); err != nil {
			continue
		}
		d := filepath.Join(cgroupRoot, c, "nomad", scope)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		made = append(made, d)
	}
	cpuset := filepath.Join(cgroupRoot, "cpuset")
	if _, err := os.Stat(cpuset); err != nil {
		t.Skip("skipped: no v1 cpuset hierarchy (the agent keeps the task's cgroup path there)")
	}
	dir := cpuset
	for _, d := range []string{"nomad", "share", scope} {
		dir = filepath.Join(dir, d)
		if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
			t.Fatal(err)
		}
		// A cpuset cgroup holds processes only once it has cpus and mems;
		// the agent gives each level its parent's.
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if cur, _ := os.ReadFile(filepath.Join(dir, f)); strings.TrimSpace(string(cur)) != "" {
				continue
			}
			b, err := os.ReadFile(filepath.Join(filepath.Dir(dir), f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	made = append(made, dir)
	t.Cleanup(func() {
		for _, d := range made {
			b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		for _, d := range made {
			rmdirWhenEmpty(d)
		}
	})
	return dir
}

func rmdirWhenEmpty(dir string) {
	for i := 0; i < 100; i++ {
		if err := syscall.Rmdir(dir); err == nil || os.IsNotExist(err) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
