// Package cgroup gives a task's engine its cgroup on cgroup v1 and v2: the
// one the Nomad agent made for the task when it names one, else one the
// driver makes under the plugin's own (the agent's) cgroup. It writes the
// memory and CPU limits, moves the engine in at exec, counts OOM kills and
// removes what the driver made.
//
// A Group is plain data (JSON in the driver state and the supervisor
// spec): the driver resolves and configures it in the plugin process, the
// task supervisor enters it when it starts the engine, and a plugin that
// restarts finds it again from the state alone.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Controllers the driver uses on v1, in the order it enters them. The
// agent makes freezer, cpu and memory for each task (cpuset under its
// share/reserve partition); pids is the driver's own.
var v1Controllers = []string{"memory", "cpu", "pids", "freezer"}

// Mounts is where the cgroup hierarchies are mounted on this host.
type Mounts struct {
	// V2 is the cgroup2 mount point, "" if none.
	V2 string
	// V2Controllers are the controllers available in the v2 root.
	V2Controllers []string
	// V1 maps a v1 controller to its mount point.
	V1 map[string]string
}

// Unified reports whether memory is managed through cgroup v2 here (a
// pure v2 host, or a hybrid one whose v2 tree has the memory controller).
func (m Mounts) Unified() bool {
	if m.V2 == "" {
		return false
	}
	if _, v1mem := m.V1["memory"]; !v1mem {
		return true
	}
	return contains(m.V2Controllers, "memory")
}

// ReadMounts reads /proc/self/mountinfo (or the file given, for tests).
func ReadMounts(mountinfo string) (Mounts, error) {
	if mountinfo == "" {
		mountinfo = "/proc/self/mountinfo"
	}
	f, err := os.Open(mountinfo)
	if err != nil {
		return Mounts{}, fmt.Errorf("cgroup mounts: %w", err)
	}
	defer f.Close()
	m := Mounts{V1: map[string]string{}}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, x := range fields {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || len(fields) < sep+4 {
			continue
		}
		point, fstype, super := fields[4], fields[sep+1], fields[sep+3]
		switch fstype {
		case "cgroup2":
			if m.V2 == "" {
				m.V2 = point
			}
		case "cgroup":
			for _, opt := range strings.Split(super, ",") {
				switch opt {
				case "memory", "cpu", "cpuset", "pids", "freezer":
					if _, seen := m.V1[opt]; !seen {
						m.V1[opt] = point
					}
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Mounts{}, fmt.Errorf("cgroup mounts: %w", err)
	}
	if m.V2 != "" {
		if b, err := os.ReadFile(filepath.Join(m.V2, "cgroup.controllers")); err == nil {
			m.V2Controllers = strings.Fields(string(b))
		}
	}
	return m, nil
}

// Group is one task's cgroup: on v2 one directory, on v1 one per
// controller.
type Group struct {
	Version int               `json:"version"`
	Path    string            `json:"path,omitempty"`  // v2
	Paths   map[string]string `json:"paths,omitempty"` // v1: controller → directory
	Roots   map[string]string `json:"roots,omitempty"` // v1: controller → mount point
	// Made lists the task directories the driver created; only those are
	// removed at destroy (the agent removes its own). Parents are the
	// shared directories above them it created, removed when empty.
	Made    []string `json:"made,omitempty"`
	Parents []string `json:"parents,omitempty"`
	// Source is "agent" (the agent's task cgroup) or "driver".
	Source string `json:"source"`
}

// Limits are what the task's resources ask for.
type Limits struct {
	// MemoryMax is the hard limit in bytes (the task's memory_max, else
	// its memory); 0 leaves memory unlimited.
	MemoryMax int64
	// MemoryLow is the soft limit in bytes (the task's memory when it also
	// sets memory_max); 0 for none.
	MemoryLow int64
	// CPUShares is the task's cpu in v1 shares; 0 leaves the default.
	CPUShares int64
}

// Resolve finds the task's cgroup. agentPath is LinuxResources.cpuset_cgroup
// (v1: the task's cpuset cgroup; v2: the task's scope); empty means the
// agent made none, and the driver makes one under self, the plugin's own
// cgroup as /proc/self/cgroup lists it, named after the task.
func Resolve(m Mounts, agentPath, self, name string) (Group, error) {
	if agentPath != "" {
		g, err := fromAgent(m, agentPath)
		if err != nil || g.Version == 2 || perTask(agentPath) {
			return g, err
		}
		// A v1 cpuset cgroup shared by tasks (Nomad 1.6 sends
		// .../cpuset/nomad/shared to every task without reserved cores):
		// the engine joins it for cpuset only, as the agent's own drivers
		// do, and gets cgroups of its own for every other controller, so
		// one task's memory limit never lands on the others.
		own, err := Resolve(m, "", self, name)
		if err != nil {
			return Group{}, err
		}
		if p, ok := g.Paths["cpuset"]; ok {
			own.Paths["cpuset"], own.Roots["cpuset"] = p, g.Roots["cpuset"]
		}
		return own, nil
	}
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return Group{}, fmt.Errorf("cgroup name %q is not a single path element", name)
	}
	own, err := parseProcCgroup(self)
	if err != nil {
		return Group{}, err
	}
	if m.Unified() {
		parent := filepath.Join(m.V2, own["0"])
		return Group{Version: 2, Path: filepath.Join(parent, "llorch", name), Source: "driver"}, nil
	}
	g := Group{Version: 1, Paths: map[string]string{}, Roots: map[string]string{}, Source: "driver"}
	for _, c := range v1Controllers {
		point, ok := m.V1[c]
		if !ok {
			continue
		}
		g.Paths[c] = filepath.Join(point, own[c], "llorch", name)
		g.Roots[c] = point
	}
	if len(g.Paths) == 0 {
		return Group{}, errors.New("no cgroup v1 controllers and no cgroup v2 mount on this host")
	}
	return g, nil
}

func fromAgent(m Mounts, p string) (Group, error) {
	p = filepath.Clean(p)
	if m.V2 != "" && within(m.V2, p) {
		if !isDir(p) {
			return Group{}, fmt.Errorf("the agent's task cgroup %s does not exist", p)
		}
		return Group{Version: 2, Path: p, Source: "agent"}, nil
	}
	cpuset, ok := m.V1["cpuset"]
	if !ok || !within(cpuset, p) {
		return Group{}, fmt.Errorf("the agent's task cgroup %s is under no cgroup mount (v2 %q, v1 cpuset %q)", p, m.V2, cpuset)
	}
	rel, _ := filepath.Rel(cpuset, p)
	g := Group{Version: 1, Paths: map[string]string{}, Roots: map[string]string{}, Source: "agent"}
	if isDir(p) {
		g.Paths["cpuset"], g.Roots["cpuset"] = p, cpuset
	}
	// The agent keeps the cpuset cgroup under a share/ or reserve/
	// partition; the others sit directly under its parent cgroup.
	other := dropPartition(rel)
	for _, c := range v1Controllers {
		point, ok := m.V1[c]
		if !ok {
			continue
		}
		g.Paths[c] = filepath.Join(point, other)
		g.Roots[c] = point
	}
	return g, nil
}

// allocIDRe matches a Nomad allocation id (a UUID).
var allocIDRe = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)

// perTask reports whether an agent's cgroup path is one task's own: its
// last element names the allocation (<alloc id>.<task> on Nomad 1.7+), as
// opposed to a partition every task shares (.../nomad/shared on 1.6).
func perTask(p string) bool { return allocIDRe.MatchString(filepath.Base(p)) }

// dropPartition removes the agent's cpuset partition element (the
// second-to-last "share" or "reserve") from a relative cgroup path.
func dropPartition(rel string) string {
	parts := strings.Split(rel, string(filepath.Separator))
	if n := len(parts); n >= 2 && (parts[n-2] == "share" || parts[n-2] == "reserve") {
		parts = append(parts[:n-2], parts[n-1])
	}
	return filepath.Join(parts...)
}

// Create makes the directories that do not exist yet (recording them in
// Made) and writes the limits. A limit the host cannot enforce (no memory
// controller where the engine runs) is an error naming why.
func (g *Group) Create(l Limits) error {
	for _, dir := range g.dirs() {
		if err := g.mkdirAll(dir); err != nil {
			return err
		}
	}
	switch g.Version {
	case 2:
		return g.applyV2(l)
	case 1:
		return g.applyV1(l)
	}
	return fmt.Errorf("cgroup version %d", g.Version)
}

func (g *Group) mkdirAll(dir string) error {
	var missing []string
	for d := dir; !isDir(d) && d != "/" && d != "."; d = filepath.Dir(d) {
		missing = append(missing, d)
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create cgroup %s: %w", missing[i], err)
		}
		if g.Version == 1 && strings.Contains(missing[i], "cpuset") {
			if err := inheritCpuset(missing[i]); err != nil {
				return err
			}
		}
	}
	if len(missing) > 0 {
		g.Made = append(g.Made, missing[0])
		g.Parents = append(g.Parents, missing[1:]...) // deepest first
	}
	return nil
}

// inheritCpuset fills a new v1 cpuset cgroup's cpus and mems from its
// parent: a cpuset cgroup without them cannot hold a process.
func inheritCpuset(dir string) error {
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(dir), f))
		if err != nil {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
		if err := write(dir, f, strings.TrimSpace(string(b))); err != nil {
			return err
		}
	}
	return nil
}

func (g *Group) dirs() []string {
	if g.Version == 2 {
		return []string{g.Path}
	}
	out := make([]string, 0, len(g.Paths))
	for _, c := range append([]string{"cpuset"}, v1Controllers...) {
		if p, ok := g.Paths[c]; ok {
			out = append(out, p)
		}
	}
	return out
}

// Remove deletes the directories the driver made, once their processes
// are gone (the kernel refuses rmdir of a populated cgroup, so it retries
// for up to wait).
func (g *Group) Remove(wait time.Duration) error {
	deadline := time.Now().Add(wait)
	var errs []error
	for _, d := range g.Made {
		for {
			err := syscall.Rmdir(d)
			if err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, d := range g.Parents {
		_ = syscall.Rmdir(d) // still used by another task: leave it
	}
	return errors.Join(errs...)
}

// Procs lists the processes in the group (v1: in its memory cgroup, or
// the first controller it has).
func (g *Group) Procs() ([]int, error) {
	dir := g.Path
	if g.Version == 1 {
		dir = g.Paths["memory"]
		if dir == "" {
			for _, d := range g.dirs() {
				dir = d
				break
			}
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	return pids, nil
}

// KillAll SIGKILLs every process in the group (v2: cgroup.kill where the
// kernel has it).
func (g *Group) KillAll() error {
	if g.Version == 2 {
		if err := write(g.Path, "cgroup.kill", "1"); err == nil {
			return nil
		}
	}
	pids, err := g.Procs()
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill %d: %w", pid, err)
		}
	}
	return nil
}

// OOMKills is how many processes the kernel's OOM killer has killed in the
// group so far (v2 memory.events, v1 memory.oom_control "oom_kill", kernel
// 4.13+). ok is false when the host does not count them; then Failcnt is
// the fallback.
func (g *Group) OOMKills() (n uint64, ok bool) {
	var file string
	switch g.Version {
	case 2:
		file = filepath.Join(g.Path, "memory.events")
	case 1:
		if g.Paths["memory"] == "" {
			return 0, false
		}
		file = filepath.Join(g.Paths["memory"], "memory.oom_control")
	default:
		return 0, false
	}
	return readKey(file, "oom_kill")
}

// Failcnt is how often the v1 memory limit was hit (v2: memory.events
// "max"); a SIGKILLed engine in a group that hit its limit was OOM-killed
// on kernels that do not count oom_kill.
func (g *Group) Failcnt() uint64 {
	if g.Version == 2 {
		n, _ := readKey(filepath.Join(g.Path, "memory.events"), "max")
		return n
	}
	b, err := os.ReadFile(filepath.Join(g.Paths["memory"], "memory.failcnt"))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n
}

func readKey(file, key string) (uint64, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == key {
			n, err := strconv.ParseUint(f[1], 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// parseProcCgroup reads a /proc/<pid>/cgroup text into controller → path;
// the v2 entry is under "0".
func parseProcCgroup(text string) (map[string]string, error) {
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			out["0"] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no cgroup in %q", text)
	}
	return out, nil
}

// Self is the calling process's /proc/self/cgroup.
func Self() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	return string(b), err
}

func write(dir, file, value string) error {
	if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0o644); err != nil {
		return fmt.Errorf("cgroup %s: write %s=%s: %w", dir, file, value, err)
	}
	return nil
}

func within(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}
