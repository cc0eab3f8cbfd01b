package cli

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/llorch/llorch/fingerprint"
	"github.com/llorch/llorch/fingerprint/nvmlmock"
)

func TestFingerprintCommandWithoutNVML(t *testing.T) {
	var out, errOut bytes.Buffer
	lib := nvml.New(nvml.WithLibraryPath(filepath.Join(t.TempDir(), "libnvidia-ml.so.1")))
	if code := runFingerprint(nil, &out, &errOut, lib); code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errOut.String())
	}
	if !strings.HasPrefix(out.String(), "no NVIDIA GPU / NVML not available: ") || !strings.Contains(out.String(), "ERROR_LIBRARY_NOT_FOUND") {
		t.Errorf("output %q", out.String())
	}
}

func TestFingerprintCommandTableAndJSON(t *testing.T) {
	srv, err := nvmlmock.New("dgxh100", 8)
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := runFingerprint(nil, &out, &errOut, srv); code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 10 || !strings.Contains(lines[0], "driver 550.54.15, CUDA 12.4, 8 GPU(s)") {
		t.Fatalf("table:\n%s", out.String())
	}
	if !strings.Contains(lines[9], srv.UUID(7)) || !strings.Contains(lines[9], "81920 MiB") || !strings.Contains(lines[9], "70 / 700 W") {
		t.Errorf("last row %q", lines[9])
	}

	out.Reset()
	if code := runFingerprint([]string{"--json"}, &out, &errOut, srv); code != 0 {
		t.Fatalf("--json exit %d", code)
	}
	var snap fingerprint.Snapshot
	if err := json.Unmarshal(out.Bytes(), &snap); err != nil || len(snap.GPUs) != 8 || !snap.Status.Available {
		t.Fatalf("json: %v %+v", err, snap.Status)
	}

	srv.SetLost(0, true)
	out.Reset()
	errOut.Reset()
	if code := runFingerprint(nil, &out, &errOut, srv); code != 1 || !strings.Contains(errOut.String(), "ERROR_GPU_IS_LOST") {
		t.Errorf("lost GPU: exit %d, stderr %q", code, errOut.String())
	}
	if code := runFingerprint([]string{"--bogus"}, &out, &errOut, srv); code != 2 {
		t.Errorf("bad flag exit %d", code)
	}
}
