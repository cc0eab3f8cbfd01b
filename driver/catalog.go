package driver

import (
	"sync"

	"github.com/llorch/llorch/internal/nomadpb/structs"
	"github.com/llorch/llorch/models/catalog"
	"github.com/llorch/llorch/models/vramest"
)

// catalogState fingerprints the node's model_dir. Listing is synchronous
// and cheap; hashing runs in the background (a first digest of a 70 GB file
// takes minutes, and the agent waits at most 50 s for a first fingerprint),
// so digests appear in a later fingerprint.
type catalogState struct {
	mu      sync.Mutex
	scanner *catalog.Scanner
	hashing bool
	last    []catalog.Entry
	err     error
}

// catalogEntries lists the models in model_dir and starts a background
// hash of any not hashed yet. With no model_dir it returns nil.
func (d *Driver) catalogEntries() ([]catalog.Entry, error) {
	dir := d.config().ModelDir
	c := &d.catalog
	c.mu.Lock()
	defer c.mu.Unlock()
	if dir == "" {
		c.scanner, c.last, c.err = nil, nil, nil
		return nil, nil
	}
	if c.scanner == nil || c.scanner.Dir() != dir {
		c.scanner = catalog.NewScanner(dir)
	}
	entries, err := c.scanner.ScanCached()
	c.last, c.err = entries, err
	if err != nil {
		return nil, err
	}
	unhashed := false
	for _, e := range entries {
		unhashed = unhashed || e.Digest == ""
	}
	if unhashed && !c.hashing {
		c.hashing = true
		s := c.scanner
		go func() { // owned by the scanner's lifetime; ends after one pass
			if _, err := s.Scan(); err != nil {
				d.log.Warn("model catalog: hashing failed", "dir", s.Dir(), "error", err)
			}
			c.mu.Lock()
			c.hashing = false
			c.mu.Unlock()
		}()
	}
	return entries, nil
}

// catalogAttributes are the node attributes for the model catalog:
// driver.llorch.models (comma list; jobs constrain with set_contains),
// driver.llorch.models.count, driver.llorch.model.<name>.size/.digest.
func (d *Driver) catalogAttributes() map[string]*structs.Attribute {
	entries, err := d.catalogEntries()
	if err != nil {
		d.log.Warn("model catalog unreadable", "error", err)
		return map[string]*structs.Attribute{"driver." + PluginName + ".models.error": strAttr(err.Error())}
	}
	if d.config().ModelDir == "" {
		return nil
	}
	out := map[string]*structs.Attribute{}
	for k, v := range catalog.Attributes(entries) {
		out["driver."+PluginName+"."+k] = strAttr(v)
	}
	return out
}

// catalogCompact is the catalog for the Consul meta node_models of this
// node's engines (registry.Instance.NodeModels).
func (d *Driver) catalogCompact() string {
	d.catalog.mu.Lock()
	last := d.catalog.last
	d.catalog.mu.Unlock()
	return catalog.EncodeCompact(last)
}

// watchVRAMEstimate compares the task's VRAM estimate with what its
// processes hold on the GPUs once the engine is ready — llama.cpp and
// Ollama allocate weights, KV cache and compute buffers while loading, so
// readiness is when the figure is complete — then ends. announce() starts
// it next to each supervisor: ready is the supervisor's Ready, done closes
// when the supervisor ends, so the goroutine never outlives it.
func (d *Driver) watchVRAMEstimate(h *taskHandle, ready, done <-chan struct{}) {
	select {
	case <-ready:
	case <-done:
		return
	case <-d.ctx.Done():
		return
	}
	if summary, ok := d.compareVRAMEstimate(h, d.gpuTaskMemoryBytes); ok {
		d.events.emit(h, summary, nil)
	}
}

// compareVRAMEstimate logs the line vramest.LogMessage with
// vramest.LogFields and returns the event text. It compares nothing (ok
// false) for CPU tasks, engines vramest does not model (vLLM, SGLang, TGI),
// a model that is not a readable GGUF file, partial offload (the estimate
// is for every layer on the GPU), or where NVML cannot attribute memory to
// the task's processes (MIG, containers without the host PID namespace).
func (d *Driver) compareVRAMEstimate(h *taskHandle, measure func(*taskHandle) (uint64, bool)) (string, bool) {
	cfg := h.Config()
	if !cfg.WantsGPUs() {
		return "", false
	}
	spec := h.Spec()
	log := d.log.With("task_id", h.TaskID(), "model", spec.ModelName)
	est, err := vramest.FromFile(spec.Model, vramest.Params{Engine: h.EngineName(), Ctx: spec.Ctx, Slots: spec.Slots})
	if err != nil {
		log.Debug("no VRAM estimate for this task", "error", err)
		return "", false
	}
	// llama.cpp offloads n_layer blocks plus the output layer.
	if spec.GPULayers > 0 && uint64(spec.GPULayers) <= est.Layers {
		log.Debug("partial offload; VRAM estimate assumes all layers on the GPU", "gpu_layers", spec.GPULayers, "layers", est.Layers)
		return "", false
	}
	used, ok := measure(h)
	if !ok || used == 0 {
		log.Debug("GPU memory of the task unknown; estimate not compared", "estimate_mib", est.TotalMiB())
		return "", false
	}
	measured := int((used + vramest.MiB - 1) / vramest.MiB)
	log.Info(vramest.LogMessage, vramest.LogFields(est, measured)...)
	return vramest.Summary(est, measured), true
}
