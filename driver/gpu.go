package driver

import (
	"errors"

	"github.com/llorch/llorch/internal/nomadpb/structs"
)

// Seam for the fingerprint helper. This first version knows no GPUs.

var errNoGPUs = errors.New("no GPUs fingerprinted on this node")

// gpuAttributes is merged into every Fingerprint response.
func (d *Driver) gpuAttributes() map[string]*structs.Attribute { return nil }

// assignGPUs reserves GPUs for a task before launch. env pins the engine to
// them (CUDA_VISIBLE_DEVICES and the like); reservation is stored opaquely
// in the task's driver_state and handed back to restoreGPUs on recovery.
// An error fails the start as recoverable.
func (d *Driver) assignGPUs(taskID string, cfg TaskConfig) (env map[string]string, reservation []byte, err error) {
	if cfg.WantsGPUs() {
		return nil, nil, errNoGPUs
	}
	return nil, nil, nil
}

// releaseGPUs frees a task's reservation (DestroyTask, failed start).
func (d *Driver) releaseGPUs(taskID string) {}

// restoreGPUs re-creates a reservation after a plugin restart.
func (d *Driver) restoreGPUs(taskID string, reservation []byte) error { return nil }

// gpuHealth feeds the fingerprint's health when require_gpu is set.
func (d *Driver) gpuHealth() (ok bool, why string) { return false, errNoGPUs.Error() }
