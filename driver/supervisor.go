package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/llorch/llorch/internal/procfs"
)

// Each task runs under its own supervisor: the llorch binary re-executed as
// the hidden `task-supervisor` subcommand in a session of its own. It is the
// engine's parent, so it alone can collect the engine's real exit status,
// and it outlives the plugin (the agent kills and relaunches plugins at
// will). It talks to the driver through files in the task's state dir.
const (
	// SupervisorCommand is the hidden subcommand name.
	SupervisorCommand = "task-supervisor"

	specFile   = "spec.json"
	engineFile = "engine.json"
	exitFile   = "exit.json"
	supLogFile = "supervisor.log"
)

// supervisorSpec is what the supervisor runs.
type supervisorSpec struct {
	Path string   `json:"path"`
	Args []string `json:"args"`
	// Env is the engine's whole environment in specs written before
	// EnvFromProcess. With EnvFromProcess the engine gets the supervisor's
	// own environment plus Env, which then holds only the dynamic loader's
	// variables (LD_*), kept out of the supervisor itself.
	Env            []string `json:"env,omitempty"`
	EnvFromProcess bool     `json:"env_from_process,omitempty"`
	Dir            string   `json:"dir"`
	// Engine is the adapter name, for redacting the command line it logs.
	Engine string `json:"engine,omitempty"`
	// SecretArgs are arguments (Args[Index], a placeholder on disk) whose
	// value the supervisor reads from a file, like SecretEnv.
	SecretArgs []secretArg `json:"secret_args,omitempty"`
	// SecretEnv names variables whose values the supervisor reads from a
	// file when it starts the engine, so the spec on disk never holds the
	// engine token itself.
	SecretEnv []secretEnv `json:"secret_env,omitempty"`
	// Isolation is the engine's user, cgroup, oom_score_adj and relay.
	Isolation isolation `json:"isolation"`
}

// secretArgPlaceholder stands for a secret argument in the spec on disk.
const secretArgPlaceholder = "<secret from file>"

type secretArg struct {
	Index int    `json:"index"`
	File  string `json:"file"`
}

type secretEnv struct {
	Name string `json:"name"`
	File string `json:"file"`
}

// engineRecord identifies the running engine; pid plus start time names one
// process even if the pid is reused later.
type engineRecord struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
}

// exitRecord is the engine's exit as the supervisor saw it.
type exitRecord struct {
	ExitCode    int       `json:"exit_code"`
	Signal      int       `json:"signal"`
	OOMKilled   bool      `json:"oom_killed"`
	Err         string    `json:"err,omitempty"`
	CompletedAt time.Time `json:"completed_at"`
}

// writeJSONAtomic writes v so readers never see a half-written file.
func writeJSONAtomic(path string, v interface{}) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readJSON(path string, v interface{}) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// RunSupervisor is the body of the hidden subcommand: args[0] is the task's
// state dir. Its stdout and stderr are the task's log sinks, handed straight
// to the engine.
func RunSupervisor(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: llorch task-supervisor <state dir> (started by the llorch driver)")
		return 2
	}
	dir := args[0]
	logf, err := os.OpenFile(filepath.Join(dir, supLogFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintf(os.Stderr, "llorch task-supervisor: %v\n", err)
		return 1
	}
	defer logf.Close()
	logLine := func(format string, a ...interface{}) {
		fmt.Fprintf(logf, "%s %s\n", time.Now().UTC().Format(time.RFC3339Nano), fmt.Sprintf(format, a...))
	}
	fail := func(err error) int {
		logLine("error: %v", err)
		_ = writeJSONAtomic(filepath.Join(dir, exitFile), exitRecord{ExitCode: 127, Err: err.Error(), CompletedAt: time.Now()})
		return 1
	}

	// Catch (not ignore) termination signals: an ignored signal stays
	// ignored in the engine across exec, a caught one is reset.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGPIPE)
	go func() {
		for s := range sigs {
			logLine("ignoring %v (the engine is stopped by the driver)", s)
		}
	}()

	var spec supervisorSpec
	if err := readJSON(filepath.Join(dir, specFile), &spec); err != nil {
		return fail(fmt.Errorf("read spec: %w", err))
	}
	engineArgs := append([]string(nil), spec.Args...)
	for _, sa := range spec.SecretArgs {
		if sa.Index < 0 || sa.Index >= len(engineArgs) {
			return fail(fmt.Errorf("spec: secret argument %d out of range", sa.Index))
		}
		b, err := os.ReadFile(sa.File)
		if err != nil {
			return fail(fmt.Errorf("read %s for argument %d: %w", sa.File, sa.Index, err))
		}
		engineArgs[sa.Index] = strings.TrimSpace(string(b))
	}
	// The log names secrets by fingerprint (token:9f86d0), never by value.
	logArgs := redactArgs(spec.Engine, engineArgs)
	cmd := exec.Command(spec.Path, engineArgs...)
	cmd.Env = spec.Env
	if spec.EnvFromProcess {
		cmd.Env = append(os.Environ(), spec.Env...)
	}
	for _, se := range spec.SecretEnv {
		b, err := os.ReadFile(se.File)
		if err != nil {
			return fail(fmt.Errorf("read %s for %s: %w", se.File, se.Name, err))
		}
		cmd.Env = append(cmd.Env, se.Name+"="+strings.TrimSpace(string(b)))
	}
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	// Its own process group, so a stop can kill the engine and everything
	// it spawned without touching the supervisor.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	oomBase, err := startEngine(cmd, spec.Isolation, logLine)
	if err != nil {
		return fail(fmt.Errorf("start engine %s as %s: %w", spec.Path, spec.Isolation.User, err))
	}
	pid := cmd.Process.Pid
	rl, err := startRelay(spec.Isolation, logLine)
	if err != nil {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = cmd.Wait()
		return fail(fmt.Errorf("engine token relay: %w", err))
	}
	if rl != nil {
		defer rl.Close()
	}
	st, err := procfs.ReadStat(pid)
	if err != nil {
		logLine("read engine start time: %v", err)
	}
	if err := writeJSONAtomic(filepath.Join(dir, engineFile), engineRecord{PID: pid, StartTime: st.StartTime}); err != nil {
		logLine("write engine record: %v", err)
	}
	logLine("engine started: pid %d: %s %s", pid, spec.Path, strings.Join(logArgs, " "))

	werr := cmd.Wait()
	rec := exitRecord{CompletedAt: time.Now()}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
		rec.ExitCode = ws.ExitStatus()
		if ws.Signaled() {
			rec.Signal = int(ws.Signal())
			rec.ExitCode = 128 + rec.Signal
		}
	} else if werr != nil {
		rec.ExitCode, rec.Err = 1, werr.Error()
	}
	rec.OOMKilled = engineOOMKilled(spec.Isolation, oomBase, syscall.Signal(rec.Signal))
	// Whatever the engine left in its group goes with it: no orphans.
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		logLine("kill engine group %d: %v", pid, err)
	}
	logLine("engine exited: code %d signal %d oom_killed %v", rec.ExitCode, rec.Signal, rec.OOMKilled)
	if err := writeJSONAtomic(filepath.Join(dir, exitFile), rec); err != nil {
		logLine("write exit record: %v", err)
		return 1
	}
	return 0
}

// openLogSink opens a task log path for writing. The agent's paths are
// FIFOs whose reader is already open; opening non-blocking turns "no
// reader" into an error instead of a hang, then the fd goes back to
// blocking because the engine expects ordinary writes.
func openLogSink(path string) (*os.File, error) {
	if path == "" {
		path = os.DevNull
	}
	fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_APPEND|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0o640)
	if err != nil {
		if errors.Is(err, syscall.ENXIO) {
			return nil, fmt.Errorf("log %s: the log reader is not running: %w", path, err)
		}
		return nil, fmt.Errorf("open log %s: %w", path, err)
	}
	if err := syscall.SetNonblock(fd, false); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("log %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}
