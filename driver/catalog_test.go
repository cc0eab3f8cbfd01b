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

// A model deleted from model_dir is tombstoned ("" deletes a node
// attribute) no later than the first fingerprint sent one full period
// after the deletion, and stays tombstoned in the ones after it.
func TestRemovedModelTombstoned(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"keep", "doomed"} {
		if err := ggufgen.Write(filepath.Join(dir, name+".gguf"), ggufgen.DefaultOptions()); err != nil {
			t.Fatal(err)
		}
	}
	const period = time.Second // pluginConfig's fingerprint_period
	p := nomadclient.Launch(t, nomadclient.Binary(t))
	setConfig(t, p, pluginConfig(t, map[string]interface{}{"model_dir": dir}))
	ctx, cancel := context.WithCancel(ctxT(t, 30*time.Second))
	defer cancel()
	stream, err := p.Driver.Fingerprint(ctx, &drivers.FingerprintRequest{})
	if err != nil {
		t.Fatal(err)
	}
	fp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	const key = "driver.llorch.model.doomed.size"
	if fp.GetAttributes()[key].GetStringVal() == "" {
		t.Fatalf("%s missing before the deletion: %v", key, fp.GetAttributes())
	}
	if err := os.Remove(filepath.Join(dir, "doomed.gguf")); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	tombstoned := 0
	for tombstoned < 2 {
		fp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		a := fp.GetAttributes()
		v, present := a[key]
		switch {
		case present && v.GetStringVal() == "":
			tombstoned++
			for _, k := range []string{"driver.llorch.model.doomed.digest"} {
				if d, ok := a[k]; ok && d.GetStringVal() != "" {
					t.Errorf("%s = %q after the model was deleted", k, d.GetStringVal())
				}
			}
			if got := a["driver.llorch.models"].GetStringVal(); got != "keep" {
				t.Errorf("models = %q, want keep", got)
			}
		case tombstoned > 0:
			t.Fatalf("tombstone for %s dropped from a later fingerprint: %v", key, v)
		case time.Since(deleted) >= period:
			t.Fatalf("a fingerprint %s after the deletion (period %s) still has %s = %v, not a tombstone",
				time.Since(deleted).Round(time.Millisecond), period, key, v)
		}
	}
}
