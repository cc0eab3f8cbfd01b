package driver_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
)

// The fingerprint stream carries the node's model catalog: names at once,
// digests once the background hash is done, and a model added later shows
// up in a following fingerprint.
func TestFingerprintCarriesModelCatalog(t *testing.T) {
	dir := t.TempDir()
	for i, name := range []string{"alpha", "beta.v2"} {
		o := ggufgen.DefaultOptions()
		o.Seed = uint64(i + 1)
		if err := ggufgen.Write(filepath.Join(dir, name+".gguf"), o); err != nil {
			t.Fatal(err)
		}
	}
	p := nomadclient.Launch(t, nomadclient.Binary(t))
	setConfig(t, p, pluginConfig(t, map[string]interface{}{"model_dir": dir}))
	ctx, cancel := context.WithCancel(ctxT(t, 20*time.Second))
	defer cancel()
	stream, err := p.Driver.Fingerprint(ctx, &drivers.FingerprintRequest{})
	if err != nil {
		t.Fatal(err)
	}
	fp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	a := fp.GetAttributes()
	if got := a["driver.llorch.models"].GetStringVal(); got != "alpha,beta.v2" {
		t.Fatalf("models = %q (attributes %v)", got, a)
	}
	if a["driver.llorch.model.beta_v2.size"].GetStringVal() == "" {
		t.Errorf("no size for beta.v2 (dots become '_' in keys): %v", a)
	}
	// Digests arrive with a later fingerprint (period is 1 s in tests).
	eventually(t, 10*time.Second, "digests and a new model", func() bool {
		if _, err := os.Stat(filepath.Join(dir, "gamma.gguf")); err != nil {
			if err := ggufgen.Write(filepath.Join(dir, "gamma.gguf"), ggufgen.DefaultOptions()); err != nil {
				t.Fatal(err)
			}
		}
		fp, err := stream.Recv()
		if err != nil {
			return false
		}
		a := fp.GetAttributes()
		return len(a["driver.llorch.model.alpha.digest"].GetStringVal()) == 12 &&
			a["driver.llorch.models"].GetStringVal() == "alpha,beta.v2,gamma" &&
			a["driver.llorch.models.count"].GetStringVal() == "3"
	})
}
