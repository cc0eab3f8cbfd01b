// Test helpers: an agent's view of the plugin (launch, config, allocs
// with logmon FIFOs, process accounting).

package driver_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/internal/nomadpb/base"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
	"github.com/llorch/llorch/internal/nomadpb/hclspec"
	"github.com/llorch/llorch/internal/testenv"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func fakeEngine(t *testing.T) string {
	p, err := filepath.Abs("testdata/fake-engine.sh")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// pluginConfig is the client's plugin stanza config for the tests.
func pluginConfig(t *testing.T, extra map[string]interface{}) map[string]interface{} {
	cfg := map[string]interface{}{
		"engines":            map[string]interface{}{"llamacpp": fakeEngine(t)},
		"fingerprint_period": "1s",
	}
	for k, v := range extra {
		cfg[k] = v
	}
	return cfg
}

func schema(t *testing.T, p *nomadclient.Plugin) (pluginSpec, taskSpec *hclspec.Spec) {
	t.Helper()
	cs, err := p.Base.ConfigSchema(ctxT(t, 5*time.Second), &base.ConfigSchemaRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ts, err := p.Driver.TaskConfigSchema(ctxT(t, 5*time.Second), &drivers.TaskConfigSchemaRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return cs.GetSpec(), ts.GetSpec()
}

// setConfig sends SetConfig as the long-lived instance gets it (with the
// agent's default plugin port range).
func setConfig(t *testing.T, p *nomadclient.Plugin, cfg map[string]interface{}) {
	t.Helper()
	ps, _ := schema(t, p)
	b, err := nomadclient.EncodeConfig(ps, cfg)
	if err != nil {
		t.Fatalf("encode plugin config: %v", err)
	}
	_, err = p.Base.SetConfig(ctxT(t, 5*time.Second), &base.SetConfigRequest{
		MsgpackConfig:    b,
		PluginApiVersion: "v0.1.0",
		NomadConfig:      &base.NomadConfig{Driver: &base.NomadDriverConfig{ClientMaxPort: 14512, ClientMinPort: 14000}},
	})
	if err != nil {
		t.Fatalf("SetConfig: %v", err)
	}
}

func launch(t *testing.T) *nomadclient.Plugin {
	t.Helper()
	p := nomadclient.Launch(t, nomadclient.Binary(t))
	setConfig(t, p, pluginConfig(t, nil))
	return p
}

// alloc is an allocation directory as the agent prepares it: task dir,
// log FIFOs with their reader already open (logmon), a port mapping.
type alloc struct {
	id, dir, task string
	port          int
	stdout        *fifoReader
	stderr        *fifoReader
	marker        string // in the task's env, to find its processes
}

type fifoReader struct {
	f    *os.File
	mu   sync.Mutex
	buf  bytes.Buffer
	done chan struct{}
}

func newFIFO(t *testing.T, path string) *fifoReader {
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	// O_RDWR keeps the FIFO open for reading with no writer yet, as
	// logmon's long-lived reader does.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	r := &fifoReader{f: f, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		b := make([]byte, 4096)
		for {
			n, err := f.Read(b)
			r.mu.Lock()
			r.buf.Write(b[:n])
			r.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { f.Close(); <-r.done })
	return r
}

func (r *fifoReader) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.String()
}

func newAlloc(t *testing.T) *alloc {
	a := &alloc{id: uuid.NewString(), dir: t.TempDir(), task: "engine", port: testenv.FreePort(t), marker: uuid.NewString()}
	for _, d := range []string{"alloc/logs", a.task + "/local", a.task + "/secrets", a.task + "/tmp"} {
		if err := os.MkdirAll(filepath.Join(a.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	a.stdout = newFIFO(t, filepath.Join(a.dir, "alloc/logs", "."+a.task+".stdout.fifo"))
	a.stderr = newFIFO(t, filepath.Join(a.dir, "alloc/logs", "."+a.task+".stderr.fifo"))
	t.Cleanup(func() { killMarked(a.marker, a.dir) })
	return a
}

func writeModel(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "tiny-model.gguf")
	if err := os.WriteFile(p, []byte("GGUF"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// taskConfig is StartTask's TaskConfig the way the agent fills it.
func (a *alloc) taskConfig(t *testing.T, p *nomadclient.Plugin, cfg map[string]interface{}) *drivers.TaskConfig {
	t.Helper()
	_, ts := schema(t, p)
	b, err := nomadclient.EncodeConfig(ts, cfg)
	if err != nil {
		t.Fatalf("encode task config: %v", err)
	}
	return a.rawTaskConfig(b)
}

func (a *alloc) rawTaskConfig(msgpack []byte) *drivers.TaskConfig {
	return nomadclient.Alloc{ID: a.id, Task: a.task, Dir: a.dir, Port: a.port, Env: map[string]string{"LLORCH_MARKER": a.marker},
		Job: "chat", Group: "inference", NodeID: "node-id-1", NodeName: "node-1"}.TaskConfig(uuid.NewString()[:8], msgpack)
}

// markedPIDs finds live processes carrying the alloc's marker in their
// environment or its directory on their command line.
func markedPIDs(marker, dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		stat, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			continue
		}
		env, _ := os.ReadFile("/proc/" + e.Name() + "/environ")
		cmd, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if (marker != "" && bytes.Contains(env, []byte(marker))) || (dir != "" && bytes.Contains(cmd, []byte(dir))) {
			out = append(out, pid)
		}
	}
	return out
}

// killMarked is the tests' safety net: whatever a failed test left
// running is killed before its directories are removed.
func killMarked(marker, dir string) {
	for i := 0; i < 50; i++ {
		pids := markedPIDs(marker, dir)
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// enginePIDs are the fake engine's main processes (not its short-lived
// sleeps).
func enginePIDs(marker string) []int {
	var out []int
	for _, pid := range markedPIDs(marker, "") {
		cmd, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if bytes.Contains(cmd, []byte("fake-engine.sh")) {
			out = append(out, pid)
		}
	}
	return out
}

func (a *alloc) requireNoProcesses(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		pids := markedPIDs(a.marker, a.dir)
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes left behind: %v", pids)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func start(t *testing.T, p *nomadclient.Plugin, tc *drivers.TaskConfig) *drivers.TaskHandle {
	t.Helper()
	resp, err := p.Driver.StartTask(ctxT(t, 20*time.Second), &drivers.StartTaskRequest{Task: tc})
	if err != nil {
		t.Fatalf("StartTask: %v", err)
	}
	h := resp.GetHandle()
	if h == nil || h.GetState() != drivers.TaskState_RUNNING || len(h.GetDriverState()) == 0 || h.GetConfig().GetId() != tc.GetId() {
		t.Fatalf("StartTask handle: %v", h)
	}
	return h
}

func waitTask(t *testing.T, p *nomadclient.Plugin, id string, limit time.Duration) *drivers.WaitTaskResponse {
	t.Helper()
	resp, err := p.Driver.WaitTask(ctxT(t, limit), &drivers.WaitTaskRequest{TaskId: id})
	if err != nil {
		t.Fatalf("WaitTask: %v", err)
	}
	if resp.GetResult() == nil {
		t.Fatal("WaitTask: nil result (crashes a v1.6 agent)")
	}
	return resp
}

func eventually(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func engineConfig(model string, extra map[string]interface{}) map[string]interface{} {
	cfg := map[string]interface{}{"model": model, "port": "http"}
	for k, v := range extra {
		cfg[k] = v
	}
	return cfg
}
