//go:build llorch_devengine

package driver

// DEV ONLY (build tag llorch_devengine): a minimal llamacpp adapter while the
// real engine/llamacpp.go is being written. Removed before commit.

import (
	"context"
	"net/http"
	"strconv"

	"github.com/llorch/llorch/engine"
)

type devLlama struct{}

func (devLlama) Name() string          { return "llamacpp" }
func (devLlama) DefaultBinary() string { return "llama-server" }
func (devLlama) Command(bin string, s engine.Spec) (engine.Command, error) {
	return engine.Command{Path: bin, Args: []string{"-m", s.Model, "--host", s.Host, "--port", strconv.Itoa(s.Port), "--alias", s.ModelName}}, nil
}
func (devLlama) Ready(context.Context, *http.Client, string, engine.Spec) error { return nil }
func (devLlama) Version(context.Context, *http.Client, string, engine.Spec) (string, error) {
	return "dev", nil
}
func (devLlama) Load(context.Context, *http.Client, string, engine.Spec) (engine.Load, error) {
	return engine.Load{}, nil
}
func (devLlama) APIs() []string     { return nil }
func (devLlama) TakesAPIKey() bool  { return true }

func init() {
	if _, err := engine.Get("llamacpp"); err != nil {
		engine.Register(devLlama{})
	}
}
