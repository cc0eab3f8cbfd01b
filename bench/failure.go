// Failure detection: how fast a dead or hung engine leaves the router's
// view, with a real llama-server, the supervisor and Consul.

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/engine/supervise"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/registry/consul"
)

// failureBench measures, with a real llama-server, supervise and Consul:
// engine killed → gone from the router's view, and engine hung (SIGSTOP)
// → gone, over repeated trials.
func failureBench(e *env, quick bool) {
	section := "failure detection (llama-server, Consul, router view)"
	bin := filepath.Join(cacheDir(), "bin", "llama-server")
	if _, err := os.Stat(bin); err != nil {
		notMeasured(section, "engine kill → excluded", "llama-server not found (scripts/get-llama-server.sh)")
		return
	}
	model := filepath.Join(e.dir, "tiny.gguf")
	if err := ggufgen.Write(model, ggufgen.DefaultOptions()); err != nil {
		notMeasured(section, "engine kill → excluded", err.Error())
		return
	}
	trials := 7
	if quick {
		trials = 3
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := newWatcher(ctx, e.cc)
	reg, err := consul.NewRegistrar(consul.RegistrarConfig{Address: e.consulAddr})
	if err != nil {
		notMeasured(section, "engine kill → excluded", err.Error())
		return
	}
	var kill, hung []time.Duration
	for i := 0; i < trials; i++ {
		for _, mode := range []string{"kill", "hung"} {
			if mode == "hung" && i >= 3 {
				continue // each hung trial takes seconds
			}
			d, err := oneFailure(ctx, w, reg, bin, model, fmt.Sprintf("bench-fail-%s-%d", mode, i), mode)
			if err != nil {
				notMeasured(section, "engine "+mode, err.Error())
				return
			}
			if mode == "kill" {
				kill = append(kill, d)
			} else {
				hung = append(hung, d)
			}
		}
	}
	report := func(name string, l []time.Duration, goal time.Duration) {
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
		add(section, fmt.Sprintf("%s → excluded (%d trials)", name, len(l)), "p50 "+ms(l[len(l)/2])+", max "+ms(l[len(l)-1]), "", "≤"+goal.String(), b(l[len(l)-1] <= goal))
	}
	report("engine kill -9", kill, time.Second)
	report("engine hung (SIGSTOP)", hung, 5*time.Second)
	notMeasured(section, "node loss → excluded", "needs several hosts: the e2e suite (network namespaces)")
}

func oneFailure(ctx context.Context, w *watcher, reg *consul.Registrar, bin, model, id, mode string) (time.Duration, error) {
	ad, _ := engine.Get("llamacpp")
	port := freePort()
	spec := engine.Spec{Model: model, ModelName: "tiny", Host: "127.0.0.1", Port: port, Slots: 1}
	c, err := ad.Command(bin, spec)
	if err != nil {
		return 0, err
	}
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	sup := supervise.New(supervise.Config{Adapter: ad, Spec: spec, Registrar: reg, Instance: registry.Instance{ID: id, Service: registry.DefaultServiceName,
		Address: "127.0.0.1", Port: port, Model: "tiny", Engine: "llamacpp", NodeID: "bench-node", Slots: 1}})
	go sup.Run(ctx)
	waited := make(chan struct{})
	go func() { cmd.Wait(); sup.ProcessExited(); close(waited) }()
	if _, ok := w.until(20*time.Second, has(id)); !ok {
		return 0, fmt.Errorf("engine never visible")
	}
	t0 := time.Now()
	if mode == "kill" {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	} else {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGSTOP)
	}
	at, ok := w.until(20*time.Second, func(s registry.Snapshot) bool { return !has(id)(s) })
	if !ok {
		return 0, fmt.Errorf("engine %s never excluded", mode)
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT)
	<-waited
	stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	sup.Stop(stopCtx)
	cancel()
	return at.Sub(t0), nil
}
