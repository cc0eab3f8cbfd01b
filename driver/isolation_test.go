// Isolation through the protocol: the task's user, denied ranges, the
// agent's cgroup, memory_max and OOM kills, oom_score_adj.

package driver_test

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/internal/nomadpb/base"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: running an engine as another user and making cgroups needs root")
	}
}

// agentTaskConfig is taskConfig with the agent's fields a test sets
// (user, resources, cgroup).
func (a *alloc) agentTaskConfig(t *testing.T, p *nomadclient.Plugin, cfg map[string]interface{}, mod func(*nomadclient.Alloc)) *drivers.TaskConfig {
	t.Helper()
	_, ts := schema(t, p)
	b, err := nomadclient.EncodeConfig(ts, cfg)
	if err != nil {
		t.Fatalf("encode task config: %v", err)
	}
	na := nomadclient.Alloc{ID: a.id, Task: a.task, Dir: a.dir, Port: a.port, Env: map[string]string{"LLORCH_MARKER": a.marker},
		Job: "chat", Group: "inference", NodeID: "node-id-1", NodeName: "node-1"}
	mod(&na)
	return na.TaskConfig(uuid.NewString()[:8], b)
}

// openForUser makes the test's temp dirs what the agent's alloc dir is
// (0755 down to the task dir), so another user can reach its files.
func openForUser(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		for d := p; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
			fi, err := os.Stat(d)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(d, fi.Mode().Perm()|0o055); err != nil {
				t.Fatal(err)
			}
		}
	}
}

type eventLog struct {
	mu  sync.Mutex
	evs []*drivers.DriverTaskEvent
}

func collectEvents(t *testing.T, p *nomadclient.Plugin) *eventLog {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	events, err := p.Driver.TaskEvents(ctx, &drivers.TaskEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	l := &eventLog{}
	go func() {
		for {
			ev, err := events.Recv()
			if err != nil {
				return
			}
			l.mu.Lock()
			l.evs = append(l.evs, ev)
			l.mu.Unlock()
		}
	}()
	time.Sleep(100 * time.Millisecond) // let the stream subscribe
	return l
}

func (l *eventLog) find(sub string) *drivers.DriverTaskEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range l.evs {
		if strings.Contains(ev.GetMessage(), sub) {
			return ev
		}
	}
	return nil
}

// procStatus reads a /proc/<pid>/status field's values ("Uid" → real,
// effective, saved, fs).
func procStatus(t *testing.T, pid int, field string) []string {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && k == field {
			return strings.Fields(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return nil
}

func enginePid(t *testing.T, p *nomadclient.Plugin, id string) int {
	t.Helper()
	resp, err := p.Driver.InspectTask(ctxT(t, 5*time.Second), &drivers.InspectTaskRequest{TaskId: id})
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(resp.GetDriver().GetAttributes()["engine_pid"])
	if err != nil || pid <= 0 {
		t.Fatalf("engine_pid %q", resp.GetDriver().GetAttributes()["engine_pid"])
	}
	return pid
}

// A user in a denied range is refused at StartTask, naming the range;
// with no task user, the default_user is what is checked, and with neither
// the plugin's own user.
func TestDeniedUserRefused(t *testing.T) {
	p := nomadclient.Launch(t, nomadclient.Binary(t))
	setConfig(t, p, pluginConfig(t, map[string]interface{}{"denied_host_uids": "0-999,65534", "denied_host_gids": "0"}))
	model := writeModel(t)
	cases := []struct {
		name, user, want string
	}{
		{"task user nobody", "nobody", "uid 65534 is in the plugin's denied_host_uids (0-999,65534)"},
		{"task user root by uid", "0", "uid 0 is in the plugin's denied_host_uids"},
		{"no user: the plugin's own (root)", "", "the plugin's own user"},
		{"unknown user", "no-such-user-llorch", "does not exist on this node"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := newAlloc(t)
			tc := a.agentTaskConfig(t, p, engineConfig(model, nil), func(na *nomadclient.Alloc) { na.User = c.user })
			_, err := p.Driver.StartTask(ctxT(t, 10*time.Second), &drivers.StartTaskRequest{Task: tc})
			if err == nil {
				t.Fatal("StartTask accepted a denied user")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not say %q", err, c.want)
			}
			if c.user != "no-such-user-llorch" && status.Code(err) != codes.PermissionDenied {
				t.Errorf("code %v, want PermissionDenied", status.Code(err))
			}
			if len(enginePIDs(a.marker)) != 0 {
				t.Fatal("a refused task left an engine running")
			}
		})
	}

	// A bad range is refused at SetConfig, naming the field.
	ps, _ := schema(t, p)
	b, err := nomadclient.EncodeConfig(ps, pluginConfig(t, map[string]interface{}{"denied_host_uids": "1000-10"}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Base.SetConfig(ctxT(t, 5*time.Second), &base.SetConfigRequest{MsgpackConfig: b, PluginApiVersion: "v0.1.0"})
	if err == nil || !strings.Contains(err.Error(), "denied_host_uids") {
		t.Fatalf("SetConfig with a backwards range: %v", err)
	}
}

// A model the task's user cannot read is refused at StartTask, naming the
// user, instead of an engine that fails to open it later.
func TestModelUnreadableByTaskUserRefused(t *testing.T) {
	needRoot(t)
	p := launch(t)
	a := newAlloc(t)
	model := writeModel(t)
	openForUser(t, a.dir, filepath.Dir(model))
	if err := os.Chmod(model, 0o600); err != nil {
		t.Fatal(err)
	}
	tc := a.agentTaskConfig(t, p, engineConfig(model, nil), func(na *nomadclient.Alloc) { na.User = "nobody" })
	_, err := p.Driver.StartTask(ctxT(t, 10*time.Second), &drivers.StartTaskRequest{Task: tc})
	if err == nil || !strings.Contains(err.Error(), "not readable by user nobody") || status.Code(err) != codes.PermissionDenied {
		t.Fatalf("StartTask with a model only root can read: %v", err)
	}
}

// An engine started for a task with user = "nobody" runs as nobody (real,
// effective, saved and fs ids), in the cgroup the agent made for the task,
// with the task's oom_score_adj rather than the plugin's; exec runs as the
// same user.
func TestEngineRunsAsTaskUserInAgentCgroup(t *testing.T) {
	needRoot(t)
	p := launch(t)
	a := newAlloc(t)
	model := writeModel(t)
	openForUser(t, a.dir, model)
	cg := nomadclient.AgentCgroup(t, a.id, a.task)
	// The plugin's own score must not reach the engine. The stock systemd
	// unit gives the agent -1000; lowering needs CAP_SYS_RESOURCE, which a
	// container may lack, so fall back to a raised score.
	pluginScore := "-900"
	if err := os.WriteFile("/proc/"+strconv.Itoa(p.Pid)+"/oom_score_adj", []byte(pluginScore), 0o644); err != nil {
		pluginScore = "500"
		if err := os.WriteFile("/proc/"+strconv.Itoa(p.Pid)+"/oom_score_adj", []byte(pluginScore), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tc := a.agentTaskConfig(t, p, engineConfig(model, nil), func(na *nomadclient.Alloc) {
		na.User, na.CpusetCgroup, na.OomScoreAdj = "nobody", cg, 300
	})
	start(t, p, tc)
	eventually(t, 5*time.Second, "engine running", func() bool { return strings.Contains(a.stdout.String(), "fake engine started") })
	pid := enginePid(t, p, tc.GetId())
	for _, f := range []string{"Uid", "Gid"} {
		for i, v := range procStatus(t, pid, f) {
			if v != "65534" {
				t.Errorf("engine %s[%d] = %s, want 65534 (nobody)", f, i, v)
			}
		}
	}
	if b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/oom_score_adj"); strings.TrimSpace(string(b)) != "300" {
		t.Errorf("engine oom_score_adj %q, want the task's 300 (the plugin has %s)", b, pluginScore)
	}
	procs, _ := os.ReadFile(filepath.Join(cg, "cgroup.procs"))
	if !containsField(string(procs), strconv.Itoa(pid)) {
		t.Errorf("engine pid %d is not in the agent's task cgroup %s (procs %q)", pid, cg, procs)
	}
	if mem := memoryCgroupOf(t, cg); mem != "" {
		limit, _ := os.ReadFile(filepath.Join(mem, "memory.limit_in_bytes"))
		if strings.TrimSpace(string(limit)) != strconv.Itoa(256<<20) {
			t.Errorf("memory limit %q, want the task's 256 MiB", limit)
		}
	}

	res, err := p.Driver.ExecTask(ctxT(t, 10*time.Second), &drivers.ExecTaskRequest{TaskId: tc.GetId(), Command: []string{"id", "-u"}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(res.GetStdout())) != "65534" {
		t.Errorf("exec ran as uid %q, want 65534", res.GetStdout())
	}
	stopAndDestroy(t, p, tc.GetId())
	a.requireNoProcesses(t)
}

func memoryCgroupOf(t *testing.T, cpusetPath string) string {
	if !strings.Contains(cpusetPath, "/cpuset/") {
		return "" // v2: one directory, checked through cgroup.procs
	}
	d := strings.Replace(strings.Replace(cpusetPath, "/share/", "/", 1), "/cpuset/", "/memory/", 1)
	return d
}

func containsField(s, f string) bool {
	for _, x := range strings.Fields(s) {
		if x == f {
			return true
		}
	}
	return false
}

// An engine that allocates past memory_max is OOM-killed by the kernel,
// and the driver says so: WaitTask's oom_killed, and an "OOM Killed" task
// event. Run in the agent's cgroup and in a driver-made one (an agent
// that names none), which DestroyTask removes.
func TestMemoryMaxOOMKillReported(t *testing.T) {
	needRoot(t)
	hog, err := filepath.Abs("testdata/fake-engine-memhog.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, agentCgroup := range []bool{true, false} {
		name := map[bool]string{true: "agent cgroup", false: "driver-made cgroup"}[agentCgroup]
		t.Run(name, func(t *testing.T) {
			p := nomadclient.Launch(t, nomadclient.Binary(t))
			setConfig(t, p, map[string]interface{}{"engines": map[string]interface{}{"llamacpp": hog}})
			evs := collectEvents(t, p)
			a := newAlloc(t)
			cg := ""
			if agentCgroup {
				cg = nomadclient.AgentCgroup(t, a.id, a.task)
			}
			tc := a.agentTaskConfig(t, p, engineConfig(writeModel(t), nil), func(na *nomadclient.Alloc) {
				na.MemoryMB, na.MemoryMaxMB, na.CpusetCgroup = 32, 48, cg
			})
			start(t, p, tc)
			res := waitTask(t, p, tc.GetId(), 60*time.Second)
			if !res.GetResult().GetOomKilled() {
				t.Fatalf("WaitTask %v (err %q): oom_killed not set", res.GetResult(), res.GetErr())
			}
			if res.GetResult().GetSignal() != int32(syscall.SIGKILL) {
				t.Errorf("signal %d, want SIGKILL", res.GetResult().GetSignal())
			}
			eventually(t, 5*time.Second, "OOM task event", func() bool { return evs.find("OOM Killed") != nil })
			ev := evs.find("OOM Killed")
			if !strings.Contains(ev.GetMessage(), "48 MiB") || ev.GetAnnotations()["oom_killed"] != "true" {
				t.Errorf("OOM event %q %v", ev.GetMessage(), ev.GetAnnotations())
			}
			made := driverCgroupDirs(t, a.id)
			if agentCgroup && len(made) != 0 {
				t.Errorf("with the agent's cgroup the driver made its own: %v", made)
			}
			if !agentCgroup && len(made) == 0 {
				t.Fatal("no driver-made cgroup found under the plugin's cgroup")
			}
			if _, err := p.Driver.DestroyTask(ctxT(t, 20*time.Second), &drivers.DestroyTaskRequest{TaskId: tc.GetId(), Force: true}); err != nil {
				t.Fatal(err)
			}
			for _, d := range made {
				if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("driver-made cgroup %s left after DestroyTask", d)
				}
			}
		})
	}
}

// driverCgroupDirs finds the task's driver-made cgroups: under the test
// process's own cgroup (the plugin inherits it), in llorch/.
func driverCgroupDirs(t *testing.T, allocID string) []string {
	self, _ := os.ReadFile("/proc/self/cgroup")
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(string(self)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		var roots []string
		if parts[0] == "0" {
			roots = []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}
		} else {
			for _, c := range strings.Split(parts[1], ",") {
				roots = append(roots, "/sys/fs/cgroup/"+c)
			}
		}
		for _, r := range roots {
			m, _ := filepath.Glob(filepath.Join(r, parts[2], "llorch", allocID+".*"))
			out = append(out, m...)
		}
	}
	return out
}
