package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	consul "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/internal/nomadpb/base"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
	"github.com/llorch/llorch/registry"
)

// driverBench measures what the driver adds to an engine start: StartTask
// over the Nomad plugin protocol (the built binary, launched as the agent
// launches it) until the instance is passing in Consul, minus the engine's
// own load time (the same llama-server command started by hand until its
// /health answers 200). Trials alternate the two so drift hits both.
func driverBench(e *env, quick bool) {
	section := "driver (Nomad plugin protocol, real llama-server, Consul)"
	const figure = "StartTask → Consul passing, minus engine load"
	llama := filepath.Join(cacheDir(), "bin", "llama-server")
	if _, err := os.Stat(llama); err != nil {
		notMeasured(section, figure, "llama-server not found (scripts/get-llama-server.sh)")
		return
	}
	model := filepath.Join(e.dir, "driver-tiny.gguf")
	if err := ggufgen.Write(model, ggufgen.DefaultOptions()); err != nil {
		notMeasured(section, figure, "generate model: "+err.Error())
		return
	}
	llorch, _ := filepath.Abs("bin/llorch")
	p, err := launchPlugin(llorch)
	if err != nil {
		notMeasured(section, figure, err.Error())
		return
	}
	defer p.kill()
	if err := p.setConfig(map[string]interface{}{
		"engines": map[string]interface{}{"llamacpp": llama},
		"consul":  map[string]interface{}{"address": e.consulAddr},
	}); err != nil {
		notMeasured(section, figure, err.Error())
		return
	}
	trials := 5
	if quick {
		trials = 2
	}
	var viaDriver, engineLoad []time.Duration
	for i := 0; i < trials; i++ {
		d, err := p.startToPassing(e, model, fmt.Sprintf("drv-%d", i))
		if err != nil {
			notMeasured(section, figure, err.Error())
			return
		}
		viaDriver = append(viaDriver, d)
		l, err := engineLoadTime(llama, model)
		if err != nil {
			notMeasured(section, figure, "engine alone: "+err.Error())
			return
		}
		engineLoad = append(engineLoad, l)
	}
	med := func(l []time.Duration) time.Duration {
		c := append([]time.Duration(nil), l...)
		sort.Slice(c, func(i, j int) bool { return c[i] < c[j] })
		return c[len(c)/2]
	}
	over := med(viaDriver) - med(engineLoad)
	add(section, fmt.Sprintf("StartTask → passing (p50 of %d)", trials), ms(med(viaDriver)), ms(med(engineLoad))+" (engine alone to /health ok)", "", nil)
	add(section, "driver adds (p50 difference)", added(over), "", "", nil)
	if rt := p.readyTimes(); len(rt) == trials {
		add(section, "of which: supervisor's readiness probe passes (p50)", ms(med(rt)), ms(med(engineLoad))+" (engine alone)", "", nil)
	}
}

// benchPlugin is the driver plugin process, spoken to over gRPC only.
type benchPlugin struct {
	client *plugin.Client
	logs   *lockedBuffer // the plugin's log, relayed by go-plugin
	base   base.BasePluginClient
	driver drivers.DriverClient
}

// rawConn hands the plugin's gRPC connection to the caller.
type rawConn struct{ plugin.NetRPCUnsupportedPlugin }

func (rawConn) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return errors.New("client side only")
}

func (rawConn) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return c, nil
}

func launchPlugin(bin string) (*benchPlugin, error) {
	logs := &lockedBuffer{}
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  nomadclient.Handshake,
		Plugins:          plugin.PluginSet{"base": rawConn{}, "driver": rawConn{}},
		Cmd:              exec.Command(bin),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.New(&hclog.LoggerOptions{Name: "agent", Output: logs, Level: hclog.Info}),
	})
	rpc, err := c.Client()
	if err != nil {
		c.Kill()
		return nil, fmt.Errorf("launch plugin %s: %w", bin, err)
	}
	raw, err := rpc.Dispense("driver")
	if err != nil {
		c.Kill()
		return nil, fmt.Errorf("dispense driver: %w", err)
	}
	conn := raw.(*grpc.ClientConn)
	return &benchPlugin{client: c, logs: logs, base: base.NewBasePluginClient(conn), driver: drivers.NewDriverClient(conn)}, nil
}

func (p *benchPlugin) kill() { p.client.Kill() }

// lockedBuffer collects the plugin's log lines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The plugin logs a duration; relayed through go-plugin's JSON it arrives
// as float nanoseconds ("1.03e+08"), printed directly as "103ms".
var readyAfterRE = regexp.MustCompile(`engine ready: .*after="?([0-9.e+]+[a-zµ]*)`)

// readyTimes are the supervisor's own "engine ready after" figures (the
// time its readiness probe took to see the engine up), in log order.
func (p *benchPlugin) readyTimes() []time.Duration {
	var out []time.Duration
	for _, m := range readyAfterRE.FindAllStringSubmatch(p.logs.String(), -1) {
		if d, err := time.ParseDuration(m[1]); err == nil {
			out = append(out, d)
		} else if ns, err := strconv.ParseFloat(m[1], 64); err == nil {
			out = append(out, time.Duration(ns))
		}
	}
	return out
}

func (p *benchPlugin) setConfig(cfg map[string]interface{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs, err := p.base.ConfigSchema(ctx, &base.ConfigSchemaRequest{})
	if err != nil {
		return fmt.Errorf("ConfigSchema: %w", err)
	}
	b, err := nomadclient.EncodeConfig(cs.GetSpec(), cfg)
	if err != nil {
		return fmt.Errorf("encode plugin config: %w", err)
	}
	_, err = p.base.SetConfig(ctx, &base.SetConfigRequest{
		MsgpackConfig:    b,
		PluginApiVersion: "v0.1.0",
		NomadConfig:      &base.NomadConfig{Driver: &base.NomadDriverConfig{ClientMaxPort: 14512, ClientMinPort: 14000}},
	})
	if err != nil {
		return fmt.Errorf("SetConfig: %w", err)
	}
	return nil
}

// startToPassing starts one task serving modelName and returns the time
// from the StartTask call until Consul lists the instance as passing; it
// stops and destroys the task before returning.
func (p *benchPlugin) startToPassing(e *env, modelFile, modelName string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ts, err := p.driver.TaskConfigSchema(ctx, &drivers.TaskConfigSchemaRequest{})
	if err != nil {
		return 0, fmt.Errorf("TaskConfigSchema: %w", err)
	}
	cfg, err := nomadclient.EncodeConfig(ts.GetSpec(), map[string]interface{}{
		"engine": "llamacpp", "model": modelFile, "model_name": modelName, "port": "http",
		"slots": 2, "ctx": 512, "threads": 1,
	})
	if err != nil {
		return 0, fmt.Errorf("encode task config: %w", err)
	}
	a, err := newBenchAlloc(e.dir, modelName)
	if err != nil {
		return 0, err
	}
	defer a.close()
	tc := a.taskConfig(cfg)

	// Block on Consul's health endpoint from now on, so the first
	// passing answer is seen as soon as Consul has it.
	_, meta, err := e.cc.Health().Service(registry.DefaultServiceName, "", true, (&consul.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return 0, fmt.Errorf("consul health: %w", err)
	}
	index := meta.LastIndex
	t0 := time.Now()
	if _, err := p.driver.StartTask(ctx, &drivers.StartTaskRequest{Task: tc}); err != nil {
		return 0, fmt.Errorf("StartTask: %w", err)
	}
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer scancel()
		_, _ = p.driver.StopTask(sctx, &drivers.StopTaskRequest{TaskId: tc.GetId(), Timeout: durationpb.New(5 * time.Second)})
		_, _ = p.driver.DestroyTask(sctx, &drivers.DestroyTaskRequest{TaskId: tc.GetId(), Force: true})
	}()
	for {
		entries, meta, err := e.cc.Health().Service(registry.DefaultServiceName, "", true,
			(&consul.QueryOptions{WaitIndex: index, WaitTime: 10 * time.Second}).WithContext(ctx))
		if err != nil {
			return 0, fmt.Errorf("task %s never passing in Consul: %w", modelName, err)
		}
		for _, en := range entries {
			if en.Service != nil && en.Service.Meta[registry.MetaModel] == modelName {
				return time.Since(t0), nil
			}
		}
		index = meta.LastIndex
	}
}

// benchAlloc is an allocation directory as a Nomad agent prepares it: the
// task's directories and log FIFOs with a reader already open (logmon).
type benchAlloc struct {
	id, dir, task string
	port          int
	fifos         []*os.File
}

func newBenchAlloc(root, name string) (*benchAlloc, error) {
	a := &benchAlloc{id: fmt.Sprintf("bench-%s-%d", name, time.Now().UnixNano()), task: "engine", port: freePort()}
	a.dir = filepath.Join(root, a.id)
	for _, d := range []string{"alloc/logs", a.task + "/local", a.task + "/secrets", a.task + "/tmp"} {
		if err := os.MkdirAll(filepath.Join(a.dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("alloc dir: %w", err)
		}
	}
	for _, s := range []string{"stdout", "stderr"} {
		path := filepath.Join(a.dir, "alloc/logs", "."+a.task+"."+s+".fifo")
		if err := syscall.Mkfifo(path, 0o600); err != nil {
			a.close()
			return nil, fmt.Errorf("log fifo: %w", err)
		}
		// O_RDWR: open for reading with no writer yet, as logmon is.
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			a.close()
			return nil, fmt.Errorf("log fifo: %w", err)
		}
		a.fifos = append(a.fifos, f)
		go func() { _, _ = io.Copy(io.Discard, f) }() // ends when close closes f
	}
	return a, nil
}

func (a *benchAlloc) close() {
	for _, f := range a.fifos {
		f.Close()
	}
}

func (a *benchAlloc) taskConfig(msgpack []byte) *drivers.TaskConfig {
	return nomadclient.Alloc{ID: a.id, Task: a.task, Dir: a.dir, Port: a.port, Job: "bench", Group: "inference",
		NodeID: "bench-node-id", NodeName: "bench-node"}.TaskConfig("0", msgpack)
}

// engineLoadTime starts llama-server with the command the driver would
// build and returns the time until /health answers 200.
func engineLoadTime(bin, model string) (time.Duration, error) {
	ad, err := engine.Get("llamacpp")
	if err != nil {
		return 0, err
	}
	port := freePort()
	c, err := ad.Command(bin, engine.Spec{Model: model, ModelName: "tiny", Host: "127.0.0.1", Port: port, Slots: 2, Ctx: 512, Threads: 1})
	if err != nil {
		return 0, err
	}
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	}()
	url := "http://" + addr(port) + "/health"
	cl := &http.Client{Timeout: time.Second}
	for time.Since(t0) < 30*time.Second {
		if resp, err := cl.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(t0), nil
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return 0, fmt.Errorf("llama-server not healthy in 30s")
}
