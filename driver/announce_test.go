package driver_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/engine/supervise"
	"github.com/llorch/llorch/internal/consultest"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
	"github.com/llorch/llorch/internal/testenv"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/registry/consul"
)

// announceEnv is a real Consul (ACLs on, default deny) with the plugin's
// token made from deploy/consul/driver-policy.hcl, a reader with the
// router's policy, and the real llama-server with a generated model.
type announceEnv struct {
	consul *testenv.Consul
	reader *consulapi.Client
	cfg    map[string]interface{}
	model  string
}

// consulWriteMargin is the margin of the timing goals here: one check
// update through the local Consul agent, on a loaded 2-core machine.
const consulWriteMargin = time.Second

func newAnnounceEnv(t *testing.T, policy string) *announceEnv {
	bin := testenv.LlamaServer(t)
	c := testenv.StartConsul(t)
	tokFile := filepath.Join(t.TempDir(), "consul-token")
	if err := os.WriteFile(tokFile, []byte(c.Token(t, policy)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &announceEnv{
		consul: c,
		reader: c.Client(t, c.Token(t, consultest.RouterPolicy(t))),
		cfg: map[string]interface{}{
			"engines": map[string]interface{}{"llamacpp": bin},
			"consul":  map[string]interface{}{"address": c.Addr, "token_file": tokFile},
		},
		model: ggufgen.TestModel(t, ggufgen.DefaultOptions()),
	}
}

func (e *announceEnv) plugin(t *testing.T) *nomadclient.Plugin {
	p := nomadclient.Launch(t, nomadclient.Binary(t))
	setConfig(t, p, e.cfg)
	return p
}

func (e *announceEnv) task(t *testing.T, p *nomadclient.Plugin, a *alloc) *drivers.TaskConfig {
	return a.taskConfig(t, p, map[string]interface{}{
		"engine": "llamacpp", "model": e.model, "model_name": "tiny", "port": "http",
		"slots": 2, "ctx": 512, "threads": 1, "pool": "cpu-pool",
	})
}

func enginePID(t *testing.T, p *nomadclient.Plugin, id string) int {
	t.Helper()
	r, err := p.Driver.InspectTask(ctxT(t, 5*time.Second), &drivers.InspectTaskRequest{TaskId: id})
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(r.GetDriver().GetAttributes()["engine_pid"])
	if err != nil || pid <= 0 {
		t.Fatalf("engine_pid %q", r.GetDriver().GetAttributes()["engine_pid"])
	}
	return pid
}

func instanceIDOf(a *alloc) string { return "llorch-" + a.id + "-" + a.task }

// TestAnnounceThroughPlugin drives the plugin over the Nomad protocol and
// watches Consul as a router would: start → passing with the right
// tags/meta; SIGSTOP → critical; SIGCONT → passing; plugin kill -9 and
// recovery → still one instance, never left passing; stop → deregistered;
// engine killed → critical at once. It prints the measured times.
func TestAnnounceThroughPlugin(t *testing.T) {
	e := newAnnounceEnv(t, consultest.DriverPolicy(t))
	p1 := e.plugin(t)
	a := newAlloc(t)
	tc := e.task(t, p1, a)
	id := instanceIDOf(a)
	w := consultest.Watch(t, e.reader, registry.DefaultServiceName, consul.CheckID(id))

	t0 := time.Now()
	h := start(t, p1, tc)
	ready := w.WaitFor(t, "passing", 20*time.Second)
	t.Logf("StartTask→passing %v", ready.Sub(t0).Round(time.Millisecond))

	entries, _, err := e.reader.Health().Service(registry.DefaultServiceName, "", true, nil)
	if err != nil || len(entries) != 1 {
		t.Fatalf("passing instances: %d %v", len(entries), err)
	}
	s := entries[0].Service
	inst, err := registry.FromRegistry(s.ID, s.Service, s.Address, s.Port, s.Tags, s.Meta, registry.HealthPassing)
	if err != nil {
		t.Fatal(err)
	}
	if inst.ID != id || inst.Model != "tiny" || inst.Engine != "llamacpp" || inst.PoolID != "cpu-pool" ||
		inst.NodeID != "node-id-1" || inst.NodeName != "node-1" || inst.Port != a.port || inst.Address != "127.0.0.1" ||
		inst.Slots != 2 || inst.Ctx != 512 || inst.EngineVersion == "" || !inst.Serves("/v1/chat/completions") {
		t.Errorf("registered instance: %+v", inst)
	}
	if tags := strings.Join(s.Tags, ","); !strings.Contains(tags, "model=tiny") || !strings.Contains(tags, "engine=llamacpp") || !strings.Contains(tags, "pool=cpu-pool") {
		t.Errorf("tags %v", s.Tags)
	}

	// Hung engine.
	pid := enginePID(t, p1, tc.GetId())
	stopAt := time.Now()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Critical once no probe succeeded for hung_after, checked every probe
	// interval (the driver runs the supervisor with its defaults), plus one
	// Consul write.
	hungGoal := supervise.DefaultHungAfter + supervise.DefaultProbeInterval + consulWriteMargin
	hung := w.WaitFor(t, "critical", 2*hungGoal).Sub(stopAt)
	contAt := time.Now()
	syscall.Kill(pid, syscall.SIGCONT)
	back := w.WaitFor(t, "passing", 5*time.Second)
	t.Logf("SIGSTOP→critical %v, SIGCONT→passing %v", hung.Round(time.Millisecond), back.Sub(contAt).Round(time.Millisecond))
	if hung > hungGoal {
		t.Errorf("SIGSTOP→critical %v, goal ≤ %v (hung_after %v + probe interval %v + Consul write %v)",
			hung, hungGoal, supervise.DefaultHungAfter, supervise.DefaultProbeInterval, consulWriteMargin)
	}

	// Plugin crash and recovery: the registration survives without a flap.
	crashAt := time.Now()
	p1.Crash(t)
	p2 := e.plugin(t)
	persisted := &drivers.TaskHandle{
		Version:     h.GetVersion(),
		Config:      &drivers.TaskConfig{Id: tc.GetId(), Name: tc.GetName(), AllocId: tc.GetAllocId(), AllocDir: tc.GetAllocDir()},
		State:       drivers.TaskState_UNKNOWN,
		DriverState: h.GetDriverState(),
	}
	if _, err := p2.Driver.RecoverTask(ctxT(t, 10*time.Second), &drivers.RecoverTaskRequest{Handle: persisted}); err != nil {
		t.Fatalf("RecoverTask: %v", err)
	}
	recovered := time.Since(crashAt)
	time.Sleep(consul.DefaultTTL + time.Second) // past the TTL: only p2 can be feeding it now
	t.Logf("plugin kill -9 → recovered in %v; states since: %v", recovered.Round(time.Millisecond), w.Since(crashAt))
	if st := w.Since(crashAt); len(st) != 1 || st[0] != "passing" {
		t.Errorf("registration flapped across the plugin restart: %v", st)
	}
	if svcs, _, _ := e.reader.Catalog().Service(registry.DefaultServiceName, "", nil); len(svcs) != 1 {
		t.Errorf("%d instances after recovery, want 1", len(svcs))
	}

	// Stop: deregistered before the engine goes.
	stopCall := time.Now()
	if _, err := p2.Driver.StopTask(ctxT(t, 20*time.Second), &drivers.StopTaskRequest{TaskId: tc.GetId(), Timeout: durationpb.New(5 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	gone := w.WaitFor(t, "absent", 5*time.Second)
	t.Logf("StopTask→deregistered %v", gone.Sub(stopCall).Round(time.Millisecond))
	waitTask(t, p2, tc.GetId(), 10*time.Second)
	if _, err := p2.Driver.DestroyTask(ctxT(t, 10*time.Second), &drivers.DestroyTaskRequest{TaskId: tc.GetId(), Force: true}); err != nil {
		t.Fatal(err)
	}

	// Engine crash: a new task, then kill -9 its engine.
	a2 := newAlloc(t)
	tc2 := e.task(t, p2, a2)
	id2 := instanceIDOf(a2)
	w2 := consultest.Watch(t, e.reader, registry.DefaultServiceName, consul.CheckID(id2))
	start(t, p2, tc2)
	w2.WaitFor(t, "passing", 20*time.Second)
	pid2 := enginePID(t, p2, tc2.GetId())
	killAt := time.Now()
	if err := syscall.Kill(pid2, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	down := w2.WaitNot(t, "passing", 5*time.Second).Sub(killAt)
	w2.WaitFor(t, "absent", 5*time.Second)
	t.Logf("engine kill -9 → critical/deregistered %v", down.Round(time.Millisecond))
	// The supervisor is the plugin's own child here, so the exit is seen at
	// once; the supervisor may be mid-probe (one probe interval), then one
	// Consul write.
	if crashGoal := supervise.DefaultProbeInterval + consulWriteMargin; down > crashGoal {
		t.Errorf("engine crash took %v to leave passing, goal ≤ %v (probe interval %v + Consul write %v)",
			down, crashGoal, supervise.DefaultProbeInterval, consulWriteMargin)
	}
	res := waitTask(t, p2, tc2.GetId(), 5*time.Second)
	if res.GetResult().GetSignal() != 9 {
		t.Errorf("wait result %v", res.GetResult())
	}
	p2.Driver.DestroyTask(ctxT(t, 10*time.Second), &drivers.DestroyTaskRequest{TaskId: tc2.GetId(), Force: true})
	a.requireNoProcesses(t)
	a2.requireNoProcesses(t)
}

// TestAnnounceTokenWithoutWrite: a token that may not register the
// service makes the task exit (documented choice: StartTask succeeds, the
// supervisor's registration is refused, the engine is stopped with an
// event naming the reason), and nothing is ever registered.
func TestAnnounceTokenWithoutWrite(t *testing.T) {
	e := newAnnounceEnv(t, consultest.RouterPolicy(t)) // read-only
	p := e.plugin(t)
	events, err := p.Driver.TaskEvents(ctxT(t, 30*time.Second), &drivers.TaskEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	a := newAlloc(t)
	tc := e.task(t, p, a)
	start(t, p, tc)
	res := waitTask(t, p, tc.GetId(), 20*time.Second)
	t.Logf("task ended: %v %q", res.GetResult(), res.GetErr())
	var msgs []string
	deadline := time.After(5 * time.Second)
collect:
	for {
		evc := make(chan *drivers.DriverTaskEvent, 1)
		go func() {
			if ev, err := events.Recv(); err == nil {
				evc <- ev
			}
		}()
		select {
		case ev := <-evc:
			msgs = append(msgs, ev.GetMessage())
			if strings.Contains(ev.GetMessage(), "cannot be registered") {
				break collect
			}
		case <-deadline:
			break collect
		}
	}
	joined := strings.Join(msgs, "\n")
	if !strings.Contains(joined, "consul ACL denied: token token:") || !strings.Contains(joined, "lacks service:write on llorch-engine") {
		t.Errorf("no clear event about the refused registration; events:\n%s", joined)
	}
	if svcs, _, _ := e.consul.Client(t, e.consul.ManagementToken).Catalog().Service(registry.DefaultServiceName, "", nil); len(svcs) != 0 {
		t.Errorf("registered with a read-only token: %v", svcs)
	}
	p.Driver.DestroyTask(ctxT(t, 10*time.Second), &drivers.DestroyTaskRequest{TaskId: tc.GetId(), Force: true})
	a.requireNoProcesses(t)
}
