package router

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llorch/llorch/internal/testenv"
	"github.com/llorch/llorch/registry"
)

func chromium(t *testing.T, args ...string) (string, error) {
	bin := testenv.LookPath(t, "chromium", "apt-get install chromium")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--window-size=1280,860", "--virtual-time-budget=4000"}
	out, err := exec.CommandContext(ctx, bin, append(base, args...)...).Output()
	return string(out), err
}

// The cluster page, rendered by a real headless Chromium, shows the
// cluster's real contents: nodes, their GPUs and engines with models and
// load. The test leaves a screenshot (in $LLORCH_ARTIFACTS if set).
func TestUIInChromium(t *testing.T) {
	_, u1 := startFixture(t)
	_, u2 := startFixture(t)
	a := inst(t, "engine-alpha", "gpu-node-1", "llama-3-8b", u1)
	a.NodeName, a.GPUs, a.VRAMTotalMiB, a.VRAMReservedMiB, a.Slots, a.EngineVersion = "gpu-node-1", []string{"GPU-aaaa"}, 81920, 20480, 4, "b11669"
	b := inst(t, "engine-beta", "gpu-node-2", "qwen-7b", u2)
	b.NodeName, b.GPUs, b.VRAMTotalMiB, b.VRAMReservedMiB, b.Slots = "gpu-node-2", []string{"GPU-bbbb"}, 24576, 12000, 2
	c := b
	c.ID, c.Health = "engine-gamma", registry.HealthCritical
	h := newHarness(t, nil, a, b, c)
	url := h.srv.URL + "/ui#token=" + clientToken

	dom, err := chromium(t, "--dump-dom", url)
	if err != nil {
		t.Fatalf("chromium --dump-dom: %v", err)
	}
	for _, want := range []string{"gpu-node-1", "gpu-node-2", "engine-alpha", "engine-beta", "llama-3-8b", "qwen-7b",
		"GPU-aaaa", "20480 / 81920 MiB", "healthy", "critical", "Recent errors", "updated "} {
		if !strings.Contains(dom, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(dom, clientToken) {
		t.Error("the token ended up in the page")
	}

	dir := os.Getenv("LLORCH_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	os.MkdirAll(dir, 0o755)
	shot := filepath.Join(dir, "ui.png")
	if _, err := chromium(t, "--screenshot="+shot, url); err != nil {
		t.Fatalf("chromium --screenshot: %v", err)
	}
	info, err := os.Stat(shot)
	if err != nil || info.Size() < 10000 {
		t.Fatalf("screenshot missing or empty: %v", err)
	}
	t.Logf("screenshot: %s (%d bytes)", shot, info.Size())

	// Without the token the page shows the API's refusal, no data.
	dom, _ = chromium(t, "--dump-dom", h.srv.URL+"/ui")
	if strings.Contains(dom, "engine-alpha") || !strings.Contains(dom, "HTTP 401") {
		t.Errorf("page without a token shows data or no refusal")
	}
}
