package driver_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llorch/llorch/authmin"
	"github.com/llorch/llorch/driver/nomadclient"
)

// The task's state lives in its private dir (not served by `nomad alloc
// fs`), 0700 with 0600 files; neither the engine token (SGLang takes it in
// argv) nor a job secret from the task env is in any file the driver
// writes, and the supervisor's log names the token by its fingerprint.
// The engine still gets both.
func TestStateDirHoldsNoSecrets(t *testing.T) {
	const token = "engine-token-0123456789abcdef"
	const jobSecret = "s.vault-token-fedcba9876543210"
	tokenFile := filepath.Join(t.TempDir(), "engine.token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := nomadclient.Launch(t, nomadclient.Binary(t))
	setConfig(t, p, allEnginesFake(t, map[string]interface{}{"engine_token_file": tokenFile}))
	a := newAlloc(t)
	tc := a.taskConfig(t, p, engineConfig("org/model", map[string]interface{}{"engine": "sglang"}))
	tc.Env["VAULT_TOKEN"] = jobSecret
	start(t, p, tc)

	// The engine got the token in argv and the job's secret in its env.
	var pid int
	eventually(t, 10*time.Second, "engine process", func() bool {
		pids := enginePIDs(a.marker)
		if len(pids) > 0 {
			pid = pids[0]
		}
		return pid > 0
	})
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cmdline), "--api-key\x00"+token) {
		t.Errorf("engine argv lacks --api-key <token>: %q", cmdline)
	}
	if got := engineEnv(t, a)["VAULT_TOKEN"]; got != jobSecret {
		t.Errorf("engine VAULT_TOKEN = %q", got)
	}

	private := filepath.Join(a.dir, a.task, "private")
	llorchDir := filepath.Join(private, ".llorch")
	eventually(t, 10*time.Second, "supervisor log", func() bool {
		m, _ := filepath.Glob(filepath.Join(llorchDir, "*", "supervisor.log"))
		if len(m) == 0 {
			return false
		}
		b, _ := os.ReadFile(m[0])
		return strings.Contains(string(b), "engine started")
	})
	sawSpec, sawLog := false, false
	err = filepath.Walk(filepath.Join(a.dir, a.task), func(path string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() && !fi.IsDir() {
			return err
		}
		inState := strings.HasPrefix(path, llorchDir)
		if inState && fi.IsDir() && fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v, want 0700", path, fi.Mode().Perm())
		}
		if fi.IsDir() {
			return nil
		}
		if inState && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", path, fi.Mode().Perm())
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, secret := range []string{token, jobSecret} {
			if strings.Contains(string(b), secret) {
				t.Errorf("%s holds a secret (%s)", path, authmin.Identity(secret))
			}
		}
		switch filepath.Base(path) {
		case "spec.json":
			sawSpec = true
			if strings.Contains(string(b), "LLORCH_MARKER") {
				t.Errorf("spec.json holds the task env: %s", b)
			}
		case "supervisor.log":
			sawLog = true
			if !strings.Contains(string(b), "--api-key "+authmin.Identity(token)) {
				t.Errorf("supervisor.log does not name the token by its fingerprint: %s", b)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !sawSpec || !sawLog {
		t.Fatalf("state files not under %s (spec %v, log %v)", private, sawSpec, sawLog)
	}
	// Nothing of the driver's outside the private dir.
	if m, _ := filepath.Glob(filepath.Join(a.dir, a.task, ".llorch")); len(m) != 0 {
		t.Errorf("state outside the private dir: %v", m)
	}
	stopAndDestroy(t, p, tc.GetId())
	a.requireNoProcesses(t)
	if _, err := os.Stat(llorchDir); err == nil {
		if m, _ := filepath.Glob(filepath.Join(llorchDir, "*")); len(m) != 0 {
			t.Errorf("DestroyTask left %v", m)
		}
	}
}
