package jobs

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	nomad "github.com/hashicorp/nomad/api"

	"github.com/llorch/llorch/models/vramest"
)

// Attribute names the driver fingerprints (see fingerprint/ and catalog/).
// Constraints use the unit-less *_mib twins: Nomad compares attribute
// values numerically only when both sides parse as numbers.
const (
	attrDriver       = "${attr.driver.llorch}"
	attrModels       = "${attr.driver.llorch.models}"
	attrLargestFree  = "${attr.driver.llorch.vram.largest_free_mib}"
	attrGPUCount     = "${attr.driver.llorch.gpu.count}"
	attrNodeUniqueID = "${node.unique.id}"
)

// Job meta keys: the router finds the pools that serve a model, and the
// range it may scale them in, from these (router/scaler reads them).
const (
	MetaPool  = "llorch_pool"
	MetaModel = "llorch_model"
	MetaMin   = "llorch_min"
	MetaMax   = "llorch_max"
	MetaIdle  = "llorch_idle"
	// Group is the task group that holds the engine replicas.
	Group = "engine"
)

// DefaultIdle is how long a ranged pool may go without requests before
// the router scales it down to min.
const DefaultIdle = 10 * time.Minute

// PortLabel is the network port the engine listens on; the driver resolves
// it from the task's port mapping.
const PortLabel = "http"

// ResolveVRAM fills VRAMMiB for GPU pools from the model's GGUF header
// when the file is readable here (an operator often renders on a node that
// holds the model); it returns the estimate it used, or nil.
func ResolveVRAM(s *PoolSpec) (*vramest.Estimate, error) {
	if s.GPUs == 0 || s.VRAMMiB > 0 {
		return nil, nil
	}
	if _, err := os.Stat(s.Model); err != nil {
		return nil, nil // not here: the pool places on GPU count alone
	}
	e, err := vramest.FromFile(s.Model, vramest.Params{Engine: s.Engine, Ctx: s.Ctx, Slots: s.Slots})
	if errors.Is(err, vramest.ErrUnsupportedEngine) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("estimate VRAM for %s: %w", s.Model, err)
	}
	// The estimate is for the whole model; split over the GPUs it spans.
	s.VRAMMiB = (e.TotalMiB() + s.GPUs - 1) / s.GPUs
	return &e, nil
}

// Render builds the Nomad job for a validated pool spec.
func Render(s PoolSpec) *nomad.Job {
	job := nomad.NewServiceJob(s.Name, s.Name, s.Region, 50)
	job.Datacenters = s.Datacenters
	if s.Namespace != "" {
		job.Namespace = &s.Namespace
	}
	if s.NodePool != "" {
		job.NodePool = &s.NodePool
	}
	job.Meta = map[string]string{MetaPool: s.Name, MetaModel: s.ModelName}

	tg := nomad.NewTaskGroup(Group, s.Replicas)
	if s.Max > 0 {
		// The range lives in meta for the router and in the scaling block,
		// so Nomad itself refuses a count outside it (whoever scales). The
		// block stays disabled: the router scales, unless a team enables it
		// for the Nomad Autoscaler (deploy/nomad/autoscaler-policy.hcl).
		job.Meta[MetaMin] = strconv.Itoa(*s.Min)
		job.Meta[MetaMax] = strconv.Itoa(s.Max)
		job.Meta[MetaIdle] = s.Idle
		tg.Scaling = &nomad.ScalingPolicy{Min: ptr(int64(*s.Min)), Max: ptr(int64(s.Max)), Enabled: ptr(false)}
	}
	tg.Networks = []*nomad.NetworkResource{{DynamicPorts: []nomad.Port{{Label: PortLabel}}}}

	// The driver must be present; Nomad itself only places on nodes where
	// the driver is detected and healthy.
	tg.Constrain(nomad.NewConstraint(attrDriver, "=", "1"))
	if *s.RequireModelPresent {
		tg.Constrain(nomad.NewConstraint(attrModels, "set_contains", s.ModelName))
	}
	if s.GPUs > 0 {
		tg.Constrain(nomad.NewConstraint(attrGPUCount, ">=", strconv.Itoa(s.GPUs)))
	}
	if s.VRAMMiB > 0 {
		tg.Constrain(nomad.NewConstraint(attrLargestFree, ">=", strconv.Itoa(s.VRAMMiB)))
	}
	if s.DistinctHosts {
		tg.Constrain(nomad.NewConstraint("", "distinct_hosts", "true"))
	}
	if s.Replicas > 1 {
		tg.Spreads = []*nomad.Spread{nomad.NewSpread(attrNodeUniqueID, 100, nil)}
	}
	for _, a := range s.Affinities {
		op := a.Operator
		if op == "" {
			op = "="
		}
		tg.Affinities = append(tg.Affinities, nomad.NewAffinity(a.Attribute, op, a.Value, a.Weight))
	}
	// Engines fail for real reasons (a bad model, OOM): retry a few times
	// on the node, then let Nomad move the replica elsewhere, backing off.
	tg.RestartPolicy = &nomad.RestartPolicy{
		Attempts: ptr(3), Interval: ptr(5 * time.Minute), Delay: ptr(10 * time.Second), Mode: ptr("delay"),
	}
	tg.ReschedulePolicy = &nomad.ReschedulePolicy{
		Unlimited: ptr(true), Delay: ptr(30 * time.Second), DelayFunction: ptr("exponential"), MaxDelay: ptr(10 * time.Minute),
	}
	// Readiness is the driver's: it registers the engine in Consul only once
	// the engine answers, so the job declares no service block (a Nomad
	// service would register the port before the model is loaded, twice).
	tg.Update = &nomad.UpdateStrategy{
		MaxParallel: ptr(1), HealthCheck: ptr("task_states"), MinHealthyTime: ptr(10 * time.Second),
		HealthyDeadline: ptr(5 * time.Minute), AutoRevert: ptr(true),
	}

	cfg := map[string]any{
		"engine":     s.Engine,
		"model":      s.Model,
		"model_name": s.ModelName,
		"port":       PortLabel,
		"pool":       s.Name,
	}
	setInt := func(k string, v int) {
		if v != 0 {
			cfg[k] = v
		}
	}
	setInt("ctx", s.Ctx)
	setInt("slots", s.Slots)
	setInt("gpus", s.GPUs)
	setInt("vram_mib", s.VRAMMiB)
	setInt("gpu_layers", s.GPULayers)

	task := nomad.NewTask(s.Engine, "llorch")
	task.Config = cfg
	task.Resources = &nomad.Resources{CPU: ptr(s.CPU), MemoryMB: ptr(s.MemoryMB)}
	task.KillTimeout = ptr(30 * time.Second)
	tg.AddTask(task)
	job.AddTaskGroup(tg)
	return job
}

// RenderJSON is the job as Nomad's HTTP API takes it: {"Job": {...}}.
func RenderJSON(job *nomad.Job) ([]byte, error) {
	b, err := json.MarshalIndent(struct{ Job *nomad.Job }{job}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode job: %w", err)
	}
	return append(b, '\n'), nil
}

func ptr[T any](v T) *T { return &v }
