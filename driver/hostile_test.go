package driver_test

// Hostile jobs on a shared client, through the protocol client: each is
// refused at StartTask with an error naming the field (and nothing is left
// running), or neutralised.

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
)

// allEnginesFake is a plugin config that runs the fake engine for every
// adapter, so each adapter's rules are exercised.
func allEnginesFake(t *testing.T, extra map[string]interface{}) map[string]interface{} {
	fake := fakeEngine(t)
	cfg := pluginConfig(t, extra)
	cfg["engines"] = map[string]interface{}{"llamacpp": fake, "vllm": fake, "sglang": fake, "tgi": fake, "ollama": fake}
	return cfg
}

// modelDirWithEscapes is a model_dir holding a model, a symlink to it
// (allowed) and a symlink out of the dir (refused), and a model outside.
func modelDirWithEscapes(t *testing.T) (dir, outside string) {
	dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "inside.gguf"), []byte("GGUF"), 0o644); err != nil {
		t.Fatal(err)
	}
	outside = writeModel(t)
	if err := os.Symlink(filepath.Join(dir, "inside.gguf"), filepath.Join(dir, "linked.gguf")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "escape.gguf")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, outside
}

func TestHostileJobsRefused(t *testing.T) {
	modelDir, outside := modelDirWithEscapes(t)
	p := nomadclient.Launch(t, nomadclient.Binary(t))
	setConfig(t, p, allEnginesFake(t, map[string]interface{}{"model_dir": modelDir}))
	outsideRel, err := filepath.Rel(modelDir, outside)
	if err != nil {
		t.Fatal(err)
	}
	ok := "inside.gguf"
	cases := []struct {
		name    string
		cfg     map[string]interface{}
		taskEnv map[string]string
		want    []string // all in the error
	}{
		{"env blanks the key", engineConfig(ok, map[string]interface{}{"env": map[string]interface{}{"LLAMA_API_KEY": ""}}),
			nil, []string{`field "env": "LLAMA_API_KEY"`, "engine token"}},
		{"extra_args --api-key", engineConfig(ok, map[string]interface{}{"extra_args": []string{"--api-key", "mine"}}),
			nil, []string{`field "extra_args[0]"`, `--api-key`}},
		{"extra_args --host=", engineConfig(ok, map[string]interface{}{"extra_args": []string{"-ngl", "1", "--host=0.0.0.0"}}),
			nil, []string{`field "extra_args[2]"`, `--host`, "listen address"}},
		{"extra_args slots", engineConfig(ok, map[string]interface{}{"extra_args": []string{"-np", "64"}}),
			nil, []string{`field "extra_args[0]"`, `use the task config field "slots"`}},
		{"ollama env rebinds", engineConfig(ok, map[string]interface{}{"engine": "ollama", "env": map[string]interface{}{"OLLAMA_HOST": "0.0.0.0:1"}}),
			nil, []string{`field "env": "OLLAMA_HOST"`}},
		{"vllm --trust-remote-code", engineConfig("org/model", map[string]interface{}{"engine": "vllm", "extra_args": []string{"--trust-remote-code"}}),
			nil, []string{`field "extra_args[0]"`, "allowed_unsafe_options"}},
		{"vllm abbreviated", engineConfig("org/model", map[string]interface{}{"engine": "vllm", "extra_args": []string{"--trust-remote"}}),
			nil, []string{`field "extra_args[0]"`, "allowed_unsafe_options"}},
		{"sglang underscore key", engineConfig("org/model", map[string]interface{}{"engine": "sglang", "extra_args": []string{"--api_key=x"}}),
			nil, []string{`field "extra_args[0]"`, "engine token"}},
		{"tgi env", engineConfig("org/model", map[string]interface{}{"engine": "tgi", "env": map[string]interface{}{"TRUST_REMOTE_CODE": "true"}}),
			nil, []string{`field "env": "TRUST_REMOTE_CODE"`, "allowed_unsafe_options"}},
		{"config env LD_PRELOAD", engineConfig(ok, map[string]interface{}{"env": map[string]interface{}{"LD_PRELOAD": "/tmp/x.so"}}),
			nil, []string{`field "env": "LD_PRELOAD"`}},
		{"task env LD_PRELOAD", engineConfig(ok, nil), map[string]string{"LD_PRELOAD": "/tmp/x.so"}, []string{"task env", "LD_PRELOAD"}},
		{"config env GPU pinning", engineConfig(ok, map[string]interface{}{"env": map[string]interface{}{"CUDA_VISIBLE_DEVICES": "0"}}),
			nil, []string{`field "env": "CUDA_VISIBLE_DEVICES"`, `"gpus"`}},
		{"model absolute outside", engineConfig(outside, nil), nil, []string{`field "model"`, "outside model_dir"}},
		{"model ..", engineConfig(outsideRel, nil), nil, []string{`field "model"`, "outside model_dir"}},
		{"model sub/../..", engineConfig("sub/../../x.gguf", nil), nil, []string{`field "model"`, "outside model_dir"}},
		{"model symlink out", engineConfig("escape.gguf", nil), nil, []string{`field "model"`, "outside model_dir"}},
		{"vllm name with ..", engineConfig("../../etc", map[string]interface{}{"engine": "vllm"}), nil, []string{`field "model"`, "outside model_dir"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := newAlloc(t)
			tc := a.taskConfig(t, p, c.cfg)
			for k, v := range c.taskEnv {
				tc.Env[k] = v
			}
			_, err := p.Driver.StartTask(ctxT(t, 20*time.Second), &drivers.StartTaskRequest{Task: tc})
			if err == nil {
				t.Fatalf("hostile job started")
			}
			if status.Code(err) != codes.InvalidArgument || isRecoverable(err) {
				t.Errorf("code %v (recoverable %v), want a permanent InvalidArgument: %v", status.Code(err), isRecoverable(err), err)
			}
			msg := status.Convert(err).Message()
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			a.requireNoProcesses(t)
		})
	}

	// The same dir's own models, a symlink inside it, and a task env block
	// setting what the driver owns (neutralised, not refused: the agent's
	// env is not the job's to vet) start.
	for _, m := range []string{"inside.gguf", "linked.gguf"} {
		a := newAlloc(t)
		tc := a.taskConfig(t, p, engineConfig(m, nil))
		tc.Env["LLAMA_ARG_HOST"] = "0.0.0.0"
		start(t, p, tc)
		env := engineEnv(t, a)
		if _, set := env["LLAMA_ARG_HOST"]; set {
			t.Errorf("task env LLAMA_ARG_HOST reached the engine")
		}
		stopAndDestroy(t, p, tc.GetId())
		a.requireNoProcesses(t)
	}
}

// A flag that runs code starts once the plugin config allows it by name.
func TestUnsafeOptionAllowlist(t *testing.T) {
	p := nomadclient.Launch(t, nomadclient.Binary(t))
	setConfig(t, p, allEnginesFake(t, map[string]interface{}{"allowed_unsafe_options": []string{"--trust-remote-code", "LD_LIBRARY_PATH"}}))
	a := newAlloc(t)
	tc := a.taskConfig(t, p, engineConfig("org/model", map[string]interface{}{"engine": "vllm", "extra_args": []string{"--trust-remote-code"},
		"env": map[string]interface{}{"LD_LIBRARY_PATH": "/nonexistent-llorch-lib"}}))
	start(t, p, tc)
	eventually(t, 10*time.Second, "engine running with the flag", func() bool {
		return strings.Contains(a.stdout.String(), "--trust-remote-code")
	})
	// The loader variable reaches the engine, never the supervisor (root,
	// the llorch binary).
	if got := engineEnv(t, a)["LD_LIBRARY_PATH"]; got != "/nonexistent-llorch-lib" {
		t.Errorf("engine LD_LIBRARY_PATH = %q", got)
	}
	sawSupervisor := false
	for _, pid := range markedPIDs(a.marker, a.dir) {
		cmd, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if !strings.Contains(string(cmd), "task-supervisor") {
			continue
		}
		sawSupervisor = true
		env, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
		if strings.Contains(string(env), "LD_LIBRARY_PATH=/nonexistent-llorch-lib") {
			t.Errorf("the supervisor (pid %d) runs with the job's LD_LIBRARY_PATH", pid)
		}
	}
	if !sawSupervisor {
		t.Error("no supervisor process found")
	}
	stopAndDestroy(t, p, tc.GetId())
	a.requireNoProcesses(t)
}

func stopAndDestroy(t *testing.T, p *nomadclient.Plugin, id string) {
	t.Helper()
	if _, err := p.Driver.StopTask(ctxT(t, 20*time.Second), &drivers.StopTaskRequest{TaskId: id}); err != nil {
		t.Fatalf("StopTask: %v", err)
	}
	if _, err := p.Driver.DestroyTask(ctxT(t, 20*time.Second), &drivers.DestroyTaskRequest{TaskId: id, Force: true}); err != nil {
		t.Fatalf("DestroyTask: %v", err)
	}
}
