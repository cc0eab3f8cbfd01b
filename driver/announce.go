package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/llorch/llorch/driver/gpualloc"
	"github.com/llorch/llorch/engine/supervise"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/registry/consul"
)

// Announcing: each task gets a supervise.Supervisor in the plugin process.
// It waits until the engine is ready, registers the instance in Consul
// passing, feeds the TTL check from health probes, and deregisters when
// the task stops or the engine dies. The lifecycle calls the four hooks
// below; they never block it for longer than a deregistration.
//
// Registration is on when the plugin config's consul block has an address
// (or the plugin runs with CONSUL_HTTP_ADDR); without it the supervisor
// still probes readiness and health and reports them as task events.
//
// A registration the token is not allowed to make (ACL denied) is final:
// the engine cannot be found by any router, so the task is stopped with an
// event saying why, and Nomad's restart policy takes over.
//
// The supervisors live in Driver.announcements, keyed by handle (handles
// are unique per task and plugin process).

// announceStopTimeout bounds the deregistration StopTask waits for.
const announceStopTimeout = 3 * time.Second

type announcement struct {
	sup  *supervise.Supervisor
	done chan struct{} // Run returned
}

// announceStart runs after the engine process is launched.
func (d *Driver) announceStart(h *taskHandle) { d.announce(h, "start") }

// announceRecover runs after RecoverTask reattached a task: a new
// supervisor re-asserts the same registration (same id); registering it
// passing once the engine answers keeps a passing instance from flapping.
func (d *Driver) announceRecover(h *taskHandle) { d.announce(h, "recover") }

// announceExit runs when the engine process has exited: critical at once,
// then deregistered (the supervisor does both as it ends).
func (d *Driver) announceExit(h *taskHandle) {
	if a, ok := d.announcements.Load(h); ok {
		a.(*announcement).sup.ProcessExited()
	}
}

// announceStop runs at the start of StopTask and of a forced DestroyTask,
// so the instance leaves the registry before the engine goes.
func (d *Driver) announceStop(h *taskHandle) {
	v, ok := d.announcements.Load(h)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), announceStopTimeout)
	defer cancel()
	if err := v.(*announcement).sup.Stop(ctx); err != nil {
		d.log.Warn("deregister on stop", "task_id", h.TaskID(), "instance_id", h.InstanceID(), "error", err)
	}
}

func (d *Driver) announce(h *taskHandle, why string) {
	adapter, err := h.Adapter()
	if err != nil {
		d.log.Error("announce: no adapter", "task_id", h.TaskID(), "error", err)
		return
	}
	log := d.log.Named("announce").With("task_id", h.TaskID(), "instance_id", h.InstanceID())
	reg, err := d.registrar()
	if err != nil {
		// The consul block is unusable (e.g. token file missing): as final
		// as an ACL refusal.
		d.refuseRegistration(h, err)
		return
	}
	spec := h.Spec()
	cfg := supervise.Config{
		Adapter:  adapter,
		Spec:     spec,
		Instance: d.instanceFor(h),
		Logger:   log,
		OnChange: func(ready bool, health registry.Health, note string) {
			switch {
			case ready && health == registry.HealthPassing:
				d.metrics.readyOnce(h)
				d.events.emit(h, "Engine ready and serving; registered as "+h.InstanceID(), nil)
			case ready && health == registry.HealthCritical:
				d.events.emit(h, "Engine not answering; marked critical: "+note, nil)
			}
		},
	}
	if reg != nil {
		cfg.Registrar = reg
	}
	if spec.TLSCertFile != "" { // the engine itself serves HTTPS: probe it so
		cfg.Base, cfg.Client = engineProbeTLS(spec)
	}
	a := &announcement{sup: supervise.New(cfg), done: make(chan struct{})}
	if _, loaded := d.announcements.LoadOrStore(h, a); loaded {
		return // already announced (a repeated RecoverTask)
	}
	log.Debug("announcing", "why", why, "registry", reg != nil)
	go func() {
		defer close(a.done)
		defer d.announcements.Delete(h)
		// The plugin's lifetime owns the supervisor, not the task's context:
		// an exit or stop must still deregister after the task context ends,
		// and a plugin shutdown must leave the registration for the next
		// plugin process to re-assert.
		err := a.sup.Run(d.ctx)
		switch {
		case err == nil, errors.Is(err, supervise.ErrProcessExited), errors.Is(err, context.Canceled):
		case errors.Is(err, registry.ErrDenied):
			d.refuseRegistration(h, err)
		default:
			log.Warn("supervisor ended", "error", err)
		}
	}()
	go d.watchVRAMEstimate(h, a.sup.Ready(), a.done) // catalog.go
}

// registrar builds the Consul registrar from the plugin config; nil (no
// error) when no Consul is configured.
func (d *Driver) registrar() (registry.Registrar, error) {
	c := d.config().Consul
	if c.Address == "" && os.Getenv("CONSUL_HTTP_ADDR") == "" {
		return nil, nil
	}
	r, err := consul.NewRegistrar(consul.RegistrarConfig{
		Address: c.Address, TokenFile: c.TokenFile, Service: c.ServiceName, TLS: c.TLS(),
		Logger: d.log.Named("consul"),
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// refuseRegistration stops a task whose instance cannot be registered.
func (d *Driver) refuseRegistration(h *taskHandle, err error) {
	d.log.Error("engine cannot be registered; stopping the task", "task_id", h.TaskID(), "error", err)
	d.events.emit(h, fmt.Sprintf("Stopping: the engine cannot be registered in Consul, so no router could reach it: %v", err), nil)
	d.killGroup(h, syscall.SIGKILL) // a failure, not a clean exit: the task must not look successful
}

// instanceFor is the registration of h (health and version are filled in
// by the supervisor).
func (d *Driver) instanceFor(h *taskHandle) registry.Instance {
	spec := h.Spec()
	adapter, _ := h.Adapter()
	inst := registry.Instance{
		ID:       h.InstanceID(),
		Service:  h.ServiceName(),
		Address:  h.Host(),
		Port:     h.Port(),
		Model:    spec.ModelName,
		Engine:   h.EngineName(),
		NodeID:   h.NodeID(),
		NodeName: h.NodeName(),
		PoolID:   h.PoolID(),
		Ctx:      spec.Ctx,
		Slots:    spec.Slots,
		// The node's model catalog rides along, so the router can answer
		// availability questions for models staged but not running.
		NodeModels: d.catalogCompact(),
		TLS:        h.st.TLS(),
	}
	if adapter != nil {
		inst.APIs = adapter.APIs()
	}
	if r, err := gpualloc.Unmarshal(h.st.GPUReservation); err == nil && len(h.st.GPUReservation) > 0 {
		for _, g := range r.GPUs {
			inst.GPUs = append(inst.GPUs, g.UUID)
		}
		inst.VRAMReservedMiB = int(r.VRAMMiB) * len(r.GPUs)
	}
	return inst
}
