//go:build llorch_nvmlmock

package driver

// TESTS ONLY (build tag llorch_nvmlmock, never set by `make build`): the
// driver's GPU tests build the plugin with this tag and set
// LLORCH_NVML_MOCK=<kind>[:<count>] (e.g. dgxh100, dgxa100:2) in its
// environment, so go-nvml's mock stands in for NVML across the process
// boundary. A binary built without the tag ignores the variable.

import (
	"os"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/llorch/llorch/fingerprint/nvmlmock"
)

func init() {
	spec := os.Getenv("LLORCH_NVML_MOCK")
	if spec == "" {
		return
	}
	newNVML = func() (nvml.Interface, error) {
		s, err := nvmlmock.Parse(spec)
		if err != nil {
			return nil, err
		}
		return s, nil
	}
}
