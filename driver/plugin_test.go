package driver_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	vmsgpack "github.com/vmihailenco/msgpack/v5"
	"github.com/zclconf/go-cty/cty"
	ctymsgpack "github.com/zclconf/go-cty/cty/msgpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/internal/hclspecdec"
	"github.com/llorch/llorch/internal/nomadpb/base"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
	"github.com/llorch/llorch/internal/nomadpb/hclspec"
	"github.com/llorch/llorch/internal/nomadpb/structs"
	"github.com/llorch/llorch/internal/testenv"
)

// --- helpers: an agent's view of the plugin ---

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

// --- tests ---

func TestPluginInfoSchemaAndConfig(t *testing.T) {
	p := nomadclient.Launch(t, nomadclient.Binary(t))
	info, err := p.Base.PluginInfo(ctxT(t, 5*time.Second), &base.PluginInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetType() != base.PluginType_DRIVER || info.GetName() != "llorch" {
		t.Fatalf("PluginInfo: %v", info)
	}
	if len(info.GetPluginApiVersions()) != 1 || info.GetPluginApiVersions()[0] != "v0.1.0" {
		t.Fatalf("api versions %v, want [v0.1.0]", info.GetPluginApiVersions())
	}
	// The agent parses it with hashicorp/go-version (semver-like).
	if !regexp.MustCompile(`^v?[0-9]+(\.[0-9]+)*(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`).MatchString(info.GetPluginVersion()) {
		t.Fatalf("plugin version %q is not a go-version", info.GetPluginVersion())
	}
	ps, ts := schema(t, p)
	for name, s := range map[string]*hclspec.Spec{"plugin": ps, "task": ts} {
		if _, err := hclspecdec.Convert(s); err != nil {
			t.Fatalf("%s schema does not convert as the agent converts it: %v", name, err)
		}
	}

	// The agent's validation launch sends SetConfig with no driver ports;
	// an empty config takes the defaults.
	for i := 0; i < 2; i++ {
		b, err := nomadclient.EncodeConfig(ps, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Base.SetConfig(ctxT(t, 5*time.Second), &base.SetConfigRequest{MsgpackConfig: b, PluginApiVersion: "v0.1.0"}); err != nil {
			t.Fatalf("SetConfig #%d: %v", i+1, err)
		}
	}

	caps, err := p.Driver.Capabilities(ctxT(t, 5*time.Second), &drivers.CapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	c := caps.GetCapabilities()
	if !c.GetSendSignals() || !c.GetExec() || c.GetFsIsolation() != drivers.DriverCapabilities_NONE ||
		len(c.GetNetworkIsolationModes()) != 1 || c.GetNetworkIsolationModes()[0] != drivers.NetworkIsolationSpec_HOST {
		t.Fatalf("capabilities: %v", c)
	}

	bad := []struct {
		name  string
		cfg   map[string]interface{}
		field string
	}{
		{"unknown engine", map[string]interface{}{"engines": map[string]interface{}{"nosuch": "/bin/true"}}, "engines.nosuch"},
		{"bad duration", map[string]interface{}{"fingerprint_period": "soon"}, "fingerprint_period"},
		{"wrong type", map[string]interface{}{"require_gpu": "maybe"}, "require_gpu"},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			enc, err := nomadclient.EncodeConfig(ps, b.cfg)
			if err != nil {
				// hcldec refused it as the agent would; it must name the field.
				if !strings.Contains(err.Error(), b.field) {
					t.Fatalf("agent-side error does not name %q: %v", b.field, err)
				}
				return
			}
			_, err = p.Base.SetConfig(ctxT(t, 5*time.Second), &base.SetConfigRequest{MsgpackConfig: enc})
			if err == nil || !strings.Contains(err.Error(), b.field) {
				t.Fatalf("SetConfig error %v does not name %q", err, b.field)
			}
		})
	}
}

func TestFingerprintStream(t *testing.T) {
	p := launch(t)
	ctx, cancel := context.WithCancel(ctxT(t, 10*time.Second))
	defer cancel()
	stream, err := p.Driver.Fingerprint(ctx, &drivers.FingerprintRequest{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	fp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("first fingerprint took %s", d)
	}
	if fp.GetHealth() != drivers.FingerprintResponse_HEALTHY {
		t.Fatalf("health %v: %s", fp.GetHealth(), fp.GetHealthDescription())
	}
	attrs := fp.GetAttributes()
	if attrs["driver.llorch.version"].GetStringVal() == "" || !strings.Contains(attrs["driver.llorch.engines"].GetStringVal(), "llamacpp") {
		t.Fatalf("attributes: %v", attrs)
	}
	// The stream stays open and repeats every fingerprint_period (1s here).
	fp2, err := stream.Recv()
	if err != nil {
		t.Fatalf("second fingerprint: %v", err)
	}
	if fp2.GetHealth() != drivers.FingerprintResponse_HEALTHY {
		t.Fatalf("second fingerprint health %v", fp2.GetHealth())
	}

	// require_gpu on a node without GPUs: unhealthy, with the reason.
	setConfig(t, p, pluginConfig(t, map[string]interface{}{"require_gpu": true}))
	eventually(t, 5*time.Second, "unhealthy fingerprint", func() bool {
		fp, err := stream.Recv()
		return err == nil && fp.GetHealth() == drivers.FingerprintResponse_UNHEALTHY && strings.Contains(fp.GetHealthDescription(), "GPU")
	})
}

func TestTaskLifecycle(t *testing.T) {
	p := launch(t)
	a := newAlloc(t)
	evCtx, evCancel := context.WithCancel(ctxT(t, 30*time.Second))
	defer evCancel()
	events, err := p.Driver.TaskEvents(evCtx, &drivers.TaskEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var evMu sync.Mutex
	var evs []*drivers.DriverTaskEvent
	go func() {
		for {
			ev, err := events.Recv()
			if err != nil {
				return
			}
			evMu.Lock()
			evs = append(evs, ev)
			evMu.Unlock()
		}
	}()
	time.Sleep(100 * time.Millisecond) // let the events stream subscribe

	tc := a.taskConfig(t, p, engineConfig(writeModel(t), map[string]interface{}{
		"ctx": 2048, "slots": 2, "extra_args": []string{"--flag"}, "env": map[string]interface{}{"EXTRA": "1"},
	}))
	h := start(t, p, tc)
	id := tc.GetId()

	// Logs reach the agent's FIFOs straight from the engine.
	eventually(t, 5*time.Second, "engine output in the stdout FIFO", func() bool {
		return strings.Contains(a.stdout.String(), "fake engine started") && strings.Contains(a.stderr.String(), "fake engine stderr line")
	})
	if out := a.stdout.String(); !strings.Contains(out, "--port "+strconv.Itoa(a.port)) || !strings.Contains(out, "--host 127.0.0.1") {
		t.Fatalf("engine command line lacks the resolved host/port: %q", out)
	}

	ins, err := p.Driver.InspectTask(ctxT(t, 5*time.Second), &drivers.InspectTaskRequest{TaskId: id})
	if err != nil {
		t.Fatal(err)
	}
	if ins.GetTask().GetState() != drivers.TaskState_RUNNING || ins.GetTask().GetStartedAt() == nil || ins.GetTask().GetCompletedAt() == nil {
		t.Fatalf("inspect running: %v", ins.GetTask())
	}

	// Stats: timestamp and aggregate always set, memory measured.
	sctx, scancel := context.WithCancel(ctxT(t, 10*time.Second))
	stats, err := p.Driver.TaskStats(sctx, &drivers.TaskStatsRequest{TaskId: id, CollectionInterval: durationpb.New(200 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		s, err := stats.Recv()
		if err != nil {
			t.Fatalf("stats #%d: %v", i, err)
		}
		st := s.GetStats()
		if st.GetTimestamp() == nil || st.GetAggResourceUsage() == nil || st.GetAggResourceUsage().GetMemory().GetRss() == 0 {
			t.Fatalf("stats #%d: %v", i, st)
		}
		if len(st.GetResourceUsageByPid()) < 1 {
			t.Fatalf("stats #%d: no per-pid usage", i)
		}
	}
	scancel()

	// Signal: the engine reports it got SIGUSR1.
	if _, err := p.Driver.SignalTask(ctxT(t, 5*time.Second), &drivers.SignalTaskRequest{TaskId: id, Signal: "SIGUSR1"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "SIGUSR1 in the engine's output", func() bool { return strings.Contains(a.stdout.String(), "got SIGUSR1") })
	if _, err := p.Driver.SignalTask(ctxT(t, 5*time.Second), &drivers.SignalTaskRequest{TaskId: id, Signal: "SIGNOPE"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("unknown signal: %v", err)
	}

	// Exec in the task's environment.
	ex, err := p.Driver.ExecTask(ctxT(t, 10*time.Second), &drivers.ExecTaskRequest{TaskId: id,
		Command: []string{"/bin/sh", "-c", "echo $EXTRA $NOMAD_TASK_NAME; echo err >&2; exit 3"}, Timeout: durationpb.New(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if string(ex.GetStdout()) != "1 engine\n" || string(ex.GetStderr()) != "err\n" || ex.GetResult().GetExitCode() != 3 {
		t.Fatalf("exec: stdout %q stderr %q result %v", ex.GetStdout(), ex.GetStderr(), ex.GetResult())
	}
	testExecStreaming(t, p, id)

	// Stop with the agent's default: empty signal means SIGINT; the engine
	// exits 0 on it.
	t0 := time.Now()
	if _, err := p.Driver.StopTask(ctxT(t, 20*time.Second), &drivers.StopTaskRequest{TaskId: id, Timeout: durationpb.New(5 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > 3*time.Second {
		t.Fatalf("stop took %s although the engine handles SIGINT", d)
	}
	res := waitTask(t, p, id, 5*time.Second)
	if res.GetResult().GetExitCode() != 0 || res.GetResult().GetSignal() != 0 || res.GetErr() != "" {
		t.Fatalf("exit after SIGINT: %v err %q", res.GetResult(), res.GetErr())
	}
	if !strings.Contains(a.stdout.String(), "got SIGINT") {
		t.Fatalf("engine did not see SIGINT: %q", a.stdout.String())
	}
	// Repeated wait answers at once; stop again is fine.
	waitTask(t, p, id, time.Second)
	if _, err := p.Driver.StopTask(ctxT(t, 5*time.Second), &drivers.StopTaskRequest{TaskId: id}); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	ins, err = p.Driver.InspectTask(ctxT(t, 5*time.Second), &drivers.InspectTaskRequest{TaskId: id})
	if err != nil {
		t.Fatal(err)
	}
	if ins.GetTask().GetState() != drivers.TaskState_EXITED || ins.GetTask().GetCompletedAt().AsTime().Before(ins.GetTask().GetStartedAt().AsTime()) {
		t.Fatalf("inspect exited: %v", ins.GetTask())
	}
	// The stats stream ends once the task has exited.
	st2, err := p.Driver.TaskStats(ctxT(t, 5*time.Second), &drivers.TaskStatsRequest{TaskId: id})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st2.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("stats of an exited task: want end of stream, got %v", err)
	}

	for i := 0; i < 2; i++ { // idempotent
		if _, err := p.Driver.DestroyTask(ctxT(t, 10*time.Second), &drivers.DestroyTaskRequest{TaskId: id, Force: true}); err != nil {
			t.Fatalf("destroy #%d: %v", i+1, err)
		}
	}
	a.requireNoProcesses(t)
	if _, err := p.Driver.WaitTask(ctxT(t, 2*time.Second), &drivers.WaitTaskRequest{TaskId: id}); status.Code(err) != codes.NotFound {
		t.Fatalf("wait after destroy: %v", err)
	}

	evMu.Lock()
	defer evMu.Unlock()
	var msgs []string
	for _, ev := range evs {
		if ev.GetTaskId() == id && ev.GetAllocId() == a.id && ev.GetTaskName() == a.task && ev.GetTimestamp() != nil {
			msgs = append(msgs, ev.GetMessage())
		}
	}
	joined := strings.Join(msgs, " | ")
	if !strings.Contains(joined, "Started llamacpp engine") || !strings.Contains(joined, "exited with code 0") {
		t.Fatalf("task events: %q", joined)
	}
	_ = h
}

func testExecStreaming(t *testing.T, p *nomadclient.Plugin, id string) {
	t.Helper()
	s, err := p.Driver.ExecTaskStreaming(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&drivers.ExecTaskStreamingRequest{Setup: &drivers.ExecTaskStreamingRequest_Setup{TaskId: id, Command: []string{"/bin/sh", "-c", "read x; echo got-$x; exit 4"}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&drivers.ExecTaskStreamingRequest{Stdin: &drivers.ExecTaskStreamingIOOperation{Data: []byte("ping\n")}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&drivers.ExecTaskStreamingRequest{Stdin: &drivers.ExecTaskStreamingIOOperation{Close: true}}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	closes := 0
	for {
		r, err := s.Recv()
		if err != nil {
			t.Fatalf("exec stream: %v (output %q)", err, out.String())
		}
		out.Write(r.GetStdout().GetData())
		if r.GetStdout().GetClose() {
			closes++
		}
		if r.GetStderr().GetClose() {
			closes++
		}
		if r.GetExited() {
			if r.GetResult().GetExitCode() != 4 || out.String() != "got-ping\n" || closes != 2 {
				t.Fatalf("exec stream: result %v output %q closes %d", r.GetResult(), out.String(), closes)
			}
			return
		}
	}
}

func TestStopEscalatesToSIGKILL(t *testing.T) {
	p := launch(t)
	a := newAlloc(t)
	tc := a.taskConfig(t, p, engineConfig(writeModel(t), map[string]interface{}{"env": map[string]interface{}{"FAKE_ON_INT": "ignore"}}))
	start(t, p, tc)
	eventually(t, 5*time.Second, "engine running", func() bool { return strings.Contains(a.stdout.String(), "fake engine started") })

	t0 := time.Now()
	_, err := p.Driver.StopTask(ctxT(t, 20*time.Second), &drivers.StopTaskRequest{TaskId: tc.GetId(), Timeout: durationpb.New(time.Second), Signal: ""})
	if err != nil {
		t.Fatal(err)
	}
	d := time.Since(t0)
	if d < time.Second || d > 4*time.Second {
		t.Fatalf("stop with a 1s kill_timeout took %s", d)
	}
	res := waitTask(t, p, tc.GetId(), 5*time.Second)
	if res.GetResult().GetSignal() != int32(syscall.SIGKILL) {
		t.Fatalf("want SIGKILL exit, got %v", res.GetResult())
	}
	if !strings.Contains(a.stdout.String(), "ignoring SIGINT") {
		t.Fatalf("engine never got SIGINT: %q", a.stdout.String())
	}
	if _, err := p.Driver.DestroyTask(ctxT(t, 10*time.Second), &drivers.DestroyTaskRequest{TaskId: tc.GetId(), Force: true}); err != nil {
		t.Fatal(err)
	}
	a.requireNoProcesses(t)
}

// TestRecoverAfterPluginCrash: kill -9 the plugin mid-task, start a new
// one, recover from the handle alone (empty config bytes, no task id, as
// after an agent restart) and still get the engine's real exit code.
func TestRecoverAfterPluginCrash(t *testing.T) {
	p1 := launch(t)
	a := newAlloc(t)
	exitFile := filepath.Join(a.dir, a.task, "local", "exit-code")
	tc := a.taskConfig(t, p1, engineConfig(writeModel(t), map[string]interface{}{"env": map[string]interface{}{"FAKE_EXIT_FILE": exitFile}}))
	h := start(t, p1, tc)
	eventually(t, 5*time.Second, "engine running", func() bool { return strings.Contains(a.stdout.String(), "fake engine started") })
	enginePids := enginePIDs(a.marker)
	if len(enginePids) == 0 {
		t.Fatal("no engine process found")
	}

	p1.Crash(t)
	eventually(t, 5*time.Second, "plugin gone", p1.Exited)
	time.Sleep(200 * time.Millisecond)
	for _, pid := range enginePids {
		if syscall.Kill(pid, 0) != nil {
			t.Fatalf("engine pid %d died with the plugin", pid)
		}
	}

	p2 := launch(t)
	// Recovering a task the agent persisted: only the handle, and its
	// config has lost the msgpack bytes.
	persisted := &drivers.TaskHandle{
		Version:     h.GetVersion(),
		Config:      &drivers.TaskConfig{Id: tc.GetId(), Name: tc.GetName(), AllocId: tc.GetAllocId(), AllocDir: tc.GetAllocDir()},
		State:       drivers.TaskState_UNKNOWN,
		DriverState: h.GetDriverState(),
	}
	if _, err := p2.Driver.RecoverTask(ctxT(t, 10*time.Second), &drivers.RecoverTaskRequest{Handle: persisted}); err != nil {
		t.Fatalf("RecoverTask: %v", err)
	}
	// Recovering again is a no-op.
	if _, err := p2.Driver.RecoverTask(ctxT(t, 10*time.Second), &drivers.RecoverTaskRequest{TaskId: tc.GetId(), Handle: persisted}); err != nil {
		t.Fatalf("second RecoverTask: %v", err)
	}
	st, err := p2.Driver.TaskStats(ctxT(t, 5*time.Second), &drivers.TaskStatsRequest{TaskId: tc.GetId(), CollectionInterval: durationpb.New(100 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	if s, err := st.Recv(); err != nil || s.GetStats().GetAggResourceUsage().GetMemory().GetRss() == 0 {
		t.Fatalf("stats of a recovered task: %v %v", s, err)
	}

	// The recovered task keeps its environment (exec runs in it).
	ex, err := p2.Driver.ExecTask(ctxT(t, 10*time.Second), &drivers.ExecTaskRequest{TaskId: tc.GetId(), Command: []string{"/bin/sh", "-c", "echo $LLORCH_MARKER"}})
	if err != nil || strings.TrimSpace(string(ex.GetStdout())) != a.marker {
		t.Fatalf("exec in a recovered task: %q %v", ex.GetStdout(), err)
	}

	waitCh := make(chan *drivers.WaitTaskResponse, 1)
	go func() {
		r, err := p2.Driver.WaitTask(ctxT(t, 20*time.Second), &drivers.WaitTaskRequest{TaskId: tc.GetId()})
		if err != nil {
			t.Errorf("WaitTask: %v", err)
		}
		waitCh <- r
	}()
	time.Sleep(200 * time.Millisecond)
	if err := os.WriteFile(exitFile, []byte("7"), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-waitCh:
		if r.GetResult().GetExitCode() != 7 {
			t.Fatalf("recovered task exit: %v err %q, want code 7", r.GetResult(), r.GetErr())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("WaitTask on the recovered task never returned")
	}
	if _, err := p2.Driver.DestroyTask(ctxT(t, 10*time.Second), &drivers.DestroyTaskRequest{TaskId: tc.GetId(), Force: true}); err != nil {
		t.Fatal(err)
	}
	a.requireNoProcesses(t)
}

// TestRecoverTaskThatExitedWhileNoPlugin: the engine ends while no plugin
// runs; the next plugin still reports its real exit code, and a
// StopTask/WaitTask on it answer at once.
func TestRecoverTaskThatExitedWhileNoPlugin(t *testing.T) {
	p1 := launch(t)
	a := newAlloc(t)
	exitFile := filepath.Join(a.dir, a.task, "local", "exit-code")
	tc := a.taskConfig(t, p1, engineConfig(writeModel(t), map[string]interface{}{"env": map[string]interface{}{"FAKE_EXIT_FILE": exitFile}}))
	h := start(t, p1, tc)
	eventually(t, 5*time.Second, "engine running", func() bool { return strings.Contains(a.stdout.String(), "fake engine started") })
	p1.Crash(t)
	if err := os.WriteFile(exitFile, []byte("3"), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "engine exit", func() bool { return strings.Contains(a.stdout.String(), "exiting with 3") })
	time.Sleep(300 * time.Millisecond)

	p2 := launch(t)
	persisted := &drivers.TaskHandle{Version: h.GetVersion(), Config: &drivers.TaskConfig{Id: tc.GetId()}, DriverState: h.GetDriverState()}
	if _, err := p2.Driver.RecoverTask(ctxT(t, 10*time.Second), &drivers.RecoverTaskRequest{Handle: persisted}); err != nil {
		t.Fatalf("RecoverTask: %v", err)
	}
	r := waitTask(t, p2, tc.GetId(), 5*time.Second)
	if r.GetResult().GetExitCode() != 3 {
		t.Fatalf("exit while no plugin ran: %v err %q, want code 3", r.GetResult(), r.GetErr())
	}
	if _, err := p2.Driver.DestroyTask(ctxT(t, 10*time.Second), &drivers.DestroyTaskRequest{TaskId: tc.GetId(), Force: true}); err != nil {
		t.Fatal(err)
	}
	a.requireNoProcesses(t)

	// A handle whose task is gone without a record is refused, so the
	// agent destroys and restarts it.
	if _, err := p2.Driver.RecoverTask(ctxT(t, 10*time.Second), &drivers.RecoverTaskRequest{Handle: persisted}); err == nil {
		t.Fatal("RecoverTask of a destroyed task succeeded")
	}
}

// TestBadTaskConfigs: each bad config gets a clear error naming the
// problem, and nothing is left running.
func TestBadTaskConfigs(t *testing.T) {
	p := launch(t)
	_, ts := schema(t, p)
	model := writeModel(t)

	// Configs the agent would refuse itself (hcldec) must name the field.
	for _, c := range []struct {
		cfg   map[string]interface{}
		field string
	}{
		{engineConfig(model, map[string]interface{}{"modle": "x"}), "modle"},
		{engineConfig(model, map[string]interface{}{"ctx": "lots"}), "ctx"},
		{map[string]interface{}{"port": "http"}, "model"},
	} {
		if _, err := nomadclient.EncodeConfig(ts, c.cfg); err == nil || !strings.Contains(err.Error(), c.field) {
			t.Fatalf("agent-side decode of %v: error %v does not name %q", c.cfg, err, c.field)
		}
	}

	valid, err := nomadclient.EncodeConfig(ts, engineConfig(model, nil))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name        string
		msgpack     func(t *testing.T) []byte
		wantIn      string
		recoverable bool
	}{
		{"unknown field", func(t *testing.T) []byte { return withExtraKey(t, valid, "modle", "x") }, `"modle"`, false},
		{"wrong type", func(t *testing.T) []byte { return replaceKey(t, ts, engineConfig(model, nil), "ctx", "lots") }, `"ctx"`, false},
		{"fractional number", func(t *testing.T) []byte {
			b, _ := nomadclient.EncodeConfig(ts, engineConfig(model, map[string]interface{}{"slots": 1.5}))
			return b
		}, `"slots"`, false},
		{"missing model file", func(t *testing.T) []byte {
			b, _ := nomadclient.EncodeConfig(ts, engineConfig("/nonexistent/model.gguf", nil))
			return b
		}, "/nonexistent/model.gguf", false},
		{"unknown engine", func(t *testing.T) []byte {
			b, _ := nomadclient.EncodeConfig(ts, engineConfig(model, map[string]interface{}{"engine": "nosuch"}))
			return b
		}, `"engine"`, false},
		{"unknown port label", func(t *testing.T) []byte {
			b, _ := nomadclient.EncodeConfig(ts, engineConfig(model, map[string]interface{}{"port": "grpc"}))
			return b
		}, `"grpc"`, false},
		{"gpus on a node without GPUs", func(t *testing.T) []byte {
			b, _ := nomadclient.EncodeConfig(ts, engineConfig(model, map[string]interface{}{"gpus": 1}))
			return b
		}, "no GPUs fingerprinted", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := newAlloc(t)
			tc := a.rawTaskConfig(c.msgpack(t))
			_, err := p.Driver.StartTask(ctxT(t, 20*time.Second), &drivers.StartTaskRequest{Task: tc})
			if err == nil {
				t.Fatal("StartTask succeeded")
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), c.wantIn) {
				t.Fatalf("error %q does not mention %s", err, c.wantIn)
			}
			if got := isRecoverable(err); got != c.recoverable {
				t.Fatalf("recoverable = %v, want %v (%v)", got, c.recoverable, err)
			}
			a.requireNoProcesses(t)
			if _, err := os.Stat(filepath.Join(a.dir, a.task, ".llorch")); err == nil {
				ents, _ := os.ReadDir(filepath.Join(a.dir, a.task, ".llorch"))
				if len(ents) > 0 {
					t.Fatalf("state left behind: %v", ents)
				}
			}
		})
	}
}

// isRecoverable decodes the error as the agent does: FailedPrecondition
// with a RecoverableError{recoverable: true} detail.
func isRecoverable(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.FailedPrecondition {
		return false
	}
	for _, d := range st.Details() {
		if re, ok := d.(*structs.RecoverableError); ok && re.GetRecoverable() {
			return true
		}
	}
	return false
}

// TestAgentStartupLaunches: the agent starts a plugin three times at
// startup (info+schema; SetConfig twice; long-lived). None of them may
// touch a running task.
func TestAgentStartupLaunches(t *testing.T) {
	p0 := launch(t)
	a := newAlloc(t)
	tc := a.taskConfig(t, p0, engineConfig(writeModel(t), nil))
	h := start(t, p0, tc)
	eventually(t, 5*time.Second, "engine running", func() bool { return strings.Contains(a.stdout.String(), "fake engine started") })
	before := enginePIDs(a.marker)
	p0.Kill() // graceful agent shutdown

	bin := nomadclient.Binary(t)
	p1 := nomadclient.Launch(t, bin)
	if _, err := p1.Base.PluginInfo(ctxT(t, 5*time.Second), &base.PluginInfoRequest{}); err != nil {
		t.Fatal(err)
	}
	schema(t, p1)
	p1.Kill()

	p2 := nomadclient.Launch(t, bin)
	ps, _ := schema(t, p2)
	b, err := nomadclient.EncodeConfig(ps, pluginConfig(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := p2.Base.SetConfig(ctxT(t, 5*time.Second), &base.SetConfigRequest{MsgpackConfig: b, PluginApiVersion: "v0.1.0"}); err != nil {
			t.Fatal(err)
		}
	}
	p2.Kill()

	p3 := launch(t)
	fctx, fcancel := context.WithCancel(ctxT(t, 10*time.Second))
	defer fcancel()
	fps, err := p3.Driver.Fingerprint(fctx, &drivers.FingerprintRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fps.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := p3.Driver.TaskEvents(fctx, &drivers.TaskEventsRequest{}); err != nil {
		t.Fatal(err)
	}
	after := enginePIDs(a.marker)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("task processes changed across plugin launches: before %v after %v", before, after)
	}
	persisted := &drivers.TaskHandle{Version: h.GetVersion(), Config: &drivers.TaskConfig{Id: tc.GetId()}, DriverState: h.GetDriverState()}
	if _, err := p3.Driver.RecoverTask(ctxT(t, 10*time.Second), &drivers.RecoverTaskRequest{Handle: persisted}); err != nil {
		t.Fatalf("RecoverTask: %v", err)
	}
	if _, err := p3.Driver.StopTask(ctxT(t, 20*time.Second), &drivers.StopTaskRequest{TaskId: tc.GetId(), Timeout: durationpb.New(5 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	if r := waitTask(t, p3, tc.GetId(), 5*time.Second); r.GetResult().GetExitCode() != 0 {
		t.Fatalf("exit: %v", r.GetResult())
	}
	if _, err := p3.Driver.DestroyTask(ctxT(t, 10*time.Second), &drivers.DestroyTaskRequest{TaskId: tc.GetId(), Force: true}); err != nil {
		t.Fatal(err)
	}
	a.requireNoProcesses(t)
}

// withExtraKey re-encodes a config with one attribute the schema lacks,
// as a buggy or foreign client could send.
func withExtraKey(t *testing.T, valid []byte, key, value string) []byte {
	t.Helper()
	return reencode(t, valid, func(m map[string]cty.Value) { m[key] = cty.StringVal(value) })
}

// replaceKey encodes cfg, then swaps one attribute's value for a string.
func replaceKey(t *testing.T, ts *hclspec.Spec, cfg map[string]interface{}, key, value string) []byte {
	t.Helper()
	b, err := nomadclient.EncodeConfig(ts, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return reencode(t, b, func(m map[string]cty.Value) { m[key] = cty.StringVal(value) })
}

func reencode(t *testing.T, b []byte, edit func(map[string]cty.Value)) []byte {
	t.Helper()
	var generic interface{}
	if err := vmsgpack.Unmarshal(b, &generic); err != nil {
		t.Fatal(err)
	}
	vals := map[string]cty.Value{}
	for k, v := range generic.(map[string]interface{}) {
		vals[k] = toCty(v)
	}
	edit(vals)
	obj := cty.ObjectVal(vals)
	out, err := ctymsgpack.Marshal(obj, obj.Type())
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func toCty(v interface{}) cty.Value {
	switch x := v.(type) {
	case nil:
		return cty.NullVal(cty.DynamicPseudoType)
	case string:
		return cty.StringVal(x)
	case bool:
		return cty.BoolVal(x)
	case int8, int16, int32, int64, uint8, uint16, uint32, uint64:
		n, _ := strconv.ParseInt(fmt.Sprint(x), 10, 64)
		return cty.NumberIntVal(n)
	case float64:
		return cty.NumberFloatVal(x)
	case []interface{}:
		if len(x) == 0 {
			return cty.EmptyTupleVal
		}
		var vs []cty.Value
		for _, e := range x {
			vs = append(vs, toCty(e))
		}
		return cty.TupleVal(vs)
	case map[string]interface{}:
		m := map[string]cty.Value{}
		for k, e := range x {
			m[k] = toCty(e)
		}
		return cty.ObjectVal(m)
	}
	panic(fmt.Sprintf("toCty: %T", v))
}
